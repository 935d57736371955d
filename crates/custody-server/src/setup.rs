//! Opening a data dir and assembling the server.
//!
//! A data dir holds everything a node needs, laid out so that record storage and keys are
//! apart:
//!
//! ```text
//! custody-data/
//!   records.redb        records, blind index, principals
//!   keys/               mode 0700
//!     kek               the provider's key-encryption key, mode 0600
//!     keys.redb         wrapped subject DEKs and system keys
//!   log/                the transparency log: entries.wal (framed, fsynced per batch),
//!                       tile/... (C2SP tiles), checkpoint, key (0600)
//!   schema.toml         seeded from the sample deployment on first start
//!   policies/*.cedar    seeded likewise
//!   admin.sock          operator socket while the server runs (mode 0600)
//! ```
//!
//! With [`Storage::Postgres`], records, wrapped keys and the log's frames, tiles and
//! checkpoint live in PostgreSQL instead (see `custody-pg`); the data dir keeps the secrets
//! (KEK, log signing key), the schema and the policies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use std::time::Duration;

use custody_audit::AuditSink;
use custody_core::{Jurisdiction, KeyEvent, LogEntry, PolicySetEvent, Schema};
use custody_policy::LoadedPolicies;

use crate::guard::GuardError;
use custody_crypto::FileKeyProvider;
use custody_log::{Log, LogConfig};
use custody_policy::PolicyEngine;
use custody_vault::{KeyStore, PrincipalStore, RecordStore, RedbStore, Vault};

use crate::auth::Authenticator;
use crate::guard::Guard;
use crate::metrics::Metrics;

/// The sample deployment's schema, seeded into a new data dir.
pub const SAMPLE_SCHEMA: &str = include_str!("../../../deploy/sample/schema.toml");
/// The sample deployment's policies, seeded into a new data dir.
pub const SAMPLE_POLICIES: &[(&str, &str)] = &[
    ("00-public.cedar", include_str!("../../../deploy/sample/policies/00-public.cedar")),
    ("10-engineers.cedar", include_str!("../../../deploy/sample/policies/10-engineers.cedar")),
    ("20-workloads.cedar", include_str!("../../../deploy/sample/policies/20-workloads.cedar")),
    ("30-subjects.cedar", include_str!("../../../deploy/sample/policies/30-subjects.cedar")),
    ("90-boundary.cedar", include_str!("../../../deploy/sample/policies/90-boundary.cedar")),
];

/// Why the server could not start. Each names the file or setting at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A file or directory could not be created or read.
    #[error("`{path}`: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The schema file is unusable.
    #[error("schema `{path}`: {source}")]
    Schema {
        /// The file.
        path: String,
        /// What is wrong.
        source: custody_core::SchemaFileError,
    },
    /// The policy set is unusable.
    #[error(transparent)]
    Policy(#[from] custody_policy::PolicyError),
    /// The vault could not be opened.
    #[error(transparent)]
    Vault(#[from] custody_vault::VaultError),
    /// The key file is unusable.
    #[error(transparent)]
    Crypto(#[from] custody_crypto::CryptoError),
    /// The audit sink could not be opened.
    #[error(transparent)]
    Audit(#[from] custody_audit::AuditError),
    /// The transparency log could not be opened (damaged, tampered, or misconfigured).
    #[error(transparent)]
    Log(#[from] custody_log::LogError),
    /// The PostgreSQL backend could not be reached or migrated.
    #[error(transparent)]
    Postgres(#[from] custody_pg::PgError),
}

/// Where records, keys and the log are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    /// redb files and the file log under the data dir: one node, nothing else to run.
    #[default]
    Embedded,
    /// A PostgreSQL database (keys optionally in another one), for operators who run it at scale.
    Postgres(custody_pg::PgConfig),
}

/// The stores a node runs on, whichever the backend.
struct Stores {
    records: Arc<dyn RecordStore>,
    keys: Arc<dyn KeyStore>,
    principals: Arc<dyn PrincipalStore>,
    /// The log's storage when it is not the data dir's files.
    log: Option<Arc<dyn custody_log::LogStorage>>,
}

impl Stores {
    fn open(cfg: &ServerConfig, dirs: &DataDir) -> Result<Stores, SetupError> {
        match &cfg.storage {
            Storage::Embedded => {
                let s = Arc::new(RedbStore::open(&dirs.root, &dirs.keys)?);
                Ok(Stores { records: s.clone(), keys: s.clone(), principals: s, log: None })
            }
            Storage::Postgres(pg) => {
                let s = Arc::new(custody_pg::PgStore::connect(pg)?);
                let log = Arc::new(s.log_storage()?);
                Ok(Stores { records: s.clone(), keys: s.clone(), principals: s, log: Some(log) })
            }
        }
    }
}

/// The principal store `cfg` names, for offline commands.
///
/// # Errors
/// [`SetupError::Vault`] or [`SetupError::Postgres`].
pub fn open_principal_store(cfg: &ServerConfig, dirs: &DataDir) -> Result<Arc<dyn PrincipalStore>, SetupError> {
    Ok(Stores::open(cfg, dirs)?.principals)
}

/// The resolved settings the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where all state lives.
    pub data_dir: PathBuf,
    /// The API's listen address.
    pub listen: SocketAddr,
    /// The jurisdiction this boundary serves.
    pub jurisdiction: Jurisdiction,
    /// The schema file; `None` means `<data_dir>/schema.toml`, seeded from the sample.
    pub schema: Option<PathBuf>,
    /// The policy directory; `None` means `<data_dir>/policies`, seeded from the sample.
    pub policy_dir: Option<PathBuf>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most log entries sequenced per batch (one write, one fsync, one signature).
    pub audit_max_batch: usize,
    /// The transparency log's origin, e.g. `custody.example/us`.
    pub log_origin: String,
    /// Longest a log batch waits for more entries.
    pub log_max_delay: Duration,
    /// How often a new checkpoint is signed while the log grows.
    pub checkpoint_interval: Duration,
    /// Where records, keys and the log are kept.
    pub storage: Storage,
}

impl ServerConfig {
    /// Defaults for a data dir (loopback, `US`, 1 MiB bodies).
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8750)),
            jurisdiction: Jurisdiction::new("US").unwrap_or_else(|_| unreachable_jurisdiction()),
            schema: None,
            policy_dir: None,
            max_body_bytes: 1 << 20,
            audit_max_batch: 4096,
            log_origin: "custody.local/us".into(),
            log_max_delay: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(1),
            storage: Storage::Embedded,
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_jurisdiction() -> Jurisdiction {
    // INVARIANT: "US" is a valid jurisdiction code; this is never reached.
    panic!("`US` is a valid jurisdiction")
}

/// The paths inside a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The root.
    pub root: PathBuf,
    /// Key storage, apart from records.
    pub keys: PathBuf,
    /// The KEK file.
    pub kek: PathBuf,
    /// Where the embedded file audit sink keeps events, when a deployment uses it instead
    /// of the transparency log.
    pub events: PathBuf,
    /// The schema file in use.
    pub schema: PathBuf,
    /// The policy directory in use.
    pub policies: PathBuf,
    /// The operator socket.
    pub admin_socket: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io { path: path.display().to_string(), source }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), SetupError> {
    Ok(())
}

impl DataDir {
    /// Creates the layout if needed (seeding the sample schema and policies when the config
    /// does not name its own) and returns its paths.
    ///
    /// # Errors
    /// [`SetupError::Io`] naming the path that could not be created.
    pub fn prepare(cfg: &ServerConfig) -> Result<Self, SetupError> {
        let root = cfg.data_dir.clone();
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).map_err(io(&keys))?;
        set_mode(&keys, 0o700)?;
        let audit = root.join("audit");
        std::fs::create_dir_all(&audit).map_err(io(&audit))?;
        let schema = match &cfg.schema {
            Some(p) => p.clone(),
            None => {
                let p = root.join("schema.toml");
                if !p.exists() {
                    std::fs::write(&p, SAMPLE_SCHEMA).map_err(io(&p))?;
                }
                p
            }
        };
        let policies = match &cfg.policy_dir {
            Some(p) => p.clone(),
            None => {
                let p = root.join("policies");
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(io(&p))?;
                    for (name, text) in SAMPLE_POLICIES {
                        let f = p.join(name);
                        std::fs::write(&f, text).map_err(io(&f))?;
                    }
                }
                p
            }
        };
        Ok(Self {
            kek: keys.join("kek"),
            events: audit.join("events.jsonl"),
            admin_socket: root.join("admin.sock"),
            keys,
            schema,
            policies,
            root,
        })
    }
}

/// Everything a running server holds.
pub struct ServerState {
    /// The guarded path.
    pub guard: Guard,
    /// Token checking.
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The policy engine (for reloads).
    pub policy: Arc<PolicyEngine>,
    /// The transparency log every access event goes to (absent with a custom sink).
    pub log: Option<Arc<Log>>,
    /// Whether this open created the KEK and system keys (a fresh data dir), so
    /// [`ServerState::announce`] logs their creation.
    fresh_keys: bool,
    /// The resolved config.
    pub config: ServerConfig,
    /// The data dir's paths.
    pub dirs: DataDir,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ServerState {
    /// Opens the data dir with the transparency log as the audit sink.
    ///
    /// # Errors
    /// Any [`SetupError`], naming what is wrong; a damaged or tampered log refuses to open.
    pub fn open(cfg: ServerConfig) -> Result<Arc<Self>, SetupError> {
        let dirs = DataDir::prepare(&cfg)?;
        let mut log_cfg = LogConfig::new(&dirs.root, cfg.log_origin.clone());
        log_cfg.max_batch = cfg.audit_max_batch;
        log_cfg.max_delay = cfg.log_max_delay;
        log_cfg.checkpoint_interval = cfg.checkpoint_interval;
        let stores = Stores::open(&cfg, &dirs)?;
        let log = Arc::new(match &stores.log {
            Some(storage) => Log::open_with(log_cfg, storage.clone())?,
            None => Log::open(log_cfg)?,
        });
        Self::assemble(cfg, dirs, stores, log.clone(), Some(log))
    }

    /// Opens the data dir with another audit sink (tests, benchmarks); `/log/` then answers 404.
    ///
    /// # Errors
    /// Any [`SetupError`].
    pub fn open_with_sink(cfg: ServerConfig, dirs: DataDir, sink: Arc<dyn AuditSink>) -> Result<Arc<Self>, SetupError> {
        let stores = Stores::open(&cfg, &dirs)?;
        Self::assemble(cfg, dirs, stores, sink, None)
    }

    fn assemble(
        cfg: ServerConfig,
        dirs: DataDir,
        stores: Stores,
        sink: Arc<dyn AuditSink>,
        log: Option<Arc<Log>>,
    ) -> Result<Arc<Self>, SetupError> {
        let text = std::fs::read_to_string(&dirs.schema).map_err(io(&dirs.schema))?;
        let schema = Arc::new(
            Schema::from_toml(&text)
                .map_err(|source| SetupError::Schema { path: dirs.schema.display().to_string(), source })?,
        );
        let policy = Arc::new(PolicyEngine::load_dir(cfg.jurisdiction.clone(), &dirs.policies)?);
        let fresh_keys = !dirs.kek.exists();
        let provider = Arc::new(FileKeyProvider::open_or_create(&dirs.kek)?);
        let vault = Arc::new(Vault::new(stores.records, stores.keys, provider)?);
        let metrics = Arc::new(Metrics::new());
        let guard = Guard::new(schema, vault, policy.clone(), sink, metrics.clone());
        let auth = Authenticator::new(stores.principals, policy.clone());
        Ok(Arc::new(Self { guard, auth, metrics, policy, log, fresh_keys, config: cfg, dirs }))
    }

    /// Logs what a monitor needs before the first access: the policy set in force and, for a
    /// fresh data dir, the creation of the provider's keys.
    ///
    /// # Errors
    /// [`GuardError::AuditUnavailable`]: the server must not serve without it.
    pub async fn announce(&self) -> Result<(), GuardError> {
        if self.fresh_keys {
            for key in ["kek", "blind-index", "pseudonym"] {
                self.guard
                    .log(&LogEntry::Key(KeyEvent {
                        v: 1,
                        kind: "key".into(),
                        time: time::OffsetDateTime::now_utc(),
                        change: "created".into(),
                        key: key.into(),
                        subject: None,
                        version: None,
                        provider: self.guard.vault().provider_name().to_string(),
                    }))
                    .await?;
            }
        }
        self.log_policy_set(&self.policy.current(), "start").await
    }

    async fn log_policy_set(&self, set: &LoadedPolicies, cause: &str) -> Result<(), GuardError> {
        self.guard
            .log(&LogEntry::PolicySet(PolicySetEvent {
                v: 1,
                kind: "policy-set".into(),
                time: time::OffsetDateTime::now_utc(),
                cause: cause.into(),
                policy_set: set.hash().to_string(),
                policies: set.ids().to_vec(),
                files: set.files().to_vec(),
            }))
            .await
            .map(|_| ())
    }

    /// Reloads the policy directory and logs the new set; a broken set is refused and the
    /// old one stays in force.
    ///
    /// # Errors
    /// The set's problems, or a log failure (the new set is then in force but its record
    /// failed, which is logged loudly).
    pub async fn reload_and_log(&self) -> Result<Arc<LoadedPolicies>, String> {
        let set = self.reload_policies().map_err(|e| e.to_string())?;
        if let Err(e) = self.log_policy_set(&set, "reload").await {
            tracing::error!(error = %e, "the policy change could not be logged");
            return Err(format!("policy set {} is in force but could not be logged: {e}", set.hash()));
        }
        Ok(set)
    }

    /// Reloads the policy directory; a broken set is refused and the old one stays.
    ///
    /// # Errors
    /// [`custody_policy::PolicyError`] with Cedar's diagnostics.
    pub fn reload_policies(&self) -> Result<Arc<custody_policy::LoadedPolicies>, custody_policy::PolicyError> {
        match self.policy.reload_dir(&self.dirs.policies) {
            Ok(set) => {
                tracing::info!(policy_set = %set.hash(), policies = set.ids().len(), "policy set reloaded");
                Ok(set)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the previous set stays in force");
                Err(e)
            }
        }
    }
}

/// Serves the API on `listener` and the operator API on the data dir's socket until
/// `shutdown` resolves.
///
/// # Errors
/// The listener or socket failed.
pub async fn serve(
    state: Arc<ServerState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.announce().await.map_err(|e| std::io::Error::other(e.to_string()))?;
    let sock = state.dirs.admin_socket.clone();
    let _ = std::fs::remove_file(&sock);
    let admin_listener = tokio::net::UnixListener::bind(&sock)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut rx2 = rx.clone();
    let admin = tokio::spawn(
        axum::serve(admin_listener, crate::admin::router(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = rx2.wait_for(|v| *v).await;
            })
            .into_future(),
    );
    let mut rx3 = rx;
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let result = axum::serve(listener, crate::api::app(state.clone()))
        .with_graceful_shutdown(async move {
            let _ = rx3.wait_for(|v| *v).await;
        })
        .await;
    let _ = admin.await;
    let _ = std::fs::remove_file(&sock);
    result
}
