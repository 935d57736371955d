//! # custody-log
//!
//! custody's transparency log: every access event is sequenced into an append-only Merkle
//! tree before any data is released, published read-only as [C2SP tlog-tiles][tiles] with a
//! signed [checkpoint][checkpoint], and answered with a [`Receipt`] the caller can check
//! offline. [`Log`] implements [`custody_audit::AuditSink`], so it drops in where the event
//! file was; the formats and the Merkle math come from [`custody_tlog`].
//!
//! [tiles]: https://c2sp.org/tlog-tiles
//! [checkpoint]: https://c2sp.org/tlog-checkpoint
//!
//! ## On disk
//!
//! Storage is behind [`LogStorage`] (frames, tiles, checkpoint; the PostgreSQL backend
//! implements it too). [`FileStorage`], the default, keeps everything in `<data dir>/log/`:
//!
//! ```text
//! entries.wal                 the write-ahead file: one checked frame per batch (the truth)
//! tile/<L>/<N>                full hash tiles      } derived from entries.wal, served as is;
//! tile/entries/<N>            full entry bundles   } checked against it at every open
//! tile/…/<N>.p/<W>            the open tiles, written only at a clean stop
//! checkpoint                  the latest signed checkpoint (a signed note)
//! key                         the log's Ed25519 note key, `PRIVATE+KEY+<origin>+…`, mode 0600
//! keys.json                   every checkpoint key the log has signed with ([`KeyRecord`])
//! ```
//!
//! ## Rotating the signing key
//!
//! [`Log::new_signing_key`] makes a new key (saved as `key.next`); the caller logs an entry
//! announcing its verifier key, which the old key signs; [`Log::adopt_signing_key`] then
//! signs a *handover* checkpoint with the old key covering that entry, records both in
//! `keys.json`, makes the new key current and only then drops the old one. Checkpoints and
//! receipts signed before still verify under the old verifier key; a follower that trusts
//! the old key checks the handover checkpoint and the announcement's inclusion under it
//! before trusting the new key.
//!
//! While the log runs, the open (partial) tile of each level and the open entry bundle are
//! served from memory: a file per batch made file creation the bottleneck.
//!
//! ## Group commit
//!
//! Three threads share the work, so appends never wait for file creation or checkpoint syncs:
//!
//! 1. The **writer** owns the write-ahead frames and the tree. It blocks for the first queued
//!    entry, takes every entry already queued (up to [`LogConfig::max_batch`]), lingers up to
//!    [`LogConfig::max_delay`] for more if that is set, signs the batch once
//!    ([`custody_tlog::sign_batch`]: one Ed25519 signature over the batch root, each entry's
//!    receipt carries its path inside the batch), writes it as one frame in one `write` and
//!    calls `fdatasync` once. Entries that arrive during a sync form the next batch, so batches
//!    grow with load on their own and the default delay is zero.
//! 2. Still on the writer, **publishing** is in memory: the batch joins the tree, the open
//!    tiles are snapshotted for readers and the tiles it filled are handed on, the new size
//!    becomes visible, and only then is each entry answered with its receipt, so a receipt's
//!    entry can be read and proved at once. (A separate publishing thread was tried: the
//!    extra hand-off cost more latency than it saved on a 2-core machine.)
//! 3. The **tile writer** creates the files of the full tiles the writer hands it (on a
//!    busy filesystem, inode allocation costs more than the rest of publishing); until a file
//!    exists, readers get the tile from memory.
//! 4. The **checkpointer** signs the tree head the writer sends every
//!    [`LogConfig::checkpoint_interval`] (and at [`Log::close`]) and writes it durably
//!    (temporary file, fsync, rename, directory fsync), off the path of appends.
//!
//! ## Why an acknowledged entry is never lost
//!
//! - An entry is acknowledged only after the `fdatasync` of the frame holding it returned, so
//!   the frame's bytes and the file length covering them are on stable storage.
//! - A frame is checked as a whole: its trailer is the batch root, the Merkle hash of all its
//!   entries, so a frame is valid only if every byte is as written. A crash during a write
//!   can leave the last frame torn (short, or with pages missing in the middle), never an
//!   earlier one, because the writer does not start a frame before the previous one synced.
//! - At open, frames are read from the start. At the first invalid frame the log decides:
//!   if a valid frame follows anywhere after it, this is damage in the middle of the file and
//!   the open fails, naming the byte offset; nothing is cut. Otherwise the bad bytes are the
//!   last write, which was never acknowledged, unless something else shows that it was: tiles
//!   and entry bundles are written only after a frame synced, and checkpoints only cover
//!   synced frames, so an entry bundle, tile or checkpoint beyond the valid frames means an
//!   acknowledged frame was damaged, and the open fails. Only when none of that is found is
//!   the tail cut (and the cut fsynced) before anything new is written.
//!   (Full tiles are that evidence for all but the last 255 entries after a crash; after a
//!   clean stop the open tiles on disk cover the rest.)
//! - Tiles and entry bundles are not fsynced: they are derived from the frames. At open every
//!   one is recomputed from `entries.wal`; a missing one, or one cut short by a crash while
//!   it was written, is written again; one that differs otherwise is reported as tampering,
//!   naming its path. The stored checkpoint must verify under the
//!   log's key and match the root of the tree at its size.
//!
//! If a write or sync fails, the log fails closed for good: the batch in flight and every
//! later submit fail, and an operator must look at the disk.

mod storage;
mod tiles;
mod wal;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use custody_audit::{AuditError, AuditReceipt, AuditSink, Pending};
use custody_core::LogEntry;
use custody_tlog::note::NoteSigner;
use custody_tlog::tile::{MAX_ENTRY_SIZE, TILE_WIDTH, TileHashReader, TileReader};
use custody_tlog::{Checkpoint, Ed25519Signer, Ed25519Verifier, Hash, Receipt, Tile, TileKind, leaf_hash, sign_batch};
use tokio::sync::oneshot;

use crate::tiles::{Builder, OpenTiles};

pub use crate::storage::{FileStorage, Item, LogStorage};

/// Where the log lives and how it batches.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The data dir; the log lives in its `log/` subdirectory.
    pub dir: PathBuf,
    /// The log's origin (checkpoint first line and key name), e.g. `custody.example/log`.
    pub origin: String,
    /// Most entries per batch (one write, one sync, one signature).
    pub max_batch: usize,
    /// Longest a batch lingers for more entries once it has taken everything queued. Zero
    /// (the default) is best on disks whose sync takes longer than entries take to arrive.
    pub max_delay: Duration,
    /// How often a new checkpoint is signed while the tree grows.
    pub checkpoint_interval: Duration,
    /// Most entries waiting for the writer before submits are refused as overloaded.
    pub queue: usize,
}

impl LogConfig {
    /// The defaults: batches of up to 4096 entries with no added delay (entries that arrive
    /// during a sync form the next batch), a checkpoint a second, a queue of 65,536.
    pub fn new(dir: impl Into<PathBuf>, origin: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            origin: origin.into(),
            max_batch: 4096,
            max_delay: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(1),
            queue: 65_536,
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        let mut problems = Vec::new();
        if !custody_tlog::note::is_valid_key_name(&self.origin) {
            problems.push(format!("origin `{}` must be non-empty, without spaces or `+`", self.origin));
        }
        if self.max_batch == 0 {
            problems.push("max_batch must be at least 1".to_owned());
        }
        if self.queue == 0 {
            problems.push("queue must be at least 1".to_owned());
        }
        if self.checkpoint_interval.is_zero() {
            problems.push("checkpoint_interval must be positive".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(LogError::Config(problems.join("; "))) }
    }
}

/// Why the log could not open, append or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The write-ahead file is damaged before its end; nothing was cut.
    #[error("write-ahead log `{}` is damaged at byte {offset}: {detail}", path.display())]
    Corrupt {
        /// The write-ahead file.
        path: PathBuf,
        /// Where the first invalid frame starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A tile, entry bundle or checkpoint does not match the write-ahead file.
    #[error("`{}` does not match the write-ahead log: {detail}", path.display())]
    Tampered {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key file is unreadable or for another origin.
    #[error("log key `{}`: {detail}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An entry longer than an entry bundle can carry.
    #[error("entry of {0} bytes exceeds the 65535-byte limit")]
    EntryTooLarge(usize),
    /// The queue is full; retry later.
    #[error("log queue is full")]
    Overloaded,
    /// A write or sync failed earlier; the log accepts nothing more.
    #[error("log failed: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// A tile path that is not canonical.
    #[error(transparent)]
    BadPath(custody_tlog::ParseError),
    /// A proof asked about a tree the log has not published.
    #[error("tree size {size} is beyond the log's {published} entries")]
    SizeOutOfRange {
        /// The size asked for.
        size: u64,
        /// The log's size.
        published: u64,
    },
    /// A proof could not be built.
    #[error(transparent)]
    Proof(#[from] custody_tlog::Error),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io { action, path: path.to_path_buf(), source }
}

/// An entry handed to the log; [`LogPending::wait`] returns its receipt once it is durable.
#[derive(Debug)]
pub struct LogPending(oneshot::Receiver<Result<Receipt, LogError>>);

impl LogPending {
    /// Waits until the entry is durable. Must not be called from inside an async runtime.
    ///
    /// # Errors
    /// Any [`LogError`] the writer answered with; [`LogError::Closed`] if it went away.
    pub fn wait(self) -> Result<Receipt, LogError> {
        self.0.blocking_recv().unwrap_or(Err(LogError::Closed))
    }

    /// Async variant of [`LogPending::wait`].
    ///
    /// # Errors
    /// As [`LogPending::wait`].
    pub async fn receipt(self) -> Result<Receipt, LogError> {
        self.0.await.unwrap_or(Err(LogError::Closed))
    }
}

/// How an entry's submitter wants its answer.
enum Ack {
    Raw(oneshot::Sender<Result<Receipt, LogError>>),
    /// An audit event: answered with the receipt and the exact entry text, so the client can
    /// check the leaf hash against what was logged about its request. The writer hands both
    /// over as they are; the waiting task formats them ([`custody_audit::Deferred`]).
    Audit(oneshot::Sender<Result<custody_audit::Deferred, AuditError>>, Arc<[u8]>),
}

impl Ack {
    fn ok(self, receipt: Receipt) {
        match self {
            Ack::Raw(tx) => {
                let _ = tx.send(Ok(receipt));
            }
            Ack::Audit(tx, entry) => {
                let _ = tx.send(Ok(Box::new(move || audit_receipt(&receipt, &entry))));
            }
        }
    }

    fn fail(self, msg: &str) {
        match self {
            Ack::Raw(tx) => {
                let _ = tx.send(Err(LogError::Failed(msg.to_owned())));
            }
            Ack::Audit(tx, _) => {
                let _ = tx.send(Err(AuditError::Failed(msg.to_owned())));
            }
        }
    }
}

/// The receipt of an audit event, `{"log": <the Receipt>, "entry": <the exact entry text>}`.
fn audit_receipt(receipt: &Receipt, entry: &[u8]) -> Result<AuditReceipt, AuditError> {
    let log = serde_json::to_value(receipt).map_err(|e| AuditError::Failed(e.to_string()))?;
    let entry = String::from_utf8_lossy(entry);
    Ok(AuditReceipt { index: receipt.index, detail: serde_json::json!({ "log": log, "entry": entry }) })
}

/// An entry (shared, not copied, between the frame, the open entry bundle and its answer)
/// and how to answer it.
type Job = (Arc<[u8]>, Ack);

/// Full tiles and their bytes, shared between the tile writer and readers.
type FullTiles = Vec<(Tile, Arc<Vec<u8>>)>;

/// What readers see: the tree as far as its tiles are written, and the latest checkpoint.
#[derive(Debug)]
struct Published {
    /// The published tree's size and open tiles; its full tiles are in the store.
    open: Arc<OpenTiles>,
    checkpoint: String,
}

#[derive(Debug)]
struct Shared {
    failed: AtomicBool,
    published: RwLock<Published>,
    store: Arc<dyn LogStorage>,
    /// Full tiles published but not yet in the store: the tile writer creates their files
    /// off the path of acknowledgements, and readers take them from here meanwhile.
    unwritten: Mutex<HashMap<Tile, Arc<Vec<u8>>>>,
    /// The current signing key; the writer and checkpointer sign with whatever it holds.
    signer: RwLock<Ed25519Signer>,
    /// Every key the log has signed with, oldest first (the last is `signer`'s).
    keys: RwLock<Vec<KeyRecord>>,
    /// One key rotation at a time.
    rotating: Mutex<()>,
    /// `<data dir>/log`, where the key files live.
    key_dir: PathBuf,
    origin: String,
}

impl Shared {
    fn signer(&self) -> Ed25519Signer {
        self.signer.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// One checkpoint signing key of the log, and how it was handed over to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    /// The verifier key, `<origin>+<key id>+<base64 key>`.
    pub vkey: String,
    /// The index of the entry announcing it; `None` for the log's first key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_at: Option<u64>,
    /// The checkpoint signed by the previous key whose tree holds the announcement (its size
    /// is at least `announced_at + 1`); `None` for the first key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
}

/// A new signing key, saved as `key.next` but not yet signing; see [`Log::adopt_signing_key`].
pub struct NextKey(Ed25519Signer);

impl std::fmt::Debug for NextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NextKey").field(&self.0.verifier_key()).finish()
    }
}

impl NextKey {
    /// The new key's verifier key, to announce in the log.
    pub fn verifier_key(&self) -> String {
        self.0.verifier_key()
    }
}

/// The published tree as readers see it: open tiles from memory, full ones from the store.
struct View<'a> {
    store: &'a dyn LogStorage,
    unwritten: &'a Mutex<HashMap<Tile, Arc<Vec<u8>>>>,
    open: Arc<OpenTiles>,
}

impl View<'_> {
    /// The bytes of `tile`, or `None` if the published tree does not hold all of it.
    fn read(&self, tile: &Tile) -> Result<Option<Vec<u8>>, LogError> {
        if !self.open.covers(tile) {
            return Ok(None);
        }
        if let Some(data) = self.open.get(tile) {
            return Ok(Some(data?));
        }
        let full = tile.full();
        let unwritten = self.unwritten.lock().unwrap_or_else(PoisonError::into_inner).get(&full).cloned();
        let path = || self.store.location(Item::Tile(tile));
        match unwritten {
            Some(data) if tile.is_full() => Ok(Some(data.to_vec())),
            Some(data) => tiles::cut(tile, &full, &data).map(Some).map_err(|e| io_err("read", &path())(e)),
            None => storage::read_or_cut(self.store, tile).map_err(|e| io_err("read", &path())(e)),
        }
    }
}

impl TileReader for View<'_> {
    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, custody_tlog::Error> {
        tiles
            .iter()
            .map(|t| match self.read(t) {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(custody_tlog::Error::ReadHashes(format!("tile `{t}` is not stored").into())),
                Err(e) => Err(custody_tlog::Error::ReadHashes(Box::new(e))),
            })
            .collect()
    }
}

/// The transparency log. See the [crate docs](crate).
#[derive(Debug)]
pub struct Log {
    tx: Option<SyncSender<Job>>,
    /// The writer, tile and checkpoint threads, in the order they stop.
    threads: Vec<JoinHandle<Result<(), String>>>,
    shared: Arc<Shared>,
}

impl Log {
    /// Opens (or creates) the log in `<cfg.dir>/log/`, recovers and checks it, and starts the
    /// writer.
    ///
    /// # Errors
    /// [`LogError::Config`]; [`LogError::Key`]; [`LogError::Corrupt`] if the write-ahead file
    /// is damaged before its end; [`LogError::Tampered`] naming a tile, entry bundle or
    /// checkpoint that does not match it; [`LogError::Io`].
    pub fn open(cfg: LogConfig) -> Result<Log, LogError> {
        cfg.validate()?;
        let dir = cfg.dir.join("log");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        sync_dir(&cfg.dir)?;
        let storage = FileStorage::open(&dir).map_err(io_err("open", &dir))?;
        Self::open_with(cfg, Arc::new(storage))
    }

    /// Opens the log on another [`LogStorage`] (the PostgreSQL backend). The signing key
    /// stays a file under `<cfg.dir>/log/`: it is a secret, not log data.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with(cfg: LogConfig, store: Arc<dyn LogStorage>) -> Result<Log, LogError> {
        cfg.validate()?;
        let dir = cfg.dir.join("log");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let signer = load_or_create_key(&dir.join("key"), &cfg.origin)?;
        let keys = load_key_history(&dir, &signer)?;
        let verifiers = keys
            .iter()
            .map(|k| Ed25519Verifier::from_verifier_key(&k.vkey))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LogError::Key { path: dir.join(KEYS_FILE), detail: e.to_string() })?;
        let recovered = recover(store.as_ref(), &verifiers, &cfg.origin)?;
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            published: RwLock::new(Published {
                open: Arc::new(recovered.builder.open_tiles()),
                checkpoint: String::new(),
            }),
            store,
            unwritten: Mutex::new(HashMap::new()),
            signer: RwLock::new(signer),
            keys: RwLock::new(keys),
            rotating: Mutex::new(()),
            key_dir: dir.clone(),
            origin: cfg.origin.clone(),
        });
        let mut checkpointer = Checkpointer { written: recovered.checkpoint, shared: shared.clone() };
        checkpointer.checkpoint(recovered.builder.size(), recovered.builder.root()).map_err(LogError::Failed)?;
        let mut writer = Writer { next: recovered.builder.size(), shared: shared.clone() };
        // Past this many batches of full tiles waiting for their files, the publisher waits.
        let (tiles_tx, tiles_rx) = mpsc::sync_channel::<FullTiles>(64);
        let mut publisher = Publisher { builder: recovered.builder, tiles: tiles_tx, shared: shared.clone() };
        let (tx, rx) = mpsc::sync_channel::<Job>(cfg.queue);
        let (head_tx, head_rx) = mpsc::sync_channel::<(u64, Hash)>(1);
        let spawn = |name: &str, f: Box<dyn FnOnce() -> Result<(), String> + Send>| {
            thread::Builder::new().name(name.into()).spawn(f).map_err(io_err("start a thread for", &dir))
        };
        let checkpoints = spawn("custody-log-checkpoint", Box::new(move || checkpointer.run(&head_rx)))?;
        let tile_shared = shared.clone();
        let tiles = spawn("custody-log-tiles", Box::new(move || write_tiles(&tile_shared, &tiles_rx)))?;
        let timing = (cfg.max_batch, cfg.max_delay, cfg.checkpoint_interval);
        let write = spawn("custody-log-writer", Box::new(move || writer.run(&rx, &mut publisher, &head_tx, timing)))?;
        Ok(Log { tx: Some(tx), threads: vec![write, tiles, checkpoints], shared })
    }

    /// Queues `entry`; the returned [`LogPending`] resolves with its receipt once durable.
    ///
    /// # Errors
    /// [`LogError::EntryTooLarge`] past 65,535 bytes; [`LogError::Overloaded`] when the queue
    /// is full; [`LogError::Failed`] or [`LogError::Closed`] when the log accepts nothing.
    pub fn submit(&self, entry: Vec<u8>) -> Result<LogPending, LogError> {
        if entry.len() > MAX_ENTRY_SIZE {
            return Err(LogError::EntryTooLarge(entry.len()));
        }
        let (tx, rx) = oneshot::channel();
        self.send((entry.into(), Ack::Raw(tx)))?;
        Ok(LogPending(rx))
    }

    fn send(&self, job: Job) -> Result<(), LogError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(LogError::Failed("an earlier write failed; see the server log".into()));
        }
        let tx = self.tx.as_ref().ok_or(LogError::Closed)?;
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(LogError::Overloaded),
            Err(TrySendError::Disconnected(_)) if self.shared.failed.load(Ordering::Acquire) => {
                Err(LogError::Failed("an earlier write failed; see the server log".into()))
            }
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The number of entries sequenced and written to tiles.
    pub fn size(&self) -> u64 {
        self.open_tiles().size()
    }

    /// The latest signed checkpoint (note text with its signature line).
    pub fn checkpoint_text(&self) -> String {
        self.shared.published.read().unwrap_or_else(PoisonError::into_inner).checkpoint.clone()
    }

    /// The verifier of the log's current key, for receipts and checkpoints.
    pub fn verifier(&self) -> Ed25519Verifier {
        self.shared.signer().verifier()
    }

    /// The log's current vkey, `<origin>+<key id>+<base64 key>`.
    pub fn verifier_key(&self) -> String {
        self.shared.signer().verifier_key()
    }

    /// Every key the log has signed checkpoints with, oldest first; the last is current.
    pub fn key_history(&self) -> Vec<KeyRecord> {
        self.shared.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The entry at `index`, as logged.
    ///
    /// # Errors
    /// [`LogError::SizeOutOfRange`] past the published tree; a tile that cannot be read.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, LogError> {
        let open = self.open_tiles();
        let published = open.size();
        if index >= published {
            return Err(LogError::SizeOutOfRange { size: index + 1, published });
        }
        let w = u64::from(TILE_WIDTH);
        let first = index - index % w;
        let width = u16::try_from((published - first).min(w)).unwrap_or(TILE_WIDTH);
        let tile = Tile::entries(index / w, width).map_err(custody_tlog::Error::from)?;
        let view = View { store: self.shared.store.as_ref(), unwritten: &self.shared.unwritten, open };
        let path = || self.shared.store.location(Item::Tile(&tile));
        let data = view.read(&tile)?.ok_or_else(|| LogError::Tampered { path: path(), detail: "missing".into() })?;
        let entries = custody_tlog::tile::decode_entry_bundle(&data, width)
            .map_err(|e| LogError::Tampered { path: path(), detail: e.to_string() })?;
        entries
            .get(usize::try_from(index - first).unwrap_or(usize::MAX))
            .map(|e| e.to_vec())
            .ok_or_else(|| LogError::Tampered { path: path(), detail: format!("entry {index} is not in it") })
    }

    /// Starts a signing-key rotation: generates a new key and saves it as `key.next` (mode
    /// 0600). Log an entry announcing [`NextKey::verifier_key`], then call
    /// [`Log::adopt_signing_key`] with its index.
    ///
    /// # Errors
    /// The key file cannot be written.
    pub fn new_signing_key(&self) -> Result<NextKey, LogError> {
        let path = self.shared.key_dir.join(NEXT_KEY_FILE);
        let signer = Ed25519Signer::generate(&self.shared.origin, &mut rand::rngs::OsRng)
            .map_err(|e| LogError::Key { path: path.clone(), detail: e.to_string() })?;
        write_private(&path, format!("{}\n", signer.signer_key().as_str()).as_bytes())?;
        Ok(NextKey(signer))
    }

    /// Finishes a rotation: with the old key, signs a handover checkpoint of the tree as it
    /// stands (which must hold the announcement at `announced_at`), records the new key in
    /// `keys.json`, makes it current (`key.next` becomes `key`). Later checkpoints and
    /// receipts are signed by the new key.
    ///
    /// # Errors
    /// [`LogError::Key`] if `announced_at` is not an entry announcing this key; I/O errors.
    pub fn adopt_signing_key(&self, next: NextKey, announced_at: u64) -> Result<KeyRecord, LogError> {
        let _one = self.shared.rotating.lock().unwrap_or_else(PoisonError::into_inner);
        let vkey = next.verifier_key();
        let key_err = |detail: String| LogError::Key { path: self.shared.key_dir.join(KEYS_FILE), detail };
        let entry = self.entry(announced_at)?;
        let announced: serde_json::Value =
            serde_json::from_slice(&entry).map_err(|e| key_err(format!("entry {announced_at} is not JSON: {e}")))?;
        if announced.get("verifier_key").and_then(|v| v.as_str()) != Some(vkey.as_str()) {
            return Err(key_err(format!("entry {announced_at} does not announce `{vkey}`")));
        }
        let size = self.size();
        let root = self.root(size)?;
        let old = self.shared.signer();
        let handover = Checkpoint::new(self.shared.origin.clone(), size, root)
            .sign(&old)
            .map_err(|e| key_err(format!("cannot sign the handover checkpoint: {e}")))?
            .to_string();
        let record = KeyRecord { vkey, announced_at: Some(announced_at), handover: Some(handover) };
        let mut history = self.key_history();
        history.push(record.clone());
        let json = serde_json::to_vec_pretty(&history).map_err(|e| key_err(e.to_string()))?;
        write_private(&self.shared.key_dir.join(KEYS_FILE), &json)?;
        let next_path = self.shared.key_dir.join(NEXT_KEY_FILE);
        let key_path = self.shared.key_dir.join("key");
        fs::rename(&next_path, &key_path).map_err(io_err("rename", &next_path))?;
        sync_dir(&self.shared.key_dir)?;
        *self.shared.keys.write().unwrap_or_else(PoisonError::into_inner) = history;
        *self.shared.signer.write().unwrap_or_else(PoisonError::into_inner) = next.0;
        Ok(record)
    }

    /// The contents of a tile or entry bundle at its C2SP path (`tile/0/x001/067.p/12`,
    /// `tile/entries/000`), or `None` if the log has no such tile.
    ///
    /// # Errors
    /// [`LogError::BadPath`] for a path that is not canonical; [`LogError::Io`].
    pub fn read_tile(&self, path: &str) -> Result<Option<Vec<u8>>, LogError> {
        let tile = Tile::parse_path(path).map_err(LogError::BadPath)?;
        let view =
            View { store: self.shared.store.as_ref(), unwritten: &self.shared.unwritten, open: self.open_tiles() };
        view.read(&tile)
    }

    fn open_tiles(&self) -> Arc<OpenTiles> {
        self.shared.published.read().unwrap_or_else(PoisonError::into_inner).open.clone()
    }

    /// The RFC 6962 inclusion proof of entry `index` in the tree of `size`.
    ///
    /// # Errors
    /// [`LogError::SizeOutOfRange`] past the log's size; [`LogError::Proof`] if `index` is
    /// not below `size` or a tile cannot be read.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.with_reader(size, |r| custody_tlog::prove_record(size, index, r))
    }

    /// The RFC 6962 consistency proof from the tree of `old` to the tree of `new`.
    ///
    /// # Errors
    /// [`LogError::SizeOutOfRange`] past the log's size; [`LogError::Proof`] unless
    /// `1 <= old <= new` or if a tile cannot be read.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        self.with_reader(new, |r| custody_tlog::prove_tree(new, old, r))
    }

    /// The root hash of the tree of `size`.
    ///
    /// # Errors
    /// As [`Log::prove_inclusion`].
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        self.with_reader(size, |r| custody_tlog::tree_hash(size, r))
    }

    fn with_reader<T>(
        &self,
        size: u64,
        f: impl FnOnce(&TileHashReader<'_, View<'_>>) -> Result<T, custody_tlog::Error>,
    ) -> Result<T, LogError> {
        let view =
            View { store: self.shared.store.as_ref(), unwritten: &self.shared.unwritten, open: self.open_tiles() };
        let published = view.open.size();
        if size > published {
            return Err(LogError::SizeOutOfRange { size, published });
        }
        Ok(f(&TileHashReader::new(size, &view)?)?)
    }

    /// Stops accepting entries, makes everything queued durable, writes a final checkpoint
    /// and stops the writer. Dropping the log does the same, ignoring errors.
    ///
    /// # Errors
    /// [`LogError::Failed`] if the writer had failed or the final checkpoint could not be
    /// written.
    pub fn close(mut self) -> Result<(), LogError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LogError> {
        drop(self.tx.take());
        // Each stage stops when the one before it hung up; the first error is the cause.
        let mut first_error = None;
        for handle in self.threads.drain(..) {
            let outcome = match handle.join() {
                Ok(r) => r,
                Err(_) => Err("a log thread panicked".to_owned()),
            };
            if let (Err(msg), None) = (outcome, &first_error) {
                first_error = Some(msg);
            }
        }
        first_error.map_or(Ok(()), |msg| Err(LogError::Failed(msg)))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the log failed");
        }
    }
}

/// Each entry is its canonical JSON (`serde_json::to_vec` of the [`LogEntry`]); the
/// [`AuditReceipt`]'s detail is `{"log": <the Receipt>, "entry": <the exact entry text>}`.
impl AuditSink for Log {
    fn submit(&self, event: &LogEntry) -> Result<Pending, AuditError> {
        let entry = serde_json::to_vec(event).map_err(|e| AuditError::Failed(e.to_string()))?;
        self.submit_canonical(entry)
    }
}

impl Log {
    /// Queues an entry already in its canonical text (as [`AuditSink::submit`] makes it), for a
    /// node that sequences entries other nodes forward; resolves exactly as `submit` does.
    ///
    /// # Errors
    /// As [`AuditSink::submit`].
    pub fn submit_canonical(&self, entry: Vec<u8>) -> Result<Pending, AuditError> {
        if entry.len() > MAX_ENTRY_SIZE {
            return Err(AuditError::Failed(LogError::EntryTooLarge(entry.len()).to_string()));
        }
        let (tx, rx) = oneshot::channel();
        let entry: Arc<[u8]> = entry.into();
        self.send((entry.clone(), Ack::Audit(tx, entry))).map_err(|e| match e {
            LogError::Overloaded => AuditError::Overloaded,
            LogError::Closed => AuditError::Closed,
            other => AuditError::Failed(other.to_string()),
        })?;
        Ok(Pending::deferred(rx))
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))
}

/// A secret the nodes sequencing one log share, derived from its signing key (which they
/// must share anyway: whichever node is elected signs). Nodes authenticate forwarded entries
/// with it, so only holders of the log's key can append. Creates the key if there is none.
///
/// # Errors
/// [`LogError::Key`] or [`LogError::Io`], as [`Log::open`].
pub fn node_secret(cfg: &LogConfig) -> Result<[u8; 32], LogError> {
    use sha2::Digest;
    let dir = cfg.dir.join("log");
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let signer = load_or_create_key(&dir.join("key"), &cfg.origin)?;
    let mut h = sha2::Sha256::new();
    h.update(b"custody node secret v1\0");
    h.update(signer.signer_key().as_str().as_bytes());
    Ok(h.finalize().into())
}

/// The key history file in `<data dir>/log`.
const KEYS_FILE: &str = "keys.json";
/// A key made by [`Log::new_signing_key`] and not yet adopted.
const NEXT_KEY_FILE: &str = "key.next";

/// Writes `bytes` to `path` atomically (temporary file of mode 0600, fsync, rename, fsync).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads `keys.json` (a log without one has signed with its one key only) and checks that
/// its last key is the key file's. Finishes a rotation that stopped between recording the new
/// key and renaming `key.next`, and drops a `key.next` that was never adopted.
fn load_key_history(dir: &Path, signer: &Ed25519Signer) -> Result<Vec<KeyRecord>, LogError> {
    let path = dir.join(KEYS_FILE);
    let key_err = |detail: String| LogError::Key { path: path.clone(), detail };
    let history: Vec<KeyRecord> = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| key_err(format!("not a key history: {e}")))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            vec![KeyRecord { vkey: signer.verifier_key(), announced_at: None, handover: None }]
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let last = history.last().map(|k| k.vkey.clone()).unwrap_or_default();
    let next = dir.join(NEXT_KEY_FILE);
    if last != signer.verifier_key() {
        let text = fs::read_to_string(&next).map_err(|_| {
            key_err(format!("the current key is `{last}`, but `key` holds `{}`", signer.verifier_key()))
        })?;
        let adopted = Ed25519Signer::from_signer_key(text.trim_end()).map_err(|e| key_err(e.to_string()))?;
        if adopted.verifier_key() != last {
            return Err(key_err(format!("neither `key` nor `key.next` holds the current key `{last}`")));
        }
        fs::rename(&next, dir.join("key")).map_err(io_err("rename", &next))?;
        sync_dir(dir)?;
        return Err(LogError::Key {
            path: next,
            detail: "an interrupted key rotation was completed; open the log again".into(),
        });
    }
    if next.exists() {
        fs::remove_file(&next).map_err(io_err("remove", &next))?;
    }
    Ok(history)
}

/// Reads the key file, or creates it (mode 0600) with a new key named `origin`.
fn load_or_create_key(path: &Path, origin: &str) -> Result<Ed25519Signer, LogError> {
    let key_err = |detail: String| LogError::Key { path: path.to_path_buf(), detail };
    match fs::read_to_string(path) {
        Ok(text) => {
            let signer = Ed25519Signer::from_signer_key(text.trim_end()).map_err(|e| key_err(e.to_string()))?;
            if signer.name() != origin {
                return Err(key_err(format!("key is named `{}`, not the origin `{origin}`", signer.name())));
            }
            Ok(signer)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let signer = Ed25519Signer::generate(origin, &mut rand::rngs::OsRng).map_err(|e| key_err(e.to_string()))?;
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(format!("{}\n", signer.signer_key().as_str()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err("write", &tmp))?;
            fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(signer)
        }
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The state recovered at open.
struct Recovered {
    builder: Builder,
    /// The size of the stored checkpoint, if there is a valid one.
    checkpoint: Option<u64>,
}

/// Replays the write-ahead frames, checks every tile, bundle and the checkpoint against them,
/// cuts a torn tail, and writes missing tiles. See the crate docs for the argument.
fn recover(store: &dyn LogStorage, verifiers: &[Ed25519Verifier], origin: &str) -> Result<Recovered, LogError> {
    let wal_path = store.location(Item::Frames);
    let checkpoint_path = store.location(Item::Checkpoint);
    let stored = match store.read_checkpoint().map_err(io_err("read", &checkpoint_path))? {
        Some(bytes) => {
            let verifiers: Vec<&dyn custody_tlog::NoteVerifier> =
                verifiers.iter().map(|v| v as &dyn custody_tlog::NoteVerifier).collect();
            let (c, _) = Checkpoint::open(&bytes, origin, &verifiers)
                .map_err(|e| LogError::Tampered { path: checkpoint_path.clone(), detail: e.to_string() })?;
            Some(c)
        }
        None => None,
    };
    let mut checkpoint_root = stored.as_ref().filter(|c| c.size == 0).map(|_| Hash::EMPTY_ROOT);

    let mut builder = Builder::default();
    let mut reader = store.read_frames(0).map_err(io_err("read", &wal_path))?;
    let mut offset = 0u64;
    let torn = loop {
        match wal::read_frame(&mut reader, Some(builder.size())).map_err(io_err("read", &wal_path))? {
            wal::Found::End => break None,
            wal::Found::Invalid(why) => break Some(why),
            wal::Found::Frame(frame) => {
                let (start, count) = (builder.size(), frame.leaves.len() as u64);
                if let Some(c) = stored.as_ref().filter(|c| c.size > start && c.size <= start + count) {
                    let mut f = builder.frontier().clone();
                    let within = usize::try_from(c.size - start).unwrap_or(usize::MAX);
                    checkpoint_root = Some(f.extend(frame.leaves.get(..within).unwrap_or_default())?.root);
                }
                let entries = frame.entries.into_iter().map(Arc::from).collect();
                for (tile, data) in builder.append(entries, &frame.leaves)? {
                    check_or_write(store, &tile, &data)?;
                }
                offset += frame.len;
            }
        }
    };
    drop(reader);

    if let Some(why) = torn {
        let mut tail = Vec::new();
        store.read_frames(offset).and_then(|mut r| r.read_to_end(&mut tail)).map_err(io_err("read", &wal_path))?;
        if let Some(at) = wal::valid_frame_after(&tail) {
            return Err(LogError::Corrupt {
                path: wal_path,
                offset,
                detail: format!("{why}, yet a valid frame follows at byte {}", offset + at as u64),
            });
        }
    }

    check_open_tiles(store, &builder)?;
    if let Some(c) = &stored {
        if c.size > builder.size() {
            return Err(LogError::Tampered {
                path: checkpoint_path,
                detail: format!("checkpoint is for {} entries, the log holds {}", c.size, builder.size()),
            });
        }
        if checkpoint_root != Some(c.root_hash) {
            return Err(LogError::Tampered {
                path: checkpoint_path,
                detail: format!("checkpoint root differs from the log's root at size {}", c.size),
            });
        }
    }

    if let Some(why) = torn {
        let len = store.frames_len().map_err(io_err("stat", &wal_path))?;
        tracing::warn!(path = %wal_path.display(), offset, cut = len - offset, why, "cutting torn tail of the write-ahead log");
        store.truncate_frames(offset).map_err(io_err("truncate", &wal_path))?;
    }
    // Open tiles are served from memory; they are written only at a clean stop.
    builder.take_partials()?;
    Ok(Recovered { builder, checkpoint: stored.map(|c| c.size) })
}

/// Compares a stored tile with what the log implies, writing it if missing.
fn check_or_write(store: &dyn LogStorage, tile: &Tile, data: &[u8]) -> Result<(), LogError> {
    let path = store.location(Item::Tile(tile));
    match store.read_tile(tile).map_err(io_err("read", &path))? {
        Some(stored) if stored == data => {}
        // Tiles are written in place after their frame synced; a crash mid-write leaves a prefix.
        Some(stored) if stored.len() < data.len() && data.starts_with(&stored) => {
            tracing::warn!(path = %path.display(), "rewriting a tile cut short by a crash");
            store.write_tile(tile, data).map_err(io_err("write", &path))?;
        }
        Some(_) => return Err(LogError::Tampered { path, detail: "content differs from the entries".into() }),
        None => store.write_tile(tile, data).map_err(io_err("write", &path))?,
    }
    if tile.is_full() {
        // A crash between writing a full tile and removing its partials leaves them behind.
        store.remove_partials(tile).map_err(io_err("remove", &store.location(Item::Partials(tile))))?;
    }
    Ok(())
}

/// Checks the partial versions of each level's rightmost tile against the log, and that no
/// tile or bundle lies beyond the log (evidence that an acknowledged frame was lost).
fn check_open_tiles(store: &dyn LogStorage, builder: &Builder) -> Result<(), LogError> {
    let kinds = (0..=builder.levels()).map(|level| TileKind::Hashes { level }).chain([TileKind::Entries]);
    for kind in kinds {
        let count = builder.count(kind);
        let (index, width) = (count / u64::from(TILE_WIDTH), count % u64::from(TILE_WIDTH));
        let tile = |index, width| match kind {
            TileKind::Hashes { level } => Tile::hashes(level, index, width),
            TileKind::Entries => Tile::entries(index, width),
        };
        let full = tile(index, TILE_WIDTH).map_err(custody_tlog::Error::from)?;
        let next = tile(index + 1, TILE_WIDTH).map_err(custody_tlog::Error::from)?;
        for beyond in [full, next] {
            let path = store.location(Item::Tile(&beyond));
            let partials = store.partial_widths(&beyond).map_err(io_err("read", &path))?;
            let exists = store.read_tile(&beyond).map_err(io_err("read", &path))?.is_some()
                || (beyond == next && !partials.is_empty());
            if exists {
                return Err(LogError::Tampered {
                    path,
                    detail: format!("it holds data beyond the log's {} entries", builder.size()),
                });
            }
        }
        let widths = store.partial_widths(&full).map_err(io_err("read", &store.location(Item::Partials(&full))))?;
        for w in widths {
            let partial = tile(index, w).map_err(custody_tlog::Error::from)?;
            let path = store.location(Item::Tile(&partial));
            if u64::from(w) > width {
                return Err(LogError::Tampered {
                    path,
                    detail: format!("it holds data beyond the log's {} entries", builder.size()),
                });
            }
            let (_, want) = match kind {
                TileKind::Hashes { level } => builder.open_hash_tile(level, usize::from(w))?,
                TileKind::Entries => builder.open_bundle(usize::from(w))?,
            };
            check_or_write(store, &partial, &want)?;
        }
    }
    Ok(())
}

/// A batch the writer made durable, on its way to the publisher.
struct Durable {
    entries: Vec<Arc<[u8]>>,
    leaves: Vec<Hash>,
    acks: Vec<Ack>,
    receipts: Vec<Receipt>,
}

/// The sequencing stage: the only owner of the write-ahead file. It signs each batch, writes
/// it as one frame and syncs it, then hands it on; while the publisher writes tiles and
/// answers one batch, the next is already being written and synced.
struct Writer {
    /// Index of the next entry.
    next: u64,
    shared: Arc<Shared>,
}

impl Writer {
    /// Takes every entry already queued (up to `max_batch`), lingers up to `max_delay` for
    /// more while the batch is not full, and commits. Entries that arrive during a sync form
    /// the next batch, so batches grow with load without any delay.
    fn run(
        &mut self,
        rx: &Receiver<Job>,
        publisher: &mut Publisher,
        checkpoints: &SyncSender<(u64, Hash)>,
        cfg: (usize, Duration, Duration),
    ) -> Result<(), String> {
        let (max_batch, max_delay, interval) = cfg;
        let mut jobs: Vec<Job> = Vec::with_capacity(max_batch.min(65_536));
        let mut next_checkpoint = Instant::now() + interval;
        let mut batch = Vec::with_capacity(1);
        let result = loop {
            match rx.recv_timeout(next_checkpoint.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    jobs.push(first);
                    jobs.extend(rx.try_iter().take(max_batch.saturating_sub(1)));
                    if !max_delay.is_zero() {
                        let deadline = Instant::now() + max_delay;
                        while jobs.len() < max_batch {
                            let now = Instant::now();
                            if now >= deadline {
                                break;
                            }
                            match rx.recv_timeout(deadline - now) {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    match self.commit(&mut jobs) {
                        Ok(d) => batch.push(d),
                        Err(msg) => break Err(self.fail(rx, msg)),
                    }
                    if let Err(msg) = publisher.publish(&mut batch) {
                        break Err(self.fail(rx, msg));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            }
            if Instant::now() >= next_checkpoint {
                // A full queue means a checkpoint is being written; the next tick sends a newer one.
                let _ = checkpoints.try_send((publisher.builder.size(), publisher.builder.root()));
                next_checkpoint = Instant::now() + interval;
            }
        };
        publisher.finish(checkpoints, result)
    }

    /// Fails closed: nothing more is accepted, and everything queued is refused.
    fn fail(&self, rx: &Receiver<Job>, msg: String) -> String {
        fail_closed(&self.shared, &msg);
        for (_, ack) in rx.try_iter() {
            ack.fail(&msg);
        }
        msg
    }

    /// Signs one batch, writes it as one frame and syncs it.
    fn commit(&mut self, jobs: &mut Vec<Job>) -> Result<Durable, String> {
        let start = self.next;
        let (entries, acks): (Vec<Arc<[u8]>>, Vec<Ack>) = jobs.drain(..).unzip();
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let fail_all = |acks: Vec<Ack>, msg: String| {
            for ack in acks {
                ack.fail(&msg);
            }
            msg
        };
        // Signing before the sync is safe: receipts are handed out only after it.
        let receipts = match sign_batch(&self.shared.signer(), &self.shared.origin, start, &leaves) {
            Ok(r) => r,
            Err(e) => return Err(fail_all(acks, format!("cannot sign batch: {e}"))),
        };
        let root = receipts.first().map_or(Hash::EMPTY_ROOT, |r| r.batch_root);
        let frame = wal::encode(start, &entries, &root);
        if let Err(e) = self.shared.store.append_frame(&frame) {
            return Err(fail_all(acks, format!("cannot write the write-ahead log: {e}")));
        }
        self.next += leaves.len() as u64;
        Ok(Durable { entries, leaves, acks, receipts })
    }
}

/// Marks the log failed, so every later submit is refused.
fn fail_closed(shared: &Shared, msg: &str) {
    tracing::error!(error = %msg, "transparency log failed; refusing all further entries");
    shared.failed.store(true, Ordering::Release);
}

/// The publishing stage: owns the tree. It appends durable batches, writes the tiles they
/// changed, makes them visible to readers and only then answers the batch, so a receipt's
/// entry can be read and proved as soon as the receipt arrives. Batches that queued up while
/// it worked are taken together, so each open tile is rewritten once for all of them.
struct Publisher {
    builder: Builder,
    /// Full tiles, to the tile writer.
    tiles: SyncSender<FullTiles>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// At the writer's stop: the last checkpoint, and the open tiles written to storage.
    fn finish(&mut self, checkpoints: &SyncSender<(u64, Hash)>, result: Result<(), String>) -> Result<(), String> {
        // The last checkpoint covers everything published, even after a tile write failed.
        let _ = checkpoints.send((self.builder.size(), self.builder.root()));
        // The open tiles go to disk too at a clean stop: evidence, at the next open, that
        // the last frame was acknowledged (see the crate docs).
        let partials = self.builder.take_partials().map_err(|e| format!("cannot build tiles: {e}"));
        result.and(partials.and_then(|p| self.write(&p)))
    }

    fn write(&self, tiles: &[(Tile, Vec<u8>)]) -> Result<(), String> {
        for (tile, data) in tiles {
            self.shared.store.write_tile(tile, data).map_err(|e| format!("cannot write tile `{tile}`: {e}"))?;
        }
        Ok(())
    }

    fn publish(&mut self, batches: &mut Vec<Durable>) -> Result<(), String> {
        let mut tiles = Vec::new();
        let mut answers = Vec::with_capacity(batches.len());
        let mut built = Ok(());
        for d in batches.drain(..) {
            if built.is_ok() {
                built = self.builder.append(d.entries, &d.leaves).map(|full| tiles.extend(full));
            }
            answers.push((d.acks, d.receipts));
        }
        let written = built.map_err(|e| format!("cannot build tiles: {e}")).and_then(|()| {
            if tiles.is_empty() {
                return Ok(());
            }
            let tiles: FullTiles = tiles.into_iter().map(|(t, d)| (t, Arc::new(d))).collect();
            self.shared.unwritten.lock().unwrap_or_else(PoisonError::into_inner).extend(tiles.iter().cloned());
            self.tiles.send(tiles).map_err(|_| "the tile writer stopped".to_owned())
        });
        if written.is_ok() {
            self.shared.published.write().unwrap_or_else(PoisonError::into_inner).open =
                Arc::new(self.builder.open_tiles());
        }
        // The entries are durable in the write-ahead file: their receipts hold even if the
        // tiles could not be written (they are rebuilt from it at the next open).
        for (acks, receipts) in answers {
            for (ack, receipt) in acks.into_iter().zip(receipts) {
                ack.ok(receipt);
            }
        }
        written
    }
}

/// The tile stage: creates the files of full tiles, which on a busy filesystem costs more
/// than everything else publishing does, then drops them from memory.
fn write_tiles(shared: &Shared, rx: &Receiver<FullTiles>) -> Result<(), String> {
    while let Ok(tiles) = rx.recv() {
        for (tile, data) in &tiles {
            if let Err(e) = shared.store.write_tile(tile, data) {
                let msg = format!("cannot write tile `{tile}`: {e}");
                fail_closed(shared, &msg);
                return Err(msg);
            }
            shared.unwritten.lock().unwrap_or_else(PoisonError::into_inner).remove(tile);
        }
    }
    Ok(())
}

/// The checkpoint stage: signs the tree heads the publisher sends and writes each durably,
/// off the path of appends, so its syncs never hold up a batch.
struct Checkpointer {
    /// Size of the last checkpoint written.
    written: Option<u64>,
    shared: Arc<Shared>,
}

impl Checkpointer {
    fn run(&mut self, rx: &Receiver<(u64, Hash)>) -> Result<(), String> {
        while let Ok(head) = rx.recv() {
            let (size, root) = rx.try_iter().last().unwrap_or(head);
            if let Err(msg) = self.checkpoint(size, root) {
                fail_closed(&self.shared, &msg);
                return Err(msg);
            }
        }
        Ok(())
    }

    /// Signs and durably writes a checkpoint for the tree of `size` with `root`, unless that
    /// is the one already written. Ed25519 signatures are deterministic, so re-signing an
    /// unchanged tree (at open) gives the stored text again.
    fn checkpoint(&mut self, size: u64, root: Hash) -> Result<(), String> {
        let have_text = !self.shared.published.read().unwrap_or_else(PoisonError::into_inner).checkpoint.is_empty();
        if self.written == Some(size) && have_text {
            return Ok(());
        }
        let text = Checkpoint::new(self.shared.origin.clone(), size, root)
            .sign(&self.shared.signer())
            .map_err(|e| format!("cannot sign checkpoint: {e}"))?
            .to_string();
        if self.written != Some(size) {
            self.shared.store.write_checkpoint(text.as_bytes()).map_err(|e| {
                format!("cannot write `{}`: {e}", self.shared.store.location(Item::Checkpoint).display())
            })?;
            self.written = Some(size);
        }
        self.shared.published.write().unwrap_or_else(PoisonError::into_inner).checkpoint = text;
        Ok(())
    }
}
