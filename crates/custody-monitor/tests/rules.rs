//! Each rule fires on a crafted scenario and stays quiet on a clean one; policy replay names
//! exactly the decisions that flip. Also through the binary: rule alerts are JSON lines on
//! stdout and exit code 20 with `--once`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use custody_core::Decision;
use custody_monitor::alert::Alert;
use custody_monitor::rules::{Evaluator, RuleFile};

const ALL_RULES: &str = r#"
jurisdiction = "US"
schema = "SCHEMA"
[outside_jurisdiction]
[missing_justification]
[bulk_read]
max_records = 5
window_secs = 60
exempt = ["svc:backend"]
[deny_rate]
max_denials = 3
window_secs = 10
[policy_replay]
lookback = 100
"#;

fn rule_file(dir: &Path) -> PathBuf {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sample/schema.toml");
    let path = dir.join("rules.toml");
    std::fs::write(&path, ALL_RULES.replace("SCHEMA", schema.to_str().unwrap())).unwrap();
    path
}

fn evaluate(entries: &[Vec<u8>]) -> Vec<Alert> {
    let dir = tempfile::tempdir().unwrap();
    let (rules, classes) = RuleFile::load(&rule_file(dir.path())).unwrap();
    let mut ev = Evaluator::new(rules, classes);
    entries.iter().enumerate().flat_map(|(i, e)| ev.observe(i as u64, e)).collect()
}

fn names(alerts: &[Alert]) -> Vec<&str> {
    alerts.iter().map(|a| a.alert.as_str()).collect()
}

/// A busy but clean day: in-jurisdiction, justified, few records per principal, few denials.
fn clean() -> Vec<Vec<u8>> {
    let mut out = vec![policy_set(0, "start", sample_policies(|_, t| Some(t)))];
    for i in 0..40 {
        out.push(Access::read(i * 20, &format!("eng-{}", i % 8), "US", &["email", "display_name"]).bytes());
        // Public fields may go anywhere, justified or not.
        let mut public = Access::read(i * 20 + 1, "partner", "DE", &["display_name", "bio"]);
        public.justification = None;
        public.records = 10;
        out.push(public.bytes());
    }
    out.extend((0..3).map(|i| Access::denied(500 + i, "eng-x", "DE").bytes()));
    out
}

#[test]
fn a_clean_log_raises_nothing() {
    assert_eq!(names(&evaluate(&clean())), Vec::<&str>::new());
}

#[test]
fn protected_data_released_outside_the_jurisdiction() {
    let mut log = clean();
    log.push(Access::read(1000, "eng-abroad", "DE", &["display_name", "phone"]).bytes());
    let alerts = evaluate(&log);
    assert_eq!(names(&alerts), ["outside-jurisdiction"]);
    assert_eq!(alerts[0].index, Some(log.len() as u64 - 1));
    assert!(alerts[0].message.contains("`eng-abroad` located in `DE` received 1 protected field(s)"));
}

#[test]
fn protected_data_released_without_justification() {
    let mut log = clean();
    let mut a = Access::read(1000, "eng-1", "US", &["birthdate"]);
    a.justification = Some("  ".into());
    log.push(a.bytes());
    let mut b = Access::read(1001, "eng-2", "US", &["email"]);
    b.justification = None;
    log.push(b.bytes());
    let alerts = evaluate(&log);
    assert_eq!(names(&alerts), ["missing-justification", "missing-justification"]);
    assert!(alerts[1].message.contains("`eng-2`"));
}

#[test]
fn bulk_reads_of_protected_data() {
    let mut log = clean();
    // Six records within a minute: over the limit of five, alerted once per window.
    for i in 0..8 {
        log.push(Access::read(2000 + i * 5, "exfil", "US", &["email"]).bytes());
    }
    // The same amount spread over hours stays quiet.
    for i in 0..8 {
        log.push(Access::read(5000 + i * 600, "slow", "US", &["email"]).bytes());
    }
    // A workload the rule file exempts reads as fast as `exfil` and stays quiet.
    for i in 0..8 {
        log.push(Access::read(2000 + i * 5, "svc:backend", "US", &["email"]).bytes());
    }
    let alerts = evaluate(&log);
    assert_eq!(names(&alerts), ["bulk-read"]);
    assert!(alerts[0].message.contains("`exfil` received protected data from 6 records within 60s (limit 5)"));
}

#[test]
fn denials_above_a_rate() {
    let mut log = clean();
    for i in 0..4 {
        log.push(Access::denied(3000 + i, "prober", "US").bytes());
    }
    let alerts = evaluate(&log);
    assert_eq!(names(&alerts), ["deny-rate"]);
    assert!(alerts[0].message.contains("4 denials within 10s (limit 3)"));
}

#[test]
fn policy_replay_names_exactly_the_decisions_that_flip() {
    let mut log = vec![
        policy_set(0, "start", sample_policies(|_, t| Some(t))),
        principal(1, "eng-in", "engineer", "US", "provider", &[]),
        principal(2, "eng-out", "engineer", "DE", "provider", &[]),
        principal(3, "analytics", "workload", "US", "provider", &["analytics"]),
    ];
    // 4: in-jurisdiction engineer without justification: default deny. Flips below.
    let mut a = Access::denied(10, "eng-in", "US");
    a.justification = None;
    log.push(a.bytes());
    // 5: engineer abroad: forbidden by the boundary policy. Stays denied.
    log.push(Access::denied(11, "eng-out", "DE").bytes());
    // 6: analytics workload on protected data: default deny. Stays denied.
    log.push(Access::denied(12, "analytics", "US").bytes());
    // 7: a permit: never replayed.
    log.push(Access::read(13, "eng-in", "US", &["email"]).bytes());
    // 8: a partial decision whose withheld class flips too.
    let mut p = Access::read(14, "eng-in", "US", &["display_name"]);
    p.justification = Some(String::new());
    p.withheld = vec![("phone".into(), "protected".into(), "default-deny".into())];
    p.decision = Decision::Partial;
    log.push(p.bytes());
    // 9: the same set again (a restart): no replay.
    log.push(policy_set(20, "start", sample_policies(|_, t| Some(t))));
    // 10: a new set that drops the justification requirement.
    let relaxed = sample_policies(|name, t| {
        Some(if name.starts_with("10-") {
            t.replace("context has justification &&", "").replace("context.justification != \"\"", "true")
        } else {
            t
        })
    });
    log.push(policy_set(30, "reload", relaxed));
    let alerts: Vec<Alert> = evaluate(&log).into_iter().filter(|a| a.alert.starts_with("policy-replay")).collect();
    assert_eq!(names(&alerts), ["policy-replay"], "{alerts:?}");
    assert_eq!(alerts[0].index, Some(10));
    let flips: Vec<u64> =
        alerts[0].details["flips"].as_array().unwrap().iter().map(|f| f["index"].as_u64().unwrap()).collect();
    assert_eq!(flips, [4, 8]);
    assert_eq!(alerts[0].details["flips"][0]["classes"], serde_json::json!(["protected"]));
    assert!(alerts[0].message.contains("would permit 2 recent denial(s): entries [4, 8]"));
}

#[test]
fn a_broken_policy_set_in_the_log_is_reported() {
    let log = vec![
        policy_set(0, "start", sample_policies(|_, t| Some(t))),
        policy_set(1, "reload", vec![("x.cedar".into(), "permit(".into())]),
    ];
    assert_eq!(names(&evaluate(&log)), ["policy-replay-failed"]);
}

#[test]
fn rule_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, "jurisdiction = \"US\"\n[bulk_read]\nmax_records = 1\n").unwrap();
    assert!(RuleFile::load(&path).unwrap_err().to_string().contains("window_secs"));
    std::fs::write(&path, "jurisdiction = \"us\"\n").unwrap();
    assert!(RuleFile::load(&path).unwrap_err().to_string().contains("jurisdiction"));
    std::fs::write(&path, "jurisdiction = \"US\"\n[typo_rule]\n").unwrap();
    assert!(RuleFile::load(&path).unwrap_err().to_string().contains("typo_rule"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_alerts_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rule_file(dir.path());
    let mut log = clean();
    let (shared, url, vkey) = served(signer(1), &log).await;
    let state = dir.path().join("state");
    let flags = ["--rules", rules.to_str().unwrap()];
    let (code, out) = follow_once(&url, &vkey, &state, &flags).await;
    assert_eq!(code, 0, "{out}");
    log.push(Access::read(1000, "eng-abroad", "DE", &["email"]).bytes());
    let mut grown = custody_monitor::memlog::MemLog::new(signer(1));
    for e in &log {
        grown.append(e.clone()).unwrap();
    }
    grown.publish(&[]).unwrap();
    *shared.write().unwrap() = grown;
    let (code, out) = follow_once(&url, &vkey, &state, &flags).await;
    assert_eq!(code, 20, "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).unwrap();
    let alert: Alert = serde_json::from_str(line).unwrap();
    assert_eq!(alert.alert, "outside-jurisdiction");
    assert_eq!(alert.index, Some(log.len() as u64 - 1));
    // Restarting rebuilds the windows from the stored entries without re-raising old alerts.
    assert_eq!(follow_once(&url, &vkey, &state, &flags).await.0, 0);
}

#[test]
fn policy_replay_uses_the_recorded_jurisdictions_and_approvals() {
    let none = vec![("00-none.cedar".to_string(), "forbid (principal, action, resource) when { false };".to_string())];
    let approved = vec![(
        "00-approved.cedar".to_string(),
        r#"permit (principal, action == Custody::Action::"read", resource is Custody::Data)
when { context has approvals && context.approvals.contains("APR-1") && context.location == resource.jurisdiction };"#
            .to_string(),
    )];
    let mut log = vec![policy_set(0, "start", none), principal(1, "eng-de", "engineer", "DE", "provider", &[])];
    let denied = |jurisdictions: &[&str], approvals: &[&str]| {
        let mut a = Access::denied(10, "eng-de", "DE");
        a.jurisdictions = jurisdictions.iter().map(|s| s.to_string()).collect();
        a.approvals = approvals.iter().map(|s| s.to_string()).collect();
        a.bytes()
    };
    // 2: a DE record read from DE with the approval: the new set permits it.
    log.push(denied(&["DE"], &["APR-1"]));
    // 3: a US record read from DE with the approval: stays denied.
    log.push(denied(&["US"], &["APR-1"]));
    // 4: a DE record read from DE without the approval: stays denied.
    log.push(denied(&["DE"], &[]));
    // 5: an old entry (no jurisdictions, no approvals): replayed as of the boundary, stays denied.
    log.push(denied(&[], &[]));
    log.push(policy_set(30, "reload", approved));
    let alerts: Vec<Alert> = evaluate(&log).into_iter().filter(|a| a.alert.starts_with("policy-replay")).collect();
    assert_eq!(names(&alerts), ["policy-replay"], "{alerts:?}");
    let flips: Vec<u64> =
        alerts[0].details["flips"].as_array().unwrap().iter().map(|f| f["index"].as_u64().unwrap()).collect();
    assert_eq!(flips, [2]);
}
