//! KEK rotation over many subject DEKs with the file provider: time and peak memory.
//!
//! `cargo bench -p custody-vault --bench kek_rotation -- [DEKS] [BATCH]` (default 1,000,000
//! DEKs in batches of 1,000). The keys are generated and wrapped under KEK 1 first (not
//! timed), then one rotation runs as `custody keys rotate-kek` drives it: begin, steps until
//! every key was scanned, finish (verification pass and destruction of KEK 1).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use custody_crypto::{DataKey, FileKeyProvider, KeyProvider};
use custody_vault::{KeyState, RedbStore, Vault, WrappedKey};
use redb::{Database, TableDefinition};

const SUBJECT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("subject_keys");

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let batch: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let kek = keys_dir.join("kek");
    let provider = FileKeyProvider::create(&kek).unwrap();
    drop(RedbStore::open(dir.path(), &keys_dir).unwrap());

    let t = Instant::now();
    {
        let db = Database::create(keys_dir.join("keys.redb")).unwrap();
        let mut i = 0u64;
        while i < n {
            let w = db.begin_write().unwrap();
            {
                let mut table = w.open_table(SUBJECT_KEYS).unwrap();
                for _ in 0..100_000.min(n - i) {
                    let subject = format!("subject-{i:08}");
                    let ctx = [b"dek\0".as_slice(), subject.as_bytes(), b"\0", &1u32.to_be_bytes()].concat();
                    let wrapped = provider.wrap(&ctx, &DataKey::generate()).unwrap();
                    let state = KeyState::Active(WrappedKey { version: 1, wrapped });
                    table.insert(subject.as_str(), postcard::to_stdvec(&state).unwrap().as_slice()).unwrap();
                    i += 1;
                }
            }
            w.commit().unwrap();
        }
    }
    println!("setup: {n} DEKs wrapped under KEK 1 in {:.1?}", t.elapsed());
    let setup_rss = peak_rss_kib();

    let provider = Arc::new(FileKeyProvider::open(&kek).unwrap());
    let store = Arc::new(RedbStore::open(dir.path(), &keys_dir).unwrap());
    let vault = Vault::new(store.clone(), store, provider).unwrap();
    let t = Instant::now();
    let (target, _) = vault.begin_kek_rotation().unwrap();
    let mut steps = 0u64;
    let mut p = vault.rotate_kek_step(batch).unwrap();
    while !p.scanned_all {
        p = vault.rotate_kek_step(batch).unwrap();
        steps += 1;
    }
    let rewrap = t.elapsed();
    let retired = vault.finish_kek_rotation().unwrap();
    let total = t.elapsed();
    assert_eq!(p.rewrapped, n);
    assert_eq!(retired, vec![1]);
    println!(
        "rotation to KEK {target}: {n} DEKs rewrapped in {:.2?} ({} steps of {batch}, {:.0} DEKs/s); \
         with verification and KEK 1 destroyed: {:.2?}",
        rewrap,
        steps + 1,
        n as f64 / rewrap.as_secs_f64(),
        total
    );
    println!("peak RSS (VmHWM): {} MiB (after setup: {} MiB)", peak_rss_kib() / 1024, setup_rss / 1024);
    let size = std::fs::metadata(keys_dir.join("keys.redb")).map(|m| m.len()).unwrap_or(0);
    println!("keys.redb: {} MiB", size / (1 << 20));
}
