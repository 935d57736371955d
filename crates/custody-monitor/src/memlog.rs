//! A log built in memory and served over loopback HTTP with custody's routes (`/log/checkpoint`,
//! `/log/tile/...`, `/log/proof/...`). `custody-monitor bench` measures against it, and tests
//! use it to serve copies of a real log with one thing changed: a rewritten entry, a fork, a
//! truncation. It is the log's counterpart, not a stand-in for the monitor under test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use custody_tlog::tile::{TileKind, encode_entry_bundle, read_tile_data};
use custody_tlog::{Checkpoint, CosignatureSigner, Ed25519Signer, Frontier, Hash, Tile, leaf_hash};
use custody_verify::{ConsistencyProof, InclusionProof};
use serde::Deserialize;

use crate::MonitorError;

/// An append-only log in memory, with a signed checkpoint and optional tampering.
#[derive(Debug)]
pub struct MemLog {
    origin: String,
    signer: Ed25519Signer,
    entries: Vec<Vec<u8>>,
    stored: Vec<Hash>,
    frontier: Frontier,
    checkpoint: String,
    overrides: HashMap<String, Vec<u8>>,
}

/// A [`MemLog`] shared with its HTTP server.
pub type SharedLog = Arc<RwLock<MemLog>>;

impl MemLog {
    /// An empty log named by the signer's key name.
    pub fn new(signer: Ed25519Signer) -> MemLog {
        use custody_tlog::NoteSigner;
        MemLog {
            origin: signer.name().to_owned(),
            signer,
            entries: Vec::new(),
            stored: Vec::new(),
            frontier: Frontier::new(),
            checkpoint: String::new(),
            overrides: HashMap::new(),
        }
    }

    /// The log's verifier key.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// How many entries it holds.
    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The entries.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.entries
    }

    /// Appends one entry.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Tree`] past the maximum tree size.
    pub fn append(&mut self, entry: Vec<u8>) -> Result<(), MonitorError> {
        self.frontier.push(leaf_hash(&entry), &mut self.stored)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Signs and serves a checkpoint for the current size, cosigned by `witnesses` at `now`.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Tree`] if signing fails.
    pub fn publish(&mut self, witnesses: &[&CosignatureSigner]) -> Result<String, MonitorError> {
        let mut note = Checkpoint::new(&self.origin, self.size(), self.frontier.root()).sign(&self.signer)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp().unsigned_abs();
        for w in witnesses {
            let sig = w.cosign(note.text(), now)?;
            note.add_signature(sig).map_err(custody_tlog::Error::from)?;
        }
        self.checkpoint = note.to_string();
        Ok(self.checkpoint.clone())
    }

    /// Serves `signed` as the checkpoint, whatever it says.
    pub fn set_checkpoint(&mut self, signed: String) {
        self.checkpoint = signed;
    }

    /// The checkpoint served.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// Serves `body` at `path` (relative to `/log/`, e.g. `tile/entries/000`) instead of the
    /// real contents.
    pub fn override_path(&mut self, path: &str, body: Vec<u8>) {
        self.overrides.insert(path.to_owned(), body);
    }

    fn tile(&self, path: &str) -> Option<Vec<u8>> {
        if let Some(body) = self.overrides.get(path) {
            return Some(body.clone());
        }
        let tile = Tile::parse_path(path).ok()?;
        let start = tile.index().checked_mul(u64::from(custody_tlog::tile::TILE_WIDTH))?;
        match tile.kind() {
            TileKind::Entries => {
                let end = start.checked_add(u64::from(tile.width()))?;
                let entries = self.entries.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
                encode_entry_bundle(entries.iter().map(Vec::as_slice)).ok()
            }
            TileKind::Hashes { .. } => read_tile_data(&tile, &self.stored).ok(),
        }
    }
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

fn read(log: &SharedLog) -> Result<std::sync::RwLockReadGuard<'_, MemLog>, StatusCode> {
    log.read().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn checkpoint(State(log): State<SharedLog>) -> Response {
    match read(&log) {
        Ok(l) => l.checkpoint.clone().into_response(),
        Err(status) => status.into_response(),
    }
}

async fn tile(State(log): State<SharedLog>, Path(path): Path<String>) -> Response {
    match read(&log) {
        Ok(l) => match l.tile(&format!("tile/{path}")) {
            Some(body) => body.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Err(status) => status.into_response(),
    }
}

async fn consistency(State(log): State<SharedLog>, Query(q): Query<ConsistencyQuery>) -> Response {
    match read(&log) {
        Ok(l) => match custody_tlog::prove_tree(q.to, q.from, &l.stored) {
            Ok(proof) => axum::Json(ConsistencyProof { old_size: q.from, size: q.to, proof }).into_response(),
            Err(_) => StatusCode::BAD_REQUEST.into_response(),
        },
        Err(status) => status.into_response(),
    }
}

async fn inclusion(State(log): State<SharedLog>, Query(q): Query<InclusionQuery>) -> Response {
    match read(&log) {
        Ok(l) => match custody_tlog::prove_record(q.size, q.index, &l.stored) {
            Ok(proof) => axum::Json(InclusionProof { index: q.index, size: q.size, proof }).into_response(),
            Err(_) => StatusCode::BAD_REQUEST.into_response(),
        },
        Err(status) => status.into_response(),
    }
}

/// Serves `log` on a free loopback port; returns `http://127.0.0.1:PORT`. The server runs until
/// the runtime stops.
///
/// # Errors
///
/// [`MonitorError::Fetch`] if no port can be bound.
pub async fn serve(log: SharedLog) -> Result<(String, SocketAddr), MonitorError> {
    let app = axum::Router::new()
        .route("/log/checkpoint", get(checkpoint))
        .route("/log/tile/{*path}", get(tile))
        .route("/log/proof/consistency", get(consistency))
        .route("/log/proof/inclusion", get(inclusion))
        .with_state(log);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| MonitorError::Fetch { url: "127.0.0.1:0".into(), detail: e.to_string() })?;
    let addr =
        listener.local_addr().map_err(|e| MonitorError::Fetch { url: "127.0.0.1:0".into(), detail: e.to_string() })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "log server stopped");
        }
    });
    Ok((format!("http://{addr}"), addr))
}
