//! Several nodes on one PostgreSQL database: one sequences the log, the others forward.
//!
//! Any node serves reads and writes, because records, keys and principals live in the shared
//! database. The transparency log needs a single writer, so the node holding the sequencer
//! [`Lease`](custody_pg::Lease) opens the log (fenced with the lease's epoch) and every other
//! node forwards its entries there over HTTP (`POST /internal/log/append`), batched, and
//! releases data only after the sequencer answered with the entry's receipt: the
//! log-before-release rule holds on every node. Followers also proxy the routes that read the
//! log itself (`/log/*`, subject export and erasure) and egress exports to the sequencer.
//!
//! Forwarded batches carry an HMAC under [`custody_log::node_secret`], a secret derived from the
//! log's signing key, which every node must hold anyway (whichever is elected signs): only
//! nodes can append. When the sequencer dies its lease connection closes, PostgreSQL releases
//! the lock, and the next node to poll (every [`POLL_EVERY`]) takes it over, recovers the tree
//! from the database and sequences on. Requests that needed the log in between fail with 503;
//! none is acknowledged without its entry durable in the database.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use custody_audit::{AuditError, AuditReceipt, AuditSink, Pending};
use custody_core::LogEntry;
use custody_log::{Log, LogConfig};
use custody_pg::{Election, PgStore, Seen};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot, watch};

/// How often a node polls for the sequencer lease (and so the bound on takeover after the
/// sequencer's connection closes, plus the time to recover the tree).
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a forwarded batch may take before its requests fail closed.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most entries in one forwarded batch.
const MAX_BATCH: usize = 1024;
/// Forwarded batches in flight at once per node.
const MAX_IN_FLIGHT: usize = 8;
/// Entries waiting to be forwarded before submitters are told to retry (503).
const QUEUE: usize = 16_384;
/// How far a forwarded batch's clock may be from the sequencer's.
const MAX_SKEW_MS: u64 = 120_000;
/// The header carrying a forwarded batch's HMAC.
const MAC_HEADER: &str = "x-custody-node-mac";

/// This node's part in the cluster right now.
#[derive(Clone)]
enum Role {
    /// No sequencer known yet (starting, or one just died).
    Electing,
    /// This node sequences: the log is open here.
    Sequencer(Arc<Log>),
    /// Another node sequences, at `url`.
    Follower { url: String },
    /// This node sequenced and lost its lease; it appends nothing more and shuts down.
    Deposed,
    /// This node shut down: the log (if it sequenced) is closed, the lease released.
    Stopped,
}

type Forward = (Vec<u8>, oneshot::Sender<Result<AuditReceipt, AuditError>>);

/// The cluster membership of one node: its role, the forwarder, and the election loop.
pub struct Cluster {
    role: RwLock<Role>,
    changed: watch::Sender<u64>,
    secret: [u8; 32],
    node_url: String,
    http: reqwest::Client,
    forward: mpsc::Sender<Forward>,
    forward_rx: std::sync::Mutex<Option<mpsc::Receiver<Forward>>>,
    stop: watch::Sender<bool>,
    election: std::sync::Mutex<Option<(Election, PgStore, LogConfig)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_url", &self.node_url).field("role", &self.role_name()).finish()
    }
}

/// A forwarded batch, as signed.
#[derive(Serialize, Deserialize)]
struct Batch {
    /// Milliseconds since the epoch at the sender, to bound replays.
    sent_ms: u64,
    /// Each entry's canonical text.
    entries: Vec<String>,
}

/// One entry's outcome at the sequencer.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok(AuditReceipt),
    Overloaded,
    Failed(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn mac(secret: &[u8; 32], body: &[u8]) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(body);
    m
}

impl Cluster {
    /// A node that announces itself at `node_url`, elects through `store`'s database and opens
    /// the log with `log_cfg` when elected. It starts [`Cluster::start`]ed by `serve`.
    ///
    /// # Errors
    /// The log's signing key cannot be read or made (see [`custody_log::node_secret`]).
    pub fn new(
        store: PgStore,
        url: &str,
        node_url: String,
        log_cfg: LogConfig,
    ) -> Result<Arc<Cluster>, custody_log::LogError> {
        let secret = custody_log::node_secret(&log_cfg)?;
        let (forward, rx) = mpsc::channel(QUEUE);
        let http = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .pool_max_idle_per_host(MAX_IN_FLIGHT * 2)
            .build()
            .map_err(|e| custody_log::LogError::Config(format!("HTTP client for forwarding: {e}")))?;
        Ok(Arc::new(Cluster {
            role: RwLock::new(Role::Electing),
            changed: watch::channel(0).0,
            secret,
            node_url: node_url.clone(),
            http,
            forward,
            forward_rx: std::sync::Mutex::new(Some(rx)),
            stop: watch::channel(false).0,
            election: std::sync::Mutex::new(Some((Election::new(url, node_url), store, log_cfg))),
        }))
    }

    fn role(&self) -> Role {
        self.role.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_role(&self, role: Role) {
        *self.role.write().unwrap_or_else(std::sync::PoisonError::into_inner) = role;
        self.changed.send_modify(|n| *n += 1);
    }

    fn role_name(&self) -> &'static str {
        match self.role() {
            Role::Electing => "electing",
            Role::Sequencer(_) => "sequencer",
            Role::Follower { .. } => "follower",
            Role::Deposed => "deposed",
            Role::Stopped => "stopped",
        }
    }

    /// The log, when this node is its sequencer.
    pub fn local_log(&self) -> Option<Arc<Log>> {
        match self.role() {
            Role::Sequencer(log) => Some(log),
            _ => None,
        }
    }

    /// Where the sequencer is, when another node is.
    pub fn sequencer_url(&self) -> Option<String> {
        match self.role() {
            Role::Follower { url } => Some(url),
            _ => None,
        }
    }

    /// This node's URL as other nodes reach it.
    pub fn node_url(&self) -> &str {
        &self.node_url
    }

    /// Runs the first election (waiting up to `wait` for a sequencer to be known), then keeps
    /// polling in the background and starts the forwarder.
    ///
    /// # Errors
    /// No sequencer within `wait`, or this node was elected and could not open the log.
    pub async fn start(self: &Arc<Self>, wait: Duration) -> Result<(), String> {
        let Some((election, store, log_cfg)) =
            self.election.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        else {
            return Err("the cluster was started twice".into());
        };
        if let Some(rx) = self.forward_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            tokio::spawn(self.clone().forwarder(rx));
        }
        let mut changed = self.changed.subscribe();
        tokio::spawn(self.clone().elect(election, store, log_cfg));
        let known = tokio::time::timeout(wait, async {
            loop {
                match self.role() {
                    Role::Sequencer(_) | Role::Follower { .. } => return Ok(()),
                    Role::Deposed | Role::Stopped => {
                        return Err("this node could not sequence the log; see the server log".to_string());
                    }
                    Role::Electing => {}
                }
                if changed.changed().await.is_err() {
                    return Err("the election stopped".to_string());
                }
            }
        })
        .await;
        known.unwrap_or_else(|_| Err(format!("no log sequencer was elected within {wait:?}")))
    }

    /// Stops polling and, on the sequencer, closes the log (a final checkpoint) and releases
    /// the lease; called when the node shuts down.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether this node sequenced and lost its lease.
    pub fn is_deposed(&self) -> bool {
        matches!(self.role(), Role::Deposed)
    }

    /// Resolves when this node has lost the sequencer lease and must stop.
    pub async fn deposed(&self) {
        let mut rx = self.changed.subscribe();
        loop {
            if matches!(self.role(), Role::Deposed) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves with the log once this node is the sequencer.
    pub async fn elected(&self) -> Option<Arc<Log>> {
        let mut rx = self.changed.subscribe();
        loop {
            match self.role() {
                Role::Sequencer(log) => return Some(log),
                Role::Deposed | Role::Stopped => return None,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    async fn elect(self: Arc<Self>, mut election: Election, store: PgStore, log_cfg: LogConfig) {
        loop {
            match election.poll().await {
                Ok(Seen::Elected(mut lease)) => {
                    let epoch = lease.epoch();
                    let (cfg, store) = (log_cfg.clone(), store.clone());
                    let opened = tokio::task::spawn_blocking(move || {
                        let storage = store.log_storage().map_err(|e| e.to_string())?.fenced(epoch);
                        Log::open_with(cfg, Arc::new(storage)).map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                    match opened {
                        Ok(log) => {
                            tracing::info!(epoch, size = log.size(), "sequencing the log");
                            self.set_role(Role::Sequencer(Arc::new(log)));
                            let mut stop = self.stop.subscribe();
                            tokio::select! {
                                why = lease.lost() => {
                                    tracing::error!(error = %why, epoch, "lost the log's sequencer lease; this node stops");
                                }
                                _ = stop.wait_for(|s| *s) => {
                                    // The log closes (its final checkpoint) while the lease is held.
                                    self.set_role(Role::Stopped);
                                    drop(lease);
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, epoch, "elected, but the log did not open; this node stops")
                        }
                    }
                    self.set_role(Role::Deposed);
                    return;
                }
                Ok(Seen::Follower { url, epoch }) => {
                    if self.sequencer_url().as_deref() != Some(url.as_str()) {
                        tracing::info!(sequencer = %url, epoch, "following the log's sequencer");
                        self.set_role(Role::Follower { url });
                    }
                }
                Ok(Seen::Vacant) => {
                    if !matches!(self.role(), Role::Electing) {
                        self.set_role(Role::Electing);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot poll the sequencer lease; retrying"),
            }
            let mut stop = self.stop.subscribe();
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                _ = stop.wait_for(|s| *s) => {
                    self.set_role(Role::Stopped);
                    return;
                }
            }
        }
    }

    async fn forwarder(self: Arc<Self>, mut rx: mpsc::Receiver<Forward>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let me = self.clone();
            tokio::spawn(async move {
                me.send_batch(batch).await;
                drop(permit);
            });
        }
    }

    async fn send_batch(&self, batch: Vec<Forward>) {
        let (entries, acks): (Vec<Vec<u8>>, Vec<_>) = batch.into_iter().unzip();
        let fail = |acks: Vec<oneshot::Sender<Result<AuditReceipt, AuditError>>>, e: AuditError| {
            for ack in acks {
                let _ = ack.send(Err(e.clone()));
            }
        };
        let url = match self.role() {
            Role::Follower { url } => url,
            Role::Sequencer(log) => {
                // Elected while these waited: sequence them here.
                for (entry, ack) in entries.into_iter().zip(acks) {
                    match log.submit_canonical(entry) {
                        Ok(p) => {
                            tokio::spawn(async move {
                                let _ = ack.send(p.durable().await);
                            });
                        }
                        Err(e) => {
                            let _ = ack.send(Err(e));
                        }
                    }
                }
                return;
            }
            Role::Electing | Role::Deposed | Role::Stopped => {
                return fail(acks, AuditError::Failed("no log sequencer is elected right now".into()));
            }
        };
        let body = Batch {
            sent_ms: now_ms(),
            entries: entries.into_iter().map(|e| String::from_utf8_lossy(&e).into_owned()).collect(),
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return fail(acks, AuditError::Failed("cannot encode a forwarded batch".into()));
        };
        let tag = base64::engine::general_purpose::STANDARD.encode(mac(&self.secret, &body).finalize().into_bytes());
        let sent = self
            .http
            .post(format!("{url}/internal/log/append"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(MAC_HEADER, tag)
            .body(body)
            .send()
            .await;
        let outcomes = match sent {
            Ok(r) if r.status().is_success() => r.json::<Vec<Outcome>>().await.map_err(|e| e.to_string()),
            Ok(r) => {
                let status = r.status();
                Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        };
        match outcomes {
            Ok(list) if list.len() == acks.len() => {
                for (o, ack) in list.into_iter().zip(acks) {
                    let _ = ack.send(match o {
                        Outcome::Ok(r) => Ok(r),
                        Outcome::Overloaded => Err(AuditError::Overloaded),
                        Outcome::Failed(e) => Err(AuditError::Failed(e)),
                    });
                }
            }
            Ok(_) => fail(acks, AuditError::Failed("the sequencer answered a different number of entries".into())),
            Err(e) => {
                tracing::warn!(sequencer = %url, error = %e, "forwarding to the log's sequencer failed");
                fail(acks, AuditError::Failed(format!("the log's sequencer at {url} did not take the entries: {e}")));
            }
        }
    }
}

/// The audit sink of a clustered node: the log here when sequencing, else the forwarder.
#[derive(Debug)]
pub struct ClusterSink(pub Arc<Cluster>);

impl AuditSink for ClusterSink {
    fn submit(&self, entry: &LogEntry) -> Result<Pending, AuditError> {
        match self.0.role() {
            Role::Sequencer(log) => AuditSink::submit(log.as_ref(), entry),
            Role::Follower { .. } => {
                let text = serde_json::to_vec(entry).map_err(|e| AuditError::Failed(e.to_string()))?;
                let (tx, rx) = oneshot::channel();
                self.0.forward.try_send((text, tx)).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => AuditError::Overloaded,
                    mpsc::error::TrySendError::Closed(_) => AuditError::Closed,
                })?;
                Ok(Pending::new(rx))
            }
            Role::Electing => Err(AuditError::Failed("no log sequencer is elected right now; retry shortly".into())),
            Role::Deposed | Role::Stopped => Err(AuditError::Closed),
        }
    }
}

/// `POST /internal/log/append`: a follower's batch, sequenced here if this node sequences.
pub(crate) async fn append(
    State(s): State<crate::api::AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(cluster) = s.cluster.as_ref() else {
        return (StatusCode::NOT_FOUND, "this node is not in a cluster").into_response();
    };
    let tag = headers
        .get(MAC_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
    let authentic = tag.is_some_and(|t| mac(&cluster.secret, &body).verify_slice(&t).is_ok());
    if !authentic {
        tracing::warn!("a forwarded batch failed its node MAC (not a node of this log, or another signing key)");
        return (
            StatusCode::UNAUTHORIZED,
            "the batch's node MAC does not verify: the sender does not hold this log's signing key",
        )
            .into_response();
    }
    let Ok(batch) = serde_json::from_slice::<Batch>(&body) else {
        return (StatusCode::BAD_REQUEST, "the batch is not {sent_ms, entries}").into_response();
    };
    if now_ms().abs_diff(batch.sent_ms) > MAX_SKEW_MS || batch.entries.len() > MAX_BATCH {
        return (StatusCode::BAD_REQUEST, "the batch is stale, from the future, or too large").into_response();
    }
    let Some(log) = cluster.local_log() else {
        return (StatusCode::MISDIRECTED_REQUEST, "this node is not the log's sequencer").into_response();
    };
    let mut pending = Vec::with_capacity(batch.entries.len());
    for text in batch.entries {
        if serde_json::from_str::<LogEntry>(&text).is_err() {
            pending.push(Err(Outcome::Failed("a forwarded entry is not a log entry".into())));
            continue;
        }
        pending.push(log.submit_canonical(text.into_bytes()).map_err(|e| match e {
            AuditError::Overloaded => Outcome::Overloaded,
            other => Outcome::Failed(other.to_string()),
        }));
    }
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(match p {
            Ok(p) => match p.durable().await {
                Ok(r) => Outcome::Ok(r),
                Err(AuditError::Overloaded) => Outcome::Overloaded,
                Err(e) => Outcome::Failed(e.to_string()),
            },
            Err(o) => o,
        });
    }
    axum::Json(out).into_response()
}

/// Routes a follower proxies to the sequencer: those whose handlers read the log itself, and
/// egress exports (their spool of files being served is the sequencer's; the epsilon budget is
/// in the database either way).
fn needs_log(path: &str) -> bool {
    path.starts_with("/log/")
        || path.starts_with("/v1/egress/")
        || (path.starts_with("/v1/subjects/") && (path.ends_with("/export") || path.ends_with("/erase")))
}

/// Middleware: on a follower, proxies [`needs_log`] routes to the sequencer; while no
/// sequencer is known, answers them 503.
pub(crate) async fn proxy(State(s): State<crate::api::AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = s.cluster.as_ref() else { return next.run(req).await };
    if !needs_log(req.uri().path()) {
        return next.run(req).await;
    }
    match cluster.role() {
        Role::Sequencer(_) => next.run(req).await,
        Role::Follower { url } => match forward(&cluster.http, &url, req, s.config.max_body_bytes).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sequencer = %url, error = %e, "proxying to the sequencer failed");
                unavailable(&format!("the log's sequencer at {url} did not answer: {e}"))
            }
        },
        Role::Electing | Role::Deposed | Role::Stopped => unavailable("no log sequencer is elected right now"),
    }
}

fn unavailable(detail: &str) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, detail.to_string()).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn forward(http: &reqwest::Client, base: &str, req: Request, limit: usize) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| e.to_string())?;
    let mut out = http.request(parts.method.clone(), format!("{base}{path}")).body(bytes);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "connection" | "content-length" | "transfer-encoding") {
            out = out.header(name, value);
        }
    }
    let resp = out.send().await.map_err(|e| e.to_string())?;
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding") {
            builder = builder.header(name, value);
        }
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    builder.body(Body::from(body)).map_err(|e| e.to_string())
}
