//! `key_provider = "pkcs11"` against a real `custody serve` and a throwaway SoftHSM2 token:
//! records written, the KEK rotated inside the HSM, everything read back; a wrong PIN stops
//! the server with a clear error. Without SoftHSM2 the tests skip, unless `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::ffi::OsStr;
use std::process::Command;

use custody_hsm::softhsm::SoftHsmToken;
use serde_json::{Value, json};

mod common;

use common::{BIN, Server};

const LABEL: &str = "custody-e2e";
const PIN: &str = "4321";

/// A fresh token, or `None` (skip) when SoftHSM2 is missing outside CI.
fn token() -> Option<(tempfile::TempDir, SoftHsmToken)> {
    if !SoftHsmToken::available() {
        assert!(std::env::var_os("CI").is_none(), "softhsm2 is not installed, and CI requires the PKCS#11 tests");
        eprintln!("skipping: softhsm2 is not installed (apt-get install softhsm2)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(dir.path(), LABEL, PIN).unwrap();
    Some((dir, token))
}

fn flags(t: &SoftHsmToken) -> Vec<String> {
    vec![
        "--key-provider".into(),
        "pkcs11".into(),
        "--pkcs11-module".into(),
        t.module.display().to_string(),
        "--pkcs11-token".into(),
        t.label.clone(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_inside_the_hsm_keeps_every_record_readable() {
    let Some((_dir, t)) = token() else { return };
    let mut f = flags(&t);
    f.extend(["--checkpoint-interval-ms".into(), "200".into()]);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let s =
        Server::start_with_env(&f, &[("SOFTHSM2_CONF", t.conf.as_os_str()), ("CUSTODY_PKCS11_PIN", OsStr::new(PIN))]);
    assert!(!s.data().join("keys/kek").exists(), "no KEK file with the HSM provider");
    let app = s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]));
    for i in 0..40 {
        let body = json!({"email": format!("h{i}@mail.example"), "handle": format!("h{i}")});
        app.create("profiles", Some(&format!("r{i}")), &format!("s{i}"), body.as_object().unwrap().clone())
            .await
            .unwrap();
    }
    let out = s.cli(&["--format", "json", "keys", "rotate-kek", "--batch", "7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((result["target"].clone(), result["retired"].clone()), (json!(2), json!([1])));
    for i in 0..40 {
        let got = app.get("profiles", &format!("r{i}")).await.unwrap();
        assert_eq!(got.record.fields["email"], format!("h{i}@mail.example"));
    }
    let found = app.search("profiles", "email", json!("h7@mail.example")).await.unwrap();
    assert_eq!(found.records.len(), 1, "the blind-index key is wrapped by the HSM too");
    // The rotation and the key creation are logged as the pkcs11 provider's.
    let c = s.client(&s.principal("auditor", "monitor", "US", &[]));
    let size = custody_verify::verify_checkpoint(&c.checkpoint().await.unwrap(), &c.log_key().await.unwrap()).unwrap();
    assert!(size.size > 0);
    let status = s.cli(&["--format", "json", "keys", "status"]);
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((v["target"].as_u64(), v["in_progress"].as_bool()), (Some(2), Some(false)));
}

#[test]
fn a_wrong_pin_stops_custody_with_a_clear_error() {
    let Some((dir, t)) = token() else { return };
    let run = |pin: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(dir.path().join("data")).args(flags(&t)).arg("init");
        cmd.env("SOFTHSM2_CONF", &t.conf).env_remove("CUSTODY_PKCS11_PIN");
        if let Some(pin) = pin {
            cmd.env("CUSTODY_PKCS11_PIN", pin);
        }
        cmd.output().unwrap()
    };
    let out = run(Some("000000"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused the PIN"), "{err}");
    assert!(!err.contains("000000"), "the PIN is never printed: {err}");
    let out = run(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("CUSTODY_PKCS11_PIN"), "{err}");
    let out = run(Some(PIN));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
