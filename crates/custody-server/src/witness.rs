//! Witness cosigning (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature): after the log signs a
//! checkpoint, send it to the configured witnesses with a consistency proof from the size each
//! witness last cosigned, collect their cosignatures, and publish at `/log/checkpoint` only the
//! latest checkpoint that at least `quorum` of them cosigned. Showing two different histories
//! then needs that many witnesses to collude.
//!
//! When the quorum is unreachable the log keeps appending and answering with receipts, and
//! `/log/checkpoint` keeps serving the last cosigned checkpoint (none at all, 503, until the
//! first quorum); a warning is logged and `custody_witness_quorum_failures` counts each miss.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custody_tlog::{Checkpoint, CosignatureVerifier, Note, NoteSignature, NoteVerifier};

use crate::metrics::Metrics;

/// One configured witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    /// Its base URL; requests go to `<url>/add-checkpoint`.
    pub url: String,
    /// Its cosignature vkey (signature type `0x04`).
    pub vkey: String,
}

impl std::str::FromStr for WitnessConfig {
    type Err = String;

    /// Parses `<vkey>@<url>`, e.g. `w1.example+1234abcd+BA…@https://w1.example`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (vkey, url) = s.split_once('@').ok_or_else(|| format!("`{s}` is not `<vkey>@<url>`"))?;
        CosignatureVerifier::from_verifier_key(vkey).map_err(|e| format!("witness key `{vkey}`: {e}"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("witness URL `{url}` must start with http:// or https://"));
        }
        Ok(WitnessConfig { url: url.trim_end_matches('/').to_owned(), vkey: vkey.to_owned() })
    }
}

struct Client {
    url: String,
    verifier: CosignatureVerifier,
    /// The size this witness last cosigned (as far as we know).
    known: AtomicU64,
}

/// The witnesses, the quorum, and the latest checkpoint that reached it.
pub struct Witnesses {
    clients: Vec<Client>,
    quorum: usize,
    cosigned: std::sync::RwLock<Option<(u64, String)>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Witnesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witnesses").field("witnesses", &self.clients.len()).field("quorum", &self.quorum).finish()
    }
}

/// Why the witness settings cannot work.
#[derive(Debug, thiserror::Error)]
pub enum WitnessSetupError {
    /// A witness vkey does not parse.
    #[error("witness key `{0}` is malformed")]
    Key(String),
    /// The quorum is zero or more than the witnesses.
    #[error("witness quorum {quorum} must be between 1 and the number of witnesses ({witnesses})")]
    Quorum {
        /// The quorum asked for.
        quorum: usize,
        /// Witnesses configured.
        witnesses: usize,
    },
    /// The HTTP client cannot be built.
    #[error("witness HTTP client: {0}")]
    Http(String),
}

impl Witnesses {
    /// Witnesses from config; `None` when none are configured.
    ///
    /// # Errors
    ///
    /// [`WitnessSetupError`] naming the bad setting.
    pub fn new(configs: &[WitnessConfig], quorum: usize) -> Result<Option<Arc<Witnesses>>, WitnessSetupError> {
        if configs.is_empty() {
            return Ok(None);
        }
        if quorum == 0 || quorum > configs.len() {
            return Err(WitnessSetupError::Quorum { quorum, witnesses: configs.len() });
        }
        let clients = configs
            .iter()
            .map(|c| {
                Ok(Client {
                    url: c.url.clone(),
                    verifier: CosignatureVerifier::from_verifier_key(&c.vkey)
                        .map_err(|_| WitnessSetupError::Key(c.vkey.clone()))?,
                    known: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| WitnessSetupError::Http(e.to_string()))?;
        Ok(Some(Arc::new(Witnesses { clients, quorum, cosigned: std::sync::RwLock::new(None), http })))
    }

    /// The latest checkpoint with at least `quorum` cosignatures, as a signed note.
    pub fn cosigned(&self) -> Option<String> {
        self.cosigned.read().ok().and_then(|c| c.as_ref().map(|(_, text)| text.clone()))
    }

    fn cosigned_size(&self) -> Option<u64> {
        self.cosigned.read().ok().and_then(|c| c.as_ref().map(|(size, _)| *size))
    }

    /// Every `interval`, offers the log's latest checkpoint to the witnesses until it is cosigned.
    pub async fn run(self: Arc<Self>, log: Arc<custody_log::Log>, metrics: Arc<Metrics>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.round(&log, &metrics).await;
        }
    }

    /// Offers the log's current checkpoint once; returns whether it is now published.
    pub async fn round(&self, log: &custody_log::Log, metrics: &Metrics) -> bool {
        let text = log.checkpoint_text();
        let Ok(note) = Note::parse(text.as_bytes()) else { return false };
        let Ok(checkpoint) = Checkpoint::parse(note.text()) else { return false };
        if self.cosigned_size() == Some(checkpoint.size) {
            return true;
        }
        let offers = self.clients.iter().map(|c| self.offer(c, log, &text, note.text(), checkpoint.size));
        let signatures: Vec<NoteSignature> =
            futures_util::future::join_all(offers).await.into_iter().filter_map(Result::ok).collect();
        if signatures.len() < self.quorum {
            metrics.witness_quorum_failure();
            tracing::warn!(
                size = checkpoint.size,
                cosigned = signatures.len(),
                quorum = self.quorum,
                serving = ?self.cosigned_size(),
                "witness quorum not reached; still serving the last cosigned checkpoint"
            );
            return false;
        }
        let mut published = note;
        for s in signatures {
            if published.add_signature(s).is_err() {
                return false;
            }
        }
        if let Ok(mut c) = self.cosigned.write() {
            *c = Some((checkpoint.size, published.to_string()));
        }
        metrics.witness_cosigned_size(checkpoint.size);
        true
    }

    /// Sends the checkpoint to one witness; on `409` learns its size and tries once more.
    async fn offer(
        &self,
        client: &Client,
        log: &custody_log::Log,
        signed: &str,
        text: &str,
        size: u64,
    ) -> Result<NoteSignature, String> {
        for _ in 0..2 {
            let old = client.known.load(Ordering::Relaxed);
            if old > size {
                return Err(format!("witness {} has size {old}, past {size}", client.url));
            }
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                log.prove_consistency(old, size).map_err(|e| e.to_string())?
            };
            let mut body = format!("old {old}\n");
            for h in &proof {
                body.push_str(&h.to_base64());
                body.push('\n');
            }
            body.push('\n');
            body.push_str(signed);
            let url = format!("{}/add-checkpoint", client.url);
            let resp = self.http.post(&url).body(body).send().await.map_err(|e| {
                tracing::debug!(url, error = %e, "witness unreachable");
                e.to_string()
            })?;
            let status = resp.status();
            let answer = resp.text().await.map_err(|e| e.to_string())?;
            if status == reqwest::StatusCode::CONFLICT {
                let known: u64 = answer.trim().parse().map_err(|_| format!("witness {url}: bad 409 body"))?;
                client.known.store(known, Ordering::Relaxed);
                continue;
            }
            if !status.is_success() {
                tracing::warn!(url, %status, answer = answer.trim(), "witness refused the checkpoint");
                return Err(format!("witness {url}: {status}"));
            }
            let sig = answer
                .lines()
                .filter_map(|l| NoteSignature::parse_line(l).ok())
                .find(|s| {
                    s.name == client.verifier.name()
                        && s.key_id == client.verifier.key_id()
                        && client.verifier.verify_timestamp(text, &s.signature).is_some()
                })
                .ok_or_else(|| format!("witness {url}: no valid cosignature in the answer"))?;
            client.known.store(size, Ordering::Relaxed);
            return Ok(sig);
        }
        Err(format!("witness {}: size kept changing", client.url))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn witness_settings_parse() {
        let vkey = custody_tlog::CosignatureSigner::from_seed("w.test", &[1; 32]).unwrap().verifier_key();
        let w: WitnessConfig = format!("{vkey}@http://127.0.0.1:1/").parse().unwrap();
        assert_eq!(w.url, "http://127.0.0.1:1");
        assert!("nonsense".parse::<WitnessConfig>().unwrap_err().contains("<vkey>@<url>"));
        assert!(format!("{vkey}@ftp://x").parse::<WitnessConfig>().unwrap_err().contains("http://"));
        assert!(Witnesses::new(std::slice::from_ref(&w), 2).is_err());
        assert!(Witnesses::new(&[w], 0).is_err());
    }
}
