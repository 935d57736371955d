//! Two `custody serve` nodes on one real PostgreSQL: the first sequences the log, the second
//! forwards its entries there. Under concurrent guarded writes on both nodes the sequencer is
//! SIGKILLed; the second node takes the lease over, and afterwards every receipt any client got
//! (from either node, before or after the kill) is proved included in the latest checkpoint,
//! and every checkpoint seen during the run is consistent with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use custody_client::{Client, Receipt};
use custody_pg::testing::TempPostgres;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

mod common;

use common::{Server, checkpoint_covering, copy_dir, prove};

/// The takeover bound this test holds the cluster to: lease poll (250 ms) plus recovering the
/// tree from the database, with room for a loaded CI machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(15);

fn profile(n: u64) -> Map<String, Value> {
    json!({"email": format!("c{n}@mail.example"), "phone": "+1555", "handle": format!("h{n}"), "bio": "hi"})
        .as_object()
        .unwrap()
        .clone()
}

/// Writes on `client` until `stop`, keeping every receipt it is given.
async fn writer(
    client: Client,
    tag: &'static str,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    receipts: Arc<Mutex<Vec<Receipt>>>,
    failures: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        match client.create("profiles", Some(&format!("{tag}{n}")), &format!("s{n}"), profile(n)).await {
            Ok(w) => receipts.lock().await.push(w.receipt),
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_dies_under_load_and_the_other_node_takes_over_losing_nothing() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.create_database("custody").unwrap();
    let flags = ["--storage", "postgres", "--postgres-url", &url, "--checkpoint-interval-ms", "100"];
    let mut a = Server::start_with(&flags);
    let app_token = a.principal("clips-backend", "workload", "US", &["--role", "app-backend"]);
    let monitor_token = a.principal("auditor", "monitor", "US", &[]);

    // Node B: another machine with the same secrets (KEK, log key), schema and policies.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&a.data(), &dir.path().join("data"));
    let _ = std::fs::remove_file(dir.path().join("data/admin.sock"));
    let b = Server::start_in(dir, &flags);

    let key = a.client(&monitor_token).log_key().await.unwrap();
    let monitor_b = b.client(&monitor_token);
    assert_eq!(monitor_b.log_key().await.unwrap(), key, "a follower serves the sequencer's log (proxied)");

    // A write through the follower is forwarded, sequenced on A, and proved from B.
    let first = b.client(&app_token).create("profiles", Some("first"), "s-first", profile(0)).await.unwrap();
    let cp = checkpoint_covering(&monitor_b, &key, first.receipt.index).await;
    prove(&monitor_b, &key, std::slice::from_ref(&first.receipt), &cp).await;

    let stop = Arc::new(AtomicBool::new(false));
    let receipts = Arc::new(Mutex::new(vec![first.receipt]));
    let failures = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, tag) = if i % 2 == 0 { (a.client(&app_token), "a") } else { (b.client(&app_token), "b") };
        tasks.push(tokio::spawn(writer(client, tag, next.clone(), stop.clone(), receipts.clone(), failures.clone())));
    }
    // Checkpoints as a monitor sees them through B, all along.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (seen, stop, m) = (seen.clone(), stop.clone(), b.client(&monitor_token));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(cp) = m.checkpoint().await {
                    seen.lock().await.push(cp);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = receipts.lock().await.len();
    assert!(before > 20, "only {before} writes succeeded before the kill");
    // SIGKILL the sequencer in the middle of the load.
    let killed = Instant::now();
    a.kill();
    // B takes over: its next write succeeds within the bound.
    let b_app = b.client(&app_token);
    let took_over = loop {
        if b_app
            .create("profiles", Some(&format!("probe{}", killed.elapsed().as_millis())), "s-p", profile(1))
            .await
            .is_ok()
        {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < TAKEOVER_BOUND, "node B did not take over within {TAKEOVER_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("node B took over {took_over:?} after the sequencer was killed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    watcher.await.unwrap();

    let receipts = receipts.lock().await.clone();
    let after = receipts.len() - before;
    assert!(after > 0, "no write succeeded after the takeover");
    let last = receipts.iter().map(|r| r.index).max().unwrap();
    let latest = checkpoint_covering(&monitor_b, &key, last).await;
    // Every acknowledged entry, from either node, is in the log B now sequences.
    prove(&monitor_b, &key, &receipts, &latest).await;
    let indexes: std::collections::BTreeSet<u64> = receipts.iter().map(|r| r.index).collect();
    assert_eq!(indexes.len(), receipts.len(), "two receipts for one index: the log forked");
    // Every checkpoint seen before, during and after the failover is consistent with the latest.
    let latest_size = custody_verify::verify_checkpoint(&latest, &key).unwrap().size;
    let seen = seen.lock().await.clone();
    assert!(!seen.is_empty());
    for old in &seen {
        let size = custody_verify::verify_checkpoint(old, &key).unwrap().size;
        if size == 0 || size > latest_size {
            continue;
        }
        let proof = monitor_b.consistency_proof(size, latest_size).await.unwrap();
        custody_verify::verify_consistency(old, &latest, &key, &proof).unwrap();
    }
    eprintln!(
        "{} receipts proved ({before} before the kill, {after} after), {} checkpoints consistent, {} requests failed during the failover",
        receipts.len(),
        seen.len(),
        failures.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forward_is_refused_and_a_revocation_reaches_the_other_node() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.create_database("custody").unwrap();
    let flags = ["--storage", "postgres", "--postgres-url", &url];
    let a = Server::start_with(&flags);
    let token = a.principal("clips-backend", "workload", "US", &["--role", "app-backend"]);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&a.data(), &dir.path().join("data"));
    let _ = std::fs::remove_file(dir.path().join("data/admin.sock"));
    let b = Server::start_in(dir, &flags);

    // Someone without the log's key cannot append through the sequencer's internal route.
    let http = reqwest::Client::new();
    let forged = json!({"sent_ms": 0, "entries": ["{}"]});
    let r = http
        .post(format!("{}/internal/log/append", a.base))
        .header("x-custody-node-mac", "AAAA")
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("MAC"));

    // Both nodes serve the principal; revoked on A, B refuses it within the cache TTL.
    let on_b = b.client(&token);
    on_b.create("profiles", Some("x1"), "s1", profile(1)).await.unwrap();
    let out = a.cli(&["principal", "revoke", "clips-backend"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match on_b.create("profiles", Some("x2"), "s2", profile(2)).await {
            Err(e) if e.status().map(|s| s.as_u16()) == Some(401) => break,
            _ => assert!(Instant::now() < deadline, "node B still accepts a principal revoked on node A"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn noisy_export(c: &Client, eps: f64) -> Result<(), custody_client::ClientError> {
    let req = json!({
        "collection": "profiles", "profile": "global-metrics", "destination": "global", "purpose": "global-models",
        "aggregate": {"group_by": ["precise_location"], "k": 2, "noise": {"mechanism": "laplace", "epsilon": eps}},
    });
    c.export(&req, |_| Ok(()), |_| {}).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epsilon_budget_is_one_across_nodes_and_survives_the_sequencers_death() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.create_database("custody").unwrap();
    let flags = ["--storage", "postgres", "--postgres-url", &url, "--egress-epsilon-budget", "1.0"];
    let mut a = Server::start_with(&flags);
    let app = a.client(&a.principal("app", "workload", "US", &["--role", "app-backend"]));
    for n in 0..30u64 {
        let place = ["US-CA-1", "US-NY-2"][(n % 2) as usize];
        let f = json!({
            "email": format!("e{n}@mail.example"), "phone": "+1555", "birthdate": "1990-01-01",
            "precise_location": place, "device_id": format!("d{n}"),
            "handle": format!("h{n}"), "display_name": format!("User {n}"), "watch_minutes": 100 + n,
        })
        .as_object()
        .unwrap()
        .clone();
        app.create("profiles", Some(&format!("r{n}")), &format!("s{n}"), f).await.unwrap();
    }
    let token = a.principal("exp", "engineer", "US", &["--employer", "provider", "--role", "egress"]);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&a.data(), &dir.path().join("data"));
    let _ = std::fs::remove_file(dir.path().join("data/admin.sock"));
    let b = Server::start_in(dir, &flags);

    // Spent through the follower (run on the sequencer, A).
    noisy_export(&b.client(&token), 0.6).await.unwrap();
    a.kill();
    let on_b = b.client(&token);
    let deadline = Instant::now() + TAKEOVER_BOUND;
    let refused = loop {
        match noisy_export(&on_b, 0.6).await {
            Err(e) if e.status().map(|s| s.as_u16()) == Some(403) => break e,
            Err(_) => assert!(Instant::now() < deadline, "node B did not take over"),
            Ok(()) => panic!("the new sequencer exported past the budget A had spent"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The refusal is logged with its reason, in the log B now sequences.
    let doc = serde_json::to_value(refused.problem().expect("a problem document")).unwrap();
    let entry: Value = serde_json::from_str(doc["receipt"]["detail"]["entry"].as_str().unwrap()).unwrap();
    assert!(entry["reasons"][0].as_str().unwrap().starts_with("epsilon-budget-exhausted"), "{entry}");
    noisy_export(&on_b, 0.4).await.unwrap();
}
