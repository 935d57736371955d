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
use custody_server::tls::TlsFiles;
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
    /// TLS certificate chain (PEM) for the API listener; with --tls-key turns TLS on
    #[arg(long, env = "CUSTODY_TLS_CERT", global = true, value_name = "PEM")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the API listener
    #[arg(long, env = "CUSTODY_TLS_KEY", global = true, value_name = "PEM")]
    pub(crate) tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates identify principals by common name (mTLS)
    #[arg(long, env = "CUSTODY_TLS_CLIENT_CA", global = true, value_name = "PEM")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate from the client CA
    #[arg(long, env = "CUSTODY_TLS_REQUIRE_CLIENT_CERT", global = true)]
    pub(crate) tls_require_client_cert: bool,
    /// Serve plaintext HTTP on a non-loopback address (never do this outside a lab)
    #[arg(long, env = "CUSTODY_DANGEROUSLY_ALLOW_PLAINTEXT", global = true)]
    pub(crate) dangerously_allow_plaintext: bool,
    /// Most API requests in flight; past it requests get 503 with Retry-After [default: 1024]
    #[arg(long, env = "CUSTODY_MAX_INFLIGHT", global = true, value_name = "N")]
    pub(crate) max_inflight: Option<u64>,
    /// Sustained requests per second per principal, 0 for unlimited; past it, 429 [default: 0]
    #[arg(long, env = "CUSTODY_PRINCIPAL_RATE", global = true, value_name = "PER_SECOND")]
    pub(crate) principal_rate: Option<u64>,
    /// Requests a principal may make at once above its rate [default: 100]
    #[arg(long, env = "CUSTODY_PRINCIPAL_BURST", global = true, value_name = "N")]
    pub(crate) principal_burst: Option<u64>,
    /// Transparency log origin, the first line of every checkpoint [default: custody.local/ followed by the jurisdiction in lowercase]
    #[arg(long, env = "CUSTODY_LOG_ORIGIN", global = true, value_name = "ORIGIN")]
    pub(crate) log_origin: Option<String>,
    /// Longest a log batch lingers for more entries once it took all queued, in ms [default: 0]
    #[arg(long, env = "CUSTODY_LOG_MAX_DELAY_MS", global = true, value_name = "MS")]
    pub(crate) log_max_delay_ms: Option<u64>,
    /// How often a new checkpoint is signed while the log grows, in milliseconds [default: 1000]
    #[arg(long, env = "CUSTODY_CHECKPOINT_INTERVAL_MS", global = true, value_name = "MS")]
    pub(crate) checkpoint_interval_ms: Option<u64>,
    /// A witness that must cosign checkpoints, as `VKEY@URL`; repeat (or comma-separate in the
    /// variable) for more [default: none, the log's signature alone]
    #[arg(long = "witness", env = "CUSTODY_WITNESSES", global = true, value_name = "VKEY@URL", value_delimiter = ',')]
    pub(crate) witnesses: Vec<String>,
    /// How many witnesses must cosign a checkpoint before it is published [default: all of them]
    #[arg(long, env = "CUSTODY_WITNESS_QUORUM", global = true, value_name = "N")]
    pub(crate) witness_quorum: Option<u64>,
    /// Who holds the KEK: `file` (a key file under DATA_DIR/keys) or `pkcs11` (an HSM) [default: file]
    #[arg(long, env = "CUSTODY_KEY_PROVIDER", global = true, value_name = "file|pkcs11")]
    pub(crate) key_provider: Option<String>,
    /// PKCS#11 module (.so) of the HSM, e.g. /usr/lib/softhsm/libsofthsm2.so
    #[arg(long, env = "CUSTODY_PKCS11_MODULE", global = true, value_name = "PATH")]
    pub(crate) pkcs11_module: Option<PathBuf>,
    /// PKCS#11 slot id of the token (or use --pkcs11-token)
    #[arg(long, env = "CUSTODY_PKCS11_SLOT", global = true, value_name = "ID")]
    pub(crate) pkcs11_slot: Option<u64>,
    /// PKCS#11 token label (or use --pkcs11-slot)
    #[arg(long, env = "CUSTODY_PKCS11_TOKEN", global = true, value_name = "LABEL")]
    pub(crate) pkcs11_token: Option<String>,
    /// File holding the token's user PIN (the PIN itself: CUSTODY_PKCS11_PIN, never a flag)
    #[arg(long, env = "CUSTODY_PKCS11_PIN_FILE", global = true, value_name = "FILE")]
    pub(crate) pkcs11_pin_file: Option<PathBuf>,
    /// Label prefix of the KEK objects in the token; version n is PREFIX-vn [default: custody-kek]
    #[arg(long, env = "CUSTODY_PKCS11_KEY_LABEL", global = true, value_name = "PREFIX")]
    pub(crate) pkcs11_key_label: Option<String>,
    /// Export profile file (TOML) [default: DATA_DIR/egress.toml, seeded from the sample]
    #[arg(long, env = "CUSTODY_EGRESS_PROFILES", global = true, value_name = "FILE")]
    pub(crate) egress_profiles: Option<PathBuf>,
    /// Total differential-privacy epsilon each export destination may spend [default: 1.0]
    #[arg(long, env = "CUSTODY_EGRESS_EPSILON_BUDGET", global = true, value_name = "EPSILON")]
    pub(crate) egress_epsilon_budget: Option<f64>,
    /// Days per pseudonym key epoch of exports [default: 30]
    #[arg(long, env = "CUSTODY_EGRESS_EPOCH_DAYS", global = true, value_name = "DAYS")]
    pub(crate) egress_epoch_days: Option<u64>,
    /// Where records, keys and the log live: `embedded` (redb files in DATA_DIR) or `postgres` [default: embedded]
    #[arg(long, env = "CUSTODY_STORAGE", global = true, value_name = "BACKEND")]
    pub(crate) storage: Option<String>,
    /// PostgreSQL connection string for records and the log, e.g. `host=/run/postgresql dbname=custody user=custody`
    #[arg(long, env = "CUSTODY_POSTGRES_URL", global = true, value_name = "URL")]
    pub(crate) postgres_url: Option<String>,
    /// PostgreSQL connection string for keys, to keep them in another database [default: POSTGRES_URL]
    #[arg(long, env = "CUSTODY_POSTGRES_KEYS_URL", global = true, value_name = "URL")]
    pub(crate) postgres_keys_url: Option<String>,
    /// This node's URL for the other nodes on the same PostgreSQL database [default: http://LISTEN]
    #[arg(long, env = "CUSTODY_NODE_URL", global = true, value_name = "URL")]
    pub(crate) node_url: Option<String>,
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
    "max_inflight",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_require_client_cert",
    "dangerously_allow_plaintext",
    "principal_rate",
    "principal_burst",
    "log_origin",
    "log_max_delay_ms",
    "checkpoint_interval_ms",
    "witnesses",
    "witness_quorum",
    "key_provider",
    "pkcs11_module",
    "pkcs11_slot",
    "pkcs11_token",
    "pkcs11_pin",
    "pkcs11_pin_file",
    "pkcs11_key_label",
    "egress_profiles",
    "egress_epsilon_budget",
    "egress_epoch_days",
    "storage",
    "postgres_url",
    "postgres_keys_url",
    "postgres_pool_size",
    "node_url",
    "log",
];

/// The environment variable that carries the PKCS#11 user PIN (kept out of flags, which
/// other users of the machine can read in the process list).
pub(crate) const PIN_ENV: &str = "CUSTODY_PKCS11_PIN";

/// `key_provider` and the `pkcs11_*` settings, validated into a provider choice.
fn key_provider(
    args: &SettingArgs,
    table: &toml::Table,
    problems: &mut Vec<String>,
    file: &Path,
) -> custody_server::KeyProviderConfig {
    use custody_server::KeyProviderConfig;
    let kind = args
        .key_provider
        .clone()
        .or_else(|| file_str(table, "key_provider", problems, file))
        .unwrap_or_else(|| "file".into());
    let module =
        args.pkcs11_module.clone().or_else(|| file_str(table, "pkcs11_module", problems, file).map(PathBuf::from));
    let slot = args.pkcs11_slot.or_else(|| file_int(table, "pkcs11_slot", problems, file));
    let token = args.pkcs11_token.clone().or_else(|| file_str(table, "pkcs11_token", problems, file));
    let pin_file =
        args.pkcs11_pin_file.clone().or_else(|| file_str(table, "pkcs11_pin_file", problems, file).map(PathBuf::from));
    let pin_in_file = file_str(table, "pkcs11_pin", problems, file).map(zeroize::Zeroizing::new);
    let label = args
        .pkcs11_key_label
        .clone()
        .or_else(|| file_str(table, "pkcs11_key_label", problems, file))
        .unwrap_or_else(|| "custody-kek".into());
    match kind.as_str() {
        "file" => {
            if module.is_some() || slot.is_some() || token.is_some() || pin_file.is_some() || pin_in_file.is_some() {
                problems.push("`pkcs11_*` settings are given but `key_provider` is `file`; set `key_provider = \"pkcs11\"` or remove them".into());
            }
            KeyProviderConfig::File
        }
        "pkcs11" => {
            let module = match module {
                Some(m) if m.is_file() => Some(m),
                Some(m) => {
                    problems.push(format!("`pkcs11_module`: `{}` is not a readable file", m.display()));
                    None
                }
                None => {
                    problems.push("`key_provider` is `pkcs11` but `pkcs11_module` is not set (e.g. /usr/lib/softhsm/libsofthsm2.so)".into());
                    None
                }
            };
            let token = match (slot, token) {
                (Some(s), None) => Some(custody_hsm::TokenSelector::Slot(s)),
                (None, Some(t)) => Some(custody_hsm::TokenSelector::Label(t)),
                (Some(_), Some(_)) => {
                    problems.push("`pkcs11_slot` and `pkcs11_token` both name the token; set one".into());
                    None
                }
                (None, None) => {
                    problems.push("`key_provider` is `pkcs11`: set `pkcs11_token` (its label) or `pkcs11_slot`".into());
                    None
                }
            };
            let pin = match (std::env::var(PIN_ENV).ok().map(zeroize::Zeroizing::new), pin_file, pin_in_file) {
                (Some(p), _, _) => Some(p),
                (None, Some(f), _) => match std::fs::read_to_string(&f) {
                    Ok(text) => {
                        let text = zeroize::Zeroizing::new(text);
                        Some(zeroize::Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string()))
                    }
                    Err(e) => {
                        problems.push(format!("`pkcs11_pin_file`: cannot read `{}`: {e}", f.display()));
                        None
                    }
                },
                (None, None, Some(p)) => Some(p),
                (None, None, None) => {
                    problems.push(format!(
                        "`key_provider` is `pkcs11` but no PIN is given: set {PIN_ENV} or `pkcs11_pin_file`"
                    ));
                    None
                }
            };
            if label.is_empty() || label.contains(char::is_whitespace) {
                problems.push(format!("`pkcs11_key_label`: `{label}` must be non-empty, without spaces"));
            }
            match (module, token, pin) {
                (Some(module), Some(token), Some(pin)) => {
                    KeyProviderConfig::Pkcs11(custody_hsm::Pkcs11Config { module, token, pin, key_label: label })
                }
                _ => KeyProviderConfig::File,
            }
        }
        other => {
            problems.push(format!("`key_provider`: `{other}` is not a key provider (known: file, pkcs11)"));
            KeyProviderConfig::File
        }
    }
}

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

fn file_bool(table: &toml::Table, key: &str, problems: &mut Vec<String>, file: &Path) -> bool {
    match table.get(key) {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => {
            problems.push(format!("`{key}` in `{}` must be true or false, found {other}", file.display()));
            false
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

fn file_float(table: &toml::Table, key: &str, problems: &mut Vec<String>, file: &Path) -> Option<f64> {
    match table.get(key) {
        None => None,
        Some(toml::Value::Float(f)) => Some(*f),
        Some(toml::Value::Integer(i)) => Some(*i as f64),
        Some(other) => {
            problems.push(format!("`{key}` in `{}` must be a number, found {other}", file.display()));
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
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => Some(text),
            Err(e) if explicit || e.kind() != std::io::ErrorKind::NotFound => {
                problems.push(format!("cannot read config file `{}`: {e}", file.display()));
                None
            }
            Err(_) => None,
        };
        Self::resolve_text(args, &file, text.as_deref(), problems)
    }

    /// As [`Settings::resolve`], given the config file's text (`None`: no file) and the problems
    /// found reading it. Split out so the parser can be fuzzed without touching the disk.
    pub(crate) fn resolve_text(
        args: &SettingArgs,
        file: &Path,
        text: Option<&str>,
        mut problems: Vec<String>,
    ) -> Result<Self, ConfigProblems> {
        let file = file.to_path_buf();
        let table = match text.map(str::parse::<toml::Table>) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                let msg = e.message().to_string();
                problems.push(format!("`{}` is not valid TOML: {msg}", file.display()));
                toml::Table::new()
            }
            None => toml::Table::new(),
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
        let mut int = |flag: Option<u64>, key: &str, default: u64, range: std::ops::RangeInclusive<u64>| {
            let v = flag.or_else(|| file_int(&table, key, &mut problems, &file)).unwrap_or(default);
            if !range.contains(&v) {
                problems.push(format!("`{key}`: {v} is outside {}..={}", range.start(), range.end()));
            }
            v
        };
        let max_inflight = int(args.max_inflight, "max_inflight", 1024, 1..=1_000_000);
        let principal_rate = int(args.principal_rate, "principal_rate", 0, 0..=1_000_000);
        let principal_burst = int(args.principal_burst, "principal_burst", 100, 1..=1_000_000);
        let path = |flag: &Option<PathBuf>, key: &str, problems: &mut Vec<String>| {
            let p = flag.clone().or_else(|| file_str(&table, key, problems, &file).map(PathBuf::from));
            if let Some(p) = &p
                && !p.is_file()
            {
                problems.push(format!("`{key}`: `{}` is not a readable file", p.display()));
            }
            p
        };
        let tls_cert = path(&args.tls_cert, "tls_cert", &mut problems);
        let tls_key = path(&args.tls_key, "tls_key", &mut problems);
        let tls_client_ca = path(&args.tls_client_ca, "tls_client_ca", &mut problems);
        let require_client_cert =
            args.tls_require_client_cert || file_bool(&table, "tls_require_client_cert", &mut problems, &file);
        let allow_plaintext =
            args.dangerously_allow_plaintext || file_bool(&table, "dangerously_allow_plaintext", &mut problems, &file);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert, key, client_ca: tls_client_ca.clone(), require_client_cert })
            }
            (None, None) => None,
            _ => {
                problems.push("`tls_cert` and `tls_key` go together: set both or neither".into());
                None
            }
        };
        if tls.is_none() && (tls_client_ca.is_some() || require_client_cert) {
            problems.push("`tls_client_ca` and `tls_require_client_cert` need `tls_cert` and `tls_key`".into());
        }
        if require_client_cert && tls_client_ca.is_none() {
            problems.push("`tls_require_client_cert` needs `tls_client_ca`".into());
        }
        if let Ok(addr) = &listen
            && tls.is_none()
            && !addr.ip().is_loopback()
            && !allow_plaintext
        {
            problems.push(format!(
                "`listen`: {addr} is not loopback, and plaintext HTTP would expose tokens and data; set `tls_cert` and `tls_key`, or `dangerously_allow_plaintext` for a lab"
            ));
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
        let witness_raw = if args.witnesses.is_empty() {
            match table.get("witnesses") {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| match v {
                        toml::Value::String(s) => Some(s.clone()),
                        other => {
                            problems.push(format!("`witnesses` entries must be strings `VKEY@URL`, found {other}"));
                            None
                        }
                    })
                    .collect(),
                Some(other) => {
                    problems.push(format!(
                        "`witnesses` must be an array of `VKEY@URL` strings, found {}",
                        other.type_str()
                    ));
                    Vec::new()
                }
            }
        } else {
            args.witnesses.clone()
        };
        let witnesses: Vec<custody_server::witness::WitnessConfig> = witness_raw
            .iter()
            .filter_map(|w| w.parse().map_err(|e| problems.push(format!("`witnesses`: {e}"))).ok())
            .collect();
        let witness_quorum = args
            .witness_quorum
            .or_else(|| file_int(&table, "witness_quorum", &mut problems, &file))
            .unwrap_or(witness_raw.len() as u64);
        if !witness_raw.is_empty() && !(1..=witness_raw.len() as u64).contains(&witness_quorum) {
            problems.push(format!("`witness_quorum`: {witness_quorum} is outside 1..={}", witness_raw.len()));
        } else if witness_raw.is_empty() && witness_quorum > 0 {
            problems.push("`witness_quorum` is set but no `witnesses` are configured".into());
        }
        let key_provider = key_provider(args, &table, &mut problems, &file);
        let egress_profiles = path(&args.egress_profiles, "egress_profiles", &mut problems);
        let epsilon_budget = args
            .egress_epsilon_budget
            .or_else(|| file_float(&table, "egress_epsilon_budget", &mut problems, &file))
            .unwrap_or(1.0);
        if !(epsilon_budget.is_finite() && (0.0..=1000.0).contains(&epsilon_budget)) {
            problems.push(format!("`egress_epsilon_budget`: {epsilon_budget} is outside 0..=1000"));
        }
        let epoch_days = args
            .egress_epoch_days
            .or_else(|| file_int(&table, "egress_epoch_days", &mut problems, &file))
            .unwrap_or(30);
        if !(1..=3650).contains(&epoch_days) {
            problems.push(format!("`egress_epoch_days`: {epoch_days} is outside 1..=3650"));
        }
        let storage = resolve_storage(args, &table, &mut problems, &file);
        let node_url = args.node_url.clone().or_else(|| file_str(&table, "node_url", &mut problems, &file));
        if let Some(u) = &node_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            problems.push(format!("`node_url`: `{u}` must start with http:// or https://"));
        }
        if let Ok(addr) = &listen
            && node_url.is_none()
            && storage != Storage::Embedded
            && addr.ip().is_unspecified()
        {
            problems.push(format!(
                "`node_url` is required with `storage = \"postgres\"` when `listen` ({addr}) is a wildcard: other nodes must reach this one"
            ));
        }
        let log =
            args.log.clone().or_else(|| file_str(&table, "log", &mut problems, &file)).unwrap_or_else(|| "info".into());
        // Filters are ASCII (targets, levels, field names). tracing-subscriber 0.3 panics on some
        // non-ASCII input (found by the `config_file` fuzz target), so it never sees any.
        if !log.is_ascii() || tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            problems
                .push(format!("`log`: `{}` is not a log filter (try `info` or `custody=debug`)", log.escape_debug()));
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
                    max_inflight: max_inflight as usize,
                    principal_rate: principal_rate as f64,
                    principal_burst: u32::try_from(principal_burst).unwrap_or(u32::MAX),
                    tls,
                    witnesses,
                    witness_quorum: witness_quorum as usize,
                    key_provider,
                    egress_profiles,
                    egress_epsilon_budget: epsilon_budget,
                    egress_epoch_days: u32::try_from(epoch_days).unwrap_or(30),
                    storage,
                    node_url,
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

    /// Replays `fuzz/corpus/config_file` through the function the `config_file` fuzz target
    /// runs, so the seeds (and any crash input added to them) run in every `cargo test`.
    #[test]
    fn config_fuzz_corpus_resolves_or_names_its_problems() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_file");
        let mut seeds: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        seeds.sort();
        assert!(seeds.len() >= 4, "{} seeds", seeds.len());
        for seed in seeds {
            let name = seed.file_name().unwrap().to_string_lossy().into_owned();
            // The fuzz target takes the longest valid UTF-8 prefix, as `arbitrary` does for `&str`.
            let bytes = std::fs::read(&seed).unwrap();
            let text = match std::str::from_utf8(&bytes) {
                Ok(t) => t.to_string(),
                Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
            };
            let got =
                Settings::resolve_text(&SettingArgs::default(), Path::new("custody.toml"), Some(&text), Vec::new());
            match (name.starts_with("broken-"), got) {
                (true, Err(problems)) => assert!(!problems.0.is_empty()),
                (false, Ok(_)) => {}
                (broken, other) => panic!("{name}: broken={broken} but got {other:?}"),
            }
        }
    }
}
