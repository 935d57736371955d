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
