//! Replays `fuzz/corpus/monitor_inputs` through the calls the `monitor_inputs` fuzz target
//! makes, so every test run exercises the seeds without libFuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

use custody_monitor::rules::{Evaluator, RuleFile};
use custody_monitor::witness::AddCheckpoint;

#[test]
fn monitor_inputs_corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/monitor_inputs");
    let mut parsed = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        if let Ok(req) = AddCheckpoint::parse(&data) {
            parsed += 1;
            assert_eq!(AddCheckpoint::parse(req.to_body().as_bytes()).unwrap(), req);
        }
        let rules: RuleFile = toml::from_str(
            "jurisdiction = \"US\"\n[outside_jurisdiction]\n[missing_justification]\n[bulk_read]\nmax_records = 1\nwindow_secs = 1\n[deny_rate]\nmax_denials = 1\nwindow_secs = 1\n[policy_replay]\n",
        )
        .unwrap();
        let mut ev = Evaluator::new(rules, Default::default());
        ev.observe(0, &data);
        ev.observe(1, &data);
    }
    assert!(files >= 5 && parsed >= 2, "{files} files, {parsed} parsed requests");
}
