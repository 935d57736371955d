//! Following a log: every checkpoint is checked against the last one verified, and every new
//! entry against the signed tree.
//!
//! One [`Follower::step`]:
//!
//! 1. fetch the checkpoint and check the log's signature (and, if configured, that at least
//!    `quorum` of the known witnesses cosigned it, c2sp.org/tlog-cosignature);
//! 2. compare with the last verified checkpoint: a smaller tree is a truncation, the same size
//!    with another root a fork, and a larger tree must come with a valid RFC 6962 consistency
//!    proof, or history was rewritten;
//! 3. fetch the new entry bundles (c2sp.org/tlog-tiles), hash every entry, extend the stored
//!    right edge of the tree with them and require the checkpoint's root exactly;
//! 4. only then store the entries and the new checkpoint.
//!
//! Step 3 alone proves the new tree extends the verified one; the consistency proof in step 2
//! tells a rewritten history apart from altered entry bundles.
//!
//! ## Key rotation
//!
//! A checkpoint signed by no trusted key is not yet a fault: the follower fetches the log's
//! key handovers (`/log/keys`) and accepts a new key only through a chain starting at the
//! pinned key, each link a checkpoint signed by the key before that includes an entry
//! announcing the next ([`custody_verify::trusted_keys`]). It first follows each handover
//! checkpoint it has not reached, under the old key, as an ordinary step. A checkpoint signed
//! by a key no such chain reaches is still `bad-signature`.

use std::sync::Arc;

use custody_tlog::note::Ed25519Verifier;
use custody_tlog::{Checkpoint, CosignatureVerifier, Frontier, Hash, Note, Tile, check_tree, leaf_hash};
use futures_util::StreamExt;
use serde::Serialize;

use crate::MonitorError;
use crate::source::HttpLog;
use crate::state::{StateDir, Verified};

/// Exit code of `follow --once` when rules fired but the log verified.
pub const EXIT_RULE_ALERT: u8 = 20;

/// Something the log did that a correct log never does. Each has its own exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum LogFault {
    /// The checkpoint is not validly signed by the log key.
    #[error("checkpoint signature is invalid: {detail}")]
    BadSignature {
        /// Which check failed.
        detail: String,
    },
    /// The checkpoint names another log than the one followed.
    #[error("checkpoint is for log `{found}`, but this monitor follows `{expected}`")]
    OriginChanged {
        /// The origin verified before.
        expected: String,
        /// The origin served now.
        found: String,
    },
    /// Too few witnesses cosigned the checkpoint.
    #[error("checkpoint of size {size} carries {have} valid witness cosignatures, the quorum is {need}")]
    Quorum {
        /// The checkpoint's size.
        size: u64,
        /// Valid cosignatures from known witnesses.
        have: usize,
        /// The quorum required.
        need: usize,
    },
    /// The tree is smaller than one already verified.
    #[error("log shrank from {old} to {new} entries: it was truncated or rolled back")]
    Shrunk {
        /// The verified size.
        old: u64,
        /// The size served now.
        new: u64,
    },
    /// Two different trees of the same size, both signed by the log.
    #[error("fork: the log signed two different trees of size {size} (verified root {verified}, now {served})")]
    Fork {
        /// The size.
        size: u64,
        /// The root verified before.
        verified: Hash,
        /// The root served now.
        served: Hash,
    },
    /// The new tree does not extend the verified one.
    #[error(
        "history rewritten or forked: the tree of size {new} does not extend the verified tree of size {old} ({detail})"
    )]
    Inconsistent {
        /// The verified size.
        old: u64,
        /// The size served now.
        new: u64,
        /// Why: the proof failed, or none was given.
        detail: String,
    },
    /// Served entries do not hash to the signed tree.
    #[error("entries {from}..{to} do not hash into the signed tree of size {to}: an entry bundle was altered")]
    EntryMismatch {
        /// First new entry.
        from: u64,
        /// The checkpoint's size.
        to: u64,
    },
    /// An entry bundle does not parse or is missing.
    #[error("entry bundle `{tile}` is malformed or missing: {detail}")]
    BadBundle {
        /// The bundle's path.
        tile: String,
        /// What was wrong.
        detail: String,
    },
}

impl LogFault {
    /// The exit code of `follow --once` for this fault.
    pub fn exit_code(&self) -> u8 {
        match self {
            LogFault::BadSignature { .. } | LogFault::OriginChanged { .. } => 10,
            LogFault::Fork { .. } | LogFault::Inconsistent { .. } => 11,
            LogFault::Shrunk { .. } => 12,
            LogFault::EntryMismatch { .. } | LogFault::BadBundle { .. } => 13,
            LogFault::Quorum { .. } => 14,
        }
    }

    /// The alert name.
    pub fn name(&self) -> &'static str {
        match self {
            LogFault::BadSignature { .. } => "bad-signature",
            LogFault::OriginChanged { .. } => "origin-changed",
            LogFault::Quorum { .. } => "cosignature-quorum",
            LogFault::Shrunk { .. } => "shrunk",
            LogFault::Fork { .. } => "fork",
            LogFault::Inconsistent { .. } => "inconsistent",
            LogFault::EntryMismatch { .. } => "entry-mismatch",
            LogFault::BadBundle { .. } => "bad-bundle",
        }
    }
}

/// What a follower checks beyond the log's own signature.
#[derive(Debug, Clone, Default)]
pub struct FollowConfig {
    /// Known witnesses' cosignature keys.
    pub witnesses: Vec<CosignatureVerifier>,
    /// How many of them must have cosigned each checkpoint (0: no witness check).
    pub quorum: usize,
    /// Entry bundles fetched at once.
    pub concurrency: usize,
}

/// A verified step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The size verified before this step.
    pub old_size: u64,
    /// The checkpoint verified now.
    pub checkpoint: Checkpoint,
}

/// Where verified entries go.
pub trait EntrySink {
    /// Called with each new entry in order, before the tree root is checked; entries count as
    /// verified only once `step` returns `Ok(Ok(_))`.
    ///
    /// # Errors
    ///
    /// Any [`MonitorError`], which aborts the step.
    fn entry(&mut self, index: u64, entry: &[u8]) -> Result<(), MonitorError>;
}

/// Discards entries (benchmarks).
#[derive(Debug, Default)]
pub struct Discard;

impl EntrySink for Discard {
    fn entry(&mut self, _: u64, _: &[u8]) -> Result<(), MonitorError> {
        Ok(())
    }
}

impl EntrySink for crate::state::EntryWriter {
    fn entry(&mut self, index: u64, entry: &[u8]) -> Result<(), MonitorError> {
        self.push(index, entry)
    }
}

/// Follows one log.
#[derive(Debug)]
pub struct Follower {
    log: HttpLog,
    /// The pinned key first, then keys accepted through verified handovers.
    keys: Vec<String>,
    verifiers: Arc<Vec<Ed25519Verifier>>,
    config: FollowConfig,
    state: Option<StateDir>,
    verified: Option<Verified>,
}

/// Counts distinct known witnesses whose cosignature on `signed` verifies.
pub fn count_cosignatures(signed: &str, witnesses: &[CosignatureVerifier]) -> usize {
    let Ok(note) = Note::parse(signed.as_bytes()) else { return 0 };
    witnesses
        .iter()
        .filter(|w| {
            use custody_tlog::NoteVerifier;
            note.signatures().iter().any(|s| {
                s.name == w.name() && s.key_id == w.key_id() && w.verify_timestamp(note.text(), &s.signature).is_some()
            })
        })
        .count()
}

impl Follower {
    /// A follower of `log` signed by `vkey`, resuming from `state` if given.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Key`] for a bad vkey; state errors from [`StateDir::load`].
    pub fn new(
        log: HttpLog,
        vkey: &str,
        config: FollowConfig,
        state: Option<StateDir>,
    ) -> Result<Follower, MonitorError> {
        let mut keys = vec![vkey.to_owned()];
        let verified = match &state {
            Some(s) => {
                keys.extend(s.load_keys()?.into_iter().filter(|k| k != vkey));
                s.load()?
            }
            None => None,
        };
        let verifiers = keys
            .iter()
            .map(|k| custody_verify::log_verifier(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MonitorError::Key(e.to_string()))?;
        Ok(Follower { log, keys, verifiers: Arc::new(verifiers), config, state, verified })
    }

    /// The last verified checkpoint.
    pub fn verified(&self) -> Option<&Verified> {
        self.verified.as_ref()
    }

    /// The log being followed.
    pub fn log(&self) -> &HttpLog {
        &self.log
    }

    /// Checks the served checkpoint and every new entry; see the [module docs](self).
    /// Entries go to `sink` as they are fetched (and, with a state directory, to its
    /// `entries.jsonl`).
    ///
    /// # Errors
    ///
    /// `Err` when the monitor could not do its job (network, disk); `Ok(Err(fault))` when the log
    /// misbehaved. Nothing is stored in either case.
    pub async fn step(&mut self, sink: &mut (dyn EntrySink + Send)) -> Result<Result<Step, LogFault>, MonitorError> {
        let signed = self.log.checkpoint().await?;
        if let Err(fault) = self.check_signatures(&signed) {
            if matches!(fault, LogFault::BadSignature { .. })
                && let Some(outcome) = self.follow_handovers(sink).await?
            {
                if let Err(f) = outcome {
                    return Ok(Err(f));
                }
                if self.check_signatures(&signed).is_ok() {
                    return self.step_to(signed, sink).await;
                }
            }
            return Ok(Err(fault));
        }
        self.step_to(signed, sink).await
    }

    /// The keys trusted now: the pinned one first.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Accepts the log keys that verified handovers chain to from the pinned key, following
    /// (as ordinary steps) each handover checkpoint beyond the verified tree. `None` if no
    /// new key was accepted; `Some(Err)` if following a handover showed a fault.
    async fn follow_handovers(
        &mut self,
        sink: &mut (dyn EntrySink + Send),
    ) -> Result<Option<Result<(), LogFault>>, MonitorError> {
        let handovers = self.log.key_handovers().await?;
        let pinned = self.keys.first().cloned().unwrap_or_default();
        let chain = match custody_verify::trusted_keys(&pinned, &handovers) {
            Ok(chain) => chain,
            Err(e) => {
                tracing::warn!(error = %e, "the log's key handovers do not verify; no new key accepted");
                return Ok(None);
            }
        };
        let mut accepted = false;
        for (h, vkey) in handovers.iter().zip(chain.iter().skip(1)) {
            if self.keys.contains(vkey) {
                continue;
            }
            let verified_size = self.verified.as_ref().map_or(0, |v| v.checkpoint.size);
            if h.proof.size > verified_size {
                match self.step_to(h.handover.clone(), sink).await? {
                    Ok(_) => {}
                    Err(f) => return Ok(Some(Err(f))),
                }
            }
            let verifier = custody_verify::log_verifier(vkey).map_err(|e| MonitorError::Key(e.to_string()))?;
            self.keys.push(vkey.clone());
            let mut verifiers = self.verifiers.as_ref().clone();
            verifiers.push(verifier);
            self.verifiers = Arc::new(verifiers);
            if let Some(s) = &self.state {
                s.save_keys(self.keys.get(1..).unwrap_or_default())?;
            }
            tracing::info!(vkey = %vkey, announced_at = h.proof.index, "log signing key rotated; following the new key");
            accepted = true;
        }
        Ok(accepted.then_some(Ok(())))
    }

    /// Checks `signed` (a checkpoint served by the log) and every entry up to it.
    async fn step_to(
        &mut self,
        signed: String,
        sink: &mut (dyn EntrySink + Send),
    ) -> Result<Result<Step, LogFault>, MonitorError> {
        let checkpoint = match self.check_signatures(&signed) {
            Ok(c) => c,
            Err(f) => return Ok(Err(f)),
        };
        let (old_size, mut frontier) = match &self.verified {
            None => (0, Frontier::new()),
            Some(v) => {
                let old = &v.checkpoint;
                if old.origin != checkpoint.origin {
                    return Ok(Err(LogFault::OriginChanged {
                        expected: old.origin.clone(),
                        found: checkpoint.origin.clone(),
                    }));
                }
                if checkpoint.size < old.size {
                    return Ok(Err(LogFault::Shrunk { old: old.size, new: checkpoint.size }));
                }
                if checkpoint.size == old.size {
                    if checkpoint.root_hash != old.root_hash {
                        return Ok(Err(LogFault::Fork {
                            size: old.size,
                            verified: old.root_hash,
                            served: checkpoint.root_hash,
                        }));
                    }
                    return Ok(Ok(Step { old_size: old.size, checkpoint }));
                }
                if old.size > 0 {
                    let detail = match self.log.consistency(old.size, checkpoint.size).await {
                        Ok(p) if p.old_size != old.size || p.size != checkpoint.size => {
                            Some("the proof served is for other sizes".to_owned())
                        }
                        Ok(p) => check_tree(&p.proof, checkpoint.size, &checkpoint.root_hash, old.size, &old.root_hash)
                            .err()
                            .map(|_| "the consistency proof does not verify".to_owned()),
                        // No proof: the entries below still decide.
                        Err(e) => {
                            tracing::warn!(error = %e, "no consistency proof; checking entries alone");
                            None
                        }
                    };
                    if let Some(detail) = detail {
                        return Ok(Err(LogFault::Inconsistent { old: old.size, new: checkpoint.size, detail }));
                    }
                }
                (old.size, v.frontier.clone())
            }
        };

        let mut writer = match &self.state {
            Some(s) => Some(s.entry_writer()?),
            None => None,
        };
        let fetched = self.fetch_entries(old_size, &checkpoint, &mut frontier, sink, writer.as_mut()).await;
        let outcome = match fetched {
            Ok(Ok(())) if frontier.root() == checkpoint.root_hash => None,
            Ok(Ok(())) => Some(Ok(Err(LogFault::EntryMismatch { from: old_size, to: checkpoint.size }))),
            Ok(Err(fault)) => Some(Ok(Err(fault))),
            Err(e) => Some(Err(e)),
        };
        if let Some(outcome) = outcome {
            // Flush, then cut what was written back to the verified size: nothing unverified stays.
            drop(writer);
            if let Some(s) = &self.state {
                s.load()?;
            }
            return outcome;
        }
        let verified = Verified { signed, checkpoint: checkpoint.clone(), frontier };
        if let Some(w) = writer.as_mut() {
            w.sync()?;
        }
        if let Some(s) = &self.state {
            s.save(&verified)?;
        }
        self.verified = Some(verified);
        Ok(Ok(Step { old_size, checkpoint }))
    }

    fn check_signatures(&self, signed: &str) -> Result<Checkpoint, LogFault> {
        use custody_tlog::Error as E;
        let verifiers: Vec<&dyn custody_tlog::NoteVerifier> =
            self.verifiers.iter().map(|v| v as &dyn custody_tlog::NoteVerifier).collect();
        let note = Note::open(signed.as_bytes(), &verifiers).map_err(|e| LogFault::BadSignature {
            detail: match e {
                E::UnverifiedNote => "no signature by the log key".to_owned(),
                E::InvalidSignature { .. } => "the log key's signature does not verify".to_owned(),
                other => format!("not a signed note: {other}"),
            },
        })?;
        let checkpoint = Checkpoint::parse(&note.text)
            .map_err(|e| LogFault::BadSignature { detail: format!("signed text is not a checkpoint: {e}") })?;
        if self.config.quorum > 0 {
            let have = count_cosignatures(signed, &self.config.witnesses);
            if have < self.config.quorum {
                return Err(LogFault::Quorum { size: checkpoint.size, have, need: self.config.quorum });
            }
        }
        Ok(checkpoint)
    }

    async fn fetch_entries(
        &self,
        old_size: u64,
        checkpoint: &Checkpoint,
        frontier: &mut Frontier,
        sink: &mut (dyn EntrySink + Send),
        mut writer: Option<&mut crate::state::EntryWriter>,
    ) -> Result<Result<(), LogFault>, MonitorError> {
        let bundles = custody_tlog::tile::new_entry_bundles(old_size, checkpoint.size);
        let concurrency = self.config.concurrency.max(1);
        let log = self.log.clone();
        let mut fetched = futures_util::stream::iter(bundles)
            .map(|tile| {
                let log = log.clone();
                tokio::spawn(async move { (tile, fetch_bundle(&log, tile).await) })
            })
            .buffered(concurrency);
        let mut stored = Vec::new();
        while let Some(joined) = fetched.next().await {
            let (tile, result) =
                joined.map_err(|e| MonitorError::Fetch { url: log.base().into(), detail: e.to_string() })?;
            let bundle = match result? {
                Ok(b) => b,
                Err(detail) => return Ok(Err(LogFault::BadBundle { tile: tile.path(), detail })),
            };
            let first = tile.index() * u64::from(custody_tlog::tile::TILE_WIDTH);
            for (i, (entry, leaf)) in bundle.into_iter().enumerate() {
                let index = first + i as u64;
                if index < old_size {
                    continue;
                }
                sink.entry(index, &entry)?;
                if let Some(w) = writer.as_deref_mut() {
                    w.push(index, &entry)?;
                }
                stored.clear();
                frontier.push(leaf, &mut stored)?;
            }
        }
        Ok(Ok(()))
    }
}

/// Entries of a bundle with their leaf hashes, or why the bundle is bad.
type Bundle = Result<Vec<(Vec<u8>, Hash)>, String>;

async fn fetch_bundle(log: &HttpLog, tile: Tile) -> Result<Bundle, MonitorError> {
    let data = match log.tile(&tile).await {
        Ok(d) => d,
        Err(MonitorError::Fetch { detail, .. }) if detail == "HTTP 404" => {
            return Ok(Err("the log does not serve it".into()));
        }
        Err(e) => return Err(e),
    };
    Ok(match custody_tlog::tile::decode_entry_bundle(&data, tile.width()) {
        Ok(entries) => Ok(entries.into_iter().map(|e| (e.to_vec(), leaf_hash(e))).collect()),
        Err(e) => Err(e.to_string()),
    })
}
