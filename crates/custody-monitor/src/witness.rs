//! A witness ([c2sp.org/tlog-witness](https://c2sp.org/tlog-witness)): it cosigns a log's
//! checkpoint ([c2sp.org/tlog-cosignature](https://c2sp.org/tlog-cosignature)) only if the
//! log signed it and it is consistent with the last checkpoint the witness cosigned for that
//! log, so a log that shows two histories needs its witnesses to collude.
//!
//! `POST /add-checkpoint` takes
//!
//! ```text
//! old <size the client believes the witness has>
//! <consistency proof hash, base64, one per line>
//!
//! <signed checkpoint>
//! ```
//!
//! and answers `200` with the cosignature line(s); `404` for an unknown log, `403` if the log's
//! signature does not verify, `400` for a malformed request or an old size past the
//! checkpoint, `409` with `Content-Type: text/x.tlog.size` and the witness's size when `old`
//! is not it, `422` if the proof does not verify. The latest checkpoint per log is persisted
//! (fsync) before the cosignature is returned.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use custody_tlog::note::Ed25519Verifier;
use custody_tlog::{Checkpoint, CosignatureSigner, Hash, Note};
use tokio::sync::Mutex;

use crate::MonitorError;
use crate::state::write_atomic;

/// Media type of a `409` body: the witness's tree size.
pub const SIZE_MEDIA_TYPE: &str = "text/x.tlog.size";

/// Largest request accepted: a checkpoint with signatures and a 63-hash proof fit easily.
const MAX_REQUEST: usize = 64 * 1024;

/// A parsed add-checkpoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size the client believes the witness has.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// Parses a request body.
    ///
    /// # Errors
    ///
    /// A message naming what is malformed.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, String> {
        let text = std::str::from_utf8(body).map_err(|_| "request is not UTF-8".to_owned())?;
        let (head, checkpoint) = text.split_once("\n\n").ok_or("no blank line before the checkpoint")?;
        let mut lines = head.split('\n');
        let old = lines.next().and_then(|l| l.strip_prefix("old ")).ok_or("first line is not `old <size>`")?;
        if old.is_empty() || (old.len() > 1 && old.starts_with('0')) || !old.bytes().all(|b| b.is_ascii_digit()) {
            return Err("old size is not a decimal number".into());
        }
        let old_size: u64 = old.parse().map_err(|_| "old size is out of range".to_owned())?;
        let proof = lines
            .map(|l| Hash::from_base64(l).map_err(|e| format!("proof line: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > 63 {
            return Err("proof has more than 63 hashes".into());
        }
        Ok(AddCheckpoint { old_size, proof, checkpoint: checkpoint.to_owned() })
    }

    /// The request body.
    pub fn to_body(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }
}

/// A witness: its cosigning key, the logs it knows, and its state directory.
#[derive(Debug)]
pub struct Witness {
    signer: CosignatureSigner,
    logs: HashMap<String, Ed25519Verifier>,
    dir: PathBuf,
    latest: Mutex<HashMap<String, Checkpoint>>,
}

/// Why a checkpoint was not cosigned, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request does not parse.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The checkpoint's log is not known to this witness.
    #[error("unknown log `{0}`")]
    UnknownLog(String),
    /// The log's signature is missing or does not verify.
    #[error("checkpoint is not validly signed by the log: {0}")]
    BadSignature(String),
    /// The old size is past the checkpoint's size.
    #[error("old size {old} is past the checkpoint's size {size}")]
    OldPastNew {
        /// The old size given.
        old: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The client's idea of the witness's size is wrong.
    #[error("the witness has size {0}")]
    Conflict(u64),
    /// The proof does not verify.
    #[error("consistency proof does not verify")]
    Inconsistent,
    /// Storing the checkpoint failed.
    #[error("witness state: {0}")]
    Storage(String),
}

impl Refusal {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed(_) | Refusal::OldPastNew { .. } => StatusCode::BAD_REQUEST,
            Refusal::UnknownLog(_) => StatusCode::NOT_FOUND,
            Refusal::BadSignature(_) => StatusCode::FORBIDDEN,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::Inconsistent => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn state_file(dir: &std::path::Path, origin: &str) -> PathBuf {
    dir.join(format!("{}.checkpoint", hex::encode(origin.as_bytes())))
}

impl Witness {
    /// A witness cosigning with `signer` for the logs with vkeys `log_keys`, keeping its latest
    /// checkpoints in `dir` (created if needed, and read back on start).
    ///
    /// # Errors
    ///
    /// [`MonitorError::Key`] for a bad vkey; [`MonitorError::State`] or
    /// [`MonitorError::CorruptState`] for the state directory.
    pub fn new(signer: CosignatureSigner, log_keys: &[String], dir: PathBuf) -> Result<Witness, MonitorError> {
        use custody_tlog::NoteVerifier;
        std::fs::create_dir_all(&dir).map_err(MonitorError::state(&dir))?;
        let mut logs = HashMap::new();
        let mut latest = HashMap::new();
        for k in log_keys {
            let v = custody_verify::log_verifier(k).map_err(|e| MonitorError::Key(e.to_string()))?;
            let origin = v.name().to_owned();
            let path = state_file(&dir, &origin);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let cp = custody_verify::verify_checkpoint(&text, k)
                        .map_err(|e| MonitorError::CorruptState { path: path.clone(), detail: e.to_string() })?;
                    latest.insert(origin.clone(), cp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(MonitorError::State { path, source: e }),
            }
            logs.insert(origin, v);
        }
        Ok(Witness { signer, logs, dir, latest: Mutex::new(latest) })
    }

    /// The witness's cosignature vkey.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// Handles one add-checkpoint request: the cosignature line(s), or why not.
    ///
    /// # Errors
    ///
    /// A [`Refusal`].
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<String, Refusal> {
        let req = AddCheckpoint::parse(body).map_err(Refusal::Malformed)?;
        let note = Note::parse(req.checkpoint.as_bytes()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let unsigned = Checkpoint::parse(note.text()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let verifier = self.logs.get(&unsigned.origin).ok_or_else(|| Refusal::UnknownLog(unsigned.origin.clone()))?;
        let opened =
            Note::open(req.checkpoint.as_bytes(), &[verifier]).map_err(|e| Refusal::BadSignature(e.to_string()))?;
        let cp = Checkpoint::parse(&opened.text).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if req.old_size > cp.size {
            return Err(Refusal::OldPastNew { old: req.old_size, size: cp.size });
        }
        let mut latest = self.latest.lock().await;
        let known = latest.get(&cp.origin);
        let known_size = known.map_or(0, |k| k.size);
        if req.old_size != known_size {
            return Err(Refusal::Conflict(known_size));
        }
        if let Some(k) = known {
            let ok = if k.size == cp.size {
                req.proof.is_empty() && k.root_hash == cp.root_hash
            } else {
                custody_tlog::check_tree(&req.proof, cp.size, &cp.root_hash, k.size, &k.root_hash).is_ok()
            };
            if !ok {
                return Err(Refusal::Inconsistent);
            }
        } else if !req.proof.is_empty() {
            return Err(Refusal::Inconsistent);
        }
        write_atomic(&state_file(&self.dir, &cp.origin), req.checkpoint.as_bytes())
            .map_err(|e| Refusal::Storage(e.to_string()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp().unsigned_abs();
        let sig = self.signer.cosign(&opened.text, now).map_err(|e| Refusal::Malformed(e.to_string()))?;
        latest.insert(cp.origin.clone(), cp);
        Ok(format!("{}\n", sig.to_line()))
    }
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    match w.add_checkpoint(&body).await {
        Ok(lines) => lines.into_response(),
        Err(Refusal::Conflict(size)) => {
            (StatusCode::CONFLICT, [(header::CONTENT_TYPE, SIZE_MEDIA_TYPE)], format!("{size}\n")).into_response()
        }
        Err(r) => {
            tracing::info!(refusal = %r, "checkpoint not cosigned");
            (r.status(), format!("{r}\n")).into_response()
        }
    }
}

/// The witness's HTTP routes.
pub fn router(witness: Arc<Witness>) -> axum::Router {
    axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(witness)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_round_trips(old in 0u64..u64::MAX, n in 0usize..63, seed in any::<u8>()) {
            let proof: Vec<Hash> = (0..n).map(|i| custody_tlog::leaf_hash(&[seed, i as u8])).collect();
            let req = AddCheckpoint { old_size: old, proof, checkpoint: "o\n1\nAAAA\n\n— o x\n".into() };
            prop_assert_eq!(AddCheckpoint::parse(req.to_body().as_bytes()).unwrap(), req);
        }

        #[test]
        fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = AddCheckpoint::parse(&body);
        }
    }

    #[test]
    fn malformed_requests_are_named() {
        assert!(AddCheckpoint::parse(b"old 01\n\ncp").unwrap_err().contains("decimal"));
        assert!(AddCheckpoint::parse(b"new 1\n\ncp").unwrap_err().contains("old"));
        assert!(AddCheckpoint::parse(b"old 1\ncp").unwrap_err().contains("blank line"));
        assert!(AddCheckpoint::parse(b"old 1\n!!\n\ncp").unwrap_err().contains("proof line"));
    }
}
