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
        "[5/8] a bulk read trips the monitor's alert\n      not yet available: issue #4",
        "[6/8] a user exports their data, then erases it\n      not yet available: issue #8",
        "signed by the log key",
        "5 steps as expected, 0 unexpected, 3 not yet available.",
        "/log/checkpoint",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
}
