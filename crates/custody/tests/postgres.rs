//! End to end on PostgreSQL: a real `custody serve` with `--storage postgres` against a real
//! PostgreSQL (initdb/pg_ctl in a temporary directory, unix socket), records and keys in two
//! databases. Guarded writes and reads carry receipts that verify and are proved included;
//! a restart on the same databases keeps every record and continues the same log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use custody_client::Reason;
use custody_pg::testing::TempPostgres;
use serde_json::{Map, Value, json};

mod common;

use common::{Server, checkpoint_covering, copy_dir, prove};

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_reads_and_writes_on_postgres_carry_receipts_and_survive_restart() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.create_database("custody").unwrap();
    let keys_url = pg.create_database("custody_keys").unwrap();
    let flags = [
        "--storage",
        "postgres",
        "--postgres-url",
        &url,
        "--postgres-keys-url",
        &keys_url,
        "--checkpoint-interval-ms",
        "100",
    ];
    let s = Server::start_with(&flags);
    let app = s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]));
    let engineer = s
        .client(&s.principal("alice", "engineer", "US", &["--employer", "provider", "--role", "support"]))
        .with_reason(Reason::new("support", "TICKET-42"));
    let monitor = s.client(&s.principal("auditor", "monitor", "US", &[]));
    let key = monitor.log_key().await.unwrap();

    let mut receipts = Vec::new();
    for n in 0..10 {
        let body = json!({"email": format!("pg-canary-{n}@mail.example"), "phone": "+1555", "handle": format!("h{n}"), "bio": "hi"});
        let w = app.create("profiles", Some(&format!("u{n}")), &format!("subj-{n}"), fields(body)).await.unwrap();
        receipts.push(w.receipt);
    }
    let r = engineer.get("profiles", "u3").await.unwrap();
    assert_eq!(r.record.fields["email"], "pg-canary-3@mail.example");
    receipts.push(r.receipt);
    let found = engineer.search("profiles", "email", json!("pg-canary-4@mail.example")).await.unwrap();
    assert_eq!(found.records.len(), 1);
    let w = app.update("profiles", "u5", fields(json!({"email": "moved@mail.example"}))).await.unwrap();
    receipts.push(w.receipt);
    assert_eq!(engineer.get("profiles", "u5").await.unwrap().record.fields["email"], "moved@mail.example");
    receipts.push(app.delete("profiles", "u9").await.unwrap().receipt);
    assert_eq!(engineer.get("profiles", "u9").await.unwrap_err().status().unwrap().as_u16(), 404);

    let last = receipts.iter().map(|r| r.index).max().unwrap();
    let checkpoint = checkpoint_covering(&monitor, &key, last).await;
    prove(&monitor, &key, &receipts, &checkpoint).await;
    for gone in ["records.redb", "keys/keys.redb", "log/entries.wal", "log/checkpoint"] {
        assert!(!s.data().join(gone).exists(), "{gone} exists: the data dir should keep only secrets and config");
    }

    // A restart on a copy of the data dir (only the KEK, log key, schema and policies matter)
    // and the same databases: records are all there and the log continues.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&s.data(), &dir.path().join("data"));
    let _ = std::fs::remove_file(dir.path().join("data/admin.sock"));
    drop(s);
    let s = Server::start_in(dir, &flags);
    let engineer = s
        .client(&s.principal("alice2", "engineer", "US", &["--employer", "provider", "--role", "support"]))
        .with_reason(Reason::new("support", "TICKET-44"));
    let monitor = s.client(&s.principal("auditor2", "monitor", "US", &[]));
    assert_eq!(monitor.log_key().await.unwrap(), key, "the same log");
    let r = engineer.get("profiles", "u5").await.unwrap();
    assert_eq!(r.record.fields["email"], "moved@mail.example");
    assert!(r.receipt.index > last, "indexes continue after the restart");
    let later = checkpoint_covering(&monitor, &key, r.receipt.index).await;
    let (old, new) = (
        custody_verify::verify_checkpoint(&checkpoint, &key).unwrap().size,
        custody_verify::verify_checkpoint(&later, &key).unwrap().size,
    );
    let proof = monitor.consistency_proof(old, new).await.unwrap();
    custody_verify::verify_consistency(&checkpoint, &later, &key, &proof).unwrap();
    receipts.push(r.receipt);
    prove(&monitor, &key, &receipts, &later).await;
}
