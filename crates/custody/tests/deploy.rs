//! Trusted deployment end to end against a real `custody serve`: review, build, attest,
//! admit, revoke and expire; the attestation is checked by an independent DSSE verifier.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository whose build turns `app.in` into the executable `app`: a workload that
/// writes its credential to the file named by its first argument, then waits.
fn repo(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    std::fs::write(dir.join("app.in"), "#!/bin/sh\nprintf '%s' \"$CUSTODY_TOKEN\" > \"$1\"\nexec sleep 60\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "reviewed"]);
    let reviewed = git(dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join("app.in"), "#!/bin/sh\necho unreviewed\n").unwrap();
    git(dir, &["commit", "-qam", "not reviewed"]);
    let unreviewed = git(dir, &["rev-parse", "HEAD"]);
    (reviewed, unreviewed)
}

fn ok(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Makes a review key in `dir` and returns its path and public half.
fn review_key(s: &Server, dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let kg = ok(&s.cli(&["--format", "json", "review", "keygen", "--out", key.to_str().unwrap()]));
    (key, kg["public_key"].as_str().unwrap().to_string())
}

/// Registers `name` as a reviewer with a fresh review key and returns the key's path.
fn reviewer(s: &Server, dir: &Path, name: &str) -> std::path::PathBuf {
    let (key, public) = review_key(s, dir, name);
    s.principal(name, "engineer", "US", &["--role", "reviewer", "--attr", &format!("review_key={public}")]);
    key
}

/// `custody review approve` of `commit` in `repo` by `who`, signing with `key`.
fn approve(s: &Server, repo: &Path, commit: &str, who: &str, key: &Path, notes: &str) -> Output {
    s.cli(&[
        "--format",
        "json",
        "review",
        "approve",
        "--repo",
        repo.to_str().unwrap(),
        "--commit",
        commit,
        "--reviewer",
        who,
        "--key",
        key.to_str().unwrap(),
        "--notes",
        notes,
    ])
}

/// A workload started by `custody run`, killed when dropped.
struct Workload(std::process::Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `custody run` on `artifact` and waits for the token it hands the workload.
fn run(s: &Server, artifact: &Path, ttl: u64, token_file: &Path) -> (Workload, String) {
    let child = Workload(
        Command::new(common::BIN)
            .arg("--data-dir")
            .arg(s.data())
            .args(["run", "--ttl-secs", &ttl.to_string(), "--artifact"])
            .arg(artifact)
            .arg("--")
            .arg(token_file)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(token_file)
            && !t.is_empty()
        {
            return (child, t);
        }
        assert!(Instant::now() < deadline, "the workload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reviewed_built_code_gets_credentials() {
    let s = Server::start_with(&["--checkpoint-interval-ms", "100"]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("repo");
    let (reviewed, unreviewed) = repo(&src);

    // A reviewer with a key registered as an attribute.
    let key = reviewer(&s, work.path(), "alice");
    // Someone without the reviewer role cannot approve, even with a registered key.
    let (mkey, mpub) = review_key(&s, work.path(), "mallory");
    s.principal("mallory", "engineer", "US", &["--attr", &format!("review_key={mpub}")]);
    let approve = |who: &str, key: &Path, commit: &str| approve(&s, &src, commit, who, key, "read every line");
    let refused = approve("mallory", &mkey, &unreviewed);
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    // A review signed with the wrong key does not verify.
    let forged = approve("alice", &mkey, &unreviewed);
    assert_eq!(forged.status.code(), Some(2), "{}", String::from_utf8_lossy(&forged.stderr));
    ok(&approve("alice", &key, &reviewed));

    let build = |commit: &str, out: &Path| {
        s.cli(&[
            "--format",
            "json",
            "build",
            "--repo",
            src.to_str().unwrap(),
            "--commit",
            commit,
            "--out",
            out.to_str().unwrap(),
            "--output",
            "app",
            "--",
            "sh",
            "-c",
            "cp app.in app && chmod +x app",
        ])
    };
    // An unreviewed commit is refused before anything is built.
    let out_bad = work.path().join("out-bad");
    let r = build(&unreviewed, &out_bad);
    assert_eq!(r.status.code(), Some(3), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!out_bad.join("app").exists());

    // The reviewed commit builds (from a clean checkout, not the dirty work tree) and is attested.
    std::fs::write(src.join("app.in"), "#!/bin/sh\necho uncommitted\n").unwrap();
    let out = work.path().join("out");
    let built = ok(&build(&reviewed, &out));
    let app = out.join("app");
    assert!(std::fs::read_to_string(&app).unwrap().contains("CUSTODY_TOKEN"));
    let digest = built["outputs"][0]["sha256"].as_str().unwrap().to_owned();

    // An independent DSSE/in-toto/SLSA verifier accepts the attestation.
    let bk: Value = reqwest::get(format!("{}/v1/deploy/build-key", s.base)).await.unwrap().json().await.unwrap();
    let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/verify_dsse.py");
    let v = Command::new("python3")
        .arg(verifier)
        .arg(out.join("attestation.intoto.dsse.json"))
        .arg(bk["keyid"].as_str().unwrap())
        .arg(bk["public_key"].as_str().unwrap())
        .arg(&app)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));

    // The attested binary runs with a credential that works, bound to its digest.
    let (child, token) = run(&s, &app, 600, &work.path().join("token"));
    let c = s.client(&token);
    let seeder = s.client(&s.principal("seed-app", "workload", "US", &["--role", "app-backend"]));
    let mut fields = serde_json::Map::new();
    fields.insert("handle".into(), "@ada".into());
    seeder.create("profiles", Some("p1"), "subj-1", fields).await.unwrap();
    assert!(c.get("profiles", "p1").await.is_ok());
    let listed = ok(&s.cli(&["--format", "json", "principal", "list"]));
    let admitted = listed.as_array().unwrap().iter().find(|p| p["attrs"]["tags"]["artifact_sha256"] == digest).unwrap();
    assert_eq!(admitted["attrs"]["tags"]["admitted"], "true");
    assert_eq!(admitted["attrs"]["tags"]["source_commit"], reviewed.as_str());

    // One byte changed: no credential.
    let tampered = work.path().join("app-tampered");
    let mut bytes = std::fs::read(&app).unwrap();
    bytes.push(b'\n');
    std::fs::write(&tampered, bytes).unwrap();
    std::fs::set_permissions(&tampered, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = s.cli(&["run", "--artifact", tampered.to_str().unwrap(), "--", "/dev/null"]);
    assert_eq!(r.status.code(), Some(3), "{}", String::from_utf8_lossy(&r.stderr));

    // Revocation ends the running workload's credential at its next request.
    let revoked = ok(&s.cli(&["--format", "json", "artifact", "revoke", &digest]));
    assert_eq!(revoked.as_array().unwrap().len(), 1);
    assert_eq!(c.get("profiles", "p1").await.unwrap_err().status().map(|s| s.as_u16()), Some(401));
    let r = s.cli(&["run", "--artifact", app.to_str().unwrap(), "--", "/dev/null"]);
    assert_eq!(r.status.code(), Some(3));
    drop(child);

    // The chain is in the log: review, attestation and revocation entries, once a checkpoint
    // covers them.
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", s.base)).send();
    let key = get("/log/key").await.unwrap().text().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cp = get("/log/checkpoint").await.unwrap().text().await.unwrap();
        let size = custody_verify::verify_checkpoint(&cp, key.trim()).unwrap().size.min(256);
        let bundle = get(&format!("/log/tile/entries/000.p/{size}")).await.unwrap().bytes().await.unwrap();
        let text = String::from_utf8_lossy(&bundle);
        let kinds =
            ["\"kind\":\"review\"", "\"kind\":\"attestation\"", "\"kind\":\"artifact-revoked\"", "\"key\":\"build\""];
        if kinds.iter().all(|k| text.contains(k)) {
            break;
        }
        assert!(Instant::now() < deadline, "the log lacks one of {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_credentials_expire_on_time() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("repo");
    let (reviewed, _) = repo(&src);
    let key = reviewer(&s, work.path(), "rev");
    ok(&approve(&s, &src, &reviewed, "rev", &key, "fine"));
    let out = work.path().join("out");
    ok(&s.cli(&[
        "--format",
        "json",
        "build",
        "--repo",
        src.to_str().unwrap(),
        "--commit",
        &reviewed,
        "--out",
        out.to_str().unwrap(),
        "--output",
        "app",
        "--",
        "sh",
        "-c",
        "cp app.in app && chmod +x app",
    ]));
    let (child, token) = run(&s, &out.join("app"), 2, &work.path().join("token"));
    let c = s.client(&token);
    let first = c.get("profiles", "none").await.unwrap_err();
    assert_eq!(first.status().map(|s| s.as_u16()), Some(404), "authenticated while fresh");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = c.get("profiles", "none").await.unwrap_err();
    assert_eq!(later.status().map(|s| s.as_u16()), Some(401), "expired after its ttl");
    drop(child);
}

/// The real thing: a reviewed commit of this repository builds clips from a clean checkout,
/// and the attested binary runs under `custody run` as the clips backend and serves users
/// through custody, until its artifact is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_commit_of_clips_builds_and_runs_under_custody_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let clips_deploy = root.join("crates/clips/deploy");
    let s = Server::start_with(&[
        "--schema",
        clips_deploy.join("schema.toml").to_str().unwrap(),
        "--policy-dir",
        clips_deploy.join("policies").to_str().unwrap(),
    ]);
    let head = git(&root, &["rev-parse", "HEAD"]);
    let work = tempfile::tempdir().unwrap();
    let key = reviewer(&s, work.path(), "alice");
    let repo = root.to_str().unwrap();
    ok(&approve(&s, &root, &head, "alice", &key, "clips at HEAD"));

    // The build: cargo on a fresh clone of HEAD. Dependencies compile into a target dir kept
    // between runs (the checkout itself is fresh every time); the binary is copied into the
    // checkout, where the builder hashes it.
    let out = work.path().join("out");
    let shared_target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clips-build");
    let built = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(s.data())
        .args(["--format", "json", "build", "--repo", repo, "--commit", &head, "--out"])
        .arg(&out)
        .args(["--output", "clips", "--", "sh", "-c"])
        .arg("cargo build --offline --quiet -p clips --bin clips --target-dir \"$CLIPS_TARGET\" && cp \"$CLIPS_TARGET/debug/clips\" clips")
        .env("CLIPS_TARGET", &shared_target)
        .output()
        .unwrap();
    let built = ok(&built);
    let clips = out.join("clips");
    assert_eq!(built["outputs"][0]["name"], "clips", "{built}");

    // Admitted as the clips backend, it serves users whose profiles live in custody.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("http://127.0.0.1:{port}");
    let _clips = Workload(
        Command::new(common::BIN)
            .arg("--data-dir")
            .arg(s.data())
            .args(["run", "--role", "clips-backend", "--artifact"])
            .arg(&clips)
            .args(["--", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("CLIPS_CUSTODY", &s.base)
            .env("CLIPS_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{api}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "clips did not start under custody run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = http
        .post(format!("{api}/v1/users"))
        .json(&serde_json::json!({"id": "ada", "handle": "@ada", "display_name": "Ada", "email": "ada@mail.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201, "{}", created.text().await.unwrap());
    let profile: Value = http.get(format!("{api}/v1/users/ada")).send().await.unwrap().json().await.unwrap();
    assert_eq!(profile["handle"], "@ada", "{profile}");
    // The workload principal carries the artifact's provenance.
    let digest = built["outputs"][0]["sha256"].as_str().unwrap().to_owned();
    let listed = ok(&s.cli(&["--format", "json", "principal", "list"]));
    let admitted = listed.as_array().unwrap().iter().find(|p| p["attrs"]["tags"]["artifact_sha256"] == digest).unwrap();
    assert_eq!(admitted["attrs"]["tags"]["source_commit"], head.as_str());

    // Revoked: clips' next request through custody is refused.
    ok(&s.cli(&["--format", "json", "artifact", "revoke", &digest]));
    let after = http.get(format!("{api}/v1/users/ada")).send().await.unwrap();
    assert!(!after.status().is_success(), "clips still reads through custody after revocation");
}
