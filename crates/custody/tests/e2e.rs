//! End-to-end tests: a real `custody serve` process over real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use custody_client::{Client, ClientError, Reason};
use serde_json::{Map, Value, json};

mod common;

use common::{BIN, Server};

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

struct Cast {
    app: Client,
    engineer: Client,
    abroad: Client,
    monitor: Client,
}

fn cast(s: &Server) -> Cast {
    Cast {
        app: s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"])),
        engineer: s
            .client(&s.principal("alice", "engineer", "US", &["--employer", "provider", "--role", "support"]))
            .with_reason(Reason::new("support", "TICKET-42")),
        abroad: s
            .client(&s.principal("dieter", "engineer", "DE", &["--employer", "provider"]))
            .with_reason(Reason::new("support", "TICKET-43")),
        monitor: s.client(&s.principal("auditor", "monitor", "US", &[])),
    }
}

async fn seed(app: &Client, id: &str, subject: &str, canary: &str) {
    app.create(
        "profiles",
        Some(id),
        subject,
        fields(json!({"email": format!("{canary}@mail.example"), "phone": format!("+1{canary}"), "handle": format!("h{id}"), "bio": "hello"})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_withhold_and_deny() {
    let s = Server::start();
    let c = cast(&s);
    seed(&c.app, "u1", "subj-1", "canary-a1").await;

    // In-jurisdiction engineer with purpose and justification: everything.
    let r = c.engineer.get("profiles", "u1").await.unwrap();
    assert_eq!(r.record.fields["email"], "canary-a1@mail.example");
    assert!(r.record.withheld.is_empty());

    // Same engineer without a justification: public only, protected withheld by default deny.
    let bare = s.client(&s.principal("bare", "engineer", "US", &["--employer", "provider"]));
    let r = bare.get("profiles", "u1").await.unwrap();
    assert_eq!(r.record.fields.keys().collect::<Vec<_>>(), ["bio", "handle"]);
    assert!(r.record.withheld.iter().all(|w| w.class == "protected" && w.reason == "default-deny"));

    // Engineer abroad: public only; the forbidding policy is named.
    let r = c.abroad.get("profiles", "u1").await.unwrap();
    assert!(!r.record.fields.contains_key("email"));
    let w: Vec<_> = r.record.withheld.iter().map(|w| (w.field.as_str(), w.reason.as_str())).collect();
    assert!(w.contains(&("email", "forbidden-by:no-protected-outside-jurisdiction")), "{w:?}");

    // Nothing permitted: 403 with the withheld list and the receipt of the logged deny.
    let e = c.engineer.create("profiles", Some("x"), "subj-9", fields(json!({"handle": "x"}))).await.unwrap_err();
    assert_eq!(status(&e), 403);
    let p = e.problem().unwrap();
    assert_eq!(p.kind, "urn:custody:problem:forbidden");
    assert!(p.receipt.is_some());
    let e = bare.search("profiles", "email", json!("canary-a1@mail.example")).await.unwrap_err();
    assert_eq!(status(&e), 403);
    assert!(!serde_json::to_string(e.problem().unwrap()).unwrap().contains("canary-a1"));

    // Search through the blind index, permitted.
    let l = c.engineer.search("profiles", "email", json!("canary-a1@mail.example")).await.unwrap();
    assert_eq!(l.records.len(), 1);
    assert_eq!(l.records[0].id, "u1");

    // Batch get with a missing id.
    seed(&c.app, "u2", "subj-2", "canary-a2").await;
    let l = c.monitor.batch_get("profiles", &["u1", "u2", "nope"]).await.unwrap();
    assert_eq!(l.records.len(), 2);
    assert_eq!(l.missing, ["nope"]);
    assert!(l.records.iter().all(|r| !r.fields.contains_key("email")));

    // Update and delete by the workload.
    c.app.update("profiles", "u2", fields(json!({"email": "new@mail.example"}))).await.unwrap();
    assert_eq!(c.engineer.get("profiles", "u2").await.unwrap().record.fields["email"], "new@mail.example");
    c.app.delete("profiles", "u2").await.unwrap();
    assert_eq!(status(&c.engineer.get("profiles", "u2").await.unwrap_err()), 404);

    // Every decision above is in the transparency log, with pseudonyms only, and the log's
    // entry bundles hold exactly the entries the receipts vouched for.
    let key = c.monitor.log_key().await.unwrap();
    let r = c.abroad.get("profiles", "u1").await.unwrap();
    let (entry, _) = custody_client::verify_receipt(&r.receipt, &key).unwrap();
    assert!(entry.contains("\"decision\":\"partial\"") && !entry.contains("subj-1") && !entry.contains("\"u1\""));
    let e = bare.search("profiles", "email", json!("x")).await.unwrap_err();
    let (entry, _) = custody_client::verify_receipt(e.problem().unwrap().receipt.as_ref().unwrap(), &key).unwrap();
    assert!(entry.contains("\"decision\":\"deny\""), "{entry}");
    let mut tampered = r.receipt.clone();
    tampered.detail["entry"] = json!(entry);
    assert!(custody_client::verify_receipt(&tampered, &key).is_err(), "a receipt for another entry must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_prove_inclusion_in_the_served_log() {
    let s = Server::start();
    let c = cast(&s);
    seed(&c.app, "u1", "subj-1", "canary-l").await;
    let key = c.monitor.log_key().await.unwrap();
    let mut receipts = Vec::new();
    for _ in 0..20 {
        receipts.push(c.engineer.get("profiles", "u1").await.unwrap().receipt);
    }
    // A checkpoint covering every receipt is signed within the checkpoint interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, checkpoint) = loop {
        let text = c.monitor.checkpoint().await.unwrap();
        let cp = custody_verify::verify_checkpoint(&text, &key).unwrap();
        if cp.size > receipts.last().unwrap().index {
            break (receipts[0].index, text);
        }
        assert!(Instant::now() < deadline, "no checkpoint covers the receipts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cp = custody_verify::verify_checkpoint(&checkpoint, &key).unwrap();
    assert_eq!(cp.origin, "custody.local/us");
    for r in &receipts {
        let (entry, log_receipt) = custody_client::verify_receipt(r, &key).unwrap();
        let proof = c.monitor.inclusion_proof(r.index, cp.size).await.unwrap();
        let receipt_json = serde_json::to_string(&log_receipt).unwrap();
        custody_verify::verify_receipt_in_log(&receipt_json, &key, entry.as_bytes(), &checkpoint, &proof).unwrap();
    }
    // The tiles are served at their C2SP paths; the entry bundle holds the receipted entry.
    let http = reqwest::Client::new();
    let bundle = http.get(format!("{}/log/tile/entries/000.p/{}", s.base, cp.size.min(256))).send().await.unwrap();
    assert_eq!(bundle.status(), 200);
    let bytes = bundle.bytes().await.unwrap();
    let (entry0, _) = custody_client::verify_receipt(&receipts[0], &key).unwrap();
    assert!(bytes.windows(entry0.len()).any(|w| w == entry0.as_bytes()), "entry {first} is in the bundle");
    // Besides access decisions, the log holds what a monitor needs to judge them: the policy
    // set in force (with its text), the principals, and the keys created.
    let text = String::from_utf8_lossy(&bytes);
    for kind in ["\"kind\":\"policy-set\"", "\"kind\":\"principal\"", "\"key\":\"kek\"", "\"key\":\"subject-dek\""] {
        assert!(text.contains(kind), "no {kind} entry in the log");
    }
    assert!(text.contains("no-protected-outside-jurisdiction"), "the policy text is logged");
    assert!(!text.contains("subj-1") && !text.contains("canary-l"), "no subject id or protected value in the log");
    let r = http.get(format!("{}/log/tile/0/000.p/{}", s.base, cp.size.min(256))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len() as u64, 32 * cp.size.min(256));
    assert_eq!(http.get(format!("{}/log/tile/0/x1/000", s.base)).send().await.unwrap().status(), 400);

    // A later checkpoint is consistent with this one.
    c.engineer.get("profiles", "u1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let later = loop {
        let text = c.monitor.checkpoint().await.unwrap();
        if custody_verify::verify_checkpoint(&text, &key).unwrap().size > cp.size {
            break text;
        }
        assert!(Instant::now() < deadline, "the log stopped checkpointing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_size = custody_verify::verify_checkpoint(&later, &key).unwrap().size;
    let proof = c.monitor.consistency_proof(cp.size, new_size).await.unwrap();
    custody_verify::verify_consistency(&checkpoint, &later, &key, &proof).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_revoked_get_401() {
    let s = Server::start();
    let c = cast(&s);
    seed(&c.app, "u1", "subj-1", "canary-b").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/collections/profiles/records/u1", s.base);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    for bad in ["Bearer nope", "Bearer cst1_alice:wrong", "Basic abc", "Bearer cst1_nobody:x"] {
        let r = http.get(&url).header("authorization", bad).send().await.unwrap();
        assert_eq!(r.status(), 401, "{bad}");
    }
    let token = s.principal("eve", "engineer", "US", &["--employer", "provider"]);
    let eve = s.client(&token);
    eve.get("profiles", "u1").await.unwrap();
    // A change of location is logged and takes effect on the very next request.
    let out = s.cli(&["principal", "change", "eve", "--location", "DE"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("changed eve"));
    let abroad = eve.get("profiles", "u1").await.unwrap();
    let email = abroad.record.withheld.iter().find(|w| w.field == "email").expect("email withheld abroad");
    assert_eq!(email.reason, "forbidden-by:no-protected-outside-jurisdiction");
    let bad = s.cli(&["principal", "change", "eve", "--location", "mars"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    let nothing = s.cli(&["principal", "change", "eve"]);
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to change"));
    let out = s.cli(&["principal", "revoke", "eve"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&eve.get("profiles", "u1").await.unwrap_err()), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_errors_name_the_field() {
    let s = Server::start();
    let c = cast(&s);
    let cases = [
        (json!({"handle": "a", "shoe_size": 42}), "shoe_size"),
        (json!({"handle": 7}), "handle"),
        (json!({"handle": "a", "birthdate": "yesterday"}), "birthdate"),
        (json!({"email": "a@b"}), "handle"),
    ];
    for (body, field) in cases {
        let e = c.app.create("profiles", None, "s1", fields(body.clone())).await.unwrap_err();
        assert_eq!(status(&e), 400, "{body}");
        let p = e.problem().unwrap();
        assert_eq!(p.kind, "urn:custody:problem:invalid-record");
        assert!(p.detail.contains(&format!("`{field}`")), "{} should name {field}", p.detail);
    }
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/collections/profiles/records", s.base))
        .bearer_auth(s.principal("w2", "workload", "US", &["--role", "app-backend"]))
        .json(&json!({"fields": {"handle": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("subject"), "{p}");
    let e = c.app.create("videos", None, "s1", fields(json!({"x": 1}))).await.unwrap_err();
    assert_eq!(status(&e), 404);
    assert_eq!(e.problem().unwrap().kind, "urn:custody:problem:unknown-collection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policy_reload_is_refused_and_old_set_keeps_serving() {
    let s = Server::start();
    let c = cast(&s);
    seed(&c.app, "u1", "subj-1", "canary-c").await;
    let policies = s.data().join("policies");

    std::fs::write(
        policies.join("50-broken.cedar"),
        "permit(principal, action, resource) when { resource.no_such_attr };",
    )
    .unwrap();
    let out = s.cli(&["policy", "reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_attr") && err.contains("previous policy set stays in force"), "{err}");
    assert_eq!(c.engineer.get("profiles", "u1").await.unwrap().record.fields["email"], "canary-c@mail.example");

    std::fs::write(policies.join("50-broken.cedar"), "permit(principal, action").unwrap();
    assert_eq!(s.cli(&["policy", "reload"]).status.code(), Some(2));
    assert!(c.engineer.get("profiles", "u1").await.unwrap().record.withheld.is_empty());

    // A valid change takes effect: forbid all protected reads.
    std::fs::write(
        policies.join("50-broken.cedar"),
        "@id(\"freeze\") forbid(principal, action, resource is Custody::Data) when { resource.class == \"protected\" };",
    )
    .unwrap();
    let out = s.cli(&["policy", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = c.engineer.get("profiles", "u1").await.unwrap();
    assert!(r.record.withheld.iter().any(|w| w.reason == "forbidden-by:freeze"));
    assert!(!r.record.fields.contains_key("email"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_in_the_data_dir_holds_a_protected_value() {
    let s = Server::start();
    let c = cast(&s);
    for n in 0..20 {
        seed(&c.app, &format!("u{n}"), &format!("subj-{n}"), &format!("zq-canary-{n:03}")).await;
    }
    c.engineer.get("profiles", "u3").await.unwrap();
    c.engineer.search("profiles", "email", json!("zq-canary-004@mail.example")).await.unwrap();
    let mut checked = 0;
    for f in files_under(&s.data()) {
        if f.file_name().is_some_and(|n| n == "admin.sock") {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(10).any(|w| w == b"zq-canary-"), "plaintext protected value in {}", f.display());
        checked += 1;
    }
    assert!(checked >= 5, "{checked} files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policies() {
    let s = Server::start();
    let c = cast(&s);
    seed(&c.app, "u1", "subj-1", "canary-d").await;
    assert!(c.engineer.get("profiles", "u1").await.unwrap().record.withheld.is_empty());
    std::fs::write(
        s.data().join("policies/60-freeze.cedar"),
        "@id(\"freeze-by-hup\") forbid(principal, action, resource is Custody::Data) when { resource.class == \"protected\" };",
    )
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(s.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.engineer.get("profiles", "u1").await.unwrap();
        if r.record.withheld.iter().any(|w| w.reason == "forbidden-by:freeze-by-hup") {
            assert!(!r.record.fields.contains_key("email"));
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload the policy set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn bad_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custody.toml");
    std::fs::write(&cfg, "listen = 5\njurisdiction = \"mars\"\ncolour = \"blue\"\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&cfg).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["`listen`", "`jurisdiction`", "`colour`"] {
        assert!(err.contains(key), "{key} not in {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_principal_changes_are_logged_like_online_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN).arg("--data-dir").arg(&data).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // No server runs: the CLI opens the data dir itself.
    cli(&["principal", "add", "--id", "ops-1", "--kind", "engineer", "--location", "US"]);
    cli(&["principal", "change", "ops-1", "--location", "DE", "--role", "support"]);
    cli(&["principal", "revoke", "ops-1"]);
    let s = Server::start_in(dir, &["--checkpoint-interval-ms", "100"]);
    let c = cast(&s);
    let key = c.monitor.log_key().await.unwrap();
    let cp = custody_verify::verify_checkpoint(&c.monitor.checkpoint().await.unwrap(), &key).unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/log/tile/entries/000.p/{}", s.base, cp.size.min(256));
    let bytes = http.get(url).send().await.unwrap().bytes().await.unwrap();
    let entries = custody_tlog::tile::decode_entry_bundle(&bytes, cp.size.min(256) as u16).unwrap();
    let docs: Vec<Value> = entries.iter().map(|e| serde_json::from_slice(e).unwrap()).collect();
    let changes: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "principal" && d["principal"] == "ops-1")
        .map(|d| d["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["added", "changed", "revoked"]);
    let changed = docs.iter().find(|d| d["change"] == "changed").unwrap();
    assert_eq!((changed["location"].as_str(), changed["roles"][0].as_str()), (Some("DE"), Some("support")));
    // The keys the CLI created are logged once, before the principal that depends on them.
    let kek: Vec<usize> = (0..docs.len()).filter(|&i| docs[i]["kind"] == "key" && docs[i]["key"] == "kek").collect();
    let added = docs.iter().position(|d| d["principal"] == "ops-1").unwrap();
    assert_eq!(kek.len(), 1, "{docs:?}");
    assert!(kek[0] < added);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_even_at_trace_level() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("server.log");
    let s = Server::start_traced(&log);
    let c = cast(&s);
    let app_token = s.principal("leaky-app", "workload", "US", &["--role", "app-backend"]);
    let app = s.client(&app_token);
    seed(&app, "u9", "subj-secret-9", "canary-trace").await;
    c.engineer.get("profiles", "u9").await.unwrap();
    let _ = c.abroad.get("profiles", "u9").await;
    // A wrong secret for a real principal, and a malformed token.
    let wrong = format!("{}:{}", app_token.split(':').next().unwrap(), "not-the-secret-0123456789");
    let _ = s.client(&wrong).get("profiles", "u9").await;
    let _ = s.client("cst1_nobody:planted-bogus-secret-4242").get("profiles", "u9").await;
    let kek = std::fs::read(s.data().join("keys/kek")).unwrap();
    drop(s);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 10, "trace logging produced output");
    let secret = app_token.split(':').nth(1).unwrap();
    for planted in [secret, "not-the-secret-0123456789", "planted-bogus-secret-4242", "canary-trace", "subj-secret-9"] {
        assert!(!text.contains(planted), "`{planted}` appears in the server's trace log");
    }
    // The KEK, however it is encoded in its file, in no form the log could carry.
    assert!(kek.len() >= 32);
    for form in [hex_of(&kek), String::from_utf8_lossy(&kek).trim().to_owned()] {
        assert!(!text.contains(&form), "the KEK appears in the server's trace log");
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
