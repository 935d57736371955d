//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary directory,
//! `pg_ctl start` listening only on a unix socket there, `pg_ctl stop` when dropped.
//!
//! The real server, not a mock: the conformance suite and `custody bench` measure what an
//! operator would run. PostgreSQL refuses to run as root, so as root the binaries run as the
//! `postgres` user (Debian's package creates it) through `runuser`, and the directory is
//! handed to that user. Binaries (`initdb`, `pg_ctl`, `createdb`) are found through
//! `CUSTODY_PG_BIN`, then `PATH` (following symlinks), then Debian's
//! `/usr/lib/postgresql/<version>/bin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::PgError;

/// A running temporary cluster; stopped and deleted when dropped.
#[derive(Debug)]
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
}

fn temp(msg: impl Into<String>) -> PgError {
    PgError::Temp(msg.into())
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf, PgError> {
    if let Some(d) = std::env::var_os("CUSTODY_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            // Follow symlinks: `createdb` may sit only beside the real `initdb`.
            if let Ok(real) = std::fs::canonicalize(d.join("initdb"))
                && let Some(bin) = real.parent()
                && bin.join("pg_ctl").is_file()
                && bin.join("createdb").is_file()
            {
                return Ok(bin.to_path_buf());
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| {
            r.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").is_file()).collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().ok_or_else(|| {
        temp("no initdb/pg_ctl: install PostgreSQL (Debian: `apt-get install postgresql`) or set CUSTODY_PG_BIN")
    })
}

fn output(cmd: &mut Command) -> Result<String, PgError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| temp(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(temp(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl TempPostgres {
    /// Creates and starts a cluster with superuser `custody`, trust authentication, and
    /// durable commits (fsync on), so benchmarks measure real durability.
    ///
    /// # Errors
    /// [`PgError::Temp`] saying which step failed and what the tool printed.
    pub fn start() -> Result<TempPostgres, PgError> {
        let bin = find_bin()?;
        // Short path: the socket's path must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("custody-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| temp(format!("cannot create a directory in /tmp: {e}")))?;
        let user = if output(Command::new("id").arg("-u"))? == "0" { Some("postgres".to_string()) } else { None };
        if let Some(u) = &user {
            output(Command::new("chown").arg(format!("{u}:")).arg(dir.path())).map_err(|e| {
                temp(format!("running as root, the cluster must belong to user `{u}` (apt-get install postgresql creates it): {e}"))
            })?;
        }
        let pg = TempPostgres { dir, bin, user };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "--auth=trust", "-U", "custody", "--no-locale", "-E", "UTF8", "--no-sync"])?;
        let opts = format!("-k {} -c listen_addresses='' -c max_connections=200", pg.socket_dir());
        let log = pg.dir.path().join("server.log").display().to_string();
        pg.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start"])?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<String, PgError> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path());
        output(&mut cmd)
    }

    /// A connection string for database `db` as superuser `custody` over the unix socket.
    pub fn url(&self, db: &str) -> String {
        format!("host={} user=custody dbname={db}", self.socket_dir())
    }

    /// Creates database `name` (letters, digits, `_`) and returns its connection string.
    ///
    /// # Errors
    /// [`PgError::Temp`] if the name is not plain or `createdb` fails.
    pub fn create_database(&self, name: &str) -> Result<String, PgError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(temp(format!("database name `{name}` must be letters, digits and `_`")));
        }
        self.run("createdb", &["-h", &self.socket_dir(), "-U", "custody", name])?;
        Ok(self.url(name))
    }

    /// The cluster's server log, for failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The directory the cluster lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]) {
            tracing::warn!(error = %e, "cannot stop the temporary PostgreSQL");
        }
    }
}
