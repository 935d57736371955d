//! Rules over what the log records, from a TOML rule file:
//!
//! ```toml
//! jurisdiction = "EU"               # the boundary the log's custody instance serves
//! protected_classes = ["protected"] # default
//! schema = "schema.toml"            # custody's schema, to know each released field's class
//!
//! [outside_jurisdiction]            # protected data released to a principal located outside
//! [missing_justification]           # protected data released without a justification
//! [bulk_read]                       # more than N records with protected data to one principal
//! max_records = 100
//! window_secs = 3600
//! exempt = ["svc:clips"]          # optional: workloads whose job is bulk processing
//! [deny_rate]                       # more than N denials within the window
//! max_denials = 50
//! window_secs = 60
//! [policy_replay]                   # on a policy-set change, replay recent denials under it
//! lookback = 1000
//! ```
//!
//! A rule is on when its table is present. Windows are measured in the entries' own times, so
//! an audit of old entries gives the same alerts as following them live.
//!
//! Policy replay rebuilds each denied request from the log: the principal's attributes from
//! its latest `principal` entry, location, purpose, justification and approvals from the
//! access entry, and each withheld class as a `Custody::Data` resource of each jurisdiction the
//! entry names, then decides it with Cedar under the new set. Entries written before custody
//! recorded jurisdictions and approvals are replayed as of the boundary's jurisdiction with no
//! approvals.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use custody_core::{AccessEvent, Decision, LogEntry, PolicySetEvent, PrincipalEvent};
use custody_policy::{PolicyEngine, RequestContext, ResourceRef};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::MonitorError;
use crate::alert::{Alert, Severity};

/// A rule table with no settings; present means on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct On {}

/// The bulk-exfiltration rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRead {
    /// Most records with protected data one principal may receive within the window.
    pub max_records: u64,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Principals whose published job is processing protected data at scale (an app's backend
    /// workload), so counting their reads would only drown the alerts that matter.
    #[serde(default)]
    pub exempt: Vec<String>,
}

/// The denial-rate rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRate {
    /// Most denials allowed within the window.
    pub max_denials: u64,
    /// The window, in seconds.
    pub window_secs: u64,
}

/// The policy-replay rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyReplay {
    /// How many of the most recent access entries to replay.
    #[serde(default = "default_lookback")]
    pub lookback: usize,
}

fn default_lookback() -> usize {
    1000
}

fn default_protected() -> Vec<String> {
    vec!["protected".into()]
}

/// A rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The boundary's jurisdiction.
    pub jurisdiction: String,
    /// Data classes that count as protected.
    #[serde(default = "default_protected")]
    pub protected_classes: Vec<String>,
    /// custody's `schema.toml`, relative to the rule file.
    pub schema: Option<PathBuf>,
    /// Protected data released to a principal located outside the jurisdiction.
    pub outside_jurisdiction: Option<On>,
    /// Protected data released without a justification.
    pub missing_justification: Option<On>,
    /// Bulk reads of protected data by one principal.
    pub bulk_read: Option<BulkRead>,
    /// Denials above a rate.
    pub deny_rate: Option<DenyRate>,
    /// Replay of recent denials under each new policy set.
    pub policy_replay: Option<PolicyReplay>,
}

/// Field classes by `(collection, field)`.
pub type FieldClasses = HashMap<(String, String), String>;

/// Reads custody's `schema.toml` into a field-to-class map.
///
/// # Errors
///
/// [`MonitorError::Rules`] if unreadable or invalid.
pub fn field_classes(path: &Path) -> Result<FieldClasses, MonitorError> {
    let err = |detail: String| MonitorError::Rules { path: path.to_owned(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let schema = custody_core::Schema::from_toml(&text).map_err(|e| err(e.to_string()))?;
    let mut out = HashMap::new();
    for (c, coll) in &schema.collections {
        for (f, spec) in &coll.fields {
            out.insert((c.as_str().to_owned(), f.as_str().to_owned()), spec.class.as_str().to_owned());
        }
    }
    Ok(out)
}

impl RuleFile {
    /// Loads a rule file and the schema it names.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Rules`] naming the problem.
    pub fn load(path: &Path) -> Result<(RuleFile, FieldClasses), MonitorError> {
        let err = |detail: String| MonitorError::Rules { path: path.to_owned(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let rules: RuleFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        rules.jurisdiction.parse::<custody_core::Jurisdiction>().map_err(|e| err(format!("jurisdiction: {e}")))?;
        let classes = match &rules.schema {
            Some(s) => field_classes(&path.parent().unwrap_or(Path::new(".")).join(s))?,
            None => HashMap::new(),
        };
        Ok((rules, classes))
    }
}

/// Applies a [`RuleFile`] to entries in log order.
#[derive(Debug)]
pub struct Evaluator {
    rules: RuleFile,
    classes: FieldClasses,
    bulk: HashMap<String, VecDeque<(OffsetDateTime, u64)>>,
    bulk_alerted: HashMap<String, OffsetDateTime>,
    denials: VecDeque<OffsetDateTime>,
    deny_alerted: Option<OffsetDateTime>,
    recent: VecDeque<(u64, AccessEvent)>,
    principals: HashMap<String, PrincipalEvent>,
    policy_set: Option<String>,
}

/// One decision a policy replay flips from deny to permit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Flip {
    /// The access entry's index.
    pub index: u64,
    /// Who asked.
    pub principal: String,
    /// What was asked.
    pub action: String,
    /// The collection.
    pub collection: String,
    /// The withheld classes the new set permits.
    pub classes: Vec<String>,
}

impl Evaluator {
    /// An evaluator with empty windows.
    pub fn new(rules: RuleFile, classes: FieldClasses) -> Evaluator {
        Evaluator {
            rules,
            classes,
            bulk: HashMap::new(),
            bulk_alerted: HashMap::new(),
            denials: VecDeque::new(),
            deny_alerted: None,
            recent: VecDeque::new(),
            principals: HashMap::new(),
            policy_set: None,
        }
    }

    /// The rules.
    pub fn rules(&self) -> &RuleFile {
        &self.rules
    }

    /// Whether an access released a field of a protected class.
    pub fn protected_released(&self, e: &AccessEvent) -> usize {
        e.released
            .iter()
            .filter(|f| {
                self.classes
                    .get(&(e.collection.as_str().to_owned(), f.as_str().to_owned()))
                    .is_some_and(|c| self.rules.protected_classes.contains(c))
            })
            .count()
    }

    /// Judges entry `index`; returns the alerts it raises.
    pub fn observe(&mut self, index: u64, entry: &[u8]) -> Vec<Alert> {
        match serde_json::from_slice::<LogEntry>(entry) {
            Ok(LogEntry::Access(e)) => self.access(index, e),
            Ok(LogEntry::PolicySet(p)) => self.policy_set(index, p),
            Ok(LogEntry::Principal(p)) => {
                self.principals.insert(p.principal.as_str().to_owned(), p);
                Vec::new()
            }
            // Keys, deployment steps and subject requests raise no rule alert (yet); they are
            // verified against the tree like every entry.
            Ok(LogEntry::Key(_) | LogEntry::Deploy(_) | LogEntry::Subject(_) | LogEntry::Export(_)) => Vec::new(),
            Err(e) => vec![
                Alert::new(
                    Severity::Warning,
                    "unknown-entry",
                    format!("entry {index} is not a custody log entry: {e}"),
                )
                .at_index(index),
            ],
        }
    }

    fn access(&mut self, index: u64, e: AccessEvent) -> Vec<Alert> {
        let mut out = Vec::new();
        let protected = self.protected_released(&e);
        let who = e.principal.as_str().to_owned();
        if protected > 0 {
            let location = e.location.clone().unwrap_or_default();
            if self.rules.outside_jurisdiction.is_some() && location != self.rules.jurisdiction {
                out.push(
                    Alert::new(
                        Severity::Warning,
                        "outside-jurisdiction",
                        format!(
                            "principal `{who}` located in `{}` received {protected} protected field(s) of `{}`; the jurisdiction is `{}`",
                            if location.is_empty() { "unknown" } else { &location },
                            e.collection,
                            self.rules.jurisdiction
                        ),
                    )
                    .at_index(index)
                    .at_time(e.time)
                    .with_details(serde_json::json!({ "principal": who, "location": location })),
                );
            }
            let justified = e.justification.as_deref().is_some_and(|j| !j.trim().is_empty());
            if self.rules.missing_justification.is_some() && !justified {
                out.push(
                    Alert::new(
                        Severity::Warning,
                        "missing-justification",
                        format!(
                            "principal `{who}` received protected fields of `{}` without a justification",
                            e.collection
                        ),
                    )
                    .at_index(index)
                    .at_time(e.time)
                    .with_details(serde_json::json!({ "principal": who })),
                );
            }
            if let Some(b) = &self.rules.bulk_read
                && !b.exempt.contains(&who)
            {
                let window = time::Duration::seconds(i64::try_from(b.window_secs).unwrap_or(i64::MAX));
                let q = self.bulk.entry(who.clone()).or_default();
                q.push_back((e.time, e.records.len().max(1) as u64));
                while q.front().is_some_and(|(t, _)| *t + window <= e.time) {
                    q.pop_front();
                }
                let total: u64 = q.iter().map(|(_, n)| n).sum();
                let quiet = self.bulk_alerted.get(&who).is_some_and(|t| *t + window > e.time);
                if total > b.max_records && !quiet {
                    self.bulk_alerted.insert(who.clone(), e.time);
                    out.push(
                        Alert::new(
                            Severity::Warning,
                            "bulk-read",
                            format!(
                                "principal `{who}` received protected data from {total} records within {}s (limit {})",
                                b.window_secs, b.max_records
                            ),
                        )
                        .at_index(index)
                        .at_time(e.time)
                        .with_details(serde_json::json!({ "principal": who, "records": total })),
                    );
                }
            }
        }
        if e.decision == Decision::Deny
            && let Some(d) = &self.rules.deny_rate
        {
            let window = time::Duration::seconds(i64::try_from(d.window_secs).unwrap_or(i64::MAX));
            self.denials.push_back(e.time);
            while self.denials.front().is_some_and(|t| *t + window <= e.time) {
                self.denials.pop_front();
            }
            let quiet = self.deny_alerted.is_some_and(|t| t + window > e.time);
            if self.denials.len() as u64 > d.max_denials && !quiet {
                self.deny_alerted = Some(e.time);
                out.push(
                    Alert::new(
                        Severity::Warning,
                        "deny-rate",
                        format!("{} denials within {}s (limit {})", self.denials.len(), d.window_secs, d.max_denials),
                    )
                    .at_index(index)
                    .at_time(e.time)
                    .with_details(serde_json::json!({ "denials": self.denials.len() })),
                );
            }
        }
        if let Some(r) = &self.rules.policy_replay {
            self.recent.push_back((index, e));
            while self.recent.len() > r.lookback {
                self.recent.pop_front();
            }
        }
        out
    }

    fn policy_set(&mut self, index: u64, p: PolicySetEvent) -> Vec<Alert> {
        let previous = self.policy_set.replace(p.policy_set.clone());
        if self.rules.policy_replay.is_none() || previous.as_deref() == Some(p.policy_set.as_str()) {
            return Vec::new();
        }
        match self.replay(&p) {
            Ok((flips, skipped)) if flips.is_empty() => {
                if skipped > 0 {
                    tracing::info!(skipped, "policy replay: some denials could not be rebuilt");
                }
                Vec::new()
            }
            Ok((flips, skipped)) => {
                let indexes: Vec<u64> = flips.iter().map(|f| f.index).collect();
                vec![
                    Alert::new(
                        Severity::Info,
                        "policy-replay",
                        format!(
                            "policy set {} would permit {} recent denial(s): entries {indexes:?}",
                            short(&p.policy_set),
                            flips.len()
                        ),
                    )
                    .at_index(index)
                    .at_time(p.time)
                    .with_details(serde_json::json!({
                        "policy_set": p.policy_set,
                        "flips": flips,
                        "not_replayable": skipped,
                    })),
                ]
            }
            Err(detail) => vec![
                Alert::new(
                    Severity::Warning,
                    "policy-replay-failed",
                    format!("policy set {} from the log cannot be loaded: {detail}", short(&p.policy_set)),
                )
                .at_index(index)
                .at_time(p.time),
            ],
        }
    }

    /// Replays the recent denials under `p`: the flips, and how many could not be rebuilt.
    ///
    /// # Errors
    ///
    /// A message if the set does not load under custody's Cedar schema.
    pub fn replay(&self, p: &PolicySetEvent) -> Result<(Vec<Flip>, usize), String> {
        let boundary: custody_core::Jurisdiction = self.rules.jurisdiction.parse().map_err(|e| format!("{e}"))?;
        let engine = PolicyEngine::from_sources(boundary, p.files.clone()).map_err(|e| e.to_string())?;
        let loaded = engine.current();
        let mut flips = Vec::new();
        let mut skipped = 0;
        for (index, e) in &self.recent {
            if e.decision == Decision::Permit || e.withheld.is_empty() {
                continue;
            }
            let Some(prepared) = self.principals.get(e.principal.as_str()).and_then(|pe| {
                let record = principal_record(pe, e.location.as_deref())?;
                engine.prepare_principal(&record).ok()
            }) else {
                skipped += 1;
                continue;
            };
            let ctx = RequestContext {
                purpose: e.purpose.clone(),
                justification: e.justification.clone(),
                approvals: e.approvals.clone(),
                destination: None,
            };
            let subject = match e.subjects.as_slice() {
                [one] => Some(one.0.as_str()),
                _ => None,
            };
            let mut classes: Vec<String> = e.withheld.iter().map(|w| w.class.as_str().to_owned()).collect();
            classes.sort();
            classes.dedup();
            // Entries written before jurisdictions were recorded: the boundary's.
            let jurisdictions: Vec<&str> = if e.jurisdictions.is_empty() {
                vec![self.rules.jurisdiction.as_str()]
            } else {
                e.jurisdictions.iter().map(String::as_str).collect()
            };
            let permitted: Vec<String> = classes
                .into_iter()
                .filter(|class| {
                    jurisdictions.iter().any(|jurisdiction| {
                        let resource = ResourceRef { collection: e.collection.as_str(), class, jurisdiction, subject };
                        engine.decide(&loaded, &prepared, e.action, &resource, &ctx).is_permit()
                    })
                })
                .collect();
            if !permitted.is_empty() {
                flips.push(Flip {
                    index: *index,
                    principal: e.principal.as_str().to_owned(),
                    action: e.action.as_str().to_owned(),
                    collection: e.collection.as_str().to_owned(),
                    classes: permitted,
                });
            }
        }
        Ok((flips, skipped))
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The principal as Cedar saw it, rebuilt from its `principal` entry; `location` (from the
/// access entry) overrides the registered one.
fn principal_record(p: &PrincipalEvent, location: Option<&str>) -> Option<custody_core::PrincipalRecord> {
    let kind: custody_core::PrincipalKind = p.principal_kind.parse().ok()?;
    let location = location.unwrap_or(&p.location).parse().ok()?;
    let subject = match &p.subject {
        Some(s) => Some(custody_core::SubjectId::new(s.0.clone()).ok()?),
        None => None,
    };
    Some(custody_core::PrincipalRecord {
        id: p.principal.clone(),
        kind,
        attrs: custody_core::PrincipalAttrs {
            location,
            employer: p.employer.clone(),
            roles: p.roles.clone(),
            subject,
            tags: p.tags.clone(),
        },
        token_sha256: [0; 32],
        revoked: p.change == "revoked",
        version: 0,
        expires_at: None,
    })
}
