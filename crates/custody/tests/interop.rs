//! Interoperability: the log `custody serve` publishes verifies with an implementation that
//! is not in this repository's Rust code: `tests/interop/verify_log.py`, written from the
//! C2SP specs (signed-note, tlog-checkpoint, tlog-tiles) and RFC 6962/9162 alone.
//!
//! Needs `python3` with the `cryptography` package. Missing either is a failure, not a skip:
//! CI installs them (`pip install cryptography`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use custody_client::{Client, Reason};
use serde_json::{Map, Value, json};

mod common;

use common::Server;
const VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/verify_log.py");
/// One C2SP tile: 256 hashes.
const TILE: u64 = 256;

fn python() -> String {
    std::env::var("CUSTODY_INTEROP_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails (never skips) when the independent verifier cannot run.
fn require_python() {
    let py = python();
    let out = Command::new(&py)
        .args(["-c", "import cryptography.hazmat.primitives.asymmetric.ed25519"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the interop test needs `{py}` (Python 3) to run {VERIFIER}: {e}; \
                 install Python 3 and `pip install cryptography` (or set CUSTODY_INTEROP_PYTHON)"
            )
        });
    assert!(
        out.status.success(),
        "the interop test needs the Python `cryptography` package for Ed25519 (`pip install cryptography`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify_log(args: &[&str]) -> Output {
    let out = Command::new(python()).arg(VERIFIER).args(args).output().unwrap();
    println!(
        "$ python3 verify_log.py {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

/// A well-formed verifier key for `name` over a freshly generated Ed25519 key (not the log's).
fn other_key(name: &str) -> String {
    const GEN: &str = "import base64, hashlib, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
name = sys.argv[1]
pub = Ed25519PrivateKey.generate().public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
kid = hashlib.sha256(name.encode() + b'\\n\\x01' + pub).digest()[:4].hex()
print(name + '+' + kid + '+' + base64.b64encode(b'\\x01' + pub).decode())";
    let out = Command::new(python()).args(["-c", GEN, name]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn checkpoint_size(text: &str) -> u64 {
    text.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("no size line in {text:?}"))
}

/// The first signed checkpoint whose tree holds entry `index`.
async fn checkpoint_covering(monitor: &Client, index: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = monitor.checkpoint().await.unwrap();
        if checkpoint_size(&text) > index {
            return text;
        }
        assert!(Instant::now() < deadline, "no checkpoint covers entry {index}; last was {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Reads by the engineer until the log holds entry `index`; returns the last receipted index.
async fn reads_until(engineer: &Client, profiles: usize, index: u64) -> u64 {
    let mut last = 0;
    let mut n = 0;
    while last < index {
        last = engineer.get("profiles", &format!("u{}", n % profiles)).await.unwrap().receipt.index;
        n += 1;
    }
    last
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_log_verifies_with_an_independent_c2sp_verifier() {
    require_python();
    let started = Instant::now();
    let s = Server::start_with(&["--checkpoint-interval-ms", "100"]);
    let app = s.client(&s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]));
    let engineer = s
        .client(&s.principal("alice", "engineer", "US", &["--employer", "provider", "--role", "support"]))
        .with_reason(Reason::new("support", "TICKET-42"));
    let monitor = s.client(&s.principal("auditor", "monitor", "US", &[]));
    let key = monitor.log_key().await.unwrap();

    // About 200 entries: 50 profiles seeded by the workload, then reads by the engineer.
    const PROFILES: usize = 50;
    for n in 0..PROFILES {
        let body = json!({"email": format!("p{n}@mail.example"), "phone": format!("+1555{n:04}"), "handle": format!("h{n}"), "bio": "hi"});
        app.create("profiles", Some(&format!("u{n}")), &format!("subj-{n}"), fields(body)).await.unwrap();
    }
    let last = reads_until(&engineer, PROFILES, 199).await;
    let old = checkpoint_covering(&monitor, last).await;
    let old_size = checkpoint_size(&old);
    assert!(old_size < TILE, "the old checkpoint ({old_size}) should end inside the first tile");
    let old_file = s.data().join("old-checkpoint");
    write(&old_file, &old);

    // More reads until the tree holds a full tile and a partial one.
    let last = reads_until(&engineer, PROFILES, TILE + 80).await;
    let new = checkpoint_covering(&monitor, last).await;
    let new_size = checkpoint_size(&new);
    assert!(new_size > TILE && !new_size.is_multiple_of(TILE), "{new_size}");
    println!("log: old checkpoint {old_size}, new checkpoint {new_size}, generated in {:?}", started.elapsed());

    // The independent verifier accepts the served log, the old checkpoint and their consistency.
    let old_path = old_file.to_str().unwrap();
    let out = verify_log(&[&s.base, "--key", &key, "--old-checkpoint", old_path, "--self-test", "--strict"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "the served log failed the spec-based verifier:\n{stdout}");
    for check in [
        "ok    self-test",
        "hash to their level-0 tile hashes",
        "MTH over all",
        "level 1: 1 tile(s) ['tile/1/000.p/1']",
        "inclusion proofs verify",
        &format!("consistency proof {old_size} -> "),
    ] {
        assert!(stdout.contains(check), "the verifier did not report `{check}`:\n{stdout}");
    }

    // A different key under the same name must not verify the log.
    let name = key.split('+').next().unwrap();
    let wrong = other_key(name);
    assert!(wrong.starts_with(&format!("{name}+")) && wrong != key, "{wrong}");
    let out = verify_log(&[&s.base, "--key", &wrong]);
    assert_eq!(out.status.code(), Some(1), "a wrong key must fail verification");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no signature from the trusted key"));

    // Nor must an old checkpoint whose text was altered after signing.
    let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
    lines[1] = (old_size - 1).to_string();
    let forged = s.data().join("forged-checkpoint");
    write(&forged, &(lines.join("\n") + "\n"));
    let out = verify_log(&[&s.base, "--key", &key, "--old-checkpoint", forged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "an altered old checkpoint must fail verification");
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not verify over the note text"));
    println!("interop test took {:?}", started.elapsed());
}
