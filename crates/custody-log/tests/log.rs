//! The log end to end: receipts, recovery, torn tails, tampering and proofs.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custody_audit::AuditSink;
use custody_log::{Log, LogConfig, LogError};
use custody_tlog::tile::decode_entry_bundle;
use custody_tlog::{Checkpoint, Frontier, Hash, Receipt, Tile, check_record, check_tree, leaf_hash};
use proptest::prelude::*;

const ORIGIN: &str = "test.custody.example/log";

fn cfg(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir, ORIGIN);
    c.max_delay = Duration::from_micros(200);
    c
}

fn entry(i: u64) -> Vec<u8> {
    format!("{{\"entry\":{i}}}").into_bytes()
}

fn root_of(entries: impl IntoIterator<Item = Vec<u8>>) -> Hash {
    let leaves: Vec<Hash> = entries.into_iter().map(|e| leaf_hash(&e)).collect();
    Frontier::new().extend(&leaves).unwrap().root
}

/// Appends `entries` one after another (one batch each).
fn append_seq(log: &Log, entries: impl IntoIterator<Item = Vec<u8>>) -> Vec<Receipt> {
    entries.into_iter().map(|e| log.submit(e).unwrap().wait().unwrap()).collect()
}

/// Appends entries `from..to` from `threads` threads at once (so in shared batches).
fn append_concurrent(log: &Log, from: u64, to: u64, threads: u64) -> Vec<(Vec<u8>, Receipt)> {
    let mut out = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (from..to)
                        .filter(|i| i % threads == t)
                        .map(|i| {
                            let e = entry(i);
                            let r = log.submit(e.clone()).unwrap().wait().unwrap();
                            (e, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().unwrap());
        }
    });
    out.sort_by_key(|(_, r)| r.index);
    out
}

fn signed_checkpoint(log: &Log) -> Checkpoint {
    Checkpoint::open(log.checkpoint_text().as_bytes(), ORIGIN, &[&log.verifier()]).unwrap().0
}

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

fn open_err(dir: &Path) -> String {
    match Log::open(cfg(dir)) {
        Ok(_) => panic!("open succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn concurrent_appends_get_verifiable_receipts_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    let vkey = log.verifier_key();
    let done = append_concurrent(&log, 0, 2000, 16);
    let indexes: Vec<u64> = done.iter().map(|(_, r)| r.index).collect();
    assert_eq!(indexes, (0..2000).collect::<Vec<_>>());
    let verifier = custody_tlog::Ed25519Verifier::from_verifier_key(&vkey).unwrap();
    for (e, r) in &done {
        r.verify(&verifier, e).unwrap();
        assert_eq!(r.origin, ORIGIN);
    }
    // Batching happened: fewer signatures than entries.
    let batches: std::collections::BTreeSet<u64> = done.iter().map(|(_, r)| r.batch_start).collect();
    assert!(batches.len() < 2000, "{} batches", batches.len());
    assert_eq!(log.size(), 2000);
    log.close().unwrap();

    let want_root = root_of(done.iter().map(|(e, _)| e.clone()));
    let log = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(log.size(), 2000);
    assert_eq!(log.verifier_key(), vkey);
    let c = signed_checkpoint(&log);
    assert_eq!((c.size, c.root_hash), (2000, want_root));
    assert_eq!(log.root(2000).unwrap(), want_root);
    let r = log.submit(b"next".to_vec()).unwrap().wait().unwrap();
    assert_eq!(r.index, 2000);
    // Every entry is in the entry bundles, at its receipt's index.
    let stored = read_entries(&log, 2000);
    for (e, r) in &done {
        assert_eq!(&stored[r.index as usize], e);
    }
    let last = log.read_tile("tile/entries/007.p/209").unwrap().unwrap();
    assert_eq!(decode_entry_bundle(&last, 209).unwrap()[208], b"next");
}

#[cfg(unix)]
#[test]
fn key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(cfg(dir.path())).unwrap());
    let meta = fs::metadata(log_dir(dir.path()).join("key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(log_dir(dir.path()).join("key")).unwrap();
    assert!(text.starts_with(&format!("PRIVATE+KEY+{ORIGIN}+")));
    let mut other = cfg(dir.path());
    other.origin = "other.example/log".into();
    assert!(matches!(Log::open(other), Err(LogError::Key { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sink_receipts_commit_to_the_event_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(cfg(dir.path())).unwrap());
    let sink: Arc<dyn AuditSink> = log.clone();
    let mut tasks = Vec::new();
    for n in 0..50 {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            let ev = event(n);
            let got = sink.submit(&custody_core::LogEntry::Access(ev.clone())).unwrap().durable().await.unwrap();
            (ev, got)
        }));
    }
    for t in tasks {
        let (ev, got) = t.await.unwrap();
        let receipt: Receipt = serde_json::from_value(got.detail["log"].clone()).unwrap();
        assert_eq!(receipt.index, got.index);
        let entry = got.detail["entry"].as_str().unwrap();
        assert_eq!(entry.as_bytes(), serde_json::to_vec(&ev).unwrap(), "the receipt carries the exact entry");
        receipt.verify(&log.verifier(), entry.as_bytes()).unwrap();
    }
}

fn event(n: usize) -> custody_core::AccessEvent {
    use custody_core::{Action, CollectionName, Decision, PrincipalId};
    custody_core::AccessEvent {
        v: 1,
        kind: "access".into(),
        time: time::OffsetDateTime::UNIX_EPOCH,
        principal: PrincipalId::new(format!("p{n}")).unwrap(),
        principal_kind: "engineer".into(),
        action: Action::Read,
        collection: CollectionName::new("profiles").unwrap(),
        records: vec![],
        subjects: vec![],
        released: vec![],
        withheld: vec![],
        purpose: None,
        justification: None,
        location: None,
        policy_set: "00".into(),
        decision: Decision::Permit,
        jurisdictions: Vec::new(),
        approvals: Vec::new(),
    }
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    append_seq(&log, (0..5).map(entry));
    log.close().unwrap();
    let wal = log_dir(dir.path()).join("entries.wal");
    let len = fs::metadata(&wal).unwrap().len();
    // Half a frame: magic, index 5, one entry of 100 bytes of which 10 arrived.
    let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
    f.write_all(b"CLW1").unwrap();
    f.write_all(&5u64.to_be_bytes()).unwrap();
    f.write_all(&1u32.to_be_bytes()).unwrap();
    f.write_all(&100u32.to_be_bytes()).unwrap();
    f.write_all(&[9; 10]).unwrap();
    drop(f);

    let log = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(fs::metadata(&wal).unwrap().len(), len);
    assert_eq!(log.size(), 5);
    assert_eq!(log.submit(entry(5)).unwrap().wait().unwrap().index, 5);
    log.close().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(log.size(), 6);
    assert_eq!(signed_checkpoint(&log).root_hash, root_of((0..6).map(entry)));
}

#[test]
fn damage_before_the_end_of_the_wal_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    append_seq(&log, (0..3).map(entry));
    log.close().unwrap();
    let wal = log_dir(dir.path()).join("entries.wal");
    let bytes = fs::read(&wal).unwrap();
    // Frames are 16 + (4 + len) + 32 bytes; damage the second one.
    let first_len = 16 + 4 + entry(0).len() + 32;
    flip(&wal, first_len + 20);
    let err = open_err(dir.path());
    assert!(err.contains(&format!("damaged at byte {first_len}")), "{err}");
    assert!(err.contains("entries.wal"), "{err}");
    assert_eq!(fs::read(&wal).unwrap().len(), bytes.len(), "nothing was cut");

    // Damage in the last (acknowledged) frame is caught by the tiles written after it synced.
    fs::write(&wal, &bytes).unwrap();
    flip(&wal, bytes.len() - 40);
    let err = open_err(dir.path());
    assert!(err.contains("does not match the write-ahead log"), "{err}");
    assert_eq!(fs::read(&wal).unwrap().len(), bytes.len(), "nothing was cut");
}

#[test]
fn tampered_tiles_bundles_and_checkpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    append_concurrent(&log, 0, 700, 8);
    log.close().unwrap();
    let base = log_dir(dir.path());
    for (file, at) in [
        ("tile/0/000", 100),
        ("tile/0/001", 8191),
        ("tile/0/002.p/188", 0),
        ("tile/1/000.p/2", 40),
        ("tile/entries/000", 30),
        ("tile/entries/002.p/188", 5),
        ("checkpoint", 3),
        ("checkpoint", 70),
    ] {
        let path = base.join(file);
        let good = fs::read(&path).unwrap();
        flip(&path, at);
        let err = open_err(dir.path());
        assert!(err.contains(file), "{file}: {err}");
        fs::write(&path, good).unwrap();
    }
    // A tile cut short (a crash while it was written, before its file was complete) is
    // rewritten, not reported.
    let good = fs::read(base.join("tile/0/001")).unwrap();
    fs::write(base.join("tile/0/001"), &good[..1000]).unwrap();
    drop(Log::open(cfg(dir.path())).unwrap());
    assert_eq!(fs::read(base.join("tile/0/001")).unwrap(), good);
    // Missing tiles are derived data: rewritten from the write-ahead log.
    let tile = fs::read(base.join("tile/0/001")).unwrap();
    fs::remove_dir_all(base.join("tile")).unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(fs::read(base.join("tile/0/001")).unwrap(), tile);
    assert_eq!(log.size(), 700);
}

#[test]
fn proofs_verify_against_signed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    let mut all = append_concurrent(&log, 0, 300, 4);
    log.close().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    let old = signed_checkpoint(&log);
    assert_eq!(old.size, 300);
    all.extend(append_concurrent(&log, 300, 1100, 8));
    log.close().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    let new = signed_checkpoint(&log);
    assert_eq!(new.size, 1100);

    for i in [0u64, 1, 255, 256, 299, 300, 511, 1024, 1099] {
        let proof = log.prove_inclusion(i, new.size).unwrap();
        check_record(&proof, new.size, &new.root_hash, i, &all[i as usize].1.leaf_hash).unwrap();
        assert_eq!(all[i as usize].1.leaf_hash, leaf_hash(&all[i as usize].0));
    }
    let proof = log.prove_consistency(old.size, new.size).unwrap();
    check_tree(&proof, new.size, &new.root_hash, old.size, &old.root_hash).unwrap();
    for m in [1u64, 2, 7, 256, 257, 1000, 1100] {
        let old_root = root_of(all[..m as usize].iter().map(|(e, _)| e.clone()));
        assert_eq!(log.root(m).unwrap(), old_root);
        let proof = log.prove_consistency(m, new.size).unwrap();
        check_tree(&proof, new.size, &new.root_hash, m, &old_root).unwrap();
    }
    assert!(matches!(log.prove_inclusion(0, 1101), Err(LogError::SizeOutOfRange { .. })));
    assert!(log.prove_inclusion(1100, 1100).is_err());
}

#[test]
fn tiles_are_served_at_their_c2sp_paths() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    append_seq(&log, (0..3).map(entry));
    // Each batch left a partial tile; older widths stay readable once the tile is full.
    assert_eq!(log.read_tile("tile/0/000.p/2").unwrap().unwrap().len(), 64);
    append_concurrent(&log, 3, 260, 8);
    assert!(!log_dir(dir.path()).join("tile/0/000.p").exists());
    let full = log.read_tile("tile/0/000").unwrap().unwrap();
    assert_eq!(full.len(), 256 * 32);
    assert_eq!(log.read_tile("tile/0/000.p/2").unwrap().unwrap(), full[..64]);
    let bundle = log.read_tile("tile/entries/000.p/3").unwrap().unwrap();
    assert_eq!(decode_entry_bundle(&bundle, 3).unwrap(), [entry(0), entry(1), entry(2)]);
    assert_eq!(log.read_tile("tile/0/001.p/4").unwrap().unwrap().len(), 128);
    // A size inside a batch: cut from the wider partial the batch left.
    append_seq(&log, std::iter::once(entry(260)));
    let batch: Vec<Vec<u8>> = (261..300).map(entry).collect();
    let pending: Vec<_> = batch.iter().map(|e| log.submit(e.clone()).unwrap()).collect();
    pending.into_iter().for_each(|p| drop(p.wait().unwrap()));
    for size in 262..300u64 {
        let all = read_entries(&log, size);
        assert_eq!(all.len() as u64, size);
        assert_eq!(log.root(size).unwrap(), root_of(all));
    }
    assert_eq!(log.read_tile("tile/0/005").unwrap(), None);
    assert!(matches!(log.read_tile("tile/0/0"), Err(LogError::BadPath(_))));
    assert!(matches!(log.read_tile("../key"), Err(LogError::BadPath(_))));
    assert!(Tile::parse_path("tile/entries/001.p/4").is_ok());
}

#[test]
fn checkpoints_follow_the_interval_and_oversized_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.checkpoint_interval = Duration::from_millis(20);
    let log = Log::open(c).unwrap();
    assert_eq!(signed_checkpoint(&log).size, 0);
    append_seq(&log, (0..4).map(entry));
    let mut waited = 0;
    while signed_checkpoint(&log).size != 4 {
        assert!(waited < 200, "no checkpoint after 2 s");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    assert!(matches!(log.submit(vec![0; 65_536]), Err(LogError::EntryTooLarge(65_536))));
    log.submit(vec![0; 65_535]).unwrap().wait().unwrap();
    assert!(matches!(Log::open(LogConfig::new(dir.path(), "bad origin")), Err(LogError::Config(_))));
}

/// Every entry of the log, read back from its entry bundles.
fn read_entries(log: &Log, size: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for n in 0..size.div_ceil(256) {
        let width = (size - n * 256).min(256) as u16;
        let bundle = log.read_tile(&Tile::entries(n, width).unwrap().path()).unwrap().unwrap();
        out.extend(decode_entry_bundle(&bundle, width).unwrap().into_iter().map(<[u8]>::to_vec));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A crash at any byte of the writes after the last acknowledged batch keeps every
    /// acknowledged entry, keeps the log consistent, and lets it continue.
    #[test]
    fn a_crash_never_loses_an_acknowledged_entry(acked in 1u64..400, later in 1u64..6, cut in 0.0f64..=1.0) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(cfg(dir.path())).unwrap();
        append_concurrent(&log, 0, acked, 4);
        log.close().unwrap();
        let snapshot = dir.path().join("snapshot");
        copy_dir(&log_dir(dir.path()), &snapshot);
        let acked_len = fs::metadata(snapshot.join("entries.wal")).unwrap().len() as usize;

        // The writes that were in flight: frames for `later` more entries.
        let log = Log::open(cfg(dir.path())).unwrap();
        append_seq(&log, (acked..acked + later).map(entry));
        log.close().unwrap();
        let in_flight = fs::read(log_dir(dir.path()).join("entries.wal")).unwrap()[acked_len..].to_vec();
        let keep = ((in_flight.len() as f64) * cut) as usize;

        // The disk as the crash left it: the acknowledged state plus part of the next writes.
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(&snapshot, &log_dir(crashed.path()));
        let mut f = OpenOptions::new().append(true).open(log_dir(crashed.path()).join("entries.wal")).unwrap();
        f.write_all(&in_flight[..keep]).unwrap();
        drop(f);

        let log = Log::open(cfg(crashed.path())).unwrap();
        let size = log.size();
        prop_assert!(size >= acked && size <= acked + later);
        if keep == in_flight.len() {
            prop_assert_eq!(size, acked + later);
        }
        let expected = read_entries(&log, size);
        // Acknowledged entries are all there (concurrent ones in some order), and the rest in order.
        let mut first: Vec<Vec<u8>> = expected[..acked as usize].to_vec();
        first.sort();
        let mut want: Vec<Vec<u8>> = (0..acked).map(entry).collect();
        want.sort();
        prop_assert_eq!(first, want);
        for (i, e) in expected.iter().enumerate().skip(acked as usize) {
            prop_assert_eq!(e, &entry(i as u64));
        }
        prop_assert_eq!(log.root(size).unwrap(), root_of(expected.clone()));
        prop_assert_eq!(log.submit(b"after".to_vec()).unwrap().wait().unwrap().index, size);
        log.close().unwrap();
        let log = Log::open(cfg(crashed.path())).unwrap();
        prop_assert_eq!(log.size(), size + 1);
    }
}

#[test]
fn a_failed_write_fails_closed_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    append_concurrent(&log, 0, 255, 4);
    // Tiles can no longer be written: `tile` becomes a plain file.
    let tiles = log_dir(dir.path()).join("tile");
    let _ = fs::remove_dir_all(&tiles);
    fs::write(&tiles, b"not a directory").unwrap();
    // The entry that fills the first tiles is durable before their files are written, so
    // its receipt is true; the tile writer's failure then closes the log for good.
    let r = log.submit(entry(255)).unwrap().wait().unwrap();
    assert_eq!(r.index, 255);
    let mut acked = 256u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "the log did not fail closed");
        match log.submit(entry(acked)) {
            Err(LogError::Failed(_)) => break,
            Ok(p) => match p.wait() {
                Ok(r) => {
                    assert_eq!(r.index, acked);
                    acked += 1;
                }
                Err(LogError::Failed(_) | LogError::Closed) => {}
                Err(e) => panic!("{e}"),
            },
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(log.submit(entry(acked)), Err(LogError::Failed(_))));
    assert!(matches!(log.close(), Err(LogError::Failed(_))));

    // Once the disk is fixed, the log reopens with every acknowledged entry.
    fs::remove_file(&tiles).unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    assert!(log.size() >= acked, "{} < {acked}", log.size());
    let mut got = read_entries(&log, acked);
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..acked).map(entry).collect();
    want.sort();
    assert_eq!(got, want);
}

/// A second storage, in memory, to show that [`LogStorage`] is all the log needs: the same
/// appends, recovery and proofs work on it, and a torn tail is cut through it.
#[derive(Debug, Default)]
struct MemStorage {
    frames: std::sync::Mutex<Vec<u8>>,
    tiles: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
    checkpoint: std::sync::Mutex<Option<Vec<u8>>>,
}

impl custody_log::LogStorage for MemStorage {
    fn location(&self, item: custody_log::Item<'_>) -> PathBuf {
        PathBuf::from(format!("mem:{item:?}"))
    }
    fn append_frame(&self, frame: &[u8]) -> std::io::Result<()> {
        self.frames.lock().unwrap().extend_from_slice(frame);
        Ok(())
    }
    fn read_frames(&self, offset: u64) -> std::io::Result<Box<dyn std::io::Read + Send + '_>> {
        let bytes = self.frames.lock().unwrap()[offset as usize..].to_vec();
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }
    fn frames_len(&self) -> std::io::Result<u64> {
        Ok(self.frames.lock().unwrap().len() as u64)
    }
    fn truncate_frames(&self, len: u64) -> std::io::Result<()> {
        self.frames.lock().unwrap().truncate(len as usize);
        Ok(())
    }
    fn read_tile(&self, tile: &Tile) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.tiles.lock().unwrap().get(&tile.path()).cloned())
    }
    fn write_tile(&self, tile: &Tile, data: &[u8]) -> std::io::Result<()> {
        self.tiles.lock().unwrap().insert(tile.path(), data.to_vec());
        if tile.is_full() {
            self.remove_partials(tile)?;
        }
        Ok(())
    }
    fn partial_widths(&self, tile: &Tile) -> std::io::Result<Vec<u16>> {
        let prefix = format!("{}.p/", tile.full().path());
        let tiles = self.tiles.lock().unwrap();
        Ok(tiles.keys().filter_map(|k| k.strip_prefix(&prefix)?.parse().ok()).collect())
    }
    fn remove_partials(&self, tile: &Tile) -> std::io::Result<()> {
        let prefix = format!("{}.p/", tile.full().path());
        self.tiles.lock().unwrap().retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }
    fn read_checkpoint(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.checkpoint.lock().unwrap().clone())
    }
    fn write_checkpoint(&self, text: &[u8]) -> std::io::Result<()> {
        *self.checkpoint.lock().unwrap() = Some(text.to_vec());
        Ok(())
    }
}

#[test]
fn the_log_runs_on_any_storage() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::default());
    let log = Log::open_with(cfg(dir.path()), mem.clone()).unwrap();
    let first = append_concurrent(&log, 0, 600, 4);
    log.close().unwrap();
    assert!(mem.tiles.lock().unwrap().contains_key("tile/entries/001"));
    // A torn last frame is cut through the storage; everything acknowledged survives.
    mem.frames.lock().unwrap().extend_from_slice(b"CLW1\0\0");
    let log = Log::open_with(cfg(dir.path()), mem.clone()).unwrap();
    assert_eq!(log.size(), 600);
    let cp = signed_checkpoint(&log);
    for (e, r) in first.iter().step_by(37) {
        let proof = log.prove_inclusion(r.index, cp.size).unwrap();
        check_record(&proof, cp.size, &cp.root_hash, r.index, &leaf_hash(e)).unwrap();
    }
    assert_eq!(log.submit(entry(600)).unwrap().wait().unwrap().index, 600);
    log.close().unwrap();
    // Tampering is caught the same way.
    mem.tiles.lock().unwrap().get_mut("tile/0/001").unwrap()[5] ^= 1;
    let err = Log::open_with(cfg(dir.path()), mem).unwrap_err().to_string();
    assert!(err.contains("tile/0/001") || err.contains("Tile"), "{err}");
}

#[test]
fn a_rotated_signing_key_survives_reopening_and_old_checkpoints_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    append_seq(&log, (0..10).map(entry));
    let old = log.verifier();
    let old_vkey = log.verifier_key();
    let next = log.new_signing_key().unwrap();
    assert!(log_dir(dir.path()).join("key.next").exists());
    let announcement =
        format!(r#"{{"kind":"key","key":"log","change":"rotated","verifier_key":"{}"}}"#, next.verifier_key());
    let r = append_seq(&log, [announcement.into_bytes()]);
    let index = r[0].index;
    let record = log.adopt_signing_key(next, index).unwrap();
    let handover = record.handover.clone().unwrap();
    let (c, _) = Checkpoint::open(handover.as_bytes(), ORIGIN, &[&old]).unwrap();
    assert!(c.size > index);
    assert_ne!(log.verifier_key(), old_vkey);
    let after = append_seq(&log, (10..20).map(entry));
    after[0].verify(&log.verifier(), &entry(10)).unwrap();
    assert!(after[0].verify(&old, &entry(10)).is_err());
    let new_vkey = log.verifier_key();
    log.close().unwrap();
    assert!(!log_dir(dir.path()).join("key.next").exists());

    let log = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(log.verifier_key(), new_vkey);
    let history = log.key_history();
    assert_eq!(history.iter().map(|k| k.vkey.clone()).collect::<Vec<_>>(), vec![old_vkey, new_vkey]);
    assert_eq!(history[1].announced_at, Some(index));
    signed_checkpoint(&log);
    // A key made but never adopted is dropped at open; the current key stays.
    let _ = log.new_signing_key().unwrap();
    let current = log.verifier_key();
    log.close().unwrap();
    let log = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(log.verifier_key(), current);
    assert!(!log_dir(dir.path()).join("key.next").exists());
}
