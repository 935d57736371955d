//! custody-verify against vectors made by an independent implementation
//! (`testdata/tlog/independent.py`: Python `cryptography` and the RFC 6962 definitions).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use custody_verify::*;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tlog/independent.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap()
}

#[test]
fn independent_checkpoints_proofs_and_receipt_verify() {
    let v = vectors();
    let vkey = s(&v, "log_vkey");
    let entry = |i: usize| v["entries"][i].as_str().unwrap().as_bytes().to_vec();

    let c7 = verify_checkpoint(s(&v, "checkpoint_7"), vkey).unwrap();
    assert_eq!((c7.origin.as_str(), c7.size), ("custody.example/log", 7));
    // Witness cosignatures are other keys' signatures: ignored here, not an error.
    assert_eq!(verify_checkpoint(s(&v, "cosigned_checkpoint_7"), vkey).unwrap(), c7);

    let inclusion = v["inclusion_5_in_7"].to_string();
    verify_inclusion(s(&v, "checkpoint_7"), vkey, &entry(5), &inclusion).unwrap();
    assert!(matches!(
        verify_inclusion(s(&v, "checkpoint_7"), vkey, &entry(4), &inclusion),
        Err(VerifyError::InclusionFailed)
    ));
    assert!(matches!(
        verify_inclusion(s(&v, "checkpoint_3"), vkey, &entry(5), &inclusion),
        Err(VerifyError::SizeMismatch { proof: 7, checkpoint: 3 })
    ));

    let consistency = v["consistency_3_to_7"].to_string();
    let new = verify_consistency(s(&v, "checkpoint_3"), s(&v, "checkpoint_7"), vkey, &consistency).unwrap();
    assert_eq!(new, c7);
    assert!(matches!(
        verify_consistency(s(&v, "checkpoint_7"), s(&v, "checkpoint_3"), vkey, &consistency),
        Err(VerifyError::SizeMismatch { .. })
    ));

    let receipt = v["receipt"].to_string();
    let r = verify_receipt(&receipt, vkey, &entry(5)).unwrap();
    assert_eq!((r.index, r.batch_start, r.batch_size), (5, 3, 4));
    assert!(matches!(verify_receipt(&receipt, vkey, &entry(6)), Err(VerifyError::EntryMismatch)));
    let (r2, cp) = verify_receipt_in_log(&receipt, vkey, &entry(5), s(&v, "checkpoint_7"), &inclusion).unwrap();
    assert_eq!((r2, cp), (r, c7));
    // A witness key is not the log key.
    assert!(matches!(
        verify_checkpoint(s(&v, "checkpoint_7"), s(&v, "witness_vkey")),
        Err(VerifyError::MalformedKey(_))
    ));
}
