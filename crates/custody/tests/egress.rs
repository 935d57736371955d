//! The egress gateway against a real `custody serve`: canaries never leave, pseudonyms are
//! stable within an epoch and differ across destinations, small groups are suppressed, an
//! exhausted epsilon budget refuses exports (also after a restart), a denied export releases
//! nothing and is logged as denied, and an exported file, NDJSON or Parquet, checks against
//! its log entry.
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
    let (buf, o) = export_bytes(c, req).await?;
    Ok((String::from_utf8(buf).unwrap(), o))
}

async fn export_bytes(c: &Client, req: Value) -> Result<(Vec<u8>, custody_client::ExportOutcome), ClientError> {
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
    Ok((buf, o))
}

/// A Parquet file's rows, read back with the parquet crate's reader, as NDJSON-like objects.
fn parquet_rows(bytes: &[u8]) -> Vec<Value> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use std::io::Write as _;
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    let reader = SerializedFileReader::new(f).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let mut m = serde_json::Map::new();
            for (name, field) in row.get_column_iter() {
                let v = match field {
                    Field::Null => Value::Null,
                    Field::Bool(b) => json!(b),
                    Field::Long(i) => json!(i),
                    Field::Double(d) => json!(d),
                    Field::Str(s) => json!(s),
                    other => panic!("unexpected Parquet value {other:?}"),
                };
                m.insert(name.clone(), v);
            }
            Value::Object(m)
        })
        .collect()
}

fn with_parquet(mut req: Value) -> Value {
    req["format"] = json!("parquet");
    req
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

    // Parquet: the same rows, value for value (same destination and epoch, so the same
    // pseudonyms), and an aggregate; no canary in the bytes or in any value read back.
    let parquet_shapes = [
        req("global-engagement", "global", json!({})),
        req(
            "global-metrics",
            "global",
            json!({"aggregate": {"group_by": ["precise_location", "birthdate"], "sums": [{"field": "watch_minutes", "min": 0, "max": 2000000000}], "k": 100}}),
        ),
    ];
    for (i, shape) in parquet_shapes.into_iter().enumerate() {
        let (bytes, o) = export_bytes(&c, with_parquet(shape.clone())).await.unwrap();
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"), "{shape}");
        assert!(!bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes()), "a canary left in Parquet bytes");
        let rows = parquet_rows(&bytes);
        assert_eq!(rows.len() as u64, o.rows);
        assert_no_canary(&rows.iter().map(|r| format!("{r}\n")).collect::<String>(), &dates, &minutes);
        let (entry, _) = custody_client::verify_receipt(&o.receipt, &vkey).unwrap();
        let entry: Value = serde_json::from_str(&entry).unwrap();
        assert_eq!((entry["sha256"].as_str(), entry["bytes"].as_u64()), (Some(o.sha256.as_str()), Some(o.bytes)));
        if i == 0 {
            assert!(rows == first, "Parquet rows differ from the NDJSON rows");
        }
    }
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

/// `custody --format json export` of the `global-engagement` profile to `global`, into `out`,
/// with `extra` arguments.
fn cli_export(s: &Server, token: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--format",
        "json",
        "export",
        "--server",
        &s.base,
        "--token",
        token,
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
    ];
    args.extend_from_slice(extra);
    s.cli(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_a_file_that_checks_against_its_log_entry() {
    let s = Server::start();
    seed(&s, 20).await;
    let token = s.principal("exp", "engineer", "US", &["--employer", "provider", "--role", "egress"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export.ndjson");
    let o = cli_export(&s, &token, &out, &[]);
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

/// `custody-monitor` beside the `custody` binary: `cargo test --workspace` (CI) builds every
/// binary of the workspace; alone, this test needs `cargo build -p custody-monitor` first.
fn monitor_bin() -> std::path::PathBuf {
    let bin =
        std::path::Path::new(common::BIN).with_file_name(format!("custody-monitor{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "`{}` is not built: run `cargo build -p custody-monitor` (CI's `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_parquet_that_custody_monitor_verifies() {
    let s = Server::start();
    seed(&s, 30).await;
    let token = s.principal("exp", "engineer", "US", &["--employer", "provider", "--role", "egress"]);
    let vkey = s.client(&token).log_key().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let export = |out: &std::path::Path, extra: &[&str]| cli_export(&s, &token, out, extra);

    // `.parquet` picks the format; `--output-format parquet` says it outright.
    let out = dir.path().join("export.parquet");
    let o = export(&out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((summary["rows"].as_u64(), summary["format"].as_str()), (Some(30), Some("parquet")));
    let bytes = std::fs::read(&out).unwrap();
    let rows = parquet_rows(&bytes);
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[0]["birthdate"], json!(1700));
    assert!(rows.iter().all(|r| r["_subject"].as_str().is_some_and(|p| p.len() == 32)));
    let named = dir.path().join("named.bin");
    let o = export(&named, &["--output-format", "parquet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(parquet_rows(&std::fs::read(&named).unwrap()), rows, "the same rows in the same epoch");

    // The monitor checks the file as it checks NDJSON: by its bytes against the log entry.
    let verify = |file: &std::path::Path| {
        std::process::Command::new(monitor_bin())
            .arg("verify-export")
            .arg(file)
            .args(["--key", &vkey])
            .output()
            .unwrap()
    };
    let v = verify(&out);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!((report["verified"].as_bool(), report["rows"].as_u64()), (Some(true), Some(30)));
    assert_eq!(report["bytes"].as_u64(), Some(bytes.len() as u64));
    let receipt = std::fs::read_to_string(dir.path().join("export.parquet.receipt.json")).unwrap();
    custody_verify::verify_export(bytes.as_slice(), &receipt, &vkey).unwrap();
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    std::fs::write(&out, &tampered).unwrap();
    assert_eq!(verify(&out).status.code(), Some(13), "one byte changed: no longer the logged file");

    // Bad input is named: an unknown format (CLI and API), a format the file name contradicts.
    let o = export(&dir.path().join("x.csv"), &["--output-format", "csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("parquet"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = export(&dir.path().join("x.ndjson"), &["--output-format", "parquet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not match"), "{}", String::from_utf8_lossy(&o.stderr));
    let e = export_bytes(&s.client(&token), req("global-engagement", "global", json!({"format": "csv"})))
        .await
        .unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 400);
    assert!(e.to_string().contains("unknown variant `csv`"), "{e}");
}
