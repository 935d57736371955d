//! # custody-api
//!
//! The request and response bodies of custody's HTTP API, in a crate of their own so the
//! server and the Rust client share one definition (and `/openapi.json` describes exactly
//! these types) without the client depending on server code.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Longest accepted purpose, justification or approval, in bytes.
pub const MAX_CONTEXT_LEN: usize = 512;
/// Most ids in one batch-get.
pub const MAX_BATCH: usize = 100;
/// Most results one search returns.
pub const MAX_SEARCH_RESULTS: usize = 100;
/// Most records in one batch-create.
pub const MAX_BATCH_CREATE: usize = 1000;
/// Most values one search-any matches (each with up to [`MAX_SEARCH_RESULTS`] results).
pub const MAX_SEARCH_VALUES: usize = 16;

/// Body of a create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRecord {
    /// The record id; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The end user the record is about.
    #[serde(default)]
    pub subject: Option<String>,
    /// The jurisdiction the record belongs to; defaults to the boundary's.
    #[serde(default)]
    pub jurisdiction: Option<String>,
    /// Field values, checked against the collection's schema.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

/// Body of an update: the given fields replace their old values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    /// Field values, checked against the collection's schema.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

/// Body of a batch-get.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGet {
    /// Record ids, at most [`MAX_BATCH`].
    pub ids: Vec<String>,
}

/// Body of a batch-create: records created together, each decided, logged and receipted
/// on its own, stored in one transaction (all or none).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCreate {
    /// The records, at most [`MAX_BATCH_CREATE`].
    pub records: Vec<CreateRecord>,
}

/// A batch-create's answer: one write answer per record, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchWriteResponse {
    /// Each record's id, fields written and receipt.
    pub results: Vec<WriteResponse>,
}

/// Body of a search by blind index.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// A searchable field.
    pub field: String,
    /// The value to match exactly.
    #[schema(value_type = Object)]
    pub value: Value,
    /// Most results wanted (default and maximum [`MAX_SEARCH_RESULTS`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Body of a search by blind index for any of several values of one field: one decision,
/// one read and one logged access event for all of them, so a caller needing several lists
/// (a feed's followed creators) makes one round trip instead of one per value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchAny {
    /// A searchable field.
    pub field: String,
    /// The values to match exactly, at most [`MAX_SEARCH_VALUES`].
    #[schema(value_type = Vec<Object>)]
    pub values: Vec<Value>,
    /// Most results wanted per value (default and maximum [`MAX_SEARCH_RESULTS`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A field that was not released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Withheld {
    /// The field.
    pub field: String,
    /// Its data class.
    pub class: String,
    /// `default-deny`, or `forbidden-by:<policy id>`.
    pub reason: String,
}

/// Where the access event of a response sits in the audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    /// The event's index.
    pub index: u64,
    /// Sink-specific proof material.
    #[schema(value_type = Object)]
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// One record as released to the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordView {
    /// The record id.
    pub id: String,
    /// The subject it is about.
    pub subject: String,
    /// The jurisdiction it belongs to.
    pub jurisdiction: String,
    /// Released values.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// Fields not released, with class and reason.
    pub withheld: Vec<Withheld>,
}

/// A read's answer: the record and the receipt of its access event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReadResponse {
    /// The record.
    pub record: RecordView,
    /// The access event's receipt.
    pub receipt: Receipt,
}

/// A batch-get's or search's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListResponse {
    /// Records found, each with what was released and withheld.
    pub records: Vec<RecordView>,
    /// Requested ids that do not exist.
    #[serde(default)]
    pub missing: Vec<String>,
    /// The access event's receipt.
    pub receipt: Receipt,
}

/// A write's or delete's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WriteResponse {
    /// The record id.
    pub id: String,
    /// Fields written.
    pub written: Vec<String>,
    /// The access event's receipt.
    pub receipt: Receipt,
}

/// An RFC 9457 problem document, the body of every error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable problem type, `urn:custody:problem:<name>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What exactly went wrong with this request.
    pub detail: String,
    /// For denials: what was withheld and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<Withheld>,
    /// For denials: the receipt of the logged deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// Most records one export returns; a subject with more gets `truncated_records`.
pub const MAX_EXPORT_RECORDS: usize = 10_000;
/// Most log entries one export returns; past it, `truncated` is set on the log part.
pub const MAX_EXPORT_ENTRIES: usize = 10_000;

/// One record in an export, with the collection it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportedRecord {
    /// The collection.
    pub collection: String,
    /// The record, decrypted: released fields, and withheld ones with class and reason.
    pub record: RecordView,
}

/// A log entry about the subject, with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoggedEntry {
    /// The entry's index in the log.
    pub index: u64,
    /// The exact entry text (its leaf hash is what the proof proves).
    pub entry: String,
    /// The inclusion proof `{"index", "size", "proof"}` against [`ExportLog::checkpoint`],
    /// in the form `custody_verify::verify_inclusion` takes.
    #[schema(value_type = Object)]
    pub inclusion: Value,
}

/// The log part of an export: every entry naming the subject's pseudonym up to a signed
/// checkpoint, each with its proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportLog {
    /// The log's origin.
    pub origin: String,
    /// The log's verifier key (pin it out of band to trust the proofs).
    pub vkey: String,
    /// The signed checkpoint every proof is against.
    pub checkpoint: String,
    /// The checkpoint's tree size: entries `0..size` were scanned.
    pub size: u64,
    /// The entries about the subject, in log order.
    pub entries: Vec<LoggedEntry>,
    /// More than [`MAX_EXPORT_ENTRIES`] entries matched; the first ones are given.
    pub truncated: bool,
}

/// A subject-access export: what custody holds and logged about one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubjectExport {
    /// The subject.
    pub subject: String,
    /// The pseudonym the log knows the subject by.
    pub pseudonym: String,
    /// When the export was made (RFC 3339, UTC).
    pub generated: String,
    /// Whether the subject was erased (then `records` is empty).
    pub erased: bool,
    /// Every record about the subject.
    pub records: Vec<ExportedRecord>,
    /// More than [`MAX_EXPORT_RECORDS`] records; the first ones are given.
    pub truncated_records: bool,
    /// The log part; absent when the server records to another audit sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<ExportLog>,
    /// Receipt of the export's own log entry, made durable before anything was released.
    pub receipt: Receipt,
}

/// An erasure's answer: what was destroyed and the receipt of the erasure entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErasureResponse {
    /// The subject.
    pub subject: String,
    /// The pseudonym the log knows the subject by.
    pub pseudonym: String,
    /// The version of the DEK destroyed by this request; absent if there was no live key
    /// (the subject had no data, or was erased before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_key: Option<u32>,
    /// Records tombstoned by this request.
    pub tombstoned: u64,
    /// Receipt of the erasure entry, durable before the key was destroyed.
    pub receipt: Receipt,
    /// Receipt of the `key destroyed` entry, logged once the key was gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_receipt: Option<Receipt>,
    /// A signed checkpoint that includes the erasure entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The erasure entry's inclusion proof against `checkpoint`.
    #[schema(value_type = Object)]
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub inclusion: Value,
}

/// One key the log has signed checkpoints with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogKey {
    /// The verifier key, `<origin>+<key id>+<base64 key>`.
    pub vkey: String,
    /// The first entry index it signs for: 0 for the first key, the index after its
    /// announcement for a rotated-to key.
    pub from: u64,
}

/// `/log/keys`: every log signing key, and the handovers that chain each to the one before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogKeys {
    /// Oldest first; the last is current.
    pub keys: Vec<LogKey>,
    /// One per rotation, in order, in the form `custody_verify::trusted_keys` takes
    /// (`{"vkey", "entry", "handover", "proof"}`).
    #[schema(value_type = Vec<Object>)]
    pub handovers: Vec<Value>,
}
