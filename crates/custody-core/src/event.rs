//! The access event: one record of one decision, permit or deny.
//!
//! Events are what the audit sink (and later the transparency log) makes durable before any
//! data is released. They never carry protected values: records and subjects appear only as
//! keyed pseudonyms, so a published log reveals who accessed *something* about a subject
//! without revealing the subject to anyone who does not hold the pseudonym key or the id.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{CollectionName, DataClass, FieldName, PrincipalId};

/// An operation a principal asks for; each maps to a Cedar action of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read field values of records.
    Read,
    /// Create or update field values.
    Write,
    /// Look records up by a field's value.
    Search,
    /// Delete records.
    Delete,
    /// Export everything held and logged about one subject (subject access).
    Export,
    /// Erase one subject: destroy their key and tombstone their records.
    Erase,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 6] =
        [Action::Read, Action::Write, Action::Search, Action::Delete, Action::Export, Action::Erase];

    /// The Cedar action id and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Search => "search",
            Action::Delete => "delete",
            Action::Export => "export",
            Action::Erase => "erase",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The overall outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Every class the request touched was permitted.
    Permit,
    /// Some classes were permitted and others withheld.
    Partial,
    /// Nothing was permitted.
    Deny,
}

/// A keyed pseudonym (hex HMAC) standing in for a record id or subject in events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PseudonymId(pub String);

impl fmt::Display for PseudonymId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A field that was not released, with the class and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldOutcome {
    /// The withheld field.
    pub field: FieldName,
    /// Its data class.
    pub class: DataClass,
    /// `default-deny`, or `forbidden-by:<policy id>`.
    pub reason: String,
}

/// One access decision, as made durable before anything is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Document version, so verifiers can parse old entries.
    pub v: u32,
    /// Always `access`; other kinds (policy, principal, key events) arrive with the log.
    pub kind: String,
    /// When the decision was made (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// Who asked.
    pub principal: PrincipalId,
    /// The principal's kind (`engineer`, `workload`, `subject`, `monitor`).
    pub principal_kind: String,
    /// What was asked.
    pub action: Action,
    /// Which collection.
    pub collection: CollectionName,
    /// Pseudonyms of the records touched.
    pub records: Vec<PseudonymId>,
    /// Pseudonyms of the subjects those records are about.
    pub subjects: Vec<PseudonymId>,
    /// Fields released (read) or accepted (write).
    pub released: Vec<FieldName>,
    /// Fields withheld or refused, with class and reason.
    pub withheld: Vec<FieldOutcome>,
    /// The stated purpose, if any.
    pub purpose: Option<String>,
    /// The stated justification, if any.
    pub justification: Option<String>,
    /// The principal's location at decision time.
    pub location: Option<String>,
    /// SHA-256 (hex) of the policy set that decided.
    pub policy_set: String,
    /// The overall outcome.
    pub decision: Decision,
    /// The jurisdictions of the records touched (distinct), so a monitor can replay the
    /// decision under another policy set; absent in entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jurisdictions: Vec<String>,
    /// The approvals the request presented (approval ids, never data), for the same replay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
}

impl AccessEvent {
    /// The current document version.
    pub const VERSION: u32 = 1;
}

/// One entry of custody's log: an access decision, or a change that monitors need to judge
/// later decisions (the policy set in force, who the principals are, which keys exist).
///
/// Every variant serialises as a flat JSON document with `v` and `kind`, so a verifier can
/// dispatch on `kind` and reject a version it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogEntry {
    /// `kind: "access"`.
    Access(AccessEvent),
    /// `kind: "policy-set"`.
    PolicySet(PolicySetEvent),
    /// `kind: "principal"`.
    Principal(PrincipalEvent),
    /// `kind: "key"`.
    Key(KeyEvent),
    /// `kind: "review"`, `"attestation"` or `"artifact-revoked"`.
    Deploy(DeployEvent),
    /// `kind: "subject"`.
    Subject(SubjectEvent),
    /// `kind: "export"`. Last, so no older entry can be mistaken for one.
    Export(ExportEvent),
}

/// How one field crossed the boundary in an export: its class and the transform applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportField {
    /// The field (`_subject` for the subject's pseudonym).
    pub field: String,
    /// Its data class.
    pub class: String,
    /// `pass`, `pseudonymise`, `year`, `month`, `country`, `region`, `bucket:<width>` or
    /// `aggregate` (grouped by, or summed).
    pub transform: String,
}

/// One crossing of the boundary through the egress gateway, permitted or refused.
///
/// A permitted export's entry is made durable before any byte is served and carries the
/// SHA-256 of exactly the bytes served, so anyone holding the file can check it against the
/// log. A refused one records who asked for what, and releases nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportEvent {
    /// Document version.
    pub v: u32,
    /// Always `export`.
    pub kind: String,
    /// When it was decided (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// Who asked.
    pub principal: PrincipalId,
    /// The asker's kind.
    pub principal_kind: String,
    /// The asker's location at decision time.
    pub location: Option<String>,
    /// The stated purpose.
    pub purpose: String,
    /// The stated justification, if any.
    pub justification: Option<String>,
    /// Where the data goes (a destination name the policies know).
    pub destination: String,
    /// The export profile that said how each field may cross.
    pub profile: String,
    /// Which collection.
    pub collection: CollectionName,
    /// The request as asked (fields, filter, aggregation, format): never holds a value of an
    /// encrypted class, since filters apply to transformed values only.
    pub query: serde_json::Value,
    /// SHA-256 (hex) of the policy set that decided.
    pub policy_set: String,
    /// `permit` or `deny`.
    pub decision: Decision,
    /// Policies that permitted, or why it was refused (`default-deny`, `forbidden-by:<id>`,
    /// `epsilon-budget-exhausted`).
    pub reasons: Vec<String>,
    /// Each field that crossed and how.
    pub transforms: Vec<ExportField>,
    /// The pseudonym key epoch used for this destination, if anything was pseudonymised.
    pub key_epoch: Option<u64>,
    /// Differential-privacy epsilon charged to the destination's budget, if noise was added.
    pub epsilon: Option<f64>,
    /// Rows emitted (data rows, or groups for an aggregate).
    pub rows: u64,
    /// Groups suppressed for having fewer than `k` members.
    pub suppressed: u64,
    /// Length of the emitted file in bytes.
    pub bytes: u64,
    /// SHA-256 (hex) of exactly the bytes emitted; absent for a refusal.
    pub sha256: Option<String>,
}

impl ExportEvent {
    /// The current document version.
    pub const VERSION: u32 = 1;
}

/// A subject-rights request was decided: an export of, or the erasure of, one subject.
///
/// Logged durably before anything is released or destroyed, so an export or erasure cannot
/// happen unrecorded. The subject appears only as its pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectEvent {
    /// Document version.
    pub v: u32,
    /// Always `subject`.
    pub kind: String,
    /// When it was decided (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// `export` or `erase`.
    pub request: Action,
    /// Who asked: the subject themself, or an operator on their behalf.
    pub principal: PrincipalId,
    /// The asker's kind.
    pub principal_kind: String,
    /// The pseudonym of the subject concerned.
    pub subject: PseudonymId,
    /// Whether the request was permitted (`permit`) or refused (`deny`).
    pub decision: Decision,
    /// Policies that decided, or the deny reason (`default-deny`, `forbidden-by:<id>`).
    pub reasons: Vec<String>,
    /// The stated purpose, if any.
    pub purpose: Option<String>,
    /// The stated justification, if any (required of operators by the sample policies).
    pub justification: Option<String>,
    /// The asker's location at decision time.
    pub location: Option<String>,
    /// SHA-256 (hex) of the policy set that decided.
    pub policy_set: String,
}

impl SubjectEvent {
    /// The current document version.
    pub const VERSION: u32 = 1;
}

/// A policy set took effect: its hash and full text, so monitors can replay decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetEvent {
    /// Document version.
    pub v: u32,
    /// Always `policy-set`.
    pub kind: String,
    /// When it took effect (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// Why: `start` (loaded when the server started) or `reload`.
    pub cause: String,
    /// SHA-256 (hex) of the set, as access events cite it.
    pub policy_set: String,
    /// The policy ids in the set.
    pub policies: Vec<String>,
    /// The source files as `(name, text)`.
    pub files: Vec<(String, String)>,
}

/// A principal was added, changed (its attributes as they became) or revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalEvent {
    /// Document version.
    pub v: u32,
    /// Always `principal`.
    pub kind: String,
    /// When (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// `added`, `changed` or `revoked`.
    pub change: String,
    /// The principal.
    pub principal: PrincipalId,
    /// Its kind.
    pub principal_kind: String,
    /// Its location, employer, roles and tags (a subject principal's subject appears only as
    /// a pseudonym in `subject`).
    pub location: String,
    /// Its employer.
    pub employer: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Further attributes.
    pub tags: std::collections::BTreeMap<String, String>,
    /// For subject principals: the pseudonym of the subject they are.
    pub subject: Option<PseudonymId>,
}

/// A step of trusted deployment: a commit reviewed, an artifact attested (built from a
/// reviewed commit), or an artifact revoked. Reviews and attestations carry their signed
/// DSSE envelope, so a monitor can check the signatures and the chain itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    /// Document version.
    pub v: u32,
    /// `review`, `attestation` or `artifact-revoked`.
    pub kind: String,
    /// When (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// The source commit (full hash).
    pub commit: String,
    /// Artifacts as `(name, lowercase hex SHA-256)`; empty for a review.
    pub artifacts: Vec<(String, String)>,
    /// Who: the reviewer, the builder key id, or the operator who revoked.
    pub by: String,
    /// The DSSE envelope as JSON (reviews and attestations).
    pub envelope: Option<serde_json::Value>,
}

/// A key was created, rotated or destroyed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// Document version.
    pub v: u32,
    /// Always `key`.
    pub kind: String,
    /// When (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// `created`, `rotated` or `destroyed`.
    pub change: String,
    /// Which key: `kek`, `blind-index`, `pseudonym` or `subject-dek`.
    pub key: String,
    /// For subject keys: the subject's pseudonym.
    pub subject: Option<PseudonymId>,
    /// The key's version, where it has one.
    pub version: Option<u32>,
    /// Which key provider holds or wraps it (`file`, `pkcs11`).
    pub provider: String,
    /// For the log's signing key (`key` = `log`, `change` = `rotated`): the new checkpoint
    /// verifier key, `<origin>+<key id>+<base64 key>`, announced in an entry the old key signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier_key: Option<String>,
}

impl LogEntry {
    /// The entry's `kind`.
    pub fn kind(&self) -> &str {
        match self {
            LogEntry::Access(e) => &e.kind,
            LogEntry::PolicySet(e) => &e.kind,
            LogEntry::Principal(e) => &e.kind,
            LogEntry::Key(e) => &e.kind,
            LogEntry::Deploy(e) => &e.kind,
            LogEntry::Subject(e) => &e.kind,
            LogEntry::Export(e) => &e.kind,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn export() -> ExportEvent {
        ExportEvent {
            v: ExportEvent::VERSION,
            kind: "export".into(),
            time: time::OffsetDateTime::UNIX_EPOCH,
            principal: PrincipalId::new("ana").unwrap(),
            principal_kind: "engineer".into(),
            location: Some("US".into()),
            purpose: "metrics".into(),
            justification: None,
            destination: "global".into(),
            profile: "global-metrics".into(),
            collection: CollectionName::new("profiles").unwrap(),
            query: serde_json::json!({"fields": ["handle"]}),
            policy_set: "00".into(),
            decision: Decision::Permit,
            reasons: vec!["egress".into()],
            transforms: vec![ExportField { field: "handle".into(), class: "public".into(), transform: "pass".into() }],
            key_epoch: Some(3),
            epsilon: None,
            rows: 2,
            suppressed: 0,
            bytes: 10,
            sha256: Some("ab".into()),
        }
    }

    #[test]
    fn export_entries_parse_as_exports_and_older_kinds_are_unchanged() {
        let text = serde_json::to_string(&LogEntry::Export(export())).unwrap();
        let back: LogEntry = serde_json::from_str(&text).unwrap();
        assert_eq!(back.kind(), "export");
        assert!(matches!(back, LogEntry::Export(_)));
        let subject = r#"{"v":1,"kind":"subject","time":"2026-01-01T00:00:00Z","request":"export","principal":"p","principal_kind":"subject","subject":"aa","decision":"permit","reasons":[],"purpose":null,"justification":null,"location":"US","policy_set":"00"}"#;
        assert!(matches!(serde_json::from_str::<LogEntry>(subject).unwrap(), LogEntry::Subject(_)));
    }
}
