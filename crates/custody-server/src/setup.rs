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
use custody_crypto::{FileKeyProvider, KeyProvider};
use custody_hsm::{Pkcs11Config, Pkcs11KeyProvider};
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
    ("40-subject-rights.cedar", include_str!("../../../deploy/sample/policies/40-subject-rights.cedar")),
    ("50-egress.cedar", include_str!("../../../deploy/sample/policies/50-egress.cedar")),
    ("90-boundary.cedar", include_str!("../../../deploy/sample/policies/90-boundary.cedar")),
];
/// The sample deployment's export profiles, seeded beside the sample schema.
pub const SAMPLE_EGRESS: &str = include_str!("../../../deploy/sample/egress.toml");

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
    /// The deployment registry or build key could not be opened.
    #[error("trusted deployment: {0}")]
    Deploy(String),
    /// The PKCS#11 key provider could not open (module, token, PIN or KEK at fault).
    #[error(transparent)]
    Hsm(#[from] custody_hsm::HsmError),
    /// The witness settings are unusable.
    #[error(transparent)]
    Witness(#[from] crate::witness::WitnessSetupError),
    /// The export profiles or the epsilon budget store are unusable.
    #[error("egress: {0}")]
    Egress(String),
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
    /// The database, when the stores are PostgreSQL's: the log is then sequenced by whichever
    /// node holds the lease (see [`crate::cluster`]).
    pg: Option<(custody_pg::PgStore, String)>,
}

impl Stores {
    fn open(cfg: &ServerConfig, dirs: &DataDir) -> Result<Stores, SetupError> {
        match &cfg.storage {
            Storage::Embedded => {
                let s = Arc::new(RedbStore::open(&dirs.root, &dirs.keys)?);
                Ok(Stores { records: s.clone(), keys: s.clone(), principals: s, pg: None })
            }
            Storage::Postgres(pg) => {
                let store = custody_pg::PgStore::connect(pg)?;
                // Applies the log's migrations before any node polls for the lease.
                store.log_storage()?;
                let s = Arc::new(store.clone());
                Ok(Stores { records: s.clone(), keys: s.clone(), principals: s, pg: Some((store, pg.url.clone())) })
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
    /// Most API requests in flight; past it requests get 503 with `Retry-After`.
    pub max_inflight: usize,
    /// Sustained requests per second one principal may make (0: unlimited); past it, 429.
    pub principal_rate: f64,
    /// Requests a principal may make at once above its rate.
    pub principal_burst: u32,
    /// TLS on the API listener; `None` serves plaintext (loopback only, unless allowed).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Witnesses that must cosign a checkpoint before `/log/checkpoint` serves it; none: the
    /// log's own signature suffices.
    pub witnesses: Vec<crate::witness::WitnessConfig>,
    /// How many of `witnesses` must cosign.
    pub witness_quorum: usize,
    /// Who holds the KEK: the embedded key file (the default) or a PKCS#11 token.
    pub key_provider: KeyProviderConfig,
    /// The export profile file; `None` means `<data_dir>/egress.toml`, seeded from the sample
    /// when the schema is the sample's too (otherwise no profile, so no export, exists).
    pub egress_profiles: Option<PathBuf>,
    /// Total differential-privacy epsilon each export destination may spend.
    pub egress_epsilon_budget: f64,
    /// Length of a pseudonym key epoch for exports, in days.
    pub egress_epoch_days: u32,
    /// Where records, keys and the log are kept.
    pub storage: Storage,
    /// This node's URL as the other nodes of a PostgreSQL cluster reach it; `None`: the
    /// listen address (fine on one machine; set it when `listen` is a wildcard).
    pub node_url: Option<String>,
}

/// Which key provider holds the KEK.
#[derive(Debug, Clone, Default)]
pub enum KeyProviderConfig {
    /// 32-byte KEK files of mode 0600 under `<data_dir>/keys` (the embedded default).
    #[default]
    File,
    /// AES-256 KEKs generated and kept inside a PKCS#11 token; the PIN is never printed.
    Pkcs11(Pkcs11Config),
}

impl KeyProviderConfig {
    /// Opens the provider; `true` with it if this created its first KEK (a fresh custody).
    ///
    /// # Errors
    /// The key file or the token is unusable, or the first KEK could not be created.
    pub fn open(&self, dirs: &DataDir) -> Result<(Arc<dyn KeyProvider>, bool), SetupError> {
        match self {
            KeyProviderConfig::File => {
                let fresh = !FileKeyProvider::exists(&dirs.kek);
                Ok((Arc::new(FileKeyProvider::open_or_create(&dirs.kek)?), fresh))
            }
            KeyProviderConfig::Pkcs11(cfg) => {
                let provider = Pkcs11KeyProvider::open_existing(cfg)?;
                let fresh = provider.kek_versions().is_empty();
                if fresh {
                    provider.new_kek()?;
                }
                Ok((Arc::new(provider), fresh))
            }
        }
    }
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
            max_inflight: 1024,
            principal_rate: 0.0,
            principal_burst: 100,
            tls: None,
            witnesses: Vec::new(),
            witness_quorum: 0,
            key_provider: KeyProviderConfig::File,
            egress_profiles: None,
            egress_epsilon_budget: 1.0,
            egress_epoch_days: 30,
            storage: Storage::Embedded,
            node_url: None,
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
    /// The export profile file, if there is one.
    pub egress_profiles: Option<PathBuf>,
    /// Egress state: the epsilon budget and the spool of exports being served.
    pub egress: PathBuf,
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
        let egress_profiles = match &cfg.egress_profiles {
            Some(p) => Some(p.clone()),
            None => {
                let p = root.join("egress.toml");
                if !p.exists() && cfg.schema.is_none() {
                    std::fs::write(&p, SAMPLE_EGRESS).map_err(io(&p))?;
                }
                p.exists().then_some(p)
            }
        };
        let egress = root.join("egress");
        std::fs::create_dir_all(&egress).map_err(io(&egress))?;
        Ok(Self {
            egress_profiles,
            egress,
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
    /// The transparency log every access event goes to (absent with a custom sink, and in a
    /// cluster, where [`ServerState::log`] finds it).
    log: Option<Arc<Log>>,
    /// This node's cluster membership, when its storage is PostgreSQL.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Trusted deployment: reviews, attestations, the build key.
    pub deploy: crate::deploy::Deployer,
    /// Requests in flight and per-principal rates.
    pub limits: crate::limits::Limits,
    /// The witnesses whose quorum gates `/log/checkpoint`, if configured.
    pub witnesses: Option<Arc<crate::witness::Witnesses>>,
    /// The egress gateway: export profiles, epsilon budget, pseudonym key, spool.
    pub egress: crate::egress::Gateway,
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
    /// The transparency log, when it is open on this node: always with embedded storage, and
    /// on the elected sequencer in a PostgreSQL cluster.
    pub fn log(&self) -> Option<Arc<Log>> {
        match &self.cluster {
            Some(c) => c.local_log(),
            None => self.log.clone(),
        }
    }

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
        if let Some((store, url)) = stores.pg.clone() {
            let node_url = cfg.node_url.clone().unwrap_or_else(|| {
                let scheme = if cfg.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", cfg.listen)
            });
            let cluster = crate::cluster::Cluster::new(store, &url, node_url, log_cfg)?;
            let sink = Arc::new(crate::cluster::ClusterSink(cluster.clone()));
            return Self::assemble(cfg, dirs, stores, sink, None, Some(cluster));
        }
        let log = Arc::new(Log::open(log_cfg)?);
        Self::assemble(cfg, dirs, stores, log.clone(), Some(log), None)
    }

    /// Opens the data dir with another audit sink (tests, benchmarks); `/log/` then answers 404.
    ///
    /// # Errors
    /// Any [`SetupError`].
    pub fn open_with_sink(cfg: ServerConfig, dirs: DataDir, sink: Arc<dyn AuditSink>) -> Result<Arc<Self>, SetupError> {
        let stores = Stores::open(&cfg, &dirs)?;
        Self::assemble(cfg, dirs, stores, sink, None, None)
    }

    fn assemble(
        cfg: ServerConfig,
        dirs: DataDir,
        stores: Stores,
        sink: Arc<dyn AuditSink>,
        log: Option<Arc<Log>>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Arc<Self>, SetupError> {
        let text = std::fs::read_to_string(&dirs.schema).map_err(io(&dirs.schema))?;
        let schema = Arc::new(
            Schema::from_toml(&text)
                .map_err(|source| SetupError::Schema { path: dirs.schema.display().to_string(), source })?,
        );
        let policy = Arc::new(PolicyEngine::load_dir(cfg.jurisdiction.clone(), &dirs.policies)?);
        let (provider, fresh_keys) = cfg.key_provider.open(&dirs)?;
        let pg = stores.pg.as_ref().map(|(store, _)| store.clone());
        let vault = Arc::new(Vault::new(stores.records, stores.keys, provider)?);
        let metrics = Arc::new(Metrics::new());
        let egress = crate::egress::Gateway::open(&cfg, &dirs, &schema, &vault, pg.as_ref())?;
        let guard = Guard::new(schema, vault, policy.clone(), sink, metrics.clone());
        let auth = Authenticator::new(stores.principals, policy.clone());
        let deploy =
            crate::deploy::Deployer::open(&dirs.root, &dirs.keys).map_err(|e| SetupError::Deploy(e.to_string()))?;
        let limits = crate::limits::Limits::new(cfg.max_inflight, cfg.principal_rate, cfg.principal_burst);
        let witnesses = crate::witness::Witnesses::new(&cfg.witnesses, cfg.witness_quorum)?;
        Ok(Arc::new(Self {
            guard,
            auth,
            metrics,
            policy,
            log,
            deploy,
            limits,
            witnesses,
            egress,
            cluster,
            fresh_keys,
            config: cfg,
            dirs,
        }))
    }

    /// Logs what a monitor needs before the first access: the policy set in force and, for a
    /// fresh data dir, the creation of the provider's keys.
    ///
    /// # Errors
    /// [`GuardError::AuditUnavailable`]: the server must not serve without it.
    pub async fn announce(&self) -> Result<(), GuardError> {
        let mut created: Vec<&str> = Vec::new();
        if self.fresh_keys {
            created.extend(["kek", "blind-index", "pseudonym"]);
        }
        if self.deploy.fresh_key {
            created.push("build");
        }
        if self.egress.fresh_key {
            created.push("egress-pseudonym");
        }
        {
            for key in created {
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
                        verifier_key: None,
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

/// How long a clustered node waits at start for a log sequencer to be elected.
const CLUSTER_START_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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
    if let Some(cluster) = &state.cluster {
        cluster.start(CLUSTER_START_WAIT).await.map_err(std::io::Error::other)?;
    }
    state.announce().await.map_err(|e| std::io::Error::other(e.to_string()))?;
    match (&state.witnesses, &state.cluster) {
        (Some(w), Some(cluster)) => {
            // Only the sequencer collects cosignatures; a follower proxies `/log/checkpoint`.
            let (w, cluster, metrics, every) =
                (w.clone(), cluster.clone(), state.metrics.clone(), state.config.checkpoint_interval);
            tokio::spawn(async move {
                if let Some(log) = cluster.elected().await {
                    w.run(log, metrics, every).await;
                }
            });
        }
        (Some(w), None) => {
            if let Some(log) = state.log() {
                tokio::spawn(w.clone().run(log, state.metrics.clone(), state.config.checkpoint_interval));
            }
        }
        _ => {}
    }
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
    let cluster = state.cluster.clone();
    tokio::spawn(async move {
        match cluster {
            Some(c) => {
                tokio::select! {
                    () = shutdown => {}
                    () = c.deposed() => tracing::error!("this node lost the log's sequencer lease; shutting down"),
                }
            }
            None => shutdown.await,
        }
        let _ = tx.send(true);
    });
    let result = match &state.config.tls {
        Some(files) => {
            let config = crate::tls::server_config(files).map_err(std::io::Error::other)?;
            crate::tls::serve(listener, config, crate::api::app(state.clone()), rx3).await
        }
        None => {
            use axum::serve::ListenerExt as _;
            // Without TCP_NODELAY, a response written in more than one segment (hyper writes a
            // head and a large body separately) waits for the client's delayed ACK, up to
            // 40 ms on Linux, on every such answer of a keep-alive connection.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
                }
            });
            axum::serve(listener, crate::api::app(state.clone()))
                .with_graceful_shutdown(async move {
                    let _ = rx3.wait_for(|v| *v).await;
                })
                .await
        }
    };
    let _ = admin.await;
    let _ = std::fs::remove_file(&sock);
    if let Some(c) = &state.cluster {
        c.stop();
    }
    if let Some(c) = &state.cluster
        && c.is_deposed()
    {
        return Err(std::io::Error::other("stopped: this node lost the log's sequencer lease"));
    }
    result
}
