//! The HTML report renders in headless Chromium: a screenshot is taken, and the numbers in the
//! rendered DOM match counts computed here from the entries themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use custody_core::Decision;

fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser"] {
        if Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return bin;
        }
    }
    panic!("headless Chromium is required for this test: apt-get install -y chromium");
}

fn headless(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap()
}

/// `(id or chart/key) -> value` for every `data-value` in the DOM.
fn dom_values(dom: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for tag in dom.split('<').filter(|t| t.contains("data-value=\"")) {
        let attr = |name: &str| {
            let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
            let end = tag[start..].find('"')? + start;
            Some(tag[start..end].replace("&amp;", "&"))
        };
        let value: u64 = attr("data-value").unwrap().parse().unwrap();
        let key = match (attr("id"), attr("data-chart"), attr("data-key")) {
            (Some(id), _, _) => id,
            (None, Some(chart), Some(key)) => format!("{chart}/{key}"),
            _ => continue,
        };
        out.insert(key, value);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_renders_and_its_numbers_match_the_entries() {
    let purposes = ["support", "fraud", "billing"];
    let locations = ["US", "US", "DE", "FR"];
    let mut accesses = Vec::new();
    for i in 0..120i64 {
        let who = format!("p{}", i % 7);
        let mut a = Access::read(i * 97, &who, locations[(i % 4) as usize], &["display_name"]);
        a.purpose = if i % 11 == 0 { None } else { Some(purposes[(i % 3) as usize].into()) };
        if i % 3 == 0 {
            a.released.push("email".into());
            a.released.push("phone".into());
        }
        if i % 5 == 0 {
            a = Access { released: vec![], ..Access::denied(i * 97, &who, locations[(i % 4) as usize]) };
            a.purpose = Some("support".into());
        } else if i % 13 == 0 {
            a.decision = Decision::Partial;
            a.withheld = vec![("phone".into(), "protected".into(), "default-deny".into())];
        }
        accesses.push(a);
    }
    let mut entries = vec![policy_set(0, "start", sample_policies(|_, t| Some(t)))];
    entries.extend(accesses[..60].iter().map(Access::bytes));
    entries.push(policy_set(60 * 97, "reload", sample_policies(|n, t| (!n.starts_with("20-")).then_some(t))));
    entries.extend(accesses[60..].iter().map(Access::bytes));

    let dir = tempfile::tempdir().unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sample/schema.toml");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, format!("jurisdiction = \"US\"\nschema = {:?}\n[outside_jurisdiction]\n", schema)).unwrap();
    let (_log, url, vkey) = served(signer(1), &entries).await;
    let state = dir.path().join("state");
    let (code, out) = follow_once(&url, &vkey, &state, &["--rules", rules.to_str().unwrap()]).await;
    assert_eq!(code, 20, "the abroad reads of protected fields raise alerts: {out}");
    let alerts = out.lines().filter(|l| l.contains("\"outside-jurisdiction\"")).count() as u64;

    let html = dir.path().join("report.html");
    let out = monitor(&[
        "report",
        "--state",
        state.to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    for external in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(external), "the report must be self-contained: found `{external}`");
    }

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor-report.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("file://{}", html.display());
    let out = headless(&[&format!("--screenshot={}", shot.display()), "--window-size=1000,2200", &url]);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot is {} bytes", png.len());

    let out = headless(&["--dump-dom", &url]);
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(dom.contains("custody monitor report"), "{dom}");
    let got = dom_values(&dom);

    let mut want = BTreeMap::new();
    want.insert("stat-entries".to_string(), entries.len() as u64);
    want.insert("stat-accesses".into(), accesses.len() as u64);
    for (d, name) in [(Decision::Permit, "permit"), (Decision::Partial, "partial"), (Decision::Deny, "deny")] {
        want.insert(format!("stat-{name}"), accesses.iter().filter(|a| a.decision == d).count() as u64);
    }
    want.insert("stat-policy-changes".into(), 2);
    want.insert("stat-alerts".into(), alerts);
    want.insert("checkpoint-size".into(), entries.len() as u64);
    for a in &accesses {
        *want.entry(format!("purpose/{}", a.purpose.as_deref().unwrap_or("none"))).or_default() += 1;
        *want.entry(format!("location/{}", a.location.as_deref().unwrap())).or_default() += 1;
        let protected = a.released.iter().filter(|f| ["email", "phone"].contains(&f.as_str())).count() as u64;
        if protected > 0 {
            *want.entry(format!("principal/{}", a.principal)).or_default() += protected;
        }
    }
    let got_subset: BTreeMap<String, u64> =
        got.iter().filter(|(k, _)| !k.starts_with("timeline/")).map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(got_subset, want);
    let timeline_total: u64 = got.iter().filter(|(k, _)| k.starts_with("timeline/")).map(|(_, v)| v).sum();
    assert_eq!(timeline_total, accesses.len() as u64);
    assert_eq!(dom.matches("class=\"policy-marker\"").count(), 2);
    assert!(
        dom.contains(&std::fs::read_to_string(state.join("checkpoint")).unwrap().lines().next().unwrap().to_string())
    );
}
