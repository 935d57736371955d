//! `custody.toml`: typed settings, with flags and `CUSTODY_*` variables on top.
//!
//! Raw values come from three places, highest first: a flag, its environment variable (both
//! handled by clap), then the config file. [`Settings::resolve`] merges them with the
//! defaults and validates the result, reporting every problem at once with its key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_core::Jurisdiction;
use custody_pg::PgConfig;
use custody_server::{ServerConfig, Storage};

/// Defaults, each documented in `custody.toml.example`.
pub(crate) const DEFAULT_DATA_DIR: &str = "./custody-data";
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8750";
pub(crate) const DEFAULT_JURISDICTION: &str = "US";
pub(crate) const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
pub(crate) const DEFAULT_AUDIT_MAX_BATCH: u64 = 4096;
pub(crate) const DEFAULT_LOG_MAX_DELAY_MS: u64 = 0;
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;
pub(crate) const DEFAULT_STORAGE: &str = "embedded";
pub(crate) const DEFAULT_POSTGRES_POOL_SIZE: u64 = 16;

/// Settings given on the command line or in the environment (already merged by clap).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct SettingArgs {
    /// Config file [default: ./custody.toml if it exists]
    #[arg(long, env = "CUSTODY_CONFIG", global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Where all state lives [default: ./custody-data]
    #[arg(long, env = "CUSTODY_DATA_DIR", global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// API listen address [default: 127.0.0.1:8750]
    #[arg(long, env = "CUSTODY_LISTEN", global = true, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Jurisdiction this boundary serves [default: US]
    #[arg(long, env = "CUSTODY_JURISDICTION", global = true, value_name = "CODE")]
    pub(crate) jurisdiction: Option<String>,
    /// Schema file [default: DATA_DIR/schema.toml, seeded from the sample]
    #[arg(long, env = "CUSTODY_SCHEMA", global = true, value_name = "FILE")]
    pub(crate) schema: Option<PathBuf>,
    /// Policy directory of .cedar files [default: DATA_DIR/policies, seeded from the sample]
    #[arg(long, env = "CUSTODY_POLICY_DIR", global = true, value_name = "DIR")]
    pub(crate) policy_dir: Option<PathBuf>,
    /// Largest accepted request body in bytes [default: 1048576]
    #[arg(long, env = "CUSTODY_MAX_BODY_BYTES", global = true, value_name = "BYTES")]
    pub(crate) max_body_bytes: Option<u64>,
    /// Most log entries sequenced per batch: one write, one fsync, one signature [default: 4096]
    #[arg(long, env = "CUSTODY_AUDIT_MAX_BATCH", global = true, value_name = "N")]
    pub(crate) audit_max_batch: Option<u64>,
    /// Transparency log origin, the first line of every checkpoint [default: custody.local/ followed by the jurisdiction in lowercase]
    #[arg(long, env = "CUSTODY_LOG_ORIGIN", global = true, value_name = "ORIGIN")]
    pub(crate) log_origin: Option<String>,
    /// Longest a log batch lingers for more entries once it took all queued, in ms [default: 0]
    #[arg(long, env = "CUSTODY_LOG_MAX_DELAY_MS", global = true, value_name = "MS")]
    pub(crate) log_max_delay_ms: Option<u64>,
    /// How often a new checkpoint is signed while the log grows, in milliseconds [default: 1000]
    #[arg(long, env = "CUSTODY_CHECKPOINT_INTERVAL_MS", global = true, value_name = "MS")]
    pub(crate) checkpoint_interval_ms: Option<u64>,
    /// Where records, keys and the log live: `embedded` (redb files in DATA_DIR) or `postgres` [default: embedded]
    #[arg(long, env = "CUSTODY_STORAGE", global = true, value_name = "BACKEND")]
    pub(crate) storage: Option<String>,
    /// PostgreSQL connection string for records and the log, e.g. `host=/run/postgresql dbname=custody user=custody`
    #[arg(long, env = "CUSTODY_POSTGRES_URL", global = true, value_name = "URL")]
    pub(crate) postgres_url: Option<String>,
    /// PostgreSQL connection string for keys, to keep them in another database [default: POSTGRES_URL]
    #[arg(long, env = "CUSTODY_POSTGRES_KEYS_URL", global = true, value_name = "URL")]
    pub(crate) postgres_keys_url: Option<String>,
    /// Most PostgreSQL connections per database [default: 16]
    #[arg(long, env = "CUSTODY_POSTGRES_POOL_SIZE", global = true, value_name = "N")]
    pub(crate) postgres_pool_size: Option<u64>,
    /// Log filter, e.g. `info` or `custody=debug` [default: info]
    #[arg(long, env = "CUSTODY_LOG", global = true, value_name = "FILTER")]
    pub(crate) log: Option<String>,
}

/// The validated settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) server: ServerConfig,
    pub(crate) log: String,
}

/// Every problem found in the settings, with key paths.
#[derive(Debug)]
pub(crate) struct ConfigProblems(pub(crate) Vec<String>);

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the configuration has {} problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigProblems {}

const KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "jurisdiction",
    "schema",
    "policy_dir",
    "max_body_bytes",
    "audit_max_batch",
    "log_origin",
    "log_max_delay_ms",
    "checkpoint_interval_ms",
    "storage",
    "postgres_url",
    "postgres_keys_url",
    "postgres_pool_size",
    "log",
];

fn file_str(table: &toml::Table, key: &str, problems: &mut Vec<String>, file: &Path) -> Option<String> {
    match table.get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!("`{key}` in `{}` must be a string, found {}", file.display(), other.type_str()));
            None
        }
    }
}

fn file_int(table: &toml::Table, key: &str, problems: &mut Vec<String>, file: &Path) -> Option<u64> {
    match table.get(key) {
        None => None,
        Some(toml::Value::Integer(i)) if *i >= 0 => Some(*i as u64),
        Some(other) => {
            problems.push(format!("`{key}` in `{}` must be a non-negative integer, found {other}", file.display()));
            None
        }
    }
}

impl Settings {
    /// Merges flags/env over the config file over defaults, and validates.
    pub(crate) fn resolve(args: &SettingArgs) -> Result<Self, ConfigProblems> {
        let mut problems = Vec::new();
        let (file, explicit) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("custody.toml"), false),
        };
        let table = match std::fs::read_to_string(&file) {
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(t) => t,
                Err(e) => {
                    let msg = e.message().to_string();
                    problems.push(format!("`{}` is not valid TOML: {msg}", file.display()));
                    toml::Table::new()
                }
            },
            Err(e) if explicit || e.kind() != std::io::ErrorKind::NotFound => {
                problems.push(format!("cannot read config file `{}`: {e}", file.display()));
                toml::Table::new()
            }
            Err(_) => toml::Table::new(),
        };
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) {
                problems.push(format!(
                    "`{key}` in `{}` is not a custody setting (known: {})",
                    file.display(),
                    KEYS.join(", ")
                ));
            }
        }
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| file_str(&table, "data_dir", &mut problems, &file).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            problems.push("`data_dir` must not be empty".into());
        }
        let listen_raw = args
            .listen
            .clone()
            .or_else(|| file_str(&table, "listen", &mut problems, &file))
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_raw.parse::<SocketAddr>().map_err(|_| {
            problems.push(format!("`listen`: `{listen_raw}` is not an address like 127.0.0.1:8750"));
        });
        let j_raw = args
            .jurisdiction
            .clone()
            .or_else(|| file_str(&table, "jurisdiction", &mut problems, &file))
            .unwrap_or_else(|| DEFAULT_JURISDICTION.into());
        let jurisdiction = Jurisdiction::new(j_raw).map_err(|e| problems.push(format!("`jurisdiction`: {e}")));
        let schema =
            args.schema.clone().or_else(|| file_str(&table, "schema", &mut problems, &file).map(PathBuf::from));
        if let Some(s) = &schema
            && !s.is_file()
        {
            problems.push(format!("`schema`: `{}` is not a readable file", s.display()));
        }
        let policy_dir =
            args.policy_dir.clone().or_else(|| file_str(&table, "policy_dir", &mut problems, &file).map(PathBuf::from));
        if let Some(d) = &policy_dir
            && !d.is_dir()
        {
            problems.push(format!("`policy_dir`: `{}` is not a directory", d.display()));
        }
        let max_body = args
            .max_body_bytes
            .or_else(|| file_int(&table, "max_body_bytes", &mut problems, &file))
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=64 << 20).contains(&max_body) {
            problems.push(format!("`max_body_bytes`: {max_body} is outside 1024..=67108864"));
        }
        let batch = args
            .audit_max_batch
            .or_else(|| file_int(&table, "audit_max_batch", &mut problems, &file))
            .unwrap_or(DEFAULT_AUDIT_MAX_BATCH);
        if !(1..=65536).contains(&batch) {
            problems.push(format!("`audit_max_batch`: {batch} is outside 1..=65536"));
        }
        let origin = args.log_origin.clone().or_else(|| file_str(&table, "log_origin", &mut problems, &file));
        let delay = args
            .log_max_delay_ms
            .or_else(|| file_int(&table, "log_max_delay_ms", &mut problems, &file))
            .unwrap_or(DEFAULT_LOG_MAX_DELAY_MS);
        if delay > 1000 {
            problems.push(format!("`log_max_delay_ms`: {delay} is outside 0..=1000"));
        }
        let interval = args
            .checkpoint_interval_ms
            .or_else(|| file_int(&table, "checkpoint_interval_ms", &mut problems, &file))
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS);
        if !(10..=3_600_000).contains(&interval) {
            problems.push(format!("`checkpoint_interval_ms`: {interval} is outside 10..=3600000"));
        }
        if let Some(o) = &origin
            && (o.is_empty() || o.contains(char::is_whitespace) || o.contains('+'))
        {
            problems.push(format!("`log_origin`: `{o}` must be non-empty, without spaces or `+`"));
        }
        let storage = resolve_storage(args, &table, &mut problems, &file);
        let log =
            args.log.clone().or_else(|| file_str(&table, "log", &mut problems, &file)).unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            problems.push(format!("`log`: `{log}` is not a log filter (try `info` or `custody=debug`)"));
        }
        match (listen, jurisdiction, problems.is_empty()) {
            (Ok(listen), Ok(jurisdiction), true) => Ok(Settings {
                server: ServerConfig {
                    log_origin: origin
                        .unwrap_or_else(|| format!("custody.local/{}", jurisdiction.as_str().to_ascii_lowercase())),
                    log_max_delay: Duration::from_millis(delay),
                    checkpoint_interval: Duration::from_millis(interval),
                    data_dir,
                    listen,
                    jurisdiction,
                    schema,
                    policy_dir,
                    max_body_bytes: max_body as usize,
                    audit_max_batch: batch as usize,
                    storage,
                },
                log,
            }),
            _ => Err(ConfigProblems(problems)),
        }
    }
}

/// `storage` and the `postgres_*` settings that go with it.
fn resolve_storage(args: &SettingArgs, table: &toml::Table, problems: &mut Vec<String>, file: &Path) -> Storage {
    let kind = args
        .storage
        .clone()
        .or_else(|| file_str(table, "storage", problems, file))
        .unwrap_or_else(|| DEFAULT_STORAGE.into());
    let url = args.postgres_url.clone().or_else(|| file_str(table, "postgres_url", problems, file));
    let keys_url = args.postgres_keys_url.clone().or_else(|| file_str(table, "postgres_keys_url", problems, file));
    let pool = args
        .postgres_pool_size
        .or_else(|| file_int(table, "postgres_pool_size", problems, file))
        .unwrap_or(DEFAULT_POSTGRES_POOL_SIZE);
    if !(1..=1024).contains(&pool) {
        problems.push(format!("`postgres_pool_size`: {pool} is outside 1..=1024"));
    }
    match kind.as_str() {
        "embedded" => {
            if url.is_some() || keys_url.is_some() {
                problems.push("`postgres_url` is set but `storage` is `embedded`: set `storage = \"postgres\"`".into());
            }
            Storage::Embedded
        }
        "postgres" => match url {
            Some(url) if !url.trim().is_empty() => {
                Storage::Postgres(PgConfig { url, keys_url, pool_size: pool as usize })
            }
            _ => {
                problems.push("`postgres_url` is required with `storage = \"postgres\"`".into());
                Storage::Embedded
            }
        },
        other => {
            problems.push(format!("`storage`: `{other}` is not `embedded` or `postgres`"));
            Storage::Embedded
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("custody.toml");
        std::fs::write(&f, "listen = \"nowhere\"\njurisdiction = \"usa\"\nmax_body_bytes = 5\nbogus = 1\n").unwrap();
        let args = SettingArgs { config: Some(f), ..Default::default() };
        let err = Settings::resolve(&args).unwrap_err();
        let all = err.to_string();
        for key in ["`listen`", "`jurisdiction`", "`max_body_bytes`", "`bogus`"] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
        assert_eq!(err.0.len(), 4, "{all}");
    }

    #[test]
    fn storage_is_embedded_by_default_and_postgres_needs_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("custody.toml");
        std::fs::write(&f, "").unwrap();
        let args = SettingArgs { config: Some(f.clone()), ..Default::default() };
        assert_eq!(Settings::resolve(&args).unwrap().server.storage, Storage::Embedded);
        std::fs::write(&f, "storage = \"postgres\"\n").unwrap();
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("`postgres_url` is required"), "{err}");
        std::fs::write(&f, "storage = \"postgres\"\npostgres_url = \"host=/run/postgresql dbname=c\"\n").unwrap();
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.server.storage, Storage::Postgres(PgConfig::new("host=/run/postgresql dbname=c")));
        std::fs::write(&f, "storage = \"sqlite\"\n").unwrap();
        assert!(Settings::resolve(&args).unwrap_err().to_string().contains("`storage`"));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("custody.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\njurisdiction = \"EU\"\n").unwrap();
        let args = SettingArgs { config: Some(f), listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.server.listen.port(), 2);
        assert_eq!(s.server.jurisdiction.as_str(), "EU");
        assert_eq!(s.server.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }
}
