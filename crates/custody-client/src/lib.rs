//! # custody-client
//!
//! A small async client for custody's HTTP API, used by the end-to-end tests and by clips.
//! It speaks the JSON types of [`custody_api`] and turns problem documents into
//! [`ClientError::Api`], so callers can match on the status and stable problem type.

use std::time::Duration;
use zeroize::Zeroizing;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use thiserror::Error;

pub use custody_api::{
    BatchCreate, BatchGet, BatchWriteResponse, CreateRecord, ErasureResponse, ExportLog, ExportedRecord, ListResponse,
    LoggedEntry, MAX_BATCH, MAX_BATCH_CREATE, MAX_SEARCH_VALUES, Problem, ReadResponse, Receipt, RecordView, Search,
    SearchAny, SubjectExport, UpdateRecord, Withheld, WriteResponse,
};

/// What went wrong talking to custody.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// custody answered with a problem document.
    #[error("custody answered {status}: {}", problem.detail)]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The problem document.
        problem: Box<Problem>,
    },
    /// A receipt did not verify against the log's key: the response must not be trusted.
    #[error("receipt does not verify: {0}")]
    Receipt(String),
    /// The request could not be sent or the answer not read.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer was not the expected JSON.
    #[error("unexpected answer ({status}): {body}")]
    Decode {
        /// The HTTP status.
        status: StatusCode,
        /// The first bytes of the body.
        body: String,
    },
}

impl ClientError {
    /// The HTTP status, when custody answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Transport(e) => e.status(),
            ClientError::Receipt(_) => None,
        }
    }

    /// The problem document, when custody sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Api { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// The stated reason for requests: purpose, justification and approvals.
#[derive(Debug, Clone, Default)]
pub struct Reason {
    /// Why the data is needed.
    pub purpose: Option<String>,
    /// A ticket or incident reference.
    pub justification: Option<String>,
    /// Approvals gathered.
    pub approvals: Vec<String>,
}

impl Reason {
    /// A purpose and a justification.
    pub fn new(purpose: impl Into<String>, justification: impl Into<String>) -> Self {
        Self { purpose: Some(purpose.into()), justification: Some(justification.into()), approvals: Vec::new() }
    }
}

/// A client bound to one custody server and one principal's token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
    reason: Reason,
}

/// The token is a bearer secret: it never appears in debug output (or the logs that print it).
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .field("reason", &self.reason)
            .finish()
    }
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8750`) authenticating with `token`.
    ///
    /// # Errors
    /// [`ClientError::Transport`] if the HTTP client cannot be built.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            token: Zeroizing::new(token.into()),
            reason: Reason::default(),
        })
    }

    /// The same client stating `reason` on every request.
    pub fn with_reason(&self, reason: Reason) -> Self {
        Self { reason, ..self.clone() }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path)).bearer_auth(self.token.as_str());
        if let Some(p) = &self.reason.purpose {
            req = req.header("custody-purpose", p);
        }
        if let Some(j) = &self.reason.justification {
            req = req.header("custody-justification", j);
        }
        if !self.reason.approvals.is_empty() {
            req = req.header("custody-approvals", self.reason.approvals.join(","));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| ClientError::Decode {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Err(ClientError::Api { status, problem: Box::new(problem) }),
            Err(_) => {
                Err(ClientError::Decode { status, body: String::from_utf8_lossy(&bytes).chars().take(200).collect() })
            }
        }
    }

    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.http.get(format!("{}{}", self.base, path)).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Decode { status, body: body.chars().take(200).collect() })
        }
    }

    /// The log's verifier key from `/log/key`. Pin it out of band in production: a key fetched
    /// from the server it verifies proves nothing about that server.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn log_key(&self) -> Result<String, ClientError> {
        Ok(self.text("/log/key").await?.trim_end().to_string())
    }

    /// Every log signing key that `pinned_vkey` (pinned out of band) reaches through the
    /// handovers served at `/log/keys`, oldest first: a checkpoint or receipt signed by any of
    /// them is the log's ([`custody_verify::trusted_keys`]).
    ///
    /// # Errors
    /// [`ClientError::Receipt`] if a handover does not verify; other [`ClientError`]s.
    pub async fn trusted_log_keys(&self, pinned_vkey: &str) -> Result<Vec<String>, ClientError> {
        let text = self.text("/log/keys").await?;
        let keys: custody_api::LogKeys = serde_json::from_str(&text)
            .map_err(|_| ClientError::Decode { status: StatusCode::OK, body: text.chars().take(200).collect() })?;
        let handovers: Vec<custody_verify::KeyHandover> = keys
            .handovers
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::Receipt(format!("a key handover is malformed: {e}")))?;
        custody_verify::trusted_keys(pinned_vkey, &handovers)
            .map_err(|e| ClientError::Receipt(format!("a log key handover does not verify: {e}")))
    }

    /// The latest signed checkpoint from `/log/checkpoint`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn checkpoint(&self) -> Result<String, ClientError> {
        self.text("/log/checkpoint").await
    }

    /// The inclusion proof of entry `index` in the tree of `size`, as JSON text.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<String, ClientError> {
        self.text(&format!("/log/proof/inclusion?index={index}&size={size}")).await
    }

    /// The consistency proof between tree sizes `from` and `to`, as JSON text.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn consistency_proof(&self, from: u64, to: u64) -> Result<String, ClientError> {
        self.text(&format!("/log/proof/consistency?from={from}&to={to}")).await
    }

    /// Creates a record about `subject`.
    ///
    /// # Errors
    /// [`ClientError`]; a denial is `Api` with status 403.
    pub async fn create(
        &self,
        collection: &str,
        id: Option<&str>,
        subject: &str,
        fields: Map<String, Value>,
    ) -> Result<WriteResponse, ClientError> {
        let body =
            CreateRecord { id: id.map(str::to_string), subject: Some(subject.to_string()), jurisdiction: None, fields };
        self.call(Method::POST, &format!("/v1/collections/{collection}/records"), Some(&body)).await
    }

    /// Reads one record.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get(&self, collection: &str, id: &str) -> Result<ReadResponse, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/collections/{collection}/records/{id}"), None).await
    }

    /// Updates fields of a record.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn update(
        &self,
        collection: &str,
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<WriteResponse, ClientError> {
        self.call(Method::PATCH, &format!("/v1/collections/{collection}/records/{id}"), Some(&UpdateRecord { fields }))
            .await
    }

    /// Deletes a record.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delete(&self, collection: &str, id: &str) -> Result<WriteResponse, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/collections/{collection}/records/{id}"), None).await
    }

    /// Reads up to 100 records.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn batch_get(&self, collection: &str, ids: &[&str]) -> Result<ListResponse, ClientError> {
        let body = BatchGet { ids: ids.iter().map(|s| s.to_string()).collect() };
        self.call(Method::POST, &format!("/v1/collections/{collection}/batch-get"), Some(&body)).await
    }

    /// Creates up to [`MAX_BATCH_CREATE`] records in one request: each decided,
    /// logged and receipted on its own, stored all or none.
    ///
    /// # Errors
    /// [`ClientError`]; a refusal of any record is `Api` with status 403 and nothing is written.
    pub async fn batch_create(
        &self,
        collection: &str,
        records: Vec<CreateRecord>,
    ) -> Result<BatchWriteResponse, ClientError> {
        let body = BatchCreate { records };
        self.call(Method::POST, &format!("/v1/collections/{collection}/batch-create"), Some(&body)).await
    }

    /// Finds records whose searchable `field` equals `value`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn search(&self, collection: &str, field: &str, value: Value) -> Result<ListResponse, ClientError> {
        let body = Search { field: field.to_string(), value, limit: None };
        self.call(Method::POST, &format!("/v1/collections/{collection}/search"), Some(&body)).await
    }

    /// Finds records whose searchable `field` equals any of `values` (at most
    /// [`MAX_SEARCH_VALUES`], up to 100 records each), in one request and one logged event.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn search_any(
        &self,
        collection: &str,
        field: &str,
        values: Vec<Value>,
    ) -> Result<ListResponse, ClientError> {
        let body = SearchAny { field: field.to_string(), values, limit: None };
        self.call(Method::POST, &format!("/v1/collections/{collection}/search-any"), Some(&body)).await
    }
}

impl Client {
    /// Exports what custody holds and logged about `subject` (as the subject, or as an
    /// operator stating a justification).
    ///
    /// # Errors
    /// [`ClientError`]; a refusal is `Api` with status 403.
    pub async fn export_subject(&self, subject: &str) -> Result<SubjectExport, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/subjects/{subject}/export"), None).await
    }

    /// Erases `subject`: their key is destroyed and their records tombstoned.
    ///
    /// # Errors
    /// [`ClientError`]; a refusal is `Api` with status 403.
    pub async fn erase_subject(&self, subject: &str) -> Result<ErasureResponse, ClientError> {
        self.call::<(), _>(Method::POST, &format!("/v1/subjects/{subject}/erase"), None).await
    }
}

/// What an export answered besides its bytes.
#[derive(Debug, Clone)]
pub struct ExportOutcome {
    /// SHA-256 (hex) of the bytes received, checked against the header and the logged entry.
    pub sha256: String,
    /// Rows (or released groups).
    pub rows: u64,
    /// Groups suppressed below `k`.
    pub suppressed: u64,
    /// Bytes received.
    pub bytes: u64,
    /// The receipt of the `export` log entry (its `detail.entry` is the entry text).
    pub receipt: Receipt,
}

impl Client {
    /// Exports data through the egress gateway: `request` is an export request (collection,
    /// profile, destination, purpose, ...). The body is handed to `sink` chunk by chunk as it
    /// arrives (with the running byte count to `progress`), hashed, and checked against the
    /// SHA-256 in the headers and in the logged entry of the receipt.
    ///
    /// # Errors
    /// [`ClientError`]; a refusal is `Api` with status 403, a digest that does not match is
    /// [`ClientError::Receipt`].
    pub async fn export<B: Serialize>(
        &self,
        request: &B,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
        mut progress: impl FnMut(u64),
    ) -> Result<ExportOutcome, ClientError> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut req = self
            .http
            .post(format!("{}/v1/egress/exports", self.base))
            .bearer_auth(self.token.as_str())
            .timeout(Duration::from_secs(24 * 3600))
            .json(request);
        if let Some(j) = &self.reason.justification {
            req = req.header("custody-justification", j);
        }
        if !self.reason.approvals.is_empty() {
            req = req.header("custody-approvals", self.reason.approvals.join(","));
        }
        let mut resp = req.send().await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await?;
            return Err(match serde_json::from_slice::<Problem>(&bytes) {
                Ok(problem) => ClientError::Api { status, problem: Box::new(problem) },
                Err(_) => {
                    ClientError::Decode { status, body: String::from_utf8_lossy(&bytes).chars().take(200).collect() }
                }
            });
        }
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let missing = |name: &str| ClientError::Decode { status, body: format!("the answer has no `{name}` header") };
        let want = header("custody-export-sha256").ok_or_else(|| missing("custody-export-sha256"))?;
        let rows = header("custody-export-rows").and_then(|r| r.parse().ok()).unwrap_or(0);
        let suppressed = header("custody-export-suppressed").and_then(|r| r.parse().ok()).unwrap_or(0);
        let receipt = header("custody-receipt").ok_or_else(|| missing("custody-receipt"))?;
        let receipt: Receipt = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(receipt)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ClientError::Receipt("the export receipt header does not decode".into()))?;
        let mut hasher = sha2::Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            sink(&chunk).map_err(|e| ClientError::Receipt(format!("writing the export: {e}")))?;
            progress(bytes);
        }
        let got = hex::encode(hasher.finalize());
        let logged = receipt
            .detail
            .get("entry")
            .and_then(Value::as_str)
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .and_then(|e| e.get("sha256").and_then(Value::as_str).map(str::to_string));
        if got != want || logged.as_deref() != Some(got.as_str()) {
            return Err(ClientError::Receipt(format!(
                "the export's SHA-256 is {got}; the header says {want} and the log entry {}",
                logged.as_deref().unwrap_or("nothing")
            )));
        }
        Ok(ExportOutcome { sha256: got, rows, suppressed, bytes, receipt })
    }
}

/// Checks a response's receipt: the log key `vkey` signed the batch, the entry is in it, and
/// the entry is exactly the logged text carried beside it. Returns the logged entry (the
/// access event, which never holds protected values) and the verified log receipt.
///
/// # Errors
/// [`ClientError::Receipt`] naming what failed.
pub fn verify_receipt(receipt: &Receipt, vkey: &str) -> Result<(String, custody_tlog::Receipt), ClientError> {
    let bad = |m: &str| ClientError::Receipt(m.to_string());
    let entry = receipt.detail.get("entry").and_then(Value::as_str).ok_or_else(|| bad("no logged entry"))?;
    let log = receipt.detail.get("log").ok_or_else(|| bad("no log receipt"))?;
    let verified = custody_verify::verify_receipt(&log.to_string(), vkey, entry.as_bytes())
        .map_err(|e| ClientError::Receipt(e.to_string()))?;
    if verified.index != receipt.index {
        return Err(bad("index differs from the log receipt's"));
    }
    Ok((entry.to_string(), verified))
}
