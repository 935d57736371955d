//! The egress gateway's guarded path: the only way data leaves the boundary.
//!
//! Order is the guarantee. (1) The request is planned against its export profile (400 if
//! the profile does not allow it). (2) Cedar decides every data class the plan reads, for
//! action `export` with the destination in the context; any deny is logged as a denied
//! export and nothing is read. (3) Noise, if asked, is charged to the destination's epsilon
//! budget, durably; an exhausted budget is logged as a denied export. (4) The records are
//! scanned a page at a time, only the permitted classes opened, transformed, and written to
//! a spool file in the data dir while being hashed. (5) One `export` log entry with the
//! SHA-256 and length of exactly those bytes is made durable. (6) Only then is the spool
//! file served. No byte reaches the requester before step 5; if it fails, the spool is
//! deleted and nothing is released.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use serde_json::Value;

use custody_core::{
    Action, CollectionName, DataClass, Decision, ExportEvent, FieldName, Jurisdiction, LogEntry, Schema, SubjectId,
};
use custody_egress::{
    BudgetStore, EgressError, ExportRequest, Exporter, FormattedRows, Plan, PlanKind, Profiles, Pseudonymiser,
    RowFormatter, Summary,
};
use custody_policy::{ClassDecision, LoadedPolicies, RequestContext, ResourceRef};
use custody_vault::{RawPage, RecordView, Vault, VaultError};

use crate::guard::{Caller, GuardError};
use crate::setup::{DataDir, ServerConfig, ServerState, SetupError};
use crate::wire::{Receipt, Withheld};

/// Records read from the vault per page of a scan: memory stays flat in the row count.
const PAGE: usize = 1024;

/// The gateway's state: profiles, epsilon budget, pseudonym key and spool directory.
pub struct Gateway {
    profiles: Profiles,
    budget: Budget,
    key: [u8; 32],
    spool: PathBuf,
    budget_limit: f64,
    epoch_days: u32,
    /// Whether this open created the egress pseudonym key (a key event to log).
    pub(crate) fresh_key: bool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("profiles", &self.profiles.profiles.len()).finish_non_exhaustive()
    }
}

/// Where the epsilon budget is kept: the data dir's file (embedded), or the shared database,
/// so every node of a PostgreSQL cluster, and the next sequencer after a failover, sees one
/// spend.
enum Budget {
    File(BudgetStore),
    Postgres(custody_pg::PgStore),
}

/// Floating-point slack, as the file store allows, so equal parts spend a budget exactly.
const BUDGET_SLACK: f64 = 1e-9;

impl Budget {
    fn spent(&self, destination: &str) -> Result<f64, EgressError> {
        match self {
            Budget::File(b) => b.spent(destination),
            Budget::Postgres(pg) => pg.egress_spent(destination).map_err(|e| EgressError::Budget(e.to_string())),
        }
    }

    fn charge(&self, destination: &str, epsilon: f64, limit: f64) -> Result<f64, EgressError> {
        match self {
            Budget::File(b) => b.charge(destination, epsilon, limit),
            Budget::Postgres(pg) => {
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return Err(EgressError::BadRequest("epsilon must be positive".into()));
                }
                match pg.egress_charge(destination, epsilon, limit, BUDGET_SLACK) {
                    Ok(Ok(total)) => Ok(total),
                    Ok(Err(spent)) => Err(EgressError::BudgetExhausted {
                        destination: destination.to_string(),
                        spent,
                        asked: epsilon,
                        limit,
                    }),
                    Err(e) => Err(EgressError::Budget(e.to_string())),
                }
            }
        }
    }
}

impl Gateway {
    /// Loads the profiles (checked against the schema), opens the budget store, gets the
    /// egress key and empties the spool of exports a previous run did not finish serving.
    ///
    /// # Errors
    /// [`SetupError::Egress`] naming what is wrong.
    pub fn open(
        cfg: &ServerConfig,
        dirs: &DataDir,
        schema: &Schema,
        vault: &Vault,
        pg: Option<&custody_pg::PgStore>,
    ) -> Result<Self, SetupError> {
        let profiles = match &dirs.egress_profiles {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| SetupError::Io { path: p.display().to_string(), source })?;
                Profiles::from_toml(&text, schema).map_err(|e| SetupError::Egress(format!("`{}`: {e}", p.display())))?
            }
            None => Profiles::default(),
        };
        let budget = match pg {
            Some(pg) => Budget::Postgres(pg.clone()),
            None => Budget::File(
                BudgetStore::open(&dirs.egress.join("budget.redb")).map_err(|e| SetupError::Egress(e.to_string()))?,
            ),
        };
        let spool = dirs.egress.join("spool");
        if spool.exists() {
            std::fs::remove_dir_all(&spool)
                .map_err(|source| SetupError::Io { path: spool.display().to_string(), source })?;
        }
        std::fs::create_dir_all(&spool)
            .map_err(|source| SetupError::Io { path: spool.display().to_string(), source })?;
        let (key, fresh_key) = vault.egress_key()?;
        if !(cfg.egress_epsilon_budget.is_finite() && cfg.egress_epsilon_budget >= 0.0) {
            return Err(SetupError::Egress("`egress_epsilon_budget` must be a non-negative number".into()));
        }
        Ok(Self {
            profiles,
            budget,
            key,
            spool,
            budget_limit: cfg.egress_epsilon_budget,
            epoch_days: cfg.egress_epoch_days.max(1),
            fresh_key,
        })
    }

    /// The export profiles in force.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Epsilon spent by `destination` so far.
    ///
    /// # Errors
    /// The budget store failed.
    pub fn spent(&self, destination: &str) -> Result<f64, EgressError> {
        self.budget.spent(destination)
    }
}

/// An export ready to serve: its spool file (already unlinked, so it vanishes once served),
/// what it holds, and the receipt of its durable log entry.
#[derive(Debug)]
pub struct ReadyExport {
    /// The bytes to serve, from the start.
    pub file: std::fs::File,
    /// Rows, length and SHA-256 of the file.
    pub summary: Summary,
    /// The receipt of the `export` entry naming that SHA-256.
    pub receipt: Receipt,
}

fn bad(e: EgressError) -> GuardError {
    match e {
        EgressError::Io(e) => GuardError::Storage(e.to_string()),
        EgressError::Parquet(e) => GuardError::Storage(format!("Parquet: {e}")),
        EgressError::Budget(e) => GuardError::Storage(e),
        other => GuardError::BadRequest(other.to_string()),
    }
}

struct Outcome<'a> {
    decision: Decision,
    reasons: Vec<String>,
    key_epoch: Option<u64>,
    epsilon: Option<f64>,
    summary: Option<&'a Summary>,
}

fn event(
    collection: &CollectionName,
    policies: &LoadedPolicies,
    caller: &Caller,
    plan: &Plan,
    ctx: &RequestContext,
    o: &Outcome<'_>,
) -> LogEntry {
    LogEntry::Export(ExportEvent {
        v: ExportEvent::VERSION,
        kind: "export".into(),
        time: time::OffsetDateTime::now_utc(),
        principal: caller.record.id.clone(),
        principal_kind: caller.record.kind.to_string(),
        location: Some(caller.prepared.location().to_string()),
        purpose: plan.request.purpose.trim().to_string(),
        justification: ctx.justification.clone(),
        destination: plan.request.destination.clone(),
        profile: plan.request.profile.clone(),
        collection: collection.clone(),
        query: plan.query(),
        policy_set: policies.hash().to_string(),
        decision: o.decision,
        reasons: o.reasons.clone(),
        transforms: if o.decision == Decision::Permit { plan.transforms() } else { Vec::new() },
        key_epoch: o.key_epoch,
        epsilon: o.epsilon,
        rows: o.summary.map_or(0, |x| x.rows),
        suppressed: o.summary.map_or(0, |x| x.suppressed),
        bytes: o.summary.map_or(0, |x| x.bytes),
        sha256: o.summary.map(|x| x.sha256.clone()),
    })
}

/// Runs an export through the gateway and returns it ready to serve.
///
/// # Errors
/// [`GuardError::BadRequest`] when the profile does not allow the request,
/// [`GuardError::Forbidden`] (logged as a denied export) when Cedar denies a class or the
/// destination's epsilon budget is exhausted, audit and storage errors (nothing released).
pub async fn export(
    s: &ServerState,
    caller: &Caller,
    req: ExportRequest,
    ctx: &RequestContext,
) -> Result<ReadyExport, GuardError> {
    let gw = &s.egress;
    let schema = s.guard.schema();
    let profile = gw.profiles.get(&req.profile).map_err(bad)?;
    let plan = Arc::new(req.plan(profile, schema).map_err(bad)?);
    let (cname, _) = s.guard.collection(&plan.request.collection)?;
    let cname = cname.clone();
    let ctx = RequestContext {
        purpose: Some(plan.request.purpose.trim().to_string()),
        justification: ctx.justification.clone(),
        approvals: ctx.approvals.clone(),
        destination: Some(plan.request.destination.clone()),
    };
    let policy = s.guard.policy();
    let policies = policy.current();
    let boundary = policy.boundary().clone();
    let mut permits = Vec::new();
    let mut denied = Vec::new();
    for class in plan.classes() {
        let resource = ResourceRef {
            collection: &plan.request.collection,
            class: class.as_str(),
            jurisdiction: boundary.as_str(),
            subject: None,
        };
        let d = policy.decide(&policies, &caller.prepared, Action::Export, &resource, &ctx);
        s.guard.metrics().decision(Action::Export, d.is_permit());
        match d {
            ClassDecision::Permit(ids) => permits.extend(ids),
            ClassDecision::Deny(reason) => denied.push((class, reason.to_string())),
        }
    }
    if !denied.is_empty() {
        let withheld: Vec<Withheld> = plan
            .columns()
            .into_iter()
            .filter_map(|c| {
                denied.iter().find(|(cl, _)| cl == &c.class).map(|(_, r)| Withheld {
                    field: c.field.to_string(),
                    class: c.class.to_string(),
                    reason: r.clone(),
                })
            })
            .collect();
        let reasons = denied.iter().map(|(c, r)| format!("{c}:{r}")).collect();
        let o = Outcome { decision: Decision::Deny, reasons, key_epoch: None, epsilon: None, summary: None };
        let receipt = s.guard.log(&event(&cname, &policies, caller, &plan, &ctx, &o)).await?;
        return Err(GuardError::Forbidden { withheld, receipt });
    }
    permits.sort();
    permits.dedup();
    if let Some(eps) = plan.epsilon() {
        let (dest, limit) = (plan.request.destination.clone(), gw.budget_limit);
        match gw.budget.charge(&dest, eps, limit) {
            Ok(_) => {}
            Err(EgressError::BudgetExhausted { spent, asked, limit, .. }) => {
                let reason = format!("epsilon-budget-exhausted: {spent} of {limit} spent, {asked} asked");
                let o = Outcome {
                    decision: Decision::Deny,
                    reasons: vec![reason.clone()],
                    key_epoch: None,
                    epsilon: None,
                    summary: None,
                };
                let receipt = s.guard.log(&event(&cname, &policies, caller, &plan, &ctx, &o)).await?;
                let withheld = vec![Withheld { field: "*".into(), class: "*".into(), reason }];
                return Err(GuardError::Forbidden { withheld, receipt });
            }
            Err(e) => return Err(bad(e)),
        }
    }
    let epoch = custody_egress::epoch_at(time::OffsetDateTime::now_utc().unix_timestamp(), gw.epoch_days);
    let pseudo = plan.pseudonymises().then(|| Pseudonymiser::new(&gw.key, &plan.request.destination, epoch));
    let path = gw.spool.join(format!("{}.{}", random_name(), plan.request.format.extension()));
    let (vault, schema2, plan2, path2) =
        (s.guard.vault().clone(), Arc::new(schema.clone()), plan.clone(), path.clone());
    let scanned = tokio::task::spawn_blocking(move || -> Result<Summary, GuardError> {
        let file = std::fs::File::create(&path2).map_err(|e| GuardError::Storage(format!("spool: {e}")))?;
        let (summary, _, _) =
            scan(&vault, &schema2, &plan2, &boundary, pseudo, BufWriter::with_capacity(1 << 16, file), |_| {})?;
        Ok(summary)
    })
    .await
    .map_err(|e| GuardError::Storage(e.to_string()));
    let summary = match scanned.and_then(|r| r) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let o = Outcome {
        decision: Decision::Permit,
        reasons: permits,
        key_epoch: plan.pseudonymises().then_some(epoch),
        epsilon: plan.epsilon(),
        summary: Some(&summary),
    };
    let logged = s.guard.log(&event(&cname, &policies, caller, &plan, &ctx, &o)).await;
    let opened = std::fs::File::open(&path);
    let _ = std::fs::remove_file(&path);
    let receipt = logged?;
    let file = opened.map_err(|e| GuardError::Storage(format!("spool: {e}")))?;
    tracing::info!(destination = %plan.request.destination, rows = summary.rows, bytes = summary.bytes, "export released");
    Ok(ReadyExport { file, summary, receipt })
}

fn random_name() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Scans `plan`'s collection a page at a time, opens only the fields the plan reads, and
/// writes the transformed output to `out`. Records of another jurisdiction than `boundary`
/// (which Cedar decided for) and records of erased subjects are skipped. `progress` gets the
/// number of records read so far after each page. Returns the summary, the writer and the
/// number of records skipped.
///
/// The work is pipelined over threads (see [`scan_pipelined`]), one opening thread per core;
/// the bytes written are exactly those of [`scan_sequential`].
///
/// The caller must have had Cedar permit every class of `plan.classes()`.
///
/// # Errors
/// Storage and integrity errors, writing errors, too many groups.
pub fn scan<W: Write>(
    vault: &Vault,
    schema: &Schema,
    plan: &Plan,
    boundary: &Jurisdiction,
    pseudo: Option<Pseudonymiser>,
    out: W,
    progress: impl FnMut(u64),
) -> Result<(Summary, W, u64), GuardError> {
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    scan_pipelined(vault, schema, plan, boundary, pseudo, out, workers, progress)
}

/// The single-threaded scan: one page, one record at a time, every field of a permitted
/// class opened. It is the reference the pipelined scan must match byte for byte, and the
/// baseline `custody bench egress` measures it against. Arguments and result as [`scan`].
///
/// # Errors
/// As [`scan`].
pub fn scan_sequential<W: Write>(
    vault: &Vault,
    schema: &Schema,
    plan: &Plan,
    boundary: &Jurisdiction,
    pseudo: Option<Pseudonymiser>,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<(Summary, W, u64), GuardError> {
    let (cname, _) =
        schema.collection(&plan.request.collection).map_err(|e| GuardError::UnknownCollection(e.to_string()))?;
    let classes = plan.classes();
    let mut exporter = Exporter::new(plan, pseudo, out).map_err(bad)?;
    let mut after = None;
    let (mut read, mut skipped) = (0u64, 0u64);
    loop {
        let page = vault.scan(cname, after.as_ref(), PAGE)?;
        let full = page.len() == PAGE;
        for (id, stored) in &page {
            read += 1;
            if &stored.jurisdiction != boundary {
                skipped += 1;
                continue;
            }
            let opened = match vault.open(schema, cname, id, stored, |c| classes.contains(c)) {
                Ok(o) => o,
                Err(VaultError::Erased(_)) => {
                    skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            exporter.push(stored.subject.as_str(), &opened.fields).map_err(bad)?;
        }
        progress(read);
        after = page.into_iter().last().map(|(id, _)| id);
        if !full {
            break;
        }
    }
    let (summary, out) = exporter.finish(&mut rand::rngs::OsRng).map_err(bad)?;
    Ok((summary, out, skipped))
}

/// An opening thread's place for one field the plan reads.
struct Slot<'f> {
    field: &'f FieldName,
    value: Value,
    /// Whether the record being formatted has this field (`value` may be a previous one's).
    set: bool,
}

/// Parses an opened field's JSON into `into`. A plain string (no escapes, no control
/// characters), what almost every sealed field holds, is copied into the string `into`
/// already holds, so a scan does not allocate and free a string per field; anything else goes
/// through `serde_json`, and both give the same value.
fn parse_into(json: &[u8], into: &mut Value) -> Result<(), serde_json::Error> {
    if let [b'"', inner @ .., b'"'] = json
        && !inner.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20)
        && let Ok(text) = std::str::from_utf8(inner)
    {
        match into {
            Value::String(s) => {
                s.clear();
                s.push_str(text);
            }
            other => *other = Value::String(text.to_string()),
        }
        return Ok(());
    }
    *into = serde_json::from_slice(json)?;
    Ok(())
}

/// One page's work, as it comes back from an opening thread.
struct Done {
    /// Records read from the vault in this page.
    read: u64,
    /// Records skipped (another jurisdiction, erased subject).
    skipped: u64,
    /// What to emit.
    out: PageOut,
}

/// A page's output: formatted rows (row exports: NDJSON lines or Parquet column values) or
/// opened records (aggregates, which the writer folds in order so that sums add up in the
/// sequential order).
enum PageOut {
    Rows(FormattedRows),
    Records(Vec<(SubjectId, BTreeMap<FieldName, Value>)>),
}

/// Pages a scan holds at once per opening thread (queued, being opened, or waiting to be
/// written in order): memory is bounded by `PAGES_PER_WORKER * workers + 1` pages whatever
/// the row count.
const PAGES_PER_WORKER: usize = 2;

/// [`scan`] over `workers` opening threads (at least one):
///
/// - a **reader** thread copies pages of stored records out of the vault as raw bytes
///   ([`Vault::scan_raw`]), in id order, numbering the pages and refilling the page buffers
///   the opening threads hand back; it may run only a bounded number of pages ahead of the
///   writer (it takes a token per page, and the writer hands one back per page written);
/// - **opening** threads each take a whole page: decode its records borrowed from the page
///   bytes ([`RecordView`]: no owned strings or maps), read the subjects' key states in one
///   key-store call, unwrap each subject's DEK once, decrypt only the fields the plan reads
///   into per-field slots, and transform and format the rows, as NDJSON lines or as Parquet
///   column values (or, for an aggregate, hand the opened records on);
/// - the calling thread **writes** pages strictly in page order through the exporter's
///   hashing writer (for Parquet, appending the pages' column values to row groups that are
///   cut at fixed row counts, so the file does not depend on the page split), so the bytes
///   and their SHA-256 are exactly [`scan_sequential`]'s, and reports progress. The first
///   error in page order ends the scan; the other threads see their channels close and stop.
///
/// # Errors
/// As [`scan`].
#[allow(clippy::too_many_arguments)]
pub fn scan_pipelined<W: Write>(
    vault: &Vault,
    schema: &Schema,
    plan: &Plan,
    boundary: &Jurisdiction,
    pseudo: Option<Pseudonymiser>,
    out: W,
    workers: usize,
    mut progress: impl FnMut(u64),
) -> Result<(Summary, W, u64), GuardError> {
    let (cname, _) =
        schema.collection(&plan.request.collection).map_err(|e| GuardError::UnknownCollection(e.to_string()))?;
    let workers = workers.max(1);
    let classes = plan.classes();
    let fields = plan.fields();
    let rows = matches!(plan.kind, PlanKind::Rows { .. });
    let formatter = RowFormatter::new(plan, pseudo.clone()).map_err(bad)?;
    let mut exporter = Exporter::new(plan, pseudo, out).map_err(bad)?;
    let in_flight = PAGES_PER_WORKER * workers + 1;

    // The plan's fields in a fixed order: each opening thread keeps one value slot per field
    // and reuses them record after record instead of building a map per record.
    let plan_fields: Vec<&FieldName> = fields.iter().collect();
    let open_page = |page: &RawPage| -> Result<Done, GuardError> {
        let corrupt = |id: &str| VaultError::Corrupt(format!("{cname}/{id}"));
        let mut views = Vec::with_capacity(page.len());
        for (id, bytes) in page.iter() {
            views.push((id, RecordView::decode(|| format!("{cname}/{id}"), bytes)?));
        }
        let mine = |r: &RecordView<'_>| r.jurisdiction == boundary.as_str();
        let subjects = views
            .iter()
            .filter(|(_, r)| mine(r))
            .map(|(id, r)| SubjectId::new(r.subject).map_err(|_| corrupt(id)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = vault.page_keys_of(subjects)?;
        let mut out = if rows {
            PageOut::Rows(formatter.batch(page.len()))
        } else {
            PageOut::Records(Vec::with_capacity(page.len()))
        };
        // A slot keeps its value (and a string's buffer) from record to record; `set` says
        // whether the current record has it.
        let mut slots: Vec<Slot<'_>> =
            plan_fields.iter().map(|&f| Slot { field: f, value: Value::Null, set: false }).collect();
        let mut skipped = 0u64;
        for (id, view) in &views {
            if !mine(view) {
                skipped += 1;
                continue;
            }
            slots.iter_mut().for_each(|s| s.set = false);
            let wanted = |f: &FieldName, c: &DataClass| fields.contains(f) && classes.contains(c);
            let opened = vault.open_view_in_page(&mut keys, schema, cname, id, view, wanted, |f, json| {
                if let Some(slot) = slots.iter_mut().find(|s| s.field == f) {
                    parse_into(json, &mut slot.value).map_err(|_| corrupt(id))?;
                    slot.set = true;
                }
                Ok(())
            });
            match opened {
                Ok(()) => {}
                Err(VaultError::Erased(_)) => {
                    skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let get = |f: &FieldName| slots.iter().find(|s| s.set && s.field == f).map(|s| &s.value);
            match &mut out {
                PageOut::Rows(lines) => formatter.format_by(view.subject, get, lines).map_err(bad)?,
                PageOut::Records(list) => {
                    let subject = SubjectId::new(view.subject).map_err(|_| corrupt(id))?;
                    let opened = slots
                        .iter_mut()
                        .filter(|s| s.set)
                        .map(|s| (s.field.clone(), std::mem::take(&mut s.value)))
                        .collect();
                    list.push((subject, opened));
                }
            }
        }
        Ok(Done { read: page.len() as u64, skipped, out })
    };

    type Page = (u64, RawPage);
    let (work_tx, work_rx) = mpsc::sync_channel::<Page>(workers);
    // Opening threads share the queue; each holds the lock only to take the next page.
    let work_rx = Mutex::new(work_rx);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (work_rx, stop) = (&work_rx, &stop);
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Result<Done, GuardError>)>(in_flight);
        let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
        // Opened pages go back to the reader to be refilled: a scan cycles through at most
        // `in_flight` page buffers, whatever the row count, and allocates nothing per page
        // once they have grown.
        let (spent_tx, spent_rx) = mpsc::sync_channel::<RawPage>(in_flight);
        for _ in 0..in_flight {
            let _ = token_tx.send(());
        }

        let reader_done = done_tx.clone();
        scope.spawn(move || {
            let mut after: Option<String> = None;
            for seq in 0u64.. {
                // A token per page in flight; none left, or the flag, means the writer stopped.
                if token_rx.recv().is_err() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut page = spent_rx.try_recv().unwrap_or_default();
                if let Err(e) = vault.scan_raw(cname, after.as_deref(), PAGE, &mut page) {
                    let _ = reader_done.send((seq, Err(e.into())));
                    return;
                }
                let full = page.len() == PAGE;
                after = page.last_id().map(str::to_string);
                if work_tx.send((seq, page)).is_err() || !full {
                    return;
                }
            }
        });
        let open_page = &open_page;
        for _ in 0..workers {
            let (done_tx, spent_tx) = (done_tx.clone(), spent_tx.clone());
            scope.spawn(move || {
                loop {
                    // The lock is held only to take the next page, never while opening it.
                    let next = work_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((seq, page)) = next else { return };
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let done = open_page(&page);
                    // A full return queue (the reader gone, or ahead) frees here instead.
                    let _ = spent_tx.try_send(page);
                    if done_tx.send((seq, done)).is_err() {
                        return;
                    }
                }
            });
        }
        drop((done_tx, spent_tx));

        // The writer: pages in order, whatever order the opening threads finish in.
        let mut pending: BTreeMap<u64, Result<Done, GuardError>> = BTreeMap::new();
        let (mut next, mut read, mut skipped) = (0u64, 0u64, 0u64);
        let written = (|| -> Result<(), GuardError> {
            for (seq, done) in &done_rx {
                pending.insert(seq, done);
                while let Some(done) = pending.remove(&next) {
                    let done = done?;
                    match &done.out {
                        PageOut::Rows(lines) => exporter.push_formatted(lines).map_err(bad)?,
                        PageOut::Records(list) => {
                            for (subject, fields) in list {
                                exporter.push(subject.as_str(), fields).map_err(bad)?;
                            }
                        }
                    }
                    read += done.read;
                    skipped += done.skipped;
                    progress(read);
                    next += 1;
                    let _ = token_tx.send(());
                }
            }
            if pending.is_empty() { Ok(()) } else { Err(GuardError::Storage("export scan lost a page".into())) }
        })();
        // The flag and the closed channels stop the reader and the opening threads.
        stop.store(true, Ordering::Relaxed);
        drop(done_rx);
        drop(token_tx);
        written?;
        let (summary, out) = exporter.finish(&mut rand::rngs::OsRng).map_err(bad)?;
        Ok((summary, out, skipped))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use custody_core::RecordId;
    use custody_crypto::FileKeyProvider;
    use custody_vault::{NewRecord, RecordStore, RedbStore, StoredValue};
    use serde_json::json;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<RedbStore>,
        vault: Vault,
        schema: Schema,
        profiles: Profiles,
    }

    /// `n` profiles, three per subject, every tenth in Germany; subject `s00002`'s key is
    /// destroyed without tombstoning its records, so the scan meets an erased subject.
    fn fixture(n: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let store = Arc::new(RedbStore::open(dir.path(), &dir.path().join("keys")).unwrap());
        let provider = Arc::new(FileKeyProvider::create(&dir.path().join("keys/kek")).unwrap());
        let vault = Vault::new(store.clone(), store.clone(), provider).unwrap();
        let schema = Schema::from_toml(crate::setup::SAMPLE_SCHEMA).unwrap();
        let profiles = Profiles::from_toml(crate::setup::SAMPLE_EGRESS, &schema).unwrap();
        let c = CollectionName::new("profiles").unwrap();
        let records: Vec<NewRecord> = (0..n)
            .map(|i| {
                let body = json!({
                    "email": format!("user{i}@mail.example"),
                    "phone": format!("+1-555-{i:07}"),
                    "birthdate": format!("{}-{:02}-{:02}", 1950 + i % 60, 1 + i % 12, 1 + i % 28),
                    "precise_location": format!("US-{}-{i}", ["CA", "NY", "TX"][(i % 3) as usize]),
                    "device_id": format!("dev-{i:012}"),
                    "handle": format!("user{i}"),
                    "watch_minutes": (i * 7919) % 10_000,
                });
                NewRecord {
                    id: RecordId::new(format!("u{i:06}")).unwrap(),
                    subject: SubjectId::new(format!("s{:05}", i / 3)).unwrap(),
                    jurisdiction: Jurisdiction::new(if i % 10 == 7 { "DE" } else { "US" }).unwrap(),
                    fields: schema.validate_fields(&c, body.as_object().unwrap(), false).unwrap(),
                }
            })
            .collect();
        vault.create_many(&schema, &c, &records).unwrap();
        assert!(vault.destroy_subject_key(&SubjectId::new("s00002").unwrap()).unwrap());
        Fixture { _dir: dir, store, vault, schema, profiles }
    }

    fn plan(f: &Fixture, request: Value) -> Plan {
        let req: ExportRequest = serde_json::from_value(request).unwrap();
        req.plan(f.profiles.get(&req.profile).unwrap(), &f.schema).unwrap()
    }

    type Scanned = Result<(Summary, Vec<u8>, u64, Vec<u64>), GuardError>;

    fn sequential(f: &Fixture, plan: &Plan) -> Scanned {
        let mut seen = Vec::new();
        let us = Jurisdiction::new("US").unwrap();
        let pseudo = Some(Pseudonymiser::new(&[5; 32], "global", 1));
        let (s, out, skipped) = scan_sequential(&f.vault, &f.schema, plan, &us, pseudo, Vec::new(), |n| seen.push(n))?;
        Ok((s, out, skipped, seen))
    }

    fn pipelined(f: &Fixture, plan: &Plan, workers: usize) -> Scanned {
        let mut seen = Vec::new();
        let us = Jurisdiction::new("US").unwrap();
        let pseudo = Some(Pseudonymiser::new(&[5; 32], "global", 1));
        let (s, out, skipped) =
            scan_pipelined(&f.vault, &f.schema, plan, &us, pseudo, Vec::new(), workers, |n| seen.push(n))?;
        Ok((s, out, skipped, seen))
    }

    #[test]
    fn the_pipelined_scan_writes_exactly_the_sequential_bytes() {
        // 2,048 records end on a full page (an empty last page); 2,500 do not.
        for n in [2048, 2500] {
            let f = fixture(n);
            let rows = plan(
                &f,
                json!({"collection": "profiles", "profile": "global-engagement", "destination": "global", "purpose": "t"}),
            );
            let filtered = plan(
                &f,
                json!({"collection": "profiles", "profile": "global-engagement", "destination": "global",
                       "purpose": "t", "filter": {"field": "precise_location", "equals": "US-NY"}}),
            );
            let aggregate = plan(
                &f,
                json!({"collection": "profiles", "profile": "global-metrics", "destination": "global", "purpose": "t",
                       "aggregate": {"group_by": ["birthdate"], "sums": [{"field": "watch_minutes", "min": 0, "max": 5000}], "k": 3}}),
            );
            let parquet = |p: &Plan| {
                let mut req = p.request.clone();
                req.format = custody_egress::OutputFormat::Parquet;
                req.plan(f.profiles.get(&req.profile).unwrap(), &f.schema).unwrap()
            };
            let (rows_pq, filtered_pq, aggregate_pq) = (parquet(&rows), parquet(&filtered), parquet(&aggregate));
            for p in [&rows, &filtered, &aggregate, &rows_pq, &filtered_pq, &aggregate_pq] {
                let want = sequential(&f, p).unwrap();
                assert!(want.0.rows > 0);
                // Every i ≡ 7 (mod 10) is German; u000006 and u000008 belong to the erased
                // subject (as does u000007, already skipped as German).
                assert_eq!(want.2, (n + 2) / 10 + 2, "skipped");
                for workers in [1, 2, 3] {
                    let got = pipelined(&f, p, workers).unwrap();
                    assert_eq!(got.0, want.0, "summary, {workers} workers, {n} records");
                    assert!(got.1 == want.1, "bytes, {workers} workers, {n} records");
                    assert_eq!((got.2, &got.3), (want.2, &want.3), "skipped and progress");
                }
            }
        }
    }

    proptest::proptest! {
        /// The string fast path parses exactly what `serde_json` parses, whatever the slot
        /// held before, and refuses what it refuses.
        #[test]
        fn parse_into_agrees_with_serde_json(
            text in "\\PC{0,24}",
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..24),
            before in proptest::prop_oneof![
                proptest::strategy::Just(Value::Null),
                proptest::strategy::Just(json!("a previous, longer value")),
                proptest::strategy::Just(json!(7)),
            ],
        ) {
            let quoted = [b"\"".as_slice(), &raw, b"\""].concat();
            for input in [serde_json::to_vec(&text).unwrap(), raw.clone(), quoted, b"12".to_vec(), b"[\"x\"]".to_vec()] {
                let mut slot = before.clone();
                let got = parse_into(&input, &mut slot);
                match serde_json::from_slice::<Value>(&input) {
                    Ok(want) => {
                        proptest::prop_assert!(got.is_ok());
                        proptest::prop_assert_eq!(slot, want);
                    }
                    Err(_) => proptest::prop_assert!(got.is_err()),
                }
            }
        }
    }

    #[test]
    fn fields_the_plan_drops_are_not_decrypted() {
        let f = fixture(10);
        let c = CollectionName::new("profiles").unwrap();
        let id = RecordId::new("u000001").unwrap();
        // `phone` is protected, a class the plan reads, but the profile drops it: break its
        // ciphertext. Opening it would fail authentication.
        let mut r = f.vault.load(&c, &id).unwrap();
        let Some(StoredValue::Sealed(b)) = r.fields.get_mut("phone") else { panic!("phone is sealed") };
        let last = b.len() - 1;
        b[last] ^= 1;
        f.store.put(&c, &id, &r, false, &[], &[]).unwrap();
        let p = plan(
            &f,
            json!({"collection": "profiles", "profile": "global-engagement", "destination": "global", "purpose": "t"}),
        );
        assert!(matches!(sequential(&f, &p), Err(GuardError::Integrity(_)) | Err(GuardError::Storage(_))));
        let (summary, out, _, _) = pipelined(&f, &p, 2).unwrap();
        assert_eq!(summary.rows, 7, "u000006 to u000008 are the erased subject's (u000007 is also German)");
        assert!(!String::from_utf8(out).unwrap().contains("phone"));
    }

    #[test]
    fn a_tampered_field_the_plan_reads_fails_the_pipelined_scan() {
        let f = fixture(3000);
        let c = CollectionName::new("profiles").unwrap();
        let id = RecordId::new("u002001").unwrap();
        let mut r = f.vault.load(&c, &id).unwrap();
        let Some(StoredValue::Sealed(b)) = r.fields.get_mut("email") else { panic!("email is sealed") };
        b[5] ^= 1;
        f.store.put(&c, &id, &r, false, &[], &[]).unwrap();
        let p = plan(
            &f,
            json!({"collection": "profiles", "profile": "global-engagement", "destination": "global", "purpose": "t"}),
        );
        for workers in [1, 2, 3] {
            assert!(pipelined(&f, &p, workers).is_err(), "{workers} workers");
        }
    }
}
