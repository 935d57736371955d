//! A real `custody serve` process on a loopback port over a temporary data dir, shared by the
//! end-to-end test binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custody_client::{Client, Receipt};
use serde_json::Value;
use std::path::Path;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_custody");

/// A running server, killed when dropped.
pub(crate) struct Server {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Starts `custody serve` with default settings.
    pub(crate) fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts `custody serve` with extra global flags (e.g. `--checkpoint-interval-ms 100`).
    pub(crate) fn start_with(flags: &[&str]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), flags)
    }

    /// Starts `custody serve` on `dir`/data, which may already hold a data dir.
    pub(crate) fn start_in(dir: tempfile::TempDir, flags: &[&str]) -> Server {
        Self::launch(dir, flags, None, &[])
    }

    /// Starts `custody serve` with extra global flags and environment variables.
    pub(crate) fn start_with_env(flags: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Server {
        Self::launch(tempfile::tempdir().unwrap(), flags, None, env)
    }

    /// Starts `custody serve` logging at trace level, stdout and stderr into `log`.
    pub(crate) fn start_traced(log: &std::path::Path) -> Server {
        Self::launch(tempfile::tempdir().unwrap(), &[], Some(log), &[])
    }

    fn launch(
        dir: tempfile::TempDir,
        flags: &[&str],
        log: Option<&std::path::Path>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        let (child, base) = Self::spawn(&dir.path().join("data"), flags, log, env);
        let s = Server { child, dir, base };
        s.wait_ready();
        s
    }

    fn spawn(
        data: &std::path::Path,
        flags: &[&str],
        log: Option<&std::path::Path>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> (Child, String) {
        let port = free_port();
        let (level, out, err) = match log {
            Some(path) => {
                let f = std::fs::File::create(path).unwrap();
                ("trace", Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
            }
            None => ("warn", Stdio::null(), Stdio::null()),
        };
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(flags)
            .arg("serve")
            .env("CUSTODY_LOG", level)
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        (child, format!("http://127.0.0.1:{port}"))
    }

    fn wait_ready(&self) {
        let addr = self.base.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() || !self.data().join("admin.sock").exists() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server and starts it again on the same data dir (on a new port), with `flags`.
    pub(crate) fn restart(&mut self, flags: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.data().join("admin.sock"));
        let (child, base) = Self::spawn(&self.data(), flags, None, &[]);
        self.child = child;
        self.base = base;
        self.wait_ready();
    }

    /// SIGKILLs the server (no shutdown, no final checkpoint).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data dir.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs the CLI against this server's data dir.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).arg("--data-dir").arg(self.data()).args(args).output().unwrap()
    }

    /// Registers a principal and returns its token.
    pub(crate) fn principal(&self, id: &str, kind: &str, location: &str, extra: &[&str]) -> String {
        let mut args = vec!["--format", "json", "principal", "add", "--id", id, "--kind", kind, "--location", location];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// A client authenticating with `token`.
    pub(crate) fn client(&self, token: &str) -> Client {
        Client::new(&self.base, token).unwrap()
    }
}

/// Copies a directory tree (a node's data dir, to start another node with its secrets).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else if p.is_file() {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// The first checkpoint (verified under `key`) that covers `index`, waiting up to 10 s.
pub(crate) async fn checkpoint_covering(monitor: &Client, key: &str, index: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = monitor.checkpoint().await.unwrap();
        if custody_verify::verify_checkpoint(&text, key).unwrap().size > index {
            return text;
        }
        assert!(Instant::now() < deadline, "no checkpoint covers index {index}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Verifies each receipt and proves its entry included in `checkpoint`.
pub(crate) async fn prove(monitor: &Client, key: &str, receipts: &[Receipt], checkpoint: &str) {
    let cp = custody_verify::verify_checkpoint(checkpoint, key).unwrap();
    for r in receipts {
        let (entry, log_receipt) = custody_client::verify_receipt(r, key).unwrap();
        let proof = monitor.inclusion_proof(r.index, cp.size).await.unwrap();
        let receipt_json = serde_json::to_string(&log_receipt).unwrap();
        custody_verify::verify_receipt_in_log(&receipt_json, key, entry.as_bytes(), checkpoint, &proof).unwrap();
    }
}
