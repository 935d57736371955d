//! # custody-verify
//!
//! Offline checks of what a custody log hands out, for auditors, data subjects and monitors:
//! no server code, no network, only the log's verifier key (vkey) and the texts it published.
//!
//! - [`verify_checkpoint`]: a signed [checkpoint](https://c2sp.org/tlog-checkpoint) is signed
//!   by the log key.
//! - [`verify_inclusion`]: an entry is in the log as of a signed checkpoint, by an
//!   [RFC 6962 §2.1.1](https://www.rfc-editor.org/rfc/rfc6962.html#section-2.1.1) audit path.
//! - [`verify_consistency`]: a later signed checkpoint extends an earlier one (the log only
//!   appended), by an RFC 6962 §2.1.2 consistency proof.
//! - [`verify_receipt`]: a receipt returned with an access event is signed by the log and
//!   covers exactly that event; [`verify_receipt_in_log`] also ties it to a checkpoint.
//!
//! - [`verify_key_handover`] and [`trusted_keys`]: the log rotated its signing key; the new
//!   key was announced in an entry that a checkpoint signed by the old key includes.
//!
//! Proofs come as JSON: an inclusion proof is `{"index": I, "size": N, "proof": [base64, ...]}`,
//! a consistency proof `{"old_size": M, "size": N, "proof": [base64, ...]}` (hashes in standard
//! base64, as in checkpoints). Receipts are the JSON form of [`custody_tlog::Receipt`].
//!
//! Every failure is a [`VerifyError`], an exhaustive enum: a caller must decide what each
//! outcome means for it.

use custody_tlog::note::Ed25519Verifier;
use custody_tlog::{Checkpoint, Hash, Note, ParseError, Receipt, check_record, check_tree};
use thiserror::Error;

pub use custody_tlog;

/// An inclusion proof as custody serves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The entry's index in the log.
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The audit path, from the entry's sibling up.
    pub proof: Vec<Hash>,
}

/// A consistency proof as custody serves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub old_size: u64,
    /// The newer tree size.
    pub size: u64,
    /// The RFC 6962 consistency proof.
    pub proof: Vec<Hash>,
}

/// A handover to a new log signing key, as custody serves it in `/log/keys`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHandover {
    /// The new verifier key, `<origin>+<key id>+<base64 key>`.
    pub vkey: String,
    /// The log entry announcing it, as logged (a JSON document).
    pub entry: String,
    /// A checkpoint signed by the previous key whose tree holds the entry.
    pub handover: String,
    /// The entry's inclusion proof in that tree.
    pub proof: InclusionProof,
}

/// Why something did not verify. Exhaustive: each is a distinct outcome.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The verifier key is not an Ed25519 vkey.
    #[error("malformed verifier key: {0}")]
    MalformedKey(#[source] ParseError),
    /// The checkpoint is not a well-formed signed checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(#[source] custody_tlog::Error),
    /// The checkpoint carries no signature by the log key.
    #[error("checkpoint is not signed by the log key")]
    UnsignedCheckpoint,
    /// The checkpoint carries a signature by the log key that does not verify.
    #[error("checkpoint signature by the log key does not verify")]
    BadCheckpointSignature,
    /// Two checkpoints are from different logs.
    #[error("checkpoints are from different logs: `{old}` and `{new}`")]
    OriginMismatch {
        /// The older checkpoint's (or the receipt's) origin.
        old: String,
        /// The newer checkpoint's origin.
        new: String,
    },
    /// The proof JSON is malformed.
    #[error("malformed proof: {0}")]
    MalformedProof(String),
    /// The proof is for another tree size than the checkpoint's.
    #[error("proof is for tree size {proof}, the checkpoint has size {checkpoint}")]
    SizeMismatch {
        /// The size in the proof.
        proof: u64,
        /// The checkpoint's size.
        checkpoint: u64,
    },
    /// The proof is for another entry than the receipt's.
    #[error("proof is for index {proof}, the receipt is for index {receipt}")]
    IndexMismatch {
        /// The index in the proof.
        proof: u64,
        /// The receipt's index.
        receipt: u64,
    },
    /// The entry's index is not inside the tree or batch.
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree or batch end.
        size: u64,
    },
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("inclusion proof does not verify")]
    InclusionFailed,
    /// The newer checkpoint is smaller than the older one: the log went back.
    #[error("newer checkpoint has size {new}, smaller than the older {old}")]
    Rollback {
        /// The older size.
        old: u64,
        /// The newer size.
        new: u64,
    },
    /// The consistency proof does not verify: the log may have rewritten history.
    #[error("consistency proof does not verify")]
    ConsistencyFailed,
    /// The receipt JSON or statement is malformed.
    #[error("malformed receipt: {0}")]
    MalformedReceipt(String),
    /// The entry given is not the one the receipt is for.
    #[error("entry does not match the receipt")]
    EntryMismatch,
    /// The logged entry is not a permitted export, or the receipt does not carry one.
    #[error("not an export receipt: {0}")]
    NotAnExport(String),
    /// The file is not exactly what the export entry says was released.
    #[error(
        "the file does not match its export entry: logged {logged_bytes} bytes with SHA-256 {logged}, the file has {bytes} bytes with SHA-256 {actual}"
    )]
    ExportMismatch {
        /// SHA-256 (hex) in the entry.
        logged: String,
        /// Length in the entry.
        logged_bytes: u64,
        /// SHA-256 (hex) of the file.
        actual: String,
        /// Length of the file.
        bytes: u64,
    },
    /// The file could not be read.
    #[error("reading the file: {0}")]
    Io(String),
    /// The receipt's path does not lead to its batch root.
    #[error("receipt's batch path does not verify")]
    ReceiptPathFailed,
    /// The receipt is not signed by the log key.
    #[error("receipt is not signed by the log key")]
    UnsignedReceipt,
    /// The receipt's signature by the log key does not verify.
    #[error("receipt signature by the log key does not verify")]
    BadReceiptSignature,
    /// A key handover's entry is not an announcement of its key by this log.
    #[error("not an announcement of log key `{vkey}`: {detail}")]
    NotAnAnnouncement {
        /// The key the handover claims.
        vkey: String,
        /// What is wrong.
        detail: String,
    },
}

/// Parses the log's verifier key `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
///
/// # Errors
///
/// [`VerifyError::MalformedKey`].
pub fn log_verifier(vkey: &str) -> Result<Ed25519Verifier, VerifyError> {
    Ed25519Verifier::from_verifier_key(vkey).map_err(VerifyError::MalformedKey)
}

/// Checks that `signed_checkpoint` is a checkpoint signed by the log key `vkey`, and returns it.
/// Compare its origin with the log you expect.
///
/// # Errors
///
/// [`VerifyError::MalformedKey`], [`VerifyError::MalformedCheckpoint`],
/// [`VerifyError::UnsignedCheckpoint`], [`VerifyError::BadCheckpointSignature`].
pub fn verify_checkpoint(signed_checkpoint: &str, vkey: &str) -> Result<Checkpoint, VerifyError> {
    let verifier = log_verifier(vkey)?;
    checkpoint_with(signed_checkpoint, &verifier)
}

fn checkpoint_with(signed_checkpoint: &str, verifier: &Ed25519Verifier) -> Result<Checkpoint, VerifyError> {
    use custody_tlog::Error as E;
    let note = Note::open(signed_checkpoint.as_bytes(), &[verifier]).map_err(|e| match e {
        E::UnverifiedNote => VerifyError::UnsignedCheckpoint,
        E::InvalidSignature { .. } => VerifyError::BadCheckpointSignature,
        other => VerifyError::MalformedCheckpoint(other),
    })?;
    Checkpoint::parse(&note.text).map_err(|e| VerifyError::MalformedCheckpoint(e.into()))
}

/// Checks that `entry` is in the log as of `signed_checkpoint`, by the inclusion proof JSON
/// `proof_json`, and returns the checkpoint.
///
/// # Errors
///
/// As [`verify_checkpoint`]; [`VerifyError::MalformedProof`];
/// [`VerifyError::SizeMismatch`] if the proof is for another tree size;
/// [`VerifyError::IndexOutOfRange`]; [`VerifyError::InclusionFailed`].
pub fn verify_inclusion(
    signed_checkpoint: &str,
    vkey: &str,
    entry: &[u8],
    proof_json: &str,
) -> Result<Checkpoint, VerifyError> {
    let checkpoint = verify_checkpoint(signed_checkpoint, vkey)?;
    let proof = parse_inclusion(proof_json)?;
    check_inclusion(&checkpoint, &proof, &custody_tlog::leaf_hash(entry))?;
    Ok(checkpoint)
}

fn parse_inclusion(proof_json: &str) -> Result<InclusionProof, VerifyError> {
    serde_json::from_str(proof_json).map_err(|e| VerifyError::MalformedProof(e.to_string()))
}

fn check_inclusion(checkpoint: &Checkpoint, proof: &InclusionProof, leaf: &Hash) -> Result<(), VerifyError> {
    if proof.size != checkpoint.size {
        return Err(VerifyError::SizeMismatch { proof: proof.size, checkpoint: checkpoint.size });
    }
    if proof.index >= proof.size {
        return Err(VerifyError::IndexOutOfRange { index: proof.index, size: proof.size });
    }
    check_record(&proof.proof, checkpoint.size, &checkpoint.root_hash, proof.index, leaf)
        .map_err(|_| VerifyError::InclusionFailed)
}

/// Checks that `new_checkpoint` extends `old_checkpoint` (both signed by the log key `vkey`),
/// by the consistency proof JSON `proof_json`, and returns the newer checkpoint. Any tree
/// extends the empty tree; equal sizes need an empty proof and equal roots.
///
/// # Errors
///
/// As [`verify_checkpoint`] for either; [`VerifyError::OriginMismatch`];
/// [`VerifyError::MalformedProof`]; [`VerifyError::SizeMismatch`] if the proof's sizes are not
/// the checkpoints'; [`VerifyError::Rollback`]; [`VerifyError::ConsistencyFailed`].
pub fn verify_consistency(
    old_checkpoint: &str,
    new_checkpoint: &str,
    vkey: &str,
    proof_json: &str,
) -> Result<Checkpoint, VerifyError> {
    let verifier = log_verifier(vkey)?;
    let old = checkpoint_with(old_checkpoint, &verifier)?;
    let new = checkpoint_with(new_checkpoint, &verifier)?;
    if old.origin != new.origin {
        return Err(VerifyError::OriginMismatch { old: old.origin, new: new.origin });
    }
    let proof: ConsistencyProof =
        serde_json::from_str(proof_json).map_err(|e| VerifyError::MalformedProof(e.to_string()))?;
    for (proof_size, checkpoint_size) in [(proof.old_size, old.size), (proof.size, new.size)] {
        if proof_size != checkpoint_size {
            return Err(VerifyError::SizeMismatch { proof: proof_size, checkpoint: checkpoint_size });
        }
    }
    if new.size < old.size {
        return Err(VerifyError::Rollback { old: old.size, new: new.size });
    }
    let consistent = if old.size == 0 {
        // RFC 6962 has no proof from the empty tree: every tree extends it.
        proof.proof.is_empty() && old.root_hash == Hash::EMPTY_ROOT
    } else {
        check_tree(&proof.proof, new.size, &new.root_hash, old.size, &old.root_hash).is_ok()
    };
    if !consistent {
        return Err(VerifyError::ConsistencyFailed);
    }
    Ok(new)
}

/// Checks that the receipt JSON `receipt_json` is signed by the log key `vkey` and is for
/// `entry`, and returns it.
///
/// # Errors
///
/// [`VerifyError::MalformedKey`]; [`VerifyError::MalformedReceipt`];
/// [`VerifyError::EntryMismatch`]; [`VerifyError::IndexOutOfRange`];
/// [`VerifyError::ReceiptPathFailed`]; [`VerifyError::UnsignedReceipt`];
/// [`VerifyError::BadReceiptSignature`].
pub fn verify_receipt(receipt_json: &str, vkey: &str, entry: &[u8]) -> Result<Receipt, VerifyError> {
    use custody_tlog::Error as E;
    let verifier = log_verifier(vkey)?;
    let receipt: Receipt =
        serde_json::from_str(receipt_json).map_err(|e| VerifyError::MalformedReceipt(e.to_string()))?;
    receipt.verify(&verifier, entry).map_err(|e| match e {
        E::LeafMismatch => VerifyError::EntryMismatch,
        E::IndexOutOfRange { index, size } => VerifyError::IndexOutOfRange { index, size },
        E::InvalidProof => VerifyError::ReceiptPathFailed,
        E::UnverifiedNote => VerifyError::UnsignedReceipt,
        E::InvalidSignature { .. } => VerifyError::BadReceiptSignature,
        other => VerifyError::MalformedReceipt(other.to_string()),
    })?;
    Ok(receipt)
}

/// [`verify_receipt`], then checks that the receipt's entry is in the log as of
/// `signed_checkpoint`, by the inclusion proof JSON `proof_json` for the receipt's index.
///
/// # Errors
///
/// As [`verify_receipt`] and [`verify_inclusion`]; [`VerifyError::OriginMismatch`] if the
/// checkpoint is another log's; [`VerifyError::IndexMismatch`] if the proof is for another
/// index.
pub fn verify_receipt_in_log(
    receipt_json: &str,
    vkey: &str,
    entry: &[u8],
    signed_checkpoint: &str,
    proof_json: &str,
) -> Result<(Receipt, Checkpoint), VerifyError> {
    let receipt = verify_receipt(receipt_json, vkey, entry)?;
    let checkpoint = verify_checkpoint(signed_checkpoint, vkey)?;
    if checkpoint.origin != receipt.origin {
        return Err(VerifyError::OriginMismatch { old: receipt.origin, new: checkpoint.origin });
    }
    let proof = parse_inclusion(proof_json)?;
    if proof.index != receipt.index {
        return Err(VerifyError::IndexMismatch { proof: proof.index, receipt: receipt.index });
    }
    check_inclusion(&checkpoint, &proof, &receipt.leaf_hash)?;
    Ok((receipt, checkpoint))
}

/// Checks a key handover against the key trusted so far: `handover.handover` is a checkpoint
/// signed by `trusted_vkey`, `handover.entry` is in its tree by `handover.proof`, and the entry
/// announces `handover.vkey` (`"kind":"key","key":"log","change":"rotated"`) for the same
/// log. Returns the handover checkpoint.
///
/// # Errors
///
/// As [`verify_inclusion`]; [`VerifyError::MalformedKey`] for the new key;
/// [`VerifyError::NotAnAnnouncement`].
pub fn verify_key_handover(trusted_vkey: &str, handover: &KeyHandover) -> Result<Checkpoint, VerifyError> {
    let checkpoint = verify_checkpoint(&handover.handover, trusted_vkey)?;
    check_inclusion(&checkpoint, &handover.proof, &custody_tlog::leaf_hash(handover.entry.as_bytes()))?;
    let new = log_verifier(&handover.vkey)?;
    let refuse = |detail: String| VerifyError::NotAnAnnouncement { vkey: handover.vkey.clone(), detail };
    if custody_tlog::NoteVerifier::name(&new) != checkpoint.origin {
        return Err(refuse(format!(
            "the key is named `{}`, the log is `{}`",
            custody_tlog::NoteVerifier::name(&new),
            checkpoint.origin
        )));
    }
    let entry: serde_json::Value =
        serde_json::from_str(&handover.entry).map_err(|e| refuse(format!("the entry is not JSON: {e}")))?;
    let field = |k: &str| entry.get(k).and_then(|v| v.as_str());
    if field("kind") != Some("key") || field("key") != Some("log") || field("change") != Some("rotated") {
        return Err(refuse("the entry is not a log-key rotation".into()));
    }
    if field("verifier_key") != Some(handover.vkey.as_str()) {
        return Err(refuse("the entry announces another key".into()));
    }
    Ok(checkpoint)
}

/// Follows `handovers` in order from the pinned key `pinned_vkey` and returns every key the
/// log may sign with, oldest first: a checkpoint signed by any of them is the log's. A key
/// reached by no valid handover is never trusted.
///
/// # Errors
///
/// The first handover that does not verify under the key before it, as
/// [`verify_key_handover`].
pub fn trusted_keys(pinned_vkey: &str, handovers: &[KeyHandover]) -> Result<Vec<String>, VerifyError> {
    log_verifier(pinned_vkey)?;
    let mut keys = vec![pinned_vkey.to_owned()];
    let mut trusted = pinned_vkey.to_owned();
    for h in handovers {
        verify_key_handover(&trusted, h)?;
        keys.push(h.vkey.clone());
        trusted = h.vkey.clone();
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_tlog::{Ed25519Signer, leaf_hash, prove_record, prove_tree, stored_hashes, tree_hash};

    struct Log {
        signer: Ed25519Signer,
        entries: Vec<Vec<u8>>,
        storage: Vec<Hash>,
    }

    impl Log {
        fn new(n: u64) -> Log {
            let signer = Ed25519Signer::from_seed("custody.test/log", &[5; 32]).unwrap();
            let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("event {i}").into_bytes()).collect();
            let mut storage = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                storage.extend(stored_hashes(i as u64, leaf_hash(e), &storage).unwrap());
            }
            Log { signer, entries, storage }
        }

        fn checkpoint(&self, size: u64) -> String {
            let root = tree_hash(size, &self.storage).unwrap();
            Checkpoint::new("custody.test/log", size, root).sign(&self.signer).unwrap().to_string()
        }

        fn inclusion(&self, index: u64, size: u64) -> String {
            let proof = prove_record(size, index, &self.storage).unwrap();
            serde_json::to_string(&InclusionProof { index, size, proof }).unwrap()
        }

        fn consistency(&self, old_size: u64, size: u64) -> String {
            let proof = if old_size == 0 { vec![] } else { prove_tree(size, old_size, &self.storage).unwrap() };
            serde_json::to_string(&ConsistencyProof { old_size, size, proof }).unwrap()
        }
    }

    #[test]
    fn happy_paths() {
        let log = Log::new(20);
        let vkey = log.signer.verifier_key();
        assert_eq!(verify_checkpoint(&log.checkpoint(20), &vkey).unwrap().size, 20);
        verify_inclusion(&log.checkpoint(20), &vkey, &log.entries[7], &log.inclusion(7, 20)).unwrap();
        for old in [0, 1, 7, 16, 20] {
            verify_consistency(&log.checkpoint(old), &log.checkpoint(20), &vkey, &log.consistency(old, 20)).unwrap();
        }
        let leaves: Vec<Hash> = log.entries[10..15].iter().map(|e| leaf_hash(e)).collect();
        let receipts = custody_tlog::sign_batch(&log.signer, "custody.test/log", 10, &leaves).unwrap();
        let json = serde_json::to_string(&receipts[2]).unwrap();
        verify_receipt(&json, &vkey, &log.entries[12]).unwrap();
        verify_receipt_in_log(&json, &vkey, &log.entries[12], &log.checkpoint(20), &log.inclusion(12, 20)).unwrap();
    }

    #[test]
    fn each_failure_is_named() {
        let log = Log::new(20);
        let vkey = log.signer.verifier_key();
        let other = Ed25519Signer::from_seed("custody.test/log", &[6; 32]).unwrap().verifier_key();
        let cp = log.checkpoint(20);

        assert!(matches!(verify_checkpoint(&cp, "nonsense"), Err(VerifyError::MalformedKey(_))));
        assert!(matches!(verify_checkpoint("x\n", &vkey), Err(VerifyError::MalformedCheckpoint(_))));
        assert!(matches!(verify_checkpoint(&cp, &other), Err(VerifyError::UnsignedCheckpoint)));
        let forged = cp.replacen("\n20\n", "\n21\n", 1);
        assert!(matches!(verify_checkpoint(&forged, &vkey), Err(VerifyError::BadCheckpointSignature)));
        let mut note = Note::new("not a checkpoint\n").unwrap();
        note.sign(&log.signer).unwrap();
        assert!(matches!(verify_checkpoint(&note.to_string(), &vkey), Err(VerifyError::MalformedCheckpoint(_))));

        let e = &log.entries[7];
        assert!(matches!(verify_inclusion(&cp, &vkey, e, "{"), Err(VerifyError::MalformedProof(_))));
        assert!(matches!(
            verify_inclusion(&cp, &vkey, e, r#"{"index":7,"size":20,"proof":[],"x":1}"#),
            Err(VerifyError::MalformedProof(_))
        ));
        assert!(matches!(
            verify_inclusion(&cp, &vkey, e, &log.inclusion(7, 19)),
            Err(VerifyError::SizeMismatch { proof: 19, checkpoint: 20 })
        ));
        assert!(matches!(
            verify_inclusion(&cp, &vkey, e, r#"{"index":20,"size":20,"proof":[]}"#),
            Err(VerifyError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            verify_inclusion(&cp, &vkey, &log.entries[8], &log.inclusion(7, 20)),
            Err(VerifyError::InclusionFailed)
        ));

        assert!(matches!(
            verify_consistency(
                &log.checkpoint(20),
                &log.checkpoint(7),
                &vkey,
                &log.consistency(7, 20).replace("\"old_size\":7,\"size\":20", "\"old_size\":20,\"size\":7")
            ),
            Err(VerifyError::Rollback { old: 20, new: 7 })
        ));
        assert!(matches!(
            verify_consistency(&log.checkpoint(7), &cp, &vkey, &log.consistency(8, 20)),
            Err(VerifyError::SizeMismatch { .. })
        ));
        let other_log = Checkpoint::new("custody.test/other", 7, tree_hash(7, &log.storage).unwrap())
            .sign(&log.signer)
            .unwrap()
            .to_string();
        assert!(matches!(
            verify_consistency(&other_log, &cp, &vkey, &log.consistency(7, 20)),
            Err(VerifyError::OriginMismatch { .. })
        ));
        let forked = Checkpoint::new("custody.test/log", 7, leaf_hash(b"fork")).sign(&log.signer).unwrap().to_string();
        assert!(matches!(
            verify_consistency(&forked, &cp, &vkey, &log.consistency(7, 20)),
            Err(VerifyError::ConsistencyFailed)
        ));
        let fake_empty = Checkpoint::new("custody.test/log", 0, leaf_hash(b"x")).sign(&log.signer).unwrap().to_string();
        assert!(matches!(
            verify_consistency(&fake_empty, &cp, &vkey, &log.consistency(0, 20)),
            Err(VerifyError::ConsistencyFailed)
        ));

        let leaves: Vec<Hash> = log.entries[10..15].iter().map(|e| leaf_hash(e)).collect();
        let receipts = custody_tlog::sign_batch(&log.signer, "custody.test/log", 10, &leaves).unwrap();
        let r = &receipts[2];
        let json = serde_json::to_string(r).unwrap();
        assert!(matches!(verify_receipt("{}", &vkey, e), Err(VerifyError::MalformedReceipt(_))));
        assert!(matches!(verify_receipt(&json, &vkey, e), Err(VerifyError::EntryMismatch)));
        assert!(matches!(verify_receipt(&json, &other, &log.entries[12]), Err(VerifyError::UnsignedReceipt)));
        let mut t = r.clone();
        t.batch_path[0] = leaf_hash(b"x");
        assert!(matches!(
            verify_receipt(&serde_json::to_string(&t).unwrap(), &vkey, &log.entries[12]),
            Err(VerifyError::ReceiptPathFailed)
        ));
        let mut t = r.clone();
        t.index = 30;
        assert!(matches!(
            verify_receipt(&serde_json::to_string(&t).unwrap(), &vkey, &log.entries[12]),
            Err(VerifyError::IndexOutOfRange { .. })
        ));
        let mut t = receipts[0].clone();
        t.batch_start = 11;
        t.index = 11;
        t.batch_size = 4;
        t.batch_path = prove_record(4, 0, &{
            let mut s = Vec::new();
            for (i, l) in leaves[..4].iter().enumerate() {
                s.extend(stored_hashes(i as u64, *l, &s).unwrap());
            }
            s
        })
        .unwrap();
        t.batch_root = tree_hash(4, &{
            let mut s = Vec::new();
            for (i, l) in leaves[..4].iter().enumerate() {
                s.extend(stored_hashes(i as u64, *l, &s).unwrap());
            }
            s
        })
        .unwrap();
        assert!(matches!(
            verify_receipt(&serde_json::to_string(&t).unwrap(), &vkey, &log.entries[10]),
            Err(VerifyError::BadReceiptSignature)
        ));
        assert!(matches!(
            verify_receipt_in_log(&json, &vkey, &log.entries[12], &cp, &log.inclusion(13, 20)),
            Err(VerifyError::IndexMismatch { proof: 13, receipt: 12 })
        ));
        assert!(matches!(
            verify_receipt_in_log(&json, &vkey, &log.entries[12], &other_log, &log.inclusion(12, 20)),
            Err(VerifyError::OriginMismatch { .. })
        ));
    }
}

/// What checking an exported file against its export entry established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCheck {
    /// The entry's index in the log.
    pub index: u64,
    /// The destination the export went to.
    pub destination: String,
    /// Rows the entry says the file holds.
    pub rows: u64,
    /// The file's length.
    pub bytes: u64,
    /// The file's SHA-256 (hex), equal to the logged one.
    pub sha256: String,
}

/// Checks an exported file against its export receipt (as `custody export` saves it beside
/// the file: `{"index": I, "detail": {"entry": "...", "log": {...}}}`): the log key signed the
/// entry, the entry is a permitted export, and the file is exactly the bytes it names.
///
/// # Errors
/// [`VerifyError::NotAnExport`], [`VerifyError::ExportMismatch`], [`VerifyError::Io`], and
/// the errors of [`verify_receipt`].
pub fn verify_export(mut file: impl std::io::Read, receipt: &str, vkey: &str) -> Result<ExportCheck, VerifyError> {
    use sha2::Digest as _;
    let not = |m: &str| VerifyError::NotAnExport(m.to_string());
    let wrapper: serde_json::Value = serde_json::from_str(receipt).map_err(|e| not(&e.to_string()))?;
    let detail = wrapper.get("detail").ok_or_else(|| not("no `detail`"))?;
    let entry = detail.get("entry").and_then(serde_json::Value::as_str).ok_or_else(|| not("no logged entry"))?;
    let log = detail.get("log").ok_or_else(|| not("no log receipt"))?;
    let verified = verify_receipt(&log.to_string(), vkey, entry.as_bytes())?;
    let e: serde_json::Value = serde_json::from_str(entry).map_err(|e| not(&e.to_string()))?;
    let text = |k: &str| e.get(k).and_then(serde_json::Value::as_str);
    if text("kind") != Some("export") {
        return Err(not("the entry's kind is not `export`"));
    }
    if text("decision") != Some("permit") {
        return Err(not("the entry records a refused export, which released nothing"));
    }
    let logged = text("sha256").ok_or_else(|| not("the entry has no `sha256`"))?.to_string();
    let logged_bytes = e.get("bytes").and_then(serde_json::Value::as_u64).ok_or_else(|| not("no `bytes`"))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| VerifyError::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        bytes += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != logged || bytes != logged_bytes {
        return Err(VerifyError::ExportMismatch { logged, logged_bytes, actual, bytes });
    }
    Ok(ExportCheck {
        index: verified.index,
        destination: text("destination").unwrap_or_default().to_string(),
        rows: e.get("rows").and_then(serde_json::Value::as_u64).unwrap_or(0),
        bytes,
        sha256: actual,
    })
}
