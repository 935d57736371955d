//! Fetching a log over HTTP: the checkpoint and tiles at their C2SP tlog-tiles paths, and
//! custody's proof endpoints (`/log/proof/...`), whose answers are verified, never trusted.

use std::time::Duration;

use custody_tlog::Tile;
use custody_verify::{ConsistencyProof, InclusionProof};

use crate::MonitorError;

/// A log's HTTP endpoints under one base URL (e.g. `http://127.0.0.1:8080/log`).
#[derive(Debug, Clone)]
pub struct HttpLog {
    base: String,
    client: reqwest::Client,
}

impl HttpLog {
    /// A client for the log at `url`: the server's base URL or its `/log` prefix.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Fetch`] if the HTTP client cannot be built.
    pub fn new(url: &str) -> Result<HttpLog, MonitorError> {
        let trimmed = url.trim_end_matches('/');
        let base = if trimmed.ends_with("/log") { trimmed.to_owned() } else { format!("{trimmed}/log") };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| MonitorError::Fetch { url: base.clone(), detail: e.to_string() })?;
        Ok(HttpLog { base, client })
    }

    /// The base URL, ending in `/log`.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, MonitorError> {
        let url = format!("{}/{path}", self.base);
        let fail = |detail: String| MonitorError::Fetch { url: url.clone(), detail };
        let resp = self.client.get(&url).send().await.map_err(|e| fail(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        Ok(Some(body.to_vec()))
    }

    async fn get_required(&self, path: &str) -> Result<Vec<u8>, MonitorError> {
        self.get(path)
            .await?
            .ok_or_else(|| MonitorError::Fetch { url: format!("{}/{path}", self.base), detail: "HTTP 404".into() })
    }

    /// The log's key handovers from `/log/keys` (none from a log that never rotated its key
    /// or does not serve the list). Each is checked by the caller, never trusted as served.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Fetch`] if unreachable or not the expected JSON.
    pub async fn key_handovers(&self) -> Result<Vec<custody_verify::KeyHandover>, MonitorError> {
        #[derive(serde::Deserialize)]
        struct Keys {
            handovers: Vec<custody_verify::KeyHandover>,
        }
        let Some(body) = self.get("keys").await? else { return Ok(Vec::new()) };
        let keys: Keys = serde_json::from_slice(&body)
            .map_err(|e| MonitorError::Fetch { url: format!("{}/keys", self.base), detail: e.to_string() })?;
        Ok(keys.handovers)
    }

    /// The signed checkpoint text as served.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Fetch`] if unreachable, not found or not UTF-8.
    pub async fn checkpoint(&self) -> Result<String, MonitorError> {
        let body = self.get_required("checkpoint").await?;
        String::from_utf8(body).map_err(|_| MonitorError::Fetch {
            url: format!("{}/checkpoint", self.base),
            detail: "checkpoint is not UTF-8".into(),
        })
    }

    /// A tile or entry bundle's bytes.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Fetch`] if unreachable or missing.
    pub async fn tile(&self, tile: &Tile) -> Result<Vec<u8>, MonitorError> {
        self.get_required(&tile.path()).await
    }

    /// A consistency proof between two sizes (`old_size` ≥ 1), parsed but not verified.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Fetch`] if unreachable or the answer is not a proof.
    pub async fn consistency(&self, old_size: u64, size: u64) -> Result<ConsistencyProof, MonitorError> {
        let path = format!("proof/consistency?from={old_size}&to={size}");
        let body = self.get_required(&path).await?;
        serde_json::from_slice(&body)
            .map_err(|e| MonitorError::Fetch { url: format!("{}/{path}", self.base), detail: e.to_string() })
    }

    /// An inclusion proof for `index` in the tree of `size`, parsed but not verified.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Fetch`] if unreachable or the answer is not a proof.
    pub async fn inclusion(&self, index: u64, size: u64) -> Result<InclusionProof, MonitorError> {
        let path = format!("proof/inclusion?index={index}&size={size}");
        let body = self.get_required(&path).await?;
        serde_json::from_slice(&body)
            .map_err(|e| MonitorError::Fetch { url: format!("{}/{path}", self.base), detail: e.to_string() })
    }
}
