//! Key handovers: a new log key is trusted only through an announcement included in a
//! checkpoint signed by the key before it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use custody_tlog::{Checkpoint, Ed25519Signer, leaf_hash};
use custody_verify::{InclusionProof, KeyHandover, VerifyError, trusted_keys, verify_checkpoint};

const ORIGIN: &str = "custody.example/log";

fn key() -> Ed25519Signer {
    Ed25519Signer::generate(ORIGIN, &mut rand::rngs::OsRng).unwrap()
}

/// A one-entry tree holding `entry`, its checkpoint signed by `by`.
fn handover(by: &Ed25519Signer, vkey: &str, entry: &str) -> KeyHandover {
    let signed = Checkpoint::new(ORIGIN, 1, leaf_hash(entry.as_bytes())).sign(by).unwrap().to_string();
    KeyHandover {
        vkey: vkey.into(),
        entry: entry.into(),
        handover: signed,
        proof: InclusionProof { index: 0, size: 1, proof: Vec::new() },
    }
}

fn announce(vkey: &str) -> String {
    format!(r#"{{"v":1,"kind":"key","change":"rotated","key":"log","verifier_key":"{vkey}"}}"#)
}

#[test]
fn a_chain_of_handovers_is_followed_and_nothing_else_is_trusted() {
    let (a, b, c) = (key(), key(), key());
    let (va, vb, vc) = (a.verifier_key(), b.verifier_key(), c.verifier_key());
    let chain = [handover(&a, &vb, &announce(&vb)), handover(&b, &vc, &announce(&vc))];
    assert_eq!(trusted_keys(&va, &chain).unwrap(), vec![va.clone(), vb.clone(), vc.clone()]);
    // The old key's checkpoint still verifies under it; the new key's not under the old one.
    verify_checkpoint(&chain[0].handover, &va).unwrap();
    assert!(verify_checkpoint(&chain[1].handover, &va).is_err());

    // Skipping a link: C's handover is signed by B, which A never announced.
    assert!(matches!(trusted_keys(&va, &chain[1..]), Err(VerifyError::UnsignedCheckpoint)));
    // The entry announces another key than the handover names.
    let wrong = handover(&a, &vb, &announce(&vc));
    assert!(matches!(trusted_keys(&va, &[wrong]), Err(VerifyError::NotAnAnnouncement { .. })));
    // An entry that is not a log-key rotation.
    let other = handover(&a, &vb, &format!(r#"{{"kind":"key","key":"kek","verifier_key":"{vb}"}}"#));
    assert!(matches!(trusted_keys(&va, &[other]), Err(VerifyError::NotAnAnnouncement { .. })));
    // The entry is not in the handover's tree.
    let mut moved = handover(&a, &vb, &announce(&vb));
    moved.entry = announce(&vb).replace("\"v\":1", "\"v\":2");
    assert!(matches!(trusted_keys(&va, &[moved]), Err(VerifyError::InclusionFailed)));
    // A key named for another log.
    let foreign = Ed25519Signer::generate("other.example/log", &mut rand::rngs::OsRng).unwrap().verifier_key();
    let named = handover(&a, &foreign, &announce(&foreign));
    assert!(matches!(trusted_keys(&va, &[named]), Err(VerifyError::NotAnAnnouncement { .. })));
}
