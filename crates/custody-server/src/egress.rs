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

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use custody_core::{Action, CollectionName, Decision, ExportEvent, Jurisdiction, LogEntry, Schema};
use custody_egress::{BudgetStore, EgressError, ExportRequest, Exporter, Plan, Profiles, Pseudonymiser, Summary};
use custody_policy::{ClassDecision, LoadedPolicies, RequestContext, ResourceRef};
use custody_vault::{Vault, VaultError};

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
    let path = gw.spool.join(format!("{}.ndjson", random_name()));
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

/// Scans `plan`'s collection a page at a time, opens only the classes the plan reads, and
/// writes the transformed output to `out`. Records of another jurisdiction than `boundary`
/// (which Cedar decided for) and records of erased subjects are skipped. `progress` gets the
/// number of records read so far after each page. Returns the summary, the writer and the
/// number of records skipped.
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
