#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! `custody demo --exit`: the README's first command plays its whole story and exits 0.

use std::process::Command;

#[test]
fn the_demo_plays_its_story_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["demo", "--exit", "--users", "200"])
        .env("CUSTODY_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for line in [
        "custody serving http://127.0.0.1:",
        "clips serving http://127.0.0.1:",
        "users",
        "[1/8] clips serves a user their For You feed",
        "ranked with their watch history",
        "as 4 chunks",
        "email ",
        "withheld birthdate, device_id, email, phone, precise_location",
        "forbidden-by:no-protected-outside-jurisdiction",
        "[5/8] alice reads 150 users' protected profiles in bulk",
        "[Warning] bulk-read: principal `alice` received protected data from 151 records",
        "[6/8] a user exports their data",
        "each proved included in the signed checkpoint",
        "records tombstoned, receipt #",
        "clips reading u7 now gets 410 erased",
        "signed by the log key",
        "[8/8] the monitor verifies the whole log",
        "1 alert(s) in total: bulk-read",
        "8 steps as expected, 0 unexpected.",
        "/log/checkpoint",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    // The report exists while the demo runs; its path is printed (the temp dir is gone now).
    assert!(stdout.contains("report.html"), "{stdout}");
}

#[test]
fn too_few_users_is_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_custody")).args(["demo", "--exit", "--users", "10"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--users must be 200 to"), "{out:?}");
}
