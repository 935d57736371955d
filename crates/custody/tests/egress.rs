//! The egress gateway against a real `custody serve`: canaries never leave, pseudonyms are
//! stable within an epoch and differ across destinations, small groups are suppressed, an
//! exhausted epsilon budget refuses exports (also after a restart), a denied export releases
//! nothing and is logged as denied, and an exported file checks against its log entry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashSet;

use custody_client::{Client, ClientError, CreateRecord};
use serde_json::{Value, json};

mod common;

use common::Server;

/// Every canary string carries this marker; it appears nowhere else in the data.
const MARK: &str = "cnry";

fn canary_record(i: usize) -> CreateRecord {
    let fields = json!({
        "email": format!("{MARK}e{i:06}@mail.example"),
        "phone": format!("+1-{MARK}p{i:06}"),
        "birthdate": canary_date(i),
        "precise_location": format!("US-{}-{MARK}l{i:06}", ["CA", "NY", "TX"][i % 3]),
        "device_id": format!("{MARK}d{i:06}"),
        "handle": format!("h{i}"),
        "display_name": format!("User {i}"),
        "watch_minutes": canary_minutes(i),
    });
    CreateRecord {
        id: Some(format!("r{i:06}")),
        subject: Some(format!("subj-{MARK}{i:06}")),
        jurisdiction: None,
        fields: fields.as_object().unwrap().clone(),
    }
}

/// A unique date per record (protected): years 1700.. with every month and day up to 28.
fn canary_date(i: usize) -> String {
    format!("{}-{:02}-{:02}", 1700 + i / 336, 1 + (i / 28) % 12, 1 + i % 28)
}

/// A unique minute count per record (aggregate class), never a multiple of 60.
fn canary_minutes(i: usize) -> i64 {
    1_000_000_007 + 60 * i as i64
}

fn exporter(s: &Server, id: &str) -> Client {
    s.client(&s.principal(id, "engineer", "US", &["--employer", "provider", "--role", "egress"]))
}

async fn seed(s: &Server, n: usize) {
    let app = s.client(&s.principal("app", "workload", "US", &["--role", "app-backend"]));
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        app.batch_create("profiles", chunk.iter().map(|&i| canary_record(i)).collect()).await.unwrap();
    }
}

async fn export(c: &Client, req: Value) -> Result<(String, custody_client::ExportOutcome), ClientError> {
    let mut buf = Vec::new();
    let o = c
        .export(
            &req,
            |chunk| {
                buf.extend_from_slice(chunk);
                Ok(())
            },
            |_| {},
        )
        .await?;
    Ok((String::from_utf8(buf).unwrap(), o))
}

fn req(profile: &str, destination: &str, extra: Value) -> Value {
    let mut r =
        json!({"collection": "profiles", "profile": profile, "destination": destination, "purpose": "global-models"});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// No canary, nor a protected date or minute count, appears in `out`.
fn assert_no_canary(out: &str, dates: &HashSet<String>, minutes: &HashSet<i64>) {
    assert!(!out.contains(MARK), "a canary left the boundary");
    for line in lines(out) {
        let mut values = vec![];
        collect(&line, &mut values);
        for v in values {
            if let Some(s) = v.as_str() {
                assert!(!dates.contains(s), "a protected date left: {s}");
            }
            if let Some(n) = v.as_i64() {
                assert!(!minutes.contains(&n), "a raw minute count left: {n}");
            }
        }
    }
}

fn collect(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => m.values().for_each(|x| collect(x, out)),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        other => out.push(other.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_never_leave_and_pseudonyms_are_stable_per_destination_and_epoch() {
    const N: usize = 100_000;
    let s = Server::start();
    seed(&s, N).await;
    let dates: HashSet<String> = (0..N).map(canary_date).collect();
    let minutes: HashSet<i64> = (0..N).map(canary_minutes).collect();
    let c = exporter(&s, "exp");
    let vkey = c.log_key().await.unwrap();

    // Every permitted shape: pseudonymous rows (all fields, a subset, filtered), public
    // content, aggregates with and without noise.
    let (rows, o) = export(&c, req("global-engagement", "global", json!({}))).await.unwrap();
    assert_eq!(o.rows, N as u64);
    assert_no_canary(&rows, &dates, &minutes);
    let first = lines(&rows);
    assert_eq!(first[0]["birthdate"], json!(1700));
    assert_eq!(first[0]["precise_location"], json!("US-CA"));
    assert_eq!(first[0]["watch_minutes"].as_i64().unwrap() % 60, 0);
    assert!(first[0].get("phone").is_none(), "phone is not in the profile");
    let shapes = [
        req("global-engagement", "global", json!({"fields": ["email", "birthdate"]})),
        req("global-engagement", "eu-analytics", json!({"filter": {"field": "precise_location", "equals": "US-NY"}})),
        req("public-content", "global", json!({})),
        req(
            "global-metrics",
            "global",
            json!({"aggregate": {"group_by": ["precise_location", "birthdate"], "sums": [{"field": "watch_minutes", "min": 0, "max": 2000000000}], "k": 100}}),
        ),
        req(
            "global-metrics",
            "eu-analytics",
            json!({"aggregate": {"group_by": ["birthdate"], "k": 10, "noise": {"mechanism": "laplace", "epsilon": 0.2}}}),
        ),
    ];
    for shape in shapes {
        let (out, o) = export(&c, shape.clone()).await.unwrap();
        assert!(o.rows > 0, "{shape}");
        assert_no_canary(&out, &dates, &minutes);
        let (entry, _) = custody_client::verify_receipt(&o.receipt, &vkey).unwrap();
        let entry: Value = serde_json::from_str(&entry).unwrap();
        assert_eq!(entry["kind"], "export");
        assert_eq!(entry["sha256"], json!(o.sha256));
        assert!(!entry.to_string().contains(MARK));
    }

    // Stable within the epoch, different for another destination.
    let (again, _) = export(&c, req("global-engagement", "global", json!({}))).await.unwrap();
    let second = lines(&again);
    let (eu, _) = export(&c, req("global-engagement", "eu-analytics", json!({}))).await.unwrap();
    let eu = lines(&eu);
    for i in [0, 1, N / 2, N - 1] {
        assert_eq!(first[i]["email"], second[i]["email"]);
        assert_eq!(first[i]["_subject"], second[i]["_subject"]);
        assert_ne!(first[i]["email"], eu[i]["email"]);
        assert_ne!(first[i]["_subject"], eu[i]["_subject"]);
    }
    let distinct: HashSet<&str> = first.iter().map(|l| l["email"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), N, "distinct emails keep distinct pseudonyms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_are_suppressed() {
    let s = Server::start();
    seed(&s, 300).await;
    let c = exporter(&s, "exp");
    // 300 records over 3 regions: 100 each; birth years spread them to groups of at most 336.
    let (out, o) =
        export(&c, req("global-metrics", "global", json!({"aggregate": {"group_by": ["precise_location"], "k": 301}})))
            .await
            .unwrap();
    assert_eq!((o.rows, o.suppressed), (0, 1), "one group (US) of 300 < k");
    assert!(out.is_empty());
    let (out, o) = export(
        &c,
        req("global-engagement", "global", json!({"aggregate": {"group_by": ["precise_location"], "k": 101}})),
    )
    .await
    .unwrap();
    assert_eq!((o.rows, o.suppressed), (0, 3), "three regions of 100 < 101: {out}");
    let (out, o) = export(
        &c,
        req("global-engagement", "global", json!({"aggregate": {"group_by": ["precise_location"], "k": 100}})),
    )
    .await
    .unwrap();
    assert_eq!((o.rows, o.suppressed), (3, 0));
    for l in lines(&out) {
        assert!(l["count"].as_u64().unwrap() >= 100);
    }
}

fn problem_entry(e: &ClientError) -> Value {
    let p = e.problem().expect("a problem document");
    let doc = serde_json::to_value(p).unwrap();
    let entry = doc["receipt"]["detail"]["entry"].as_str().unwrap_or_else(|| panic!("no receipt in {doc}"));
    serde_json::from_str(entry).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_export_releases_nothing_and_is_logged_as_denied() {
    let s = Server::start();
    seed(&s, 10).await;
    let c = exporter(&s, "exp");
    let e = export(&c, req("global-engagement", "mars", json!({}))).await.unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 403);
    let entry = problem_entry(&e);
    assert_eq!(entry["kind"], "export");
    assert_eq!(entry["decision"], "deny");
    assert_eq!(entry["destination"], "mars");
    assert_eq!(entry["rows"], 0);
    assert!(entry["sha256"].is_null());
    // Without the egress role, nothing either.
    let other = s.client(&s.principal("eng", "engineer", "US", &["--employer", "provider"]));
    let e = export(&other, req("global-engagement", "global", json!({}))).await.unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 403);
    assert_eq!(problem_entry(&e)["decision"], "deny");
    // A field the profile does not let out is a bad request, not a release.
    let e = export(&c, req("global-engagement", "global", json!({"fields": ["phone"]}))).await.unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 400);
    // Nothing left a spool file behind.
    assert_eq!(std::fs::read_dir(s.data().join("egress/spool")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_refuses_exports_also_after_a_restart() {
    let flags = ["--egress-epsilon-budget", "1.0"];
    let mut s = Server::start_with(&flags);
    seed(&s, 50).await;
    let noisy = |eps: f64| {
        req(
            "global-metrics",
            "global",
            json!({"aggregate": {"group_by": ["precise_location"], "k": 2, "noise": {"mechanism": "laplace", "epsilon": eps}}}),
        )
    };
    let c = exporter(&s, "exp");
    let (_, o) = export(&c, noisy(0.6)).await.unwrap();
    let (entry, _) = custody_client::verify_receipt(&o.receipt, &c.log_key().await.unwrap()).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&entry).unwrap()["epsilon"], json!(0.6));
    let e = export(&c, noisy(0.6)).await.unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 403);
    assert!(problem_entry(&e)["reasons"][0].as_str().unwrap().starts_with("epsilon-budget-exhausted"));
    // Another destination has its own budget.
    let mut eu = noisy(0.6);
    eu["destination"] = json!("eu-analytics");
    export(&c, eu).await.unwrap();

    s.restart(&flags);
    let c = s.client(&s.principal("exp2", "engineer", "US", &["--employer", "provider", "--role", "egress"]));
    let e = export(&c, noisy(0.6)).await.unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 403, "the refusal holds after a restart");
    export(&c, noisy(0.4)).await.unwrap();
    assert_eq!(export(&c, noisy(0.01)).await.unwrap_err().status().unwrap().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_a_file_that_checks_against_its_log_entry() {
    let s = Server::start();
    seed(&s, 20).await;
    let token = s.principal("exp", "engineer", "US", &["--employer", "provider", "--role", "egress"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export.ndjson");
    let o = s.cli(&[
        "--format",
        "json",
        "export",
        "--server",
        &s.base,
        "--token",
        &token,
        "--collection",
        "profiles",
        "--profile",
        "global-engagement",
        "--destination",
        "global",
        "--purpose",
        "models",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["rows"], 20);
    let receipt = std::fs::read_to_string(dir.path().join("export.ndjson.receipt.json")).unwrap();
    let vkey = s.client(&token).log_key().await.unwrap();
    let check = custody_verify::verify_export(std::fs::File::open(&out).unwrap(), &receipt, &vkey).unwrap();
    assert_eq!((check.rows, check.destination.as_str()), (20, "global"));
    // One byte changed: the file no longer matches its entry.
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[3] ^= 1;
    assert!(matches!(
        custody_verify::verify_export(bytes.as_slice(), &receipt, &vkey),
        Err(custody_verify::VerifyError::ExportMismatch { .. })
    ));
}
