//! The monitor against logs that misbehave: forks, rewritten and truncated histories, altered
//! entry bundles, bad signatures and missing cosignatures, each detected with its message and
//! exit code. The logs are built in memory and served over loopback HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use custody_monitor::memlog::MemLog;
use custody_tlog::CosignatureSigner;

fn entries(n: usize, salt: &str) -> Vec<Vec<u8>> {
    (0..n).map(|i| Access::read(i as i64, &format!("eng-{salt}{}", i % 3), "EU", &["display_name"]).bytes()).collect()
}

fn log_of(entries: &[Vec<u8>]) -> MemLog {
    let mut log = MemLog::new(signer(1));
    for e in entries {
        log.append(e.clone()).unwrap();
    }
    log.publish(&[]).unwrap();
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_correct_log_verifies_as_it_grows() {
    let all = entries(700, "a");
    let (shared, url, vkey) = served(signer(1), &all[..300]).await;
    let state = tempfile::tempdir().unwrap();
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 0, "{out}");
    *shared.write().unwrap() = log_of(&all);
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 0, "{out}");
    let stored = std::fs::read_to_string(state.path().join("entries.jsonl")).unwrap();
    assert_eq!(stored.lines().count(), 700);
    // Nothing new: still fine.
    assert_eq!(follow_once(&url, &vkey, state.path(), &[]).await.0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_of_the_same_size_is_detected() {
    let (shared, url, vkey) = served(signer(1), &entries(300, "a")).await;
    let state = tempfile::tempdir().unwrap();
    assert_eq!(follow_once(&url, &vkey, state.path(), &[]).await.0, 0);
    *shared.write().unwrap() = log_of(&entries(300, "b"));
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 11, "{out}");
    assert!(out.contains(r#""alert":"fork""#) && out.contains("two different trees of size 300"), "{out}");
    // Alerts are kept in the state directory, and the verified state did not move.
    assert!(std::fs::read_to_string(state.path().join("alerts.jsonl")).unwrap().contains("fork"));
    let cp = std::fs::read_to_string(state.path().join("checkpoint")).unwrap();
    assert!(cp.contains("\n300\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_old_entry_is_detected() {
    let all = entries(600, "a");
    let (shared, url, vkey) = served(signer(1), &all[..300]).await;
    let state = tempfile::tempdir().unwrap();
    assert_eq!(follow_once(&url, &vkey, state.path(), &[]).await.0, 0);
    let mut rewritten = all.clone();
    rewritten[17] = Access::read(17, "someone-else", "EU", &["email"]).bytes();
    *shared.write().unwrap() = log_of(&rewritten);
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 11, "{out}");
    assert!(out.contains(r#""alert":"inconsistent""#) && out.contains("history rewritten"), "{out}");
    assert!(out.contains("size 600 does not extend the verified tree of size 300"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_log_is_detected() {
    let all = entries(500, "a");
    let (shared, url, vkey) = served(signer(1), &all).await;
    let state = tempfile::tempdir().unwrap();
    assert_eq!(follow_once(&url, &vkey, state.path(), &[]).await.0, 0);
    *shared.write().unwrap() = log_of(&all[..200]);
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 12, "{out}");
    assert!(out.contains(r#""alert":"shrunk""#) && out.contains("log shrank from 500 to 200 entries"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_altered_entry_bundle_is_detected() {
    // From scratch: the served bundle does not hash to the signed root.
    let (shared, url, vkey) = served(signer(1), &entries(300, "a")).await;
    let mut altered = entries(256, "a");
    altered[5] = Access::read(5, "eng-a2", "US", &["email"]).bytes();
    let bundle = custody_tlog::tile::encode_entry_bundle(altered.iter().map(Vec::as_slice)).unwrap();
    shared.write().unwrap().override_path("tile/entries/000", bundle);
    let state = tempfile::tempdir().unwrap();
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 13, "{out}");
    assert!(out.contains(r#""alert":"entry-mismatch""#) && out.contains("do not hash into the signed tree"), "{out}");
    assert!(!state.path().join("verified.json").exists());

    // After a verified prefix: the new checkpoint is consistent, but a new entry was altered.
    let all = entries(600, "a");
    *shared.write().unwrap() = log_of(&all[..300]);
    assert_eq!(follow_once(&url, &vkey, state.path(), &[]).await.0, 0, "clean prefix");
    let mut grown = log_of(&all);
    let mut bundle_entries = all[512..600].to_vec();
    bundle_entries[3] = b"{}".to_vec();
    grown.override_path(
        "tile/entries/002.p/88",
        custody_tlog::tile::encode_entry_bundle(bundle_entries.iter().map(Vec::as_slice)).unwrap(),
    );
    *shared.write().unwrap() = grown;
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 13, "{out}");
    assert!(out.contains("entries 300..600 do not hash"), "{out}");
    // The unverified entries were not kept.
    let stored = std::fs::read_to_string(state.path().join("entries.jsonl")).unwrap();
    assert_eq!(stored.lines().count(), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_not_signed_by_the_log_is_rejected() {
    let (shared, url, _) = served(signer(1), &entries(10, "a")).await;
    let vkey = signer(1).verifier_key();
    let mut other = MemLog::new(signer(2));
    other.append(b"x".to_vec()).unwrap();
    other.publish(&[]).unwrap();
    *shared.write().unwrap() = other;
    let state = tempfile::tempdir().unwrap();
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 10, "{out}");
    assert!(out.contains("no signature by the log key"), "{out}");
    let mut log = log_of(&entries(10, "a"));
    let forged = log.publish(&[]).unwrap().replacen("\n10\n", "\n11\n", 1);
    log.set_checkpoint(forged);
    *shared.write().unwrap() = log;
    let (code, out) = follow_once(&url, &vkey, state.path(), &[]).await;
    assert_eq!(code, 10, "{out}");
    assert!(out.contains("signature does not verify"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_without_enough_cosignatures_is_rejected() {
    let w: Vec<CosignatureSigner> =
        (0..3).map(|i| CosignatureSigner::from_seed(&format!("witness-{i}.test"), &[10 + i; 32]).unwrap()).collect();
    let keys: Vec<String> = w.iter().map(CosignatureSigner::verifier_key).collect();
    let (shared, url, vkey) = served(signer(1), &entries(20, "a")).await;
    let flags =
        ["--witness", keys[0].as_str(), "--witness", keys[1].as_str(), "--witness", keys[2].as_str(), "--quorum", "2"];
    let state = tempfile::tempdir().unwrap();
    let (code, out) = follow_once(&url, &vkey, state.path(), &flags).await;
    assert_eq!(code, 14, "{out}");
    assert!(out.contains("carries 0 valid witness cosignatures, the quorum is 2"), "{out}");
    shared.write().unwrap().publish(&[&w[0]]).unwrap();
    let (code, out) = follow_once(&url, &vkey, state.path(), &flags).await;
    assert_eq!(code, 14, "{out}");
    assert!(out.contains("carries 1 valid"), "{out}");
    // A cosignature by an unknown witness does not count.
    let stranger = CosignatureSigner::from_seed("witness-0.test", &[99; 32]).unwrap();
    shared.write().unwrap().publish(&[&w[0], &stranger]).unwrap();
    assert_eq!(follow_once(&url, &vkey, state.path(), &flags).await.0, 14);
    shared.write().unwrap().publish(&[&w[0], &w[2]]).unwrap();
    let (code, out) = follow_once(&url, &vkey, state.path(), &flags).await;
    assert_eq!(code, 0, "{out}");
}
