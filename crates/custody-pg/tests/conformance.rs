//! One conformance suite for every storage backend: each case below runs against the embedded
//! redb store (with the file log storage) and against a real PostgreSQL started for the test
//! binary with initdb/pg_ctl on a unix socket. No mocks.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use custody_core::{
    CollectionName, FieldName, Jurisdiction, PrincipalAttrs, PrincipalId, PrincipalKind, PrincipalRecord, RecordId,
    Schema, SubjectId,
};
use custody_crypto::FileKeyProvider;
use custody_log::{FileStorage, Log, LogConfig, LogStorage};
use custody_pg::testing::TempPostgres;
use custody_pg::{PgConfig, PgStore};
use custody_tlog::{Checkpoint, Tile};
use custody_vault::{
    KeyState, KeyStore, PrincipalStore, RawPage, RecordStore, RecordView, RedbStore, StoredRecord, StoredValue, Vault,
    VaultError, WrappedKey, WriteMode,
};

const ORIGIN: &str = "conformance.custody.example/log";

#[derive(Debug, Clone, Copy)]
enum Backend {
    Redb,
    Postgres,
}

/// One cluster per test binary while any test uses it; each test gets its own database.
fn cluster() -> Arc<TempPostgres> {
    static SHARED: Mutex<Weak<TempPostgres>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(pg) = slot.upgrade() {
        return pg;
    }
    let pg = Arc::new(TempPostgres::start().expect("start a temporary PostgreSQL"));
    *slot = Arc::downgrade(&pg);
    pg
}

fn fresh_database(pg: &TempPostgres) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    pg.create_database(&name).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    records: Arc<dyn RecordStore>,
    keys: Arc<dyn KeyStore>,
    principals: Arc<dyn PrincipalStore>,
    pg: Option<(Arc<TempPostgres>, PgConfig)>,
    // Dropped after the stores that use it.
    _cluster: Option<Arc<TempPostgres>>,
}

impl Fixture {
    fn new(backend: Backend) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        match backend {
            Backend::Redb => {
                let s = Arc::new(RedbStore::open(dir.path(), &dir.path().join("keys")).unwrap());
                // Merge the blind-index delta every other entry, so searches here meet both
                // the delta and the sorted index.
                s.set_index_merge_at(2);
                Fixture { dir, records: s.clone(), keys: s.clone(), principals: s, pg: None, _cluster: None }
            }
            Backend::Postgres => {
                let pg = cluster();
                let cfg = PgConfig::new(fresh_database(&pg));
                let s = Arc::new(PgStore::connect(&cfg).unwrap());
                Fixture {
                    dir,
                    records: s.clone(),
                    keys: s.clone(),
                    principals: s,
                    pg: Some((pg.clone(), cfg)),
                    _cluster: Some(pg),
                }
            }
        }
    }

    /// A fresh handle on this fixture's log storage, as a restarted node would open it.
    fn log_storage(&self) -> Arc<dyn LogStorage> {
        match &self.pg {
            None => Arc::new(FileStorage::open(&self.dir.path().join("log")).unwrap()),
            Some((_, cfg)) => Arc::new(PgStore::connect(cfg).unwrap().log_storage().unwrap()),
        }
    }

    fn log(&self) -> Log {
        let mut cfg = LogConfig::new(self.dir.path(), ORIGIN);
        cfg.max_delay = Duration::from_micros(200);
        Log::open_with(cfg, self.log_storage()).unwrap()
    }
}

fn ids(c: &str, r: &str) -> (CollectionName, RecordId) {
    (CollectionName::new(c).unwrap(), RecordId::new(r).unwrap())
}

fn record(subject: &str, body: &str) -> StoredRecord {
    StoredRecord {
        subject: SubjectId::new(subject).unwrap(),
        jurisdiction: Jurisdiction::new("US").unwrap(),
        key_version: 1,
        fields: BTreeMap::from([
            ("handle".to_string(), StoredValue::Plain(format!("\"{body}\"").into_bytes())),
            ("email".to_string(), StoredValue::Sealed(vec![7; 40])),
        ]),
        terms: BTreeMap::new(),
    }
}

fn term(n: u8) -> [u8; 32] {
    [n; 32]
}

fn records_round_trip(b: Backend) {
    let f = Fixture::new(b);
    let (c, r) = ids("profiles", "r1");
    assert_eq!(f.records.get(&c, &r).unwrap(), None);
    let rec = record("s1", "one");
    f.records.put(&c, &r, &rec, true, &[], &[]).unwrap();
    assert_eq!(f.records.get(&c, &r).unwrap(), Some(rec.clone()));
    let again = f.records.put(&c, &r, &record("s1", "two"), true, &[], &[]);
    assert!(matches!(again, Err(VaultError::AlreadyExists(_))), "{again:?}");
    assert_eq!(f.records.get(&c, &r).unwrap(), Some(rec), "a refused create changes nothing");
    f.records.put(&c, &r, &record("s1", "two"), false, &[], &[]).unwrap();
    assert_eq!(f.records.get(&c, &r).unwrap(), Some(record("s1", "two")));
    let (other, _) = ids("other", "r1");
    assert_eq!(f.records.get(&other, &r).unwrap(), None, "collections are apart");
    assert!(f.records.delete(&c, &r, &[]).unwrap());
    assert!(!f.records.delete(&c, &r, &[]).unwrap());
    assert_eq!(f.records.get(&c, &r).unwrap(), None);
}

/// Records created in one batch are found and erased by subject like ones created singly, and
/// an erased record cannot be created again in a batch either.
fn batch_created_records_belong_to_their_subject(b: Backend) {
    let f = Fixture::new(b);
    let c = CollectionName::new("profiles").unwrap();
    let batch: Vec<_> = [("b1", "s1"), ("b2", "s2"), ("b3", "s1")]
        .into_iter()
        .map(|(id, subject)| (RecordId::new(id).unwrap(), record(subject, id), Vec::new()))
        .collect();
    f.records.put_new_many(&c, &batch).unwrap();
    let s1 = SubjectId::new("s1").unwrap();
    let mut found: Vec<String> =
        f.records.subject_records(&s1, 10).unwrap().into_iter().map(|(_, id)| id.as_str().to_string()).collect();
    found.sort();
    assert_eq!(found, ["b1", "b3"], "{b:?}");
    assert_eq!(f.records.tombstone_subject(&s1).unwrap(), 2);
    let gone = f.records.get(&c, &RecordId::new("b1").unwrap());
    assert!(matches!(gone, Err(VaultError::Erased(_))), "{b:?}: {gone:?}");
    assert!(f.records.get(&c, &RecordId::new("b2").unwrap()).unwrap().is_some(), "s2 is untouched");
    let again = f.records.put_new_many(&c, &batch[..1]);
    assert!(matches!(again, Err(VaultError::Erased(_))), "{b:?}: {again:?}");
}

/// A raw scan pages the same records, in the same order, as the decoding scan: the bytes
/// decode as borrowed views of exactly those records, other collections and tombstoned
/// records are left out, and paging resumes after the last id.
fn raw_scan_pages_what_scan_does(b: Backend) {
    let f = Fixture::new(b);
    let c = CollectionName::new("profiles").unwrap();
    let batch: Vec<_> = (0..7)
        .map(|i| {
            (RecordId::new(format!("r{i}")).unwrap(), record(&format!("s{}", i % 3), &format!("v{i}")), Vec::new())
        })
        .collect();
    f.records.put_new_many(&c, &batch).unwrap();
    let (other, r) = ids("profilez", "r0");
    f.records.put(&other, &r, &record("s0", "elsewhere"), true, &[], &[]).unwrap();
    f.records.tombstone_subject(&SubjectId::new("s1").unwrap()).unwrap();

    let owned = f.records.scan(&c, None, 100).unwrap();
    assert_eq!(owned.len(), 5, "{b:?}: r1 and r4 belong to the erased subject");
    let mut page = RawPage::default();
    let (mut after, mut seen) = (None::<String>, Vec::new());
    loop {
        f.records.scan_raw(&c, after.as_deref(), 3, &mut page).unwrap();
        for (id, bytes) in page.iter() {
            let view = RecordView::decode(|| id.to_string(), bytes).unwrap();
            seen.push((id.to_string(), view.subject.to_string()));
            let (_, rec) = owned.iter().find(|(i, _)| i.as_str() == id).unwrap();
            assert_eq!(view.field("email"), rec.fields.get("email").map(StoredValue::view), "{b:?}");
            assert_eq!(view.field("handle"), rec.fields.get("handle").map(StoredValue::view), "{b:?}");
        }
        if page.len() < 3 {
            break;
        }
        after = page.last_id().map(str::to_string);
    }
    let ids: Vec<_> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<_> = owned.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, want, "{b:?}");
    assert!(seen.iter().all(|(_, s)| s != "s1"), "{b:?}");
}

fn blind_index_follows_writes(b: Backend) {
    let f = Fixture::new(b);
    let c = CollectionName::new("profiles").unwrap();
    let email = |n| vec![("email".to_string(), term(n))];
    for id in ["r3", "r1", "r2"] {
        f.records.put(&c, &RecordId::new(id).unwrap(), &record("s", id), true, &[], &email(1)).unwrap();
    }
    let want: Vec<RecordId> = ["r1", "r2", "r3"].into_iter().map(|s| RecordId::new(s).unwrap()).collect();
    assert_eq!(f.records.search(&c, "email", &term(1), 10).unwrap(), want, "ordered by id");
    assert_eq!(f.records.search(&c, "email", &term(1), 2).unwrap().len(), 2);
    assert!(f.records.search(&c, "phone", &term(1), 10).unwrap().is_empty());
    let r1 = RecordId::new("r1").unwrap();
    f.records.put(&c, &r1, &record("s", "r1"), false, &email(1), &email(2)).unwrap();
    assert_eq!(f.records.search(&c, "email", &term(2), 10).unwrap(), vec![r1.clone()]);
    assert_eq!(f.records.search(&c, "email", &term(1), 10).unwrap().len(), 2);
    assert!(f.records.delete(&c, &RecordId::new("r2").unwrap(), &email(1)).unwrap());
    assert_eq!(f.records.search(&c, "email", &term(1), 10).unwrap(), vec![RecordId::new("r3").unwrap()]);
}

fn subject_keys_are_created_once_and_destroyed(b: Backend) {
    let f = Fixture::new(b);
    let s = SubjectId::new("s1").unwrap();
    assert_eq!(f.keys.subject_key(&s).unwrap(), None);
    assert!(!f.keys.destroy_subject_key(&s).unwrap());
    let k1 = WrappedKey { version: 1, wrapped: vec![1; 60] };
    let k2 = WrappedKey { version: 1, wrapped: vec![2; 60] };
    assert_eq!(f.keys.insert_subject_key(&s, &k1).unwrap(), KeyState::Active(k1.clone()));
    assert_eq!(f.keys.insert_subject_key(&s, &k2).unwrap(), KeyState::Active(k1.clone()), "first one wins");
    assert!(f.keys.destroy_subject_key(&s).unwrap());
    assert!(!f.keys.destroy_subject_key(&s).unwrap());
    assert_eq!(f.keys.subject_key(&s).unwrap(), Some(KeyState::Destroyed { version: 1 }));
    assert_eq!(f.keys.insert_subject_key(&s, &k2).unwrap(), KeyState::Destroyed { version: 1 }, "no resurrection");
    assert!(!format!("{:?}", f.keys.subject_key(&s).unwrap()).contains("wrapped"));
}

fn subject_keys_are_read_together_in_the_order_asked(b: Backend) {
    let f = Fixture::new(b);
    let [live, gone, never] = ["live", "gone", "never"].map(|s| SubjectId::new(s).unwrap());
    let k = WrappedKey { version: 1, wrapped: vec![7; 60] };
    f.keys.insert_subject_keys(&[(live.clone(), k.clone()), (gone.clone(), k.clone())]).unwrap();
    assert!(f.keys.destroy_subject_key(&gone).unwrap());
    assert_eq!(
        f.keys.subject_keys(&[&never, &live, &gone, &live]).unwrap(),
        vec![
            None,
            Some(KeyState::Active(k.clone())),
            Some(KeyState::Destroyed { version: 1 }),
            Some(KeyState::Active(k.clone()))
        ]
    );
    // Sorted, as a scan's page asks.
    assert_eq!(
        f.keys.subject_keys(&[&gone, &live, &never]).unwrap(),
        vec![Some(KeyState::Destroyed { version: 1 }), Some(KeyState::Active(k.clone())), None]
    );
    assert!(f.keys.subject_keys(&[]).unwrap().is_empty());
}

fn concurrent_key_creation_agrees(b: Backend) {
    let f = Fixture::new(b);
    let s = SubjectId::new("racy").unwrap();
    let got: Vec<KeyState> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..8u8)
            .map(|n| {
                let (keys, s) = (&f.keys, &s);
                scope.spawn(move || {
                    keys.insert_subject_key(s, &WrappedKey { version: 1, wrapped: vec![n; 60] }).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(got.windows(2).all(|w| w[0] == w[1]), "every writer sees the one key in force: {got:?}");
}

fn system_keys_are_created_once(b: Backend) {
    let f = Fixture::new(b);
    assert_eq!(f.keys.system_key("blind-index").unwrap(), None);
    assert_eq!(f.keys.insert_system_key("blind-index", b"one").unwrap(), b"one");
    assert_eq!(f.keys.insert_system_key("blind-index", b"two").unwrap(), b"one");
    assert_eq!(f.keys.system_key("blind-index").unwrap(), Some(b"one".to_vec()));
}

fn principal(id: &str, version: u64) -> PrincipalRecord {
    PrincipalRecord {
        id: PrincipalId::new(id).unwrap(),
        kind: PrincipalKind::Engineer,
        attrs: PrincipalAttrs {
            location: Jurisdiction::new("US").unwrap(),
            employer: "provider".into(),
            roles: vec!["support".into()],
            subject: None,
            tags: BTreeMap::new(),
        },
        token_sha256: [3; 32],
        revoked: false,
        version,
        expires_at: (version > 1).then_some(1_900_000_000),
    }
}

fn principals_are_replaced_and_listed_in_order(b: Backend) {
    let f = Fixture::new(b);
    assert_eq!(f.principals.principal(&PrincipalId::new("bob").unwrap()).unwrap(), None);
    for id in ["carol", "alice", "bob"] {
        f.principals.put_principal(&principal(id, 1)).unwrap();
    }
    let mut bob = principal("bob", 2);
    bob.revoked = true;
    f.principals.put_principal(&bob).unwrap();
    assert_eq!(f.principals.principal(&bob.id).unwrap(), Some(bob.clone()));
    let all: Vec<String> = f.principals.principals().unwrap().into_iter().map(|p| p.id.to_string()).collect();
    assert_eq!(all, ["alice", "bob", "carol"]);
}

const SCHEMA: &str = r#"
[collections.profiles.fields.email]
type = "string"
class = "protected"
searchable = true
[collections.profiles.fields.handle]
type = "string"
class = "public"
searchable = true
"#;

fn vault_seals_searches_and_shreds(b: Backend) {
    let f = Fixture::new(b);
    let provider = Arc::new(FileKeyProvider::create(&f.dir.path().join("keys/kek")).unwrap());
    let vault = Vault::new(f.records.clone(), f.keys.clone(), provider).unwrap();
    let schema = Schema::from_toml(SCHEMA).unwrap();
    let c = CollectionName::new("profiles").unwrap();
    let write = |id: &str, subject: &str, email: &str| {
        let body = serde_json::json!({"email": email, "handle": format!("h-{id}")});
        let fields = schema.validate_fields(&c, body.as_object().unwrap(), false).unwrap();
        let (s, j) = (SubjectId::new(subject).unwrap(), Jurisdiction::new("US").unwrap());
        vault.write(&schema, &c, &RecordId::new(id).unwrap(), &s, &j, &fields, WriteMode::Create)
    };
    write("r1", "s1", "canary-7f3a@example.com").unwrap();
    write("r2", "s1", "b@x").unwrap();
    write("r3", "s2", "b@x").unwrap();
    let open = |id: &str| {
        let r = RecordId::new(id).unwrap();
        let stored = vault.load(&c, &r)?;
        vault.open(&schema, &c, &r, &stored, |_| true)
    };
    assert_eq!(open("r1").unwrap().fields[&FieldName::new("email").unwrap()], "canary-7f3a@example.com");
    let stored = f.records.get(&c, &RecordId::new("r1").unwrap()).unwrap().unwrap();
    assert!(!format!("{stored:?}").contains("canary"), "the store only ever sees ciphertext");
    let email = FieldName::new("email").unwrap();
    assert_eq!(vault.search(&c, &email, &"b@x".into(), 10).unwrap().len(), 2);
    assert!(vault.destroy_subject_key(&SubjectId::new("s1").unwrap()).unwrap());
    assert!(matches!(open("r1"), Err(VaultError::Erased(_))));
    assert!(matches!(open("r2"), Err(VaultError::Erased(_))));
    assert_eq!(open("r3").unwrap().fields.len(), 2);
    assert!(matches!(write("r4", "s1", "z"), Err(VaultError::Erased(_))), "an erased subject gets no new key");
}

fn read_all(s: &dyn LogStorage, from: u64) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_frames(from).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn log_storage_keeps_frames_tiles_and_checkpoint(b: Backend) {
    let f = Fixture::new(b);
    let s = f.log_storage();
    assert_eq!(s.frames_len().unwrap(), 0);
    assert!(read_all(s.as_ref(), 0).is_empty());
    let mut all = Vec::new();
    for n in 0..100u8 {
        let frame = vec![n; usize::from(n) * 37 + 1];
        s.append_frame(&frame).unwrap();
        all.extend_from_slice(&frame);
    }
    assert_eq!(s.frames_len().unwrap(), all.len() as u64);
    for from in [0, 1, 37, 38, 1000, all.len() as u64 - 1, all.len() as u64] {
        assert_eq!(read_all(s.as_ref(), from), all[from as usize..], "from byte {from}");
    }
    s.truncate_frames(5000).unwrap();
    all.truncate(5000);
    let reopened = f.log_storage();
    assert_eq!(reopened.frames_len().unwrap(), 5000);
    assert_eq!(read_all(reopened.as_ref(), 4000), all[4000..]);
    reopened.append_frame(b"after").unwrap();
    all.extend_from_slice(b"after");
    assert_eq!(read_all(reopened.as_ref(), 0), all);

    let full = Tile::hashes(0, 3, 256).unwrap();
    let p3 = Tile::hashes(0, 3, 3).unwrap();
    let p7 = Tile::hashes(0, 3, 7).unwrap();
    let e5 = Tile::entries(3, 5).unwrap();
    assert_eq!(s.read_tile(&p3).unwrap(), None);
    s.write_tile(&p7, &[7; 7 * 32]).unwrap();
    s.write_tile(&p3, &[3; 3 * 32]).unwrap();
    s.write_tile(&e5, b"bundle").unwrap();
    assert_eq!(s.partial_widths(&full).unwrap(), vec![3, 7]);
    assert_eq!(s.read_tile(&p3).unwrap(), Some(vec![3; 96]));
    s.write_tile(&p3, &[4; 3 * 32]).unwrap();
    assert_eq!(s.read_tile(&p3).unwrap(), Some(vec![4; 96]), "a rewrite replaces");
    s.write_tile(&full, &[9; 256 * 32]).unwrap();
    assert!(s.partial_widths(&full).unwrap().is_empty(), "a full tile removes its partials");
    assert_eq!(s.read_tile(&e5).unwrap(), Some(b"bundle".to_vec()), "other tiles stay");
    s.remove_partials(&Tile::entries(3, 256).unwrap()).unwrap();
    assert_eq!(s.read_tile(&e5).unwrap(), None);

    assert_eq!(s.read_checkpoint().unwrap(), None);
    s.write_checkpoint(b"one").unwrap();
    s.write_checkpoint(b"two").unwrap();
    assert_eq!(f.log_storage().read_checkpoint().unwrap(), Some(b"two".to_vec()));
}

fn log_on_backend_survives_reopen_with_consistent_checkpoints(b: Backend) {
    let f = Fixture::new(b);
    let log = f.log();
    let verifier = log.verifier().clone();
    let entries: Vec<Vec<u8>> = (0..600).map(|i| format!("{{\"entry\":{i}}}").into_bytes()).collect();
    let receipts: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let (log, entries) = (&log, &entries);
                s.spawn(move || {
                    (0..entries.len())
                        .filter(|i| i % 8 == t)
                        .map(|i| (i, log.submit(entries[i].clone()).unwrap().wait().unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut indexes: Vec<u64> = receipts.iter().map(|(_, r)| r.index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..600).collect::<Vec<_>>(), "every index once");
    for (i, r) in &receipts {
        r.verify(&verifier, &entries[*i]).unwrap();
    }
    log.close().unwrap();

    let log = f.log();
    assert_eq!(log.size(), 600, "{b:?}: nothing acknowledged is lost");
    let old_text = log.checkpoint_text();
    let (old, _) = Checkpoint::open(old_text.as_bytes(), ORIGIN, &[&verifier]).unwrap();
    assert_eq!(old.size, 600, "a reopened log checkpoints what it recovered");
    let r = log.submit(b"next".to_vec()).unwrap().wait().unwrap();
    assert_eq!(r.index, 600);
    log.close().unwrap();
    let log = f.log();
    let text = log.checkpoint_text();
    let (new, _) = Checkpoint::open(text.as_bytes(), ORIGIN, &[&verifier]).unwrap();
    assert_eq!(new.size, 601);
    let proof = log.prove_consistency(old.size, new.size).unwrap();
    custody_tlog::check_tree(&proof, new.size, &new.root_hash, old.size, &old.root_hash).unwrap();
    for (i, rc) in receipts.iter().take(20) {
        let proof = log.prove_inclusion(rc.index, new.size).unwrap();
        let leaf = custody_tlog::leaf_hash(&entries[*i]);
        custody_tlog::check_record(&proof, new.size, &new.root_hash, rc.index, &leaf).unwrap();
    }
    log.close().unwrap();
}

fn log_cuts_a_torn_tail(b: Backend) {
    let f = Fixture::new(b);
    let log = f.log();
    for i in 0..5u64 {
        log.submit(format!("e{i}").into_bytes()).unwrap().wait().unwrap();
    }
    log.close().unwrap();
    let s = f.log_storage();
    let len = s.frames_len().unwrap();
    // Half a frame: magic, index 5, one entry of 100 bytes of which 10 arrived.
    let torn = [&b"CLW1"[..], &5u64.to_be_bytes(), &1u32.to_be_bytes(), &100u32.to_be_bytes(), &[9; 10]].concat();
    s.append_frame(&torn).unwrap();
    drop(s);
    let log = f.log();
    assert_eq!(log.size(), 5);
    assert_eq!(f.log_storage().frames_len().unwrap(), len, "{b:?}: the torn tail is cut");
    assert_eq!(log.submit(b"e5".to_vec()).unwrap().wait().unwrap().index, 5);
    log.close().unwrap();
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod redb {
            $(#[test] fn $case() { super::$case(super::Backend::Redb) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::$case(super::Backend::Postgres) })*
        }
    };
}

conformance!(
    records_round_trip,
    batch_created_records_belong_to_their_subject,
    raw_scan_pages_what_scan_does,
    blind_index_follows_writes,
    subject_keys_are_created_once_and_destroyed,
    subject_keys_are_read_together_in_the_order_asked,
    concurrent_key_creation_agrees,
    system_keys_are_created_once,
    principals_are_replaced_and_listed_in_order,
    vault_seals_searches_and_shreds,
    log_storage_keeps_frames_tiles_and_checkpoint,
    log_on_backend_survives_reopen_with_consistent_checkpoints,
    log_cuts_a_torn_tail,
);

/// PostgreSQL only: keys can live in another database, and then the records database holds
/// no key material at all (a copy of it alone decrypts nothing).
#[test]
fn keys_in_a_separate_database_stay_out_of_the_records_database() {
    let pg = cluster();
    let mut cfg = PgConfig::new(fresh_database(&pg));
    cfg.keys_url = Some(fresh_database(&pg));
    let store = PgStore::connect(&cfg).unwrap();
    let s = SubjectId::new("s1").unwrap();
    store.insert_subject_key(&s, &WrappedKey { version: 1, wrapped: vec![1; 60] }).unwrap();
    store.put(&ids("profiles", "r1").0, &ids("profiles", "r1").1, &record("s1", "x"), true, &[], &[]).unwrap();
    let records_only = PgStore::connect(&PgConfig { keys_url: None, ..cfg.clone() }).unwrap();
    assert_eq!(records_only.subject_key(&s).unwrap(), None, "the records database has no key for s1");
    assert!(records_only.get(&ids("profiles", "r1").0, &ids("profiles", "r1").1).unwrap().is_some());
    assert!(matches!(store.subject_key(&s).unwrap(), Some(KeyState::Active(_))));
}

/// PostgreSQL only: a bad connection string and an unreachable server are reported, not panics.
#[test]
fn connection_problems_are_errors() {
    let err = PgStore::connect(&PgConfig::new("host=/nonexistent/dir dbname=x user=y connect_timeout=2")).unwrap_err();
    assert!(err.to_string().contains("connection"), "{err}");
    let err = PgStore::connect(&PgConfig::new("postgres://[bad")).unwrap_err();
    assert!(err.to_string().contains("not valid"), "{err}");
}

/// PostgreSQL only: one node at a time holds the sequencer lease; when its connection ends the
/// next candidate takes it with a higher epoch, and the deposed node's fenced log writes fail
/// instead of forking the log.
#[test]
fn the_sequencer_lease_moves_and_fences_the_deposed_node() {
    use custody_pg::{Election, Seen};
    let pg = cluster();
    let cfg = PgConfig::new(fresh_database(&pg));
    let store = PgStore::connect(&cfg).unwrap();
    store.log_storage().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut a = Election::new(cfg.url.clone(), "http://node-a");
    let mut b = Election::new(cfg.url.clone(), "http://node-b");
    let lease_a = match rt.block_on(a.poll()).unwrap() {
        Seen::Elected(l) => l,
        other => panic!("the first candidate was not elected: {other:?}"),
    };
    match rt.block_on(b.poll()).unwrap() {
        Seen::Follower { epoch, url } => assert_eq!((epoch, url.as_str()), (lease_a.epoch(), "http://node-a")),
        other => panic!("the second candidate should follow: {other:?}"),
    }
    let fenced_a = store.log_storage().unwrap().fenced(lease_a.epoch());
    fenced_a.append_frame(b"frame-1").unwrap();

    // A's connection ends (as when its process dies): B is elected with the next epoch.
    drop(lease_a);
    let lease_b = (0..100)
        .find_map(|_| match rt.block_on(b.poll()).unwrap() {
            Seen::Elected(l) => Some(l),
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        })
        .expect("B takes the lease once A's connection is gone");
    assert!(lease_b.epoch() > 1);

    // A still believes it sequences: every kind of log write it tries is refused.
    let err = fenced_a.append_frame(b"frame-2").unwrap_err().to_string();
    assert!(err.contains("no longer holds the log's sequencer lease"), "{err}");
    assert!(fenced_a.write_checkpoint(b"stale").is_err());
    let tile = Tile::entries(0, 1).unwrap();
    assert!(fenced_a.write_tile(&tile, b"x").is_err());
    assert!(fenced_a.truncate_frames(0).is_err());
    // B writes under its epoch, after what A wrote while it held the lease.
    let fenced_b = store.log_storage().unwrap().fenced(lease_b.epoch());
    assert_eq!(fenced_b.frames_len().unwrap(), 7);
    fenced_b.append_frame(b"frame-2").unwrap();
    assert_eq!(read_all(&fenced_b, 0), b"frame-1frame-2");
}
