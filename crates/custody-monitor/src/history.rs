//! A data subject's view: every access to their data in the verified log, each with an
//! inclusion proof checked against the verified checkpoint.
//!
//! Events name subjects only by keyed pseudonym (custody's `custody/pseudonym/v1`:
//! HMAC-SHA-256 over length-prefixed parts, first 16 bytes in hex), so the subject needs the
//! pseudonym key from custody, or the pseudonym itself.

use custody_core::{AccessEvent, LogEntry};
use custody_tlog::{check_record, leaf_hash};
use custody_verify::InclusionProof;
use hmac::{Hmac, Mac};
use serde::Serialize;

use crate::MonitorError;
use crate::source::HttpLog;
use crate::state::{StateDir, Verified};

/// The pseudonym custody gives `subject` under the 32-byte pseudonym key.
pub fn subject_pseudonym(key: &[u8; 32], subject: &str) -> String {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else { return String::new() };
    for part in [b"custody/pseudonym/v1".as_slice(), b"subject", subject.as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes().get(..16).unwrap_or_default())
}

/// One access to the subject's data.
#[derive(Debug, Clone, Serialize)]
pub struct Access {
    /// The entry's index.
    pub index: u64,
    /// The access event.
    pub event: AccessEvent,
    /// Its inclusion proof in the verified tree (checked).
    pub proof: InclusionProof,
}

/// Every access to the subject with pseudonym `pseudonym` in the verified log, with inclusion
/// proofs from `log` checked against `verified`.
///
/// # Errors
///
/// State and fetch errors; [`MonitorError::ProofFailed`] if the log's proof does not verify.
pub async fn history(
    state: &StateDir,
    log: &HttpLog,
    verified: &Verified,
    pseudonym: &str,
) -> Result<Vec<Access>, MonitorError> {
    let cp = &verified.checkpoint;
    let mut out = Vec::new();
    for stored in state.entries(cp.size)? {
        let Ok(LogEntry::Access(event)) = serde_json::from_str::<LogEntry>(&stored.entry) else { continue };
        if !event.subjects.iter().any(|s| s.0 == pseudonym) {
            continue;
        }
        let proof = log.inclusion(stored.index, cp.size).await?;
        let ok = proof.index == stored.index
            && proof.size == cp.size
            && check_record(&proof.proof, cp.size, &cp.root_hash, stored.index, &leaf_hash(stored.entry.as_bytes()))
                .is_ok();
        if !ok {
            return Err(MonitorError::ProofFailed { index: stored.index, size: cp.size });
        }
        out.push(Access { index: stored.index, event, proof });
    }
    Ok(out)
}
