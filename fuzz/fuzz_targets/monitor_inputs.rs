//! Arbitrary bytes as the monitor's untrusted inputs: a witness `add-checkpoint` request body
//! (c2sp.org/tlog-witness) and a log entry judged by the rules. Must never panic. The
//! monitor's own tests replay `corpus/monitor_inputs` through the same calls.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = custody_monitor::witness::AddCheckpoint::parse(data) {
        assert_eq!(custody_monitor::witness::AddCheckpoint::parse(req.to_body().as_bytes()).ok(), Some(req));
    }
    let rules: custody_monitor::rules::RuleFile =
        toml::from_str("jurisdiction = \"US\"\n[outside_jurisdiction]\n[missing_justification]\n[bulk_read]\nmax_records = 1\nwindow_secs = 1\n[deny_rate]\nmax_denials = 1\nwindow_secs = 1\n[policy_replay]\n")
            .expect("fixed rule file");
    let mut ev = custody_monitor::rules::Evaluator::new(rules, Default::default());
    let _ = ev.observe(0, data);
    let _ = ev.observe(1, data);
});
