//! custody-monitor against a real `custody serve`: it follows and verifies the served log, then
//! copies of that log (re-signed with the server's own key, as a compromised provider could)
//! serve a fork, a rewritten entry, a truncation and a checkpoint without cosignatures, and
//! the monitor names each with its exit code.
//!
//! The monitor is used as a library here, where `custody serve` is available as
//! `CARGO_BIN_EXE_custody`; the `custody-monitor` binary's own tests
//! (`crates/custody-monitor/tests`) run the same checks through its command line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use custody_client::Reason;
use custody_monitor::follow::{Discard, FollowConfig, Follower, LogFault};
use custody_monitor::memlog::{MemLog, serve};
use custody_monitor::source::HttpLog;
use custody_monitor::state::StateDir;
use custody_tlog::{CosignatureSigner, Ed25519Signer};
use serde_json::json;

mod common;

use common::Server;

fn copy_state(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for name in ["verified.json", "entries.jsonl", "checkpoint"] {
        std::fs::copy(from.join(name), to.path().join(name)).unwrap();
    }
    to
}

async fn follow(url: &str, vkey: &str, state: &Path, config: FollowConfig) -> Result<u64, LogFault> {
    let mut f = Follower::new(HttpLog::new(url).unwrap(), vkey, config, Some(StateDir::open(state).unwrap())).unwrap();
    f.step(&mut Discard).await.unwrap().map(|s| s.checkpoint.size)
}

fn log_with(signer: &Ed25519Signer, entries: &[Vec<u8>]) -> MemLog {
    let mut log = MemLog::new(signer.clone());
    for e in entries {
        log.append(e.clone()).unwrap();
    }
    log.publish(&[]).unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_verifies_a_real_log_and_catches_every_tampering() {
    let s = Server::start_with(&["--checkpoint-interval-ms", "100"]);
    let app = s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]));
    let engineer = s
        .client(&s.principal("alice", "engineer", "US", &["--employer", "provider"]))
        .with_reason(Reason::new("support", "TICKET-7"));
    let vkey = s.client(&s.principal("auditor", "monitor", "US", &[])).log_key().await.unwrap();
    for n in 0..40 {
        let body = json!({"email": format!("p{n}@mail.example"), "handle": format!("h{n}")});
        app.create("profiles", Some(&format!("u{n}")), &format!("subj-{n}"), body.as_object().unwrap().clone())
            .await
            .unwrap();
    }
    let mut last = 0;
    let mut n = 0;
    while last < 300 {
        last = engineer.get("profiles", &format!("u{}", n % 40)).await.unwrap().receipt.index;
        n += 1;
    }

    // The monitor follows the real log until it has verified every entry written so far.
    let state = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let size = loop {
        let size = follow(&s.base, &vkey, state.path(), FollowConfig::default()).await.unwrap();
        if size > last {
            break size;
        }
        assert!(Instant::now() < deadline, "no checkpoint covers entry {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stored = StateDir::open(state.path()).unwrap().entries(size).unwrap();
    assert_eq!(stored.len() as u64, size);
    let entries: Vec<Vec<u8>> = stored.iter().map(|e| e.entry.clone().into_bytes()).collect();
    assert!(stored.iter().any(|e| e.entry.contains("\"kind\":\"policy-set\"")));

    // A subject's history: every access with a proof from the real server, checked.
    let subject = stored
        .iter()
        .find_map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.entry).ok()?;
            (v["kind"] == "access" && v["action"] == "read").then(|| v["subjects"][0].as_str().unwrap().to_owned())
        })
        .unwrap();
    let verified = StateDir::open(state.path()).unwrap().load().unwrap().unwrap();
    let accesses = custody_monitor::history::history(
        &StateDir::open(state.path()).unwrap(),
        &HttpLog::new(&s.base).unwrap(),
        &verified,
        &subject,
    )
    .await
    .unwrap();
    assert!(accesses.len() >= 2, "a create and reads: {}", accesses.len());

    // The provider's own key, in the hands of whoever wants to show another history.
    let key = std::fs::read_to_string(s.data().join("log/key")).unwrap();
    let signer = Ed25519Signer::from_signer_key(key.trim_end()).unwrap();
    assert_eq!(signer.verifier_key(), vkey);
    let shared = Arc::new(RwLock::new(log_with(&signer, &entries)));
    let (url, _) = serve(shared.clone()).await.unwrap();
    let config = FollowConfig::default;

    // The same log, served elsewhere, verifies: the copy is faithful.
    assert_eq!(follow(&url, &vkey, copy_state(state.path()).path(), config()).await, Ok(size));

    // Fork: a second history of the same size.
    let mut forked = entries.clone();
    forked[3] = br#"{"v":1,"kind":"key","note":"forged"}"#.to_vec();
    *shared.write().unwrap() = log_with(&signer, &forked);
    let fault = follow(&url, &vkey, copy_state(state.path()).path(), config()).await.unwrap_err();
    assert!(matches!(fault, LogFault::Fork { size: forked, .. } if forked == size), "{fault}");
    assert_eq!(fault.exit_code(), 11);
    assert!(fault.to_string().contains("the log signed two different trees"), "{fault}");

    // Rewrite: an old entry changed, and the log grown past it.
    forked.extend(entries[..50].iter().cloned());
    *shared.write().unwrap() = log_with(&signer, &forked);
    let fault = follow(&url, &vkey, copy_state(state.path()).path(), config()).await.unwrap_err();
    assert!(matches!(fault, LogFault::Inconsistent { old, .. } if old == size), "{fault}");
    assert_eq!(fault.exit_code(), 11);
    assert!(fault.to_string().starts_with("history rewritten or forked"), "{fault}");

    // Truncation: the log rolled back to an earlier size.
    *shared.write().unwrap() = log_with(&signer, &entries[..size as usize - 10]);
    let fault = follow(&url, &vkey, copy_state(state.path()).path(), config()).await.unwrap_err();
    assert_eq!(fault, LogFault::Shrunk { old: size, new: size - 10 });
    assert_eq!(fault.exit_code(), 12);

    // Witnesses: the real server's checkpoint carries no cosignatures, so a monitor that
    // requires two refuses it; the same tree cosigned by two known witnesses passes.
    let witnesses: Vec<CosignatureSigner> =
        (0..3).map(|i| CosignatureSigner::from_seed(&format!("w{i}.test"), &[40 + i; 32]).unwrap()).collect();
    let quorum = || FollowConfig {
        witnesses: witnesses.iter().map(CosignatureSigner::verifier).collect(),
        quorum: 2,
        concurrency: 4,
    };
    let fault = follow(&s.base, &vkey, copy_state(state.path()).path(), quorum()).await.unwrap_err();
    assert!(matches!(fault, LogFault::Quorum { have: 0, need: 2, .. }), "{fault}");
    assert_eq!(fault.exit_code(), 14);
    let mut cosigned = log_with(&signer, &entries);
    cosigned.publish(&[&witnesses[0]]).unwrap();
    *shared.write().unwrap() = cosigned;
    let fault = follow(&url, &vkey, copy_state(state.path()).path(), quorum()).await.unwrap_err();
    assert!(matches!(fault, LogFault::Quorum { have: 1, need: 2, .. }), "{fault}");
    shared.write().unwrap().publish(&[&witnesses[0], &witnesses[2]]).unwrap();
    assert_eq!(follow(&url, &vkey, copy_state(state.path()).path(), quorum()).await, Ok(size));
}

/// A `custody-monitor` witness on a loopback port, stopped (connections closed) on request.
struct RunningWitness {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl RunningWitness {
    async fn start(port: u16, signer: CosignatureSigner, log_vkey: &str) -> RunningWitness {
        use custody_monitor::witness::{Witness, router};
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(Witness::new(signer, &[log_vkey.to_owned()], dir.path().to_owned()).unwrap());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(w))
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        RunningWitness { stop: Some(stop), task, _dir: dir }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn served_checkpoint(base: &str) -> Option<String> {
    let resp = reqwest::get(format!("{base}/log/checkpoint")).await.unwrap();
    if resp.status().is_success() { Some(resp.text().await.unwrap()) } else { None }
}

fn size_of(checkpoint: &str) -> u64 {
    checkpoint.lines().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_of_three_witness_quorum_publishes_with_one_witness_down_and_not_with_two() {
    let signers: Vec<CosignatureSigner> =
        (0..3).map(|i| CosignatureSigner::from_seed(&format!("w{i}.test"), &[60 + i; 32]).unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut flags =
        vec!["--checkpoint-interval-ms".to_owned(), "100".to_owned(), "--witness-quorum".into(), "2".into()];
    for (s, p) in signers.iter().zip(&ports) {
        flags.push("--witness".into());
        flags.push(format!("{}@http://127.0.0.1:{p}", s.verifier_key()));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let s = Server::start_with(&flags);
    let app = s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]));
    let vkey = s.client(&s.principal("auditor", "monitor", "US", &[])).log_key().await.unwrap();
    let verifiers: Vec<_> = signers.iter().map(CosignatureSigner::verifier).collect();

    // No witness up yet: the log appends and answers, but publishes no checkpoint.
    let body = json!({"handle": "h"}).as_object().unwrap().clone();
    app.create("profiles", Some("u0"), "subj-0", body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_checkpoint(&s.base).await, None);

    let mut witnesses = Vec::new();
    for (signer, port) in signers.iter().zip(&ports) {
        witnesses.push(Some(RunningWitness::start(*port, signer.clone(), &vkey).await));
    }
    // Grows the log by one entry and waits until a cosigned checkpoint covers it, or `wait`.
    async fn grow_and_wait(
        app: &custody_client::Client,
        base: &str,
        n: &mut u32,
        wait: Duration,
    ) -> (u64, Option<String>) {
        let body = json!({"handle": "h"}).as_object().unwrap().clone();
        let written = app.create("profiles", Some(&format!("u{n}")), &format!("subj-{n}"), body).await.unwrap();
        *n += 1;
        let index = written.receipt.index;
        let deadline = Instant::now() + wait;
        loop {
            let cp = served_checkpoint(base).await;
            if cp.as_deref().is_some_and(|c| size_of(c) > index) || Instant::now() > deadline {
                return (index, cp);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut n = 1;

    let (_, cp) = grow_and_wait(&app, &s.base, &mut n, Duration::from_secs(20)).await;
    let cp = cp.expect("all three witnesses up: a checkpoint is published");
    assert!(custody_monitor::follow::count_cosignatures(&cp, &verifiers) >= 2, "{cp}");
    custody_verify::verify_checkpoint(&cp, &vkey).unwrap();

    // One witness down: checkpoints still publish, cosigned by the other two.
    witnesses[0].take().unwrap().stop().await;
    let (index, cp) = grow_and_wait(&app, &s.base, &mut n, Duration::from_secs(20)).await;
    let cp = cp.unwrap();
    assert!(size_of(&cp) > index, "one witness down must not stop publication: {cp}");
    assert_eq!(custody_monitor::follow::count_cosignatures(&cp, &verifiers[1..]), 2);
    assert_eq!(custody_monitor::follow::count_cosignatures(&cp, &verifiers[..1]), 0);
    let state = tempfile::tempdir().unwrap();
    let config = FollowConfig { witnesses: verifiers.clone(), quorum: 2, concurrency: 4 };
    assert_eq!(follow(&s.base, &vkey, state.path(), config.clone()).await, Ok(size_of(&cp)));

    // Two down: the log still appends and answers with receipts, but nothing new is published.
    witnesses[1].take().unwrap().stop().await;
    let published = size_of(&served_checkpoint(&s.base).await.unwrap());
    let (index, cp) = grow_and_wait(&app, &s.base, &mut n, Duration::from_secs(2)).await;
    assert!(index >= published, "the log kept appending");
    assert_eq!(size_of(&cp.unwrap()), published, "no checkpoint may publish with one of three witnesses");
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    let failures: u64 = metrics
        .lines()
        .find(|l| l.starts_with("custody_witness_quorum_failures"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(failures > 0, "{metrics}");
    assert_eq!(follow(&s.base, &vkey, state.path(), config).await, Ok(published));
    witnesses[2].take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follows_a_log_signing_key_rotation() {
    let s = Server::start_with(&["--checkpoint-interval-ms", "100"]);
    let app = s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]));
    let auditor = s.client(&s.principal("auditor", "monitor", "US", &[]));
    let old_vkey = auditor.log_key().await.unwrap();
    let write = |from: usize| {
        let app = app.clone();
        async move {
            let mut last = 0;
            for n in from..from + 20 {
                let body = json!({"email": format!("k{n}@mail.example"), "handle": format!("k{n}")});
                last = app
                    .create("profiles", Some(&format!("k{n}")), &format!("ks{n}"), body.as_object().unwrap().clone())
                    .await
                    .unwrap()
                    .receipt
                    .index;
            }
            last
        }
    };
    let until = |vkey: String, state: std::path::PathBuf, last: u64| {
        let base = s.base.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let size = follow(&base, &vkey, &state, FollowConfig::default()).await.unwrap();
                if size > last {
                    return size;
                }
                assert!(Instant::now() < deadline, "no checkpoint covers entry {last}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let last = write(0).await;
    let state = tempfile::tempdir().unwrap();
    until(old_vkey.clone(), state.path().to_owned(), last).await;
    let old_checkpoint = std::fs::read_to_string(state.path().join("checkpoint")).unwrap();

    let me = s.client(&s.principal("me-ks0", "subject", "US", &["--subject", "ks0"]));
    let out = s.cli(&["--format", "json", "keys", "rotate-log-key"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Right after the rotation the published checkpoint may still be the old key's: a subject
    // export works either way and names the key that signed its checkpoint.
    let export = me.export_subject("ks0").await.unwrap().log.unwrap();
    custody_verify::verify_checkpoint(&export.checkpoint, &export.vkey).unwrap();
    let new_vkey = auditor.log_key().await.unwrap();
    assert!(export.vkey == old_vkey || export.vkey == new_vkey, "{}", export.vkey);
    assert_ne!(new_vkey, old_vkey);
    assert_eq!(rotated["current"], new_vkey.as_str());
    assert_eq!(rotated["keys"], json!([old_vkey.clone(), new_vkey.clone()]));
    let announced = rotated["announced_at"].as_u64().unwrap();

    // Entries after the rotation: receipts and checkpoints under the new key.
    let last = write(20).await;
    assert!(last > announced);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_checkpoint = loop {
        let c = auditor.checkpoint().await.unwrap();
        if custody_verify::verify_checkpoint(&c, &new_vkey).is_ok_and(|c| c.size > last) {
            break c;
        }
        assert!(Instant::now() < deadline, "no checkpoint under the new key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(custody_verify::verify_checkpoint(&new_checkpoint, &old_vkey).is_err());
    // Checkpoints signed before still verify under the old key.
    custody_verify::verify_checkpoint(&old_checkpoint, &old_vkey).unwrap();

    // `/log/keys` chains the new key to the old one, and says from which index each signs.
    let keys: serde_json::Value = reqwest::get(format!("{}/log/keys", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(keys["keys"][0], json!({"vkey": old_vkey.clone(), "from": 0}));
    assert_eq!(keys["keys"][1], json!({"vkey": new_vkey.clone(), "from": announced + 1}));
    let handovers: Vec<custody_verify::KeyHandover> = serde_json::from_value(keys["handovers"].clone()).unwrap();
    assert_eq!(custody_verify::trusted_keys(&old_vkey, &handovers).unwrap(), vec![old_vkey.clone(), new_vkey.clone()]);
    assert_eq!(auditor.trusted_log_keys(&old_vkey).await.unwrap(), vec![old_vkey.clone(), new_vkey.clone()]);

    // The monitor pinned to the old key follows the handover and goes on under the new key;
    // so does a fresh monitor that starts after the rotation.
    let size = until(old_vkey.clone(), state.path().to_owned(), last).await;
    assert!(size > last);
    let stored = StateDir::open(state.path()).unwrap();
    assert_eq!(stored.load_keys().unwrap(), vec![new_vkey.clone()]);
    assert!(stored.entries(size).unwrap().iter().any(|e| e.entry.contains(&new_vkey)), "announcement verified");
    let fresh = tempfile::tempdir().unwrap();
    until(old_vkey.clone(), fresh.path().to_owned(), last).await;

    // A checkpoint signed by a key no handover announced is still refused.
    let entries: Vec<Vec<u8>> = stored.entries(size).unwrap().iter().map(|e| e.entry.clone().into_bytes()).collect();
    let origin = custody_verify::verify_checkpoint(&new_checkpoint, &new_vkey).unwrap().origin;
    let rogue = Ed25519Signer::generate(&origin, &mut rand::rngs::OsRng).unwrap();
    let shared = Arc::new(RwLock::new(log_with(&rogue, &entries)));
    let (url, _) = serve(shared).await.unwrap();
    let fault = follow(&url, &old_vkey, copy_state(state.path()).path(), FollowConfig::default()).await.unwrap_err();
    assert!(matches!(fault, LogFault::BadSignature { .. }), "{fault}");
}
