#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Replays the checked-in fuzz corpus (`fuzz/corpus/`) through the very functions the fuzz
//! targets run, so every `cargo test` exercises the seeds (and any crash input added to them)
//! without libFuzzer or a nightly toolchain.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/lib.rs"]
#[allow(unreachable_pub)]
mod fuzz_support;

/// The files of one target's corpus, by name (hidden files skipped, as libFuzzer does).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

#[test]
fn request_body_corpus_parses_and_validates_without_panicking() {
    let mut valid = BTreeSet::new();
    let mut unparsed = 0;
    for (name, data) in corpus("request_body") {
        let out = fuzz_support::request_body(&data);
        println!("{name}: parsed {:?}, valid {:?}", out.parsed, out.valid);
        if out.parsed.is_empty() {
            unparsed += 1;
        }
        valid.extend(out.valid);
    }
    // The seeds reach every body kind's validation, not only the parser's error paths.
    assert_eq!(valid, BTreeSet::from(["batch-get", "create", "search", "update"]));
    assert!(unparsed > 0, "no seed exercises a parse error");
}

#[test]
fn request_body_seeds_mean_what_their_names_say() {
    let seeds: std::collections::BTreeMap<String, Vec<u8>> = corpus("request_body").into_iter().collect();
    let run = |name: &str| fuzz_support::request_body(seeds.get(name).unwrap_or_else(|| panic!("no seed `{name}`")));
    assert_eq!(run("create_full.json").valid, ["create"]);
    assert_eq!(run("create_wrong_types.json").parsed, ["create"]);
    assert!(run("create_wrong_types.json").valid.is_empty());
    assert_eq!(run("create_bad_ids.json").parsed, ["create"]);
    assert!(run("create_bad_ids.json").valid.is_empty());
    assert_eq!(run("update.json").valid, ["update"]);
    assert_eq!(run("batch_get.json").valid, ["batch-get"]);
    assert_eq!(run("batch_get_bad_ids.json").parsed, ["batch-get"]);
    assert!(run("batch_get_bad_ids.json").valid.is_empty());
    assert_eq!(run("search.json").valid, ["search"]);
    assert_eq!(run("search_unsearchable.json").parsed, ["search"]);
    assert!(run("search_unsearchable.json").valid.is_empty());
    assert!(run("truncated.json").parsed.is_empty());
    assert!(run("deep_nesting.json").parsed.is_empty());
}

#[test]
fn schema_file_corpus_parses_without_panicking() {
    let mut accepted = Vec::new();
    for (name, data) in corpus("schema_file") {
        // The fuzz target takes the longest valid UTF-8 prefix, as `arbitrary` does for `&str`.
        let text = match std::str::from_utf8(&data) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap(),
        };
        if fuzz_support::schema_file(text) {
            accepted.push(name);
        }
    }
    assert_eq!(accepted, ["sample.toml"]);
}

#[test]
fn sample_schema_seed_is_the_sample_deployments() {
    let seeds = corpus("schema_file");
    let (_, sample) = seeds.iter().find(|(n, _)| n == "sample.toml").unwrap();
    assert_eq!(
        sample.as_slice(),
        custody_server::setup::SAMPLE_SCHEMA.as_bytes(),
        "refresh fuzz/corpus/schema_file/sample.toml"
    );
}

#[test]
fn tlog_formats_corpus_parses_without_panicking() {
    let seeds = corpus("tlog_formats");
    assert!(seeds.len() >= 5, "the log-format corpus has {} seeds", seeds.len());
    for (_, bytes) in &seeds {
        fuzz_support::tlog_formats(bytes);
    }
}

#[test]
fn dsse_envelope_corpus_verifies_only_the_valid_seed() {
    let mut accepted = Vec::new();
    for (name, data) in corpus("dsse_envelope") {
        if fuzz_support::dsse_envelope(&data) {
            accepted.push(name);
        }
    }
    assert_eq!(accepted, ["valid.json"]);
}

#[test]
fn policy_file_corpus_loads_only_the_sample_policies() {
    let mut accepted = Vec::new();
    for (name, data) in corpus("policy_file") {
        let text = std::str::from_utf8(&data).unwrap();
        if fuzz_support::policy_file(text) {
            accepted.push(name);
        }
    }
    let samples: Vec<String> =
        custody_server::setup::SAMPLE_POLICIES.iter().map(|(n, _)| format!("sample-{n}")).collect();
    assert_eq!(accepted, samples, "each sample policy file loads alone; every broken seed is refused");
}

#[test]
fn policy_file_seeds_are_the_sample_deployments() {
    let seeds: std::collections::BTreeMap<String, Vec<u8>> = corpus("policy_file").into_iter().collect();
    for (name, text) in custody_server::setup::SAMPLE_POLICIES {
        let seed = seeds.get(&format!("sample-{name}")).unwrap_or_else(|| panic!("no seed for {name}"));
        assert_eq!(seed.as_slice(), text.as_bytes(), "refresh fuzz/corpus/policy_file/sample-{name}");
    }
}

#[test]
fn egress_request_corpus_plans_only_the_valid_seeds() {
    let mut planned = Vec::new();
    for (name, data) in corpus("egress_request") {
        if fuzz_support::egress_request(&data) {
            planned.push(name);
        }
    }
    assert_eq!(planned, ["valid-aggregate.json", "valid-rows.json"]);
}
