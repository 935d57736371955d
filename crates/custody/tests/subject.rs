//! Subject rights and key custody against a real `custody serve`: export with proofs,
//! erasure by crypto-shredding (checked against a pre-erasure copy of record storage), and
//! KEK rotation under concurrent load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use custody_client::{Client, ClientError, Reason};
use serde_json::{Map, Value, json};

mod common;

use common::Server;

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn status(e: &ClientError) -> u16 {
    e.status().unwrap().as_u16()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

async fn seed(app: &Client, id: &str, subject: &str, canary: &str) {
    app.create(
        "profiles",
        Some(id),
        subject,
        fields(json!({"email": format!("{canary}@mail.example"), "phone": format!("+1{canary}"), "handle": format!("h{id}")})),
    )
    .await
    .unwrap();
}

/// Waits until the signed checkpoint covers every entry logged so far.
async fn settle(c: &Client) {
    let key = c.log_key().await.unwrap();
    let probe = c.checkpoint().await.unwrap();
    let want = custody_verify::verify_checkpoint(&probe, &key).unwrap().size;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while custody_verify::verify_checkpoint(&c.checkpoint().await.unwrap(), &key).unwrap().size < want {
        assert!(Instant::now() < deadline, "the log stopped checkpointing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn app(s: &Server) -> Client {
    s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]))
}

fn privacy_operator(s: &Server) -> Client {
    s.client(&s.principal("priv-ops", "engineer", "US", &["--employer", "provider", "--role", "privacy"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_gives_every_record_and_every_log_entry_with_proofs() {
    let s = Server::start_with(&["--checkpoint-interval-ms", "100"]);
    let app = app(&s);
    seed(&app, "u1", "subj-1", "canary-x1").await;
    seed(&app, "u2", "subj-1", "canary-x2").await;
    seed(&app, "u3", "subj-2", "canary-x3").await;
    let engineer = s
        .client(&s.principal("alice", "engineer", "US", &["--employer", "provider"]))
        .with_reason(Reason::new("support", "TICKET-7"));
    engineer.get("profiles", "u1").await.unwrap();
    let me = s.client(&s.principal("me", "subject", "US", &["--subject", "subj-1"]));
    settle(&me).await;

    let export = me.export_subject("subj-1").await.unwrap();
    assert!(!export.erased);
    let mut emails: Vec<&str> = export.records.iter().map(|r| r.record.fields["email"].as_str().unwrap()).collect();
    emails.sort();
    assert_eq!(emails, ["canary-x1@mail.example", "canary-x2@mail.example"], "every record, decrypted");
    let log = export.log.as_ref().unwrap();
    let key = me.log_key().await.unwrap();
    assert_eq!(log.vkey, key);
    let cp = custody_verify::verify_checkpoint(&log.checkpoint, &key).unwrap();
    assert_eq!(cp.size, log.size);
    for e in &log.entries {
        custody_verify::verify_inclusion(&log.checkpoint, &key, e.entry.as_bytes(), &e.inclusion.to_string()).unwrap();
        assert!(e.entry.contains(&export.pseudonym));
        assert!(!e.entry.contains("subj-1") && !e.entry.contains("canary"), "pseudonyms only: {}", e.entry);
    }
    let docs: Vec<Value> = log.entries.iter().map(|e| serde_json::from_str(&e.entry).unwrap()).collect();
    let has = |f: &dyn Fn(&Value) -> bool| docs.iter().any(f);
    assert!(has(&|d| d["kind"] == "access" && d["principal"] == "alice"), "who touched the data: {docs:?}");
    assert!(has(&|d| d["kind"] == "access" && d["action"] == "write"));
    assert!(has(&|d| d["kind"] == "key" && d["key"] == "subject-dek" && d["change"] == "created"));
    assert!(has(&|d| d["kind"] == "principal" && d["principal"] == "me"));
    assert!(!docs.iter().any(|d| d.to_string().contains("canary-x3")));
    // The export's own entry was durable before it answered.
    let (entry, _) = custody_client::verify_receipt(&export.receipt, &key).unwrap();
    let logged: Value = serde_json::from_str(&entry).unwrap();
    assert_eq!((logged["kind"].as_str(), logged["request"].as_str()), (Some("subject"), Some("export")));

    // Not someone else's data.
    let e = me.export_subject("subj-2").await.unwrap_err();
    assert_eq!(status(&e), 403);
    // An operator needs a justification; with one, the export is logged with it.
    let ops = privacy_operator(&s);
    assert_eq!(status(&ops.export_subject("subj-1").await.unwrap_err()), 403);
    let on_behalf =
        ops.with_reason(Reason::new("subject-request", "DSAR-2041")).export_subject("subj-1").await.unwrap();
    assert_eq!(on_behalf.records.len(), 2);
    let (entry, _) = custody_client::verify_receipt(&on_behalf.receipt, &key).unwrap();
    assert!(entry.contains("DSAR-2041") && entry.contains("priv-ops"));
    // Other principals get nothing.
    assert_eq!(status(&app.export_subject("subj-1").await.unwrap_err()), 403);
    assert_eq!(status(&engineer.export_subject("subj-1").await.unwrap_err()), 403);

    // The CLI writes the JSON and a self-contained HTML page.
    let token = s.principal("me-cli", "subject", "US", &["--subject", "subj-1"]);
    let dir = tempfile::tempdir().unwrap();
    let (json_path, html_path) = (dir.path().join("me.json"), dir.path().join("me.html"));
    let out = s.cli(&[
        "subject",
        "export",
        "--subject",
        "subj-1",
        "--token",
        &token,
        "--server",
        &s.base,
        "--out",
        json_path.to_str().unwrap(),
        "--html",
        html_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved: custody_client::SubjectExport = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(saved.records.len(), 2);
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("canary-x1@mail.example"));
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_the_key_and_holds_against_a_pre_erasure_copy_of_record_storage() {
    let s = Server::start_with(&["--checkpoint-interval-ms", "100"]);
    let app = app(&s);
    seed(&app, "e1", "subj-e", "canary-e1").await;
    seed(&app, "e2", "subj-e", "canary-e2").await;
    seed(&app, "k1", "subj-keep", "canary-k1").await;
    let me = s.client(&s.principal("me", "subject", "US", &["--subject", "subj-e"]));
    assert_eq!(me.get("profiles", "e1").await.unwrap().record.fields["email"], "canary-e1@mail.example");

    // Copies taken before the erasure: record storage, and (for the backup case) the key store.
    let copies = tempfile::tempdir().unwrap();
    let (records_before, keys_before) = (copies.path().join("records-before"), copies.path().join("keys-before"));
    std::fs::create_dir_all(&records_before).unwrap();
    std::fs::copy(s.data().join("records.redb"), records_before.join("records.redb")).unwrap();
    std::fs::create_dir_all(&keys_before).unwrap();
    std::fs::copy(s.data().join("keys/keys.redb"), keys_before.join("keys.redb")).unwrap();

    // Someone else may not erase the subject; the subject may.
    assert_eq!(status(&app.erase_subject("subj-e").await.unwrap_err()), 403);
    let r = me.erase_subject("subj-e").await.unwrap();
    assert_eq!((r.destroyed_key, r.tombstoned), (Some(1), 2));
    let key = me.log_key().await.unwrap();
    let (entry, _) = custody_client::verify_receipt(&r.receipt, &key).unwrap();
    let logged: Value = serde_json::from_str(&entry).unwrap();
    assert_eq!((logged["request"].as_str(), logged["decision"].as_str()), (Some("erase"), Some("permit")));
    assert!(!entry.contains("subj-e"));
    let checkpoint = r.checkpoint.as_deref().unwrap();
    custody_verify::verify_inclusion(checkpoint, &key, entry.as_bytes(), &r.inclusion.to_string()).unwrap();
    let (key_entry, _) = custody_client::verify_receipt(r.key_receipt.as_ref().unwrap(), &key).unwrap();
    assert!(key_entry.contains("\"change\":\"destroyed\"") && key_entry.contains(&r.pseudonym));
    assert!(r.key_receipt.as_ref().unwrap().index > r.receipt.index, "logged before the key was destroyed");

    // Reads, searches and writes answer `erased`; the other subject is untouched.
    let e = me.get("profiles", "e1").await.unwrap_err();
    assert_eq!(status(&e), 410);
    assert_eq!(e.problem().unwrap().kind, "urn:custody:problem:erased");
    assert_eq!(status(&app.get("profiles", "e2").await.unwrap_err()), 410);
    let found = app.search("profiles", "email", json!("canary-e1@mail.example")).await.unwrap();
    assert!(found.records.is_empty(), "blind-index entries are gone");
    let again = app.create("profiles", Some("e3"), "subj-e", fields(json!({"handle": "back"}))).await.unwrap_err();
    assert_eq!(status(&again), 410, "an erased subject gets no new key");
    assert_eq!(
        status(&app.create("profiles", Some("e1"), "subj-x", fields(json!({"handle": "x"}))).await.unwrap_err()),
        410
    );
    assert_eq!(app.get("profiles", "k1").await.unwrap().record.fields["email"], "canary-k1@mail.example");
    // Erasing again is harmless and says nothing was left.
    let twice = me.erase_subject("subj-e").await.unwrap();
    assert_eq!((twice.destroyed_key, twice.tombstoned), (None, 0));
    // The export after erasure shows the erasure, and no data.
    settle(&me).await;
    let after = me.export_subject("subj-e").await.unwrap();
    assert!(after.erased && after.records.is_empty());
    assert!(after.log.unwrap().entries.iter().any(|e| e.index == r.receipt.index));

    // The guarantee: the pre-erasure copy of record storage, with the key store as it is now,
    // opens nothing: the DEK is gone.
    let keys_now = copies.path().join("keys-now");
    copy_dir(&s.data().join("keys"), &keys_now);
    let open_copy = |records: &Path, keys: &Path, kek_dir: &Path| {
        let store = Arc::new(custody_vault::RedbStore::open(records, keys).unwrap());
        let provider = Arc::new(custody_crypto::FileKeyProvider::open(&kek_dir.join("kek")).unwrap());
        let vault = custody_vault::Vault::new(store.clone(), store, provider).unwrap();
        let schema =
            custody_core::Schema::from_toml(&std::fs::read_to_string(s.data().join("schema.toml")).unwrap()).unwrap();
        let c = custody_core::CollectionName::new("profiles").unwrap();
        let id = custody_core::RecordId::new("e1").unwrap();
        let rec = vault.load(&c, &id).unwrap();
        vault.open(&schema, &c, &id, &rec, |class| class.as_str() == "protected").map(|o| o.fields.len())
    };
    let res = open_copy(&records_before, &keys_now, &keys_now);
    assert!(matches!(res, Err(custody_vault::VaultError::Erased(_))), "{res:?}");
    // (A copy of the key store taken before the erasure still holds the wrapped DEK: that
    // backup is what KEK rotation retires, below.)
    std::fs::copy(s.data().join("keys/kek"), keys_before.join("kek")).unwrap();
    assert_eq!(open_copy(&records_before, &keys_before, &keys_before).unwrap(), 2);
    // No file, copies included, holds a protected value in the clear.
    let mut files = files_under(&s.data());
    files.extend(files_under(copies.path()));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"canary-e1"), "`{}` holds the canary", f.display());
    }

    // After a KEK rotation the old KEK is destroyed, so even the pre-erasure key-store copy
    // (without its KEK file) no longer unwraps the erased subject's DEK.
    let out = s.cli(&["keys", "rotate-kek", "--batch", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.data().join("keys/kek").exists() && s.data().join("keys/kek.2").exists());
    let kek_now = copies.path().join("kek-now");
    copy_dir(&s.data().join("keys"), &kek_now);
    let backup_keys = copies.path().join("keys-backup");
    std::fs::create_dir_all(&backup_keys).unwrap();
    std::fs::copy(keys_before.join("keys.redb"), backup_keys.join("keys.redb")).unwrap();
    let store = custody_vault::RedbStore::open(&records_before, &backup_keys).unwrap();
    let provider = custody_crypto::FileKeyProvider::open(&kek_now.join("kek")).unwrap();
    let wrapped =
        match custody_vault::KeyStore::subject_key(&store, &custody_core::SubjectId::new("subj-e").unwrap()).unwrap() {
            Some(custody_vault::KeyState::Active(k)) => k.wrapped,
            other => panic!("the backup holds the live key: {other:?}"),
        };
    use custody_crypto::KeyProvider as _;
    assert!(matches!(provider.unwrap(b"anything", &wrapped), Err(custody_crypto::CryptoError::UnknownKek(1))));
    assert_eq!(app.get("profiles", "k1").await.unwrap().record.fields["email"], "canary-k1@mail.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kek_rotation_under_concurrent_load_loses_nothing() {
    let s = Server::start_with(&["--checkpoint-interval-ms", "200"]);
    let app = app(&s);
    for i in 0..200 {
        seed(&app, &format!("r{i}"), &format!("s{i}"), &format!("c{i}")).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    // Writers: new subjects (new DEKs) while the rotation runs.
    for w in 0..2 {
        let (app, stop, written) = (app.clone(), stop.clone(), written.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{w}-{n}");
                app.create(
                    "profiles",
                    Some(&id),
                    &format!("sw{w}-{n}"),
                    fields(json!({"email": format!("{id}@x"), "handle": id.clone()})),
                )
                .await
                .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            n
        }));
    }
    // Readers: existing subjects (old and new KEK) while the rotation runs.
    for r in 0..2 {
        let (app, stop) = (app.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let i = (n * 7 + r) % 200;
                let got = app.get("profiles", &format!("r{i}")).await.unwrap();
                assert_eq!(got.record.fields["email"], format!("c{i}@mail.example"));
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = s.data();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(["--format", "json", "keys", "rotate-kek", "--batch", "16"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["target"], 2);
    assert_eq!(result["retired"], json!([1]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for t in load {
        counts.push(t.await.unwrap());
    }
    assert!(counts.iter().all(|n| *n > 0), "every load task ran: {counts:?}");
    // Every record, from before and during the rotation, still reads back.
    for i in 0..200 {
        let got = app.get("profiles", &format!("r{i}")).await.unwrap();
        assert_eq!(got.record.fields["email"], format!("c{i}@mail.example"));
    }
    for (w, n) in counts.iter().take(2).enumerate() {
        for k in 0..*n {
            let id = format!("w{w}-{k}");
            assert_eq!(app.get("profiles", &id).await.unwrap().record.fields["email"], format!("{id}@x"));
        }
    }
    let search = app.search("profiles", "email", json!("c7@mail.example")).await.unwrap();
    assert_eq!(search.records.len(), 1, "the blind-index key survived the rotation");
    assert!(written.load(Ordering::Relaxed) > 0);
    // Only the new KEK remains; the server restarts on it.
    let keys = s.data().join("keys");
    assert!(!keys.join("kek").exists() && keys.join("kek.2").exists());
    let status = s.cli(&["--format", "json", "keys", "status"]);
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((v["target"].as_u64(), v["in_progress"].as_bool()), (Some(2), Some(false)));
}
