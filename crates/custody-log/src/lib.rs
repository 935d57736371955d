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
//! Everything lives in `<data dir>/log/`:
//!
//! ```text
//! entries.wal                 the write-ahead file: one checked frame per batch (the truth)
//! tile/<L>/<N>[.p/<W>]        hash tiles           } derived from entries.wal, served as is;
//! tile/entries/<N>[.p/<W>]    entry bundles        } checked against it at every open
//! checkpoint                  the latest signed checkpoint (a signed note)
//! key                         the log's Ed25519 note key, `PRIVATE+KEY+<origin>+…`, mode 0600
//! ```
//!
//! ## Group commit
//!
//! One writer thread owns the tree. It blocks for the first queued entry, gathers more until
//! [`LogConfig::max_batch`] entries or [`LogConfig::max_delay`] have passed, signs the batch
//! once ([`custody_tlog::sign_batch`]: one Ed25519 signature over the batch root, each entry's
//! receipt carries its path inside the batch), writes the batch as one frame to `entries.wal`
//! in one `write`, calls `fdatasync` once, then writes the tiles the batch changed and only
//! then answers each entry with its receipt. Throughput grows with concurrency while latency
//! stays about one sync plus the delay. Every [`LogConfig::checkpoint_interval`] (and at
//! [`Log::close`]) a new checkpoint is signed if the tree grew, and written durably (temporary
//! file, fsync, rename, directory fsync).
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
//! - Tiles and entry bundles are not fsynced: they are derived from the frames. At open every
//!   one is recomputed from `entries.wal`; a missing one is written, one that differs is
//!   reported as tampering, naming its path. The stored checkpoint must verify under the
//!   log's key and match the root of the tree at its size.
//!
//! If a write or sync fails, the log fails closed for good: the batch in flight and every
//! later submit fail, and an operator must look at the disk.

mod tiles;
mod wal;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use custody_audit::{AuditError, AuditReceipt, AuditSink, Pending};
use custody_core::LogEntry;
use custody_tlog::note::NoteSigner;
use custody_tlog::tile::{MAX_ENTRY_SIZE, TILE_WIDTH, TileHashReader};
use custody_tlog::{Checkpoint, Ed25519Signer, Ed25519Verifier, Hash, Receipt, Tile, TileKind, leaf_hash, sign_batch};
use tokio::sync::oneshot;

use crate::tiles::{Builder, TileStore, write_atomic};

/// Where the log lives and how it batches.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The data dir; the log lives in its `log/` subdirectory.
    pub dir: PathBuf,
    /// The log's origin (checkpoint first line and key name), e.g. `custody.example/log`.
    pub origin: String,
    /// Most entries per batch (one write, one sync, one signature).
    pub max_batch: usize,
    /// Longest a batch waits for more entries after its first arrived.
    pub max_delay: Duration,
    /// How often a new checkpoint is signed while the tree grows.
    pub checkpoint_interval: Duration,
    /// Most entries waiting for the writer before submits are refused as overloaded.
    pub queue: usize,
}

impl LogConfig {
    /// The defaults: batches of up to 4096 entries or 1 ms, a checkpoint a second, a queue of
    /// 65,536.
    pub fn new(dir: impl Into<PathBuf>, origin: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            origin: origin.into(),
            max_batch: 4096,
            max_delay: Duration::from_millis(1),
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
    /// check the leaf hash against what was logged about its request.
    Audit(oneshot::Sender<Result<AuditReceipt, AuditError>>, String),
}

impl Ack {
    fn ok(self, receipt: Receipt) {
        match self {
            Ack::Raw(tx) => {
                let _ = tx.send(Ok(receipt));
            }
            Ack::Audit(tx, entry) => {
                let answer = serde_json::to_value(&receipt)
                    .map(|log| AuditReceipt {
                        index: receipt.index,
                        detail: serde_json::json!({ "log": log, "entry": entry }),
                    })
                    .map_err(|e| AuditError::Failed(e.to_string()));
                let _ = tx.send(answer);
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

type Job = (Vec<u8>, Ack);

/// What readers see: the tree as far as its tiles are written, and the latest checkpoint.
#[derive(Debug)]
struct Published {
    size: u64,
    checkpoint: String,
}

#[derive(Debug)]
struct Shared {
    failed: AtomicBool,
    published: RwLock<Published>,
    store: TileStore,
    verifier: Ed25519Verifier,
    origin: String,
}

/// The transparency log. See the [crate docs](crate).
#[derive(Debug)]
pub struct Log {
    tx: Option<SyncSender<Job>>,
    writer: Option<JoinHandle<Result<(), String>>>,
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
        let signer = load_or_create_key(&dir.join("key"), &cfg.origin)?;
        let store = TileStore::new(&dir);
        let recovered = recover(&dir, &store, &signer, &cfg.origin)?;
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            published: RwLock::new(Published { size: recovered.builder.size(), checkpoint: String::new() }),
            store,
            verifier: signer.verifier(),
            origin: cfg.origin.clone(),
        });
        let mut writer = Writer {
            wal: recovered.wal,
            builder: recovered.builder,
            signer,
            checkpoint_path: dir.join("checkpoint"),
            checkpointed: recovered.checkpoint,
            shared: shared.clone(),
        };
        writer.checkpoint().map_err(LogError::Failed)?;
        let (tx, rx) = mpsc::sync_channel::<Job>(cfg.queue);
        let handle = thread::Builder::new()
            .name("custody-log-writer".into())
            .spawn(move || writer.run(&rx, cfg.max_batch, cfg.max_delay, cfg.checkpoint_interval))
            .map_err(io_err("start the writer for", &dir))?;
        Ok(Log { tx: Some(tx), writer: Some(handle), shared })
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
        self.send((entry, Ack::Raw(tx)))?;
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
        self.shared.published.read().unwrap_or_else(PoisonError::into_inner).size
    }

    /// The latest signed checkpoint (note text with its signature line).
    pub fn checkpoint_text(&self) -> String {
        self.shared.published.read().unwrap_or_else(PoisonError::into_inner).checkpoint.clone()
    }

    /// The verifier of the log's key, for receipts and checkpoints.
    pub fn verifier(&self) -> &Ed25519Verifier {
        &self.shared.verifier
    }

    /// The log's vkey, `<origin>+<key id>+<base64 key>`.
    pub fn verifier_key(&self) -> String {
        self.shared.verifier.verifier_key()
    }

    /// The contents of a tile or entry bundle at its C2SP path (`tile/0/x001/067.p/12`,
    /// `tile/entries/000`), or `None` if the log has no such tile.
    ///
    /// # Errors
    /// [`LogError::BadPath`] for a path that is not canonical; [`LogError::Io`].
    pub fn read_tile(&self, path: &str) -> Result<Option<Vec<u8>>, LogError> {
        let tile = Tile::parse_path(path).map_err(LogError::BadPath)?;
        let file = self.shared.store.path(&tile);
        self.shared.store.read(&tile).map_err(io_err("read", &file))
    }

    /// The RFC 6962 inclusion proof of entry `index` in the tree of `size`.
    ///
    /// # Errors
    /// [`LogError::SizeOutOfRange`] past the log's size; [`LogError::Proof`] if `index` is
    /// not below `size` or a tile cannot be read.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        let reader = self.reader(size)?;
        Ok(custody_tlog::prove_record(size, index, &reader)?)
    }

    /// The RFC 6962 consistency proof from the tree of `old` to the tree of `new`.
    ///
    /// # Errors
    /// [`LogError::SizeOutOfRange`] past the log's size; [`LogError::Proof`] unless
    /// `1 <= old <= new` or if a tile cannot be read.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        let reader = self.reader(new)?;
        Ok(custody_tlog::prove_tree(new, old, &reader)?)
    }

    /// The root hash of the tree of `size`.
    ///
    /// # Errors
    /// As [`Log::prove_inclusion`].
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        let reader = self.reader(size)?;
        Ok(custody_tlog::tree_hash(size, &reader)?)
    }

    fn reader(&self, size: u64) -> Result<TileHashReader<'_, TileStore>, LogError> {
        let published = self.size();
        if size > published {
            return Err(LogError::SizeOutOfRange { size, published });
        }
        Ok(TileHashReader::new(size, &self.shared.store)?)
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
        match self.writer.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(msg))) => Err(LogError::Failed(msg)),
            Some(Err(_)) => Err(LogError::Failed("the log writer panicked".into())),
        }
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
        if entry.len() > MAX_ENTRY_SIZE {
            return Err(AuditError::Failed(LogError::EntryTooLarge(entry.len()).to_string()));
        }
        let (tx, rx) = oneshot::channel();
        let text = String::from_utf8_lossy(&entry).into_owned();
        self.send((entry, Ack::Audit(tx, text))).map_err(|e| match e {
            LogError::Overloaded => AuditError::Overloaded,
            LogError::Closed => AuditError::Closed,
            other => AuditError::Failed(other.to_string()),
        })?;
        Ok(Pending::new(rx))
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))
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
    wal: File,
    builder: Builder,
    /// The size of the stored checkpoint, if there is a valid one.
    checkpoint: Option<u64>,
}

/// Replays `entries.wal`, checks every tile, bundle and the checkpoint against it, cuts a
/// torn tail, and writes missing tiles. See the crate docs for the argument.
fn recover(dir: &Path, store: &TileStore, signer: &Ed25519Signer, origin: &str) -> Result<Recovered, LogError> {
    let wal_path = dir.join("entries.wal");
    let mut wal =
        OpenOptions::new().create(true).read(true).append(true).open(&wal_path).map_err(io_err("open", &wal_path))?;
    sync_dir(dir)?;

    let checkpoint_path = dir.join("checkpoint");
    let stored = match fs::read(&checkpoint_path) {
        Ok(bytes) => {
            let (c, _) = Checkpoint::open(&bytes, origin, &[&signer.verifier()])
                .map_err(|e| LogError::Tampered { path: checkpoint_path.clone(), detail: e.to_string() })?;
            Some(c)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", &checkpoint_path)(e)),
    };
    let mut checkpoint_root = stored.as_ref().filter(|c| c.size == 0).map(|_| Hash::EMPTY_ROOT);

    let mut builder = Builder::default();
    let mut reader = BufReader::with_capacity(1 << 20, wal.try_clone().map_err(io_err("open", &wal_path))?);
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
                for (tile, data) in builder.append(frame.entries, &frame.leaves)? {
                    check_or_write(store, &tile, &data)?;
                }
                offset += frame.len;
            }
        }
    };
    drop(reader);

    if let Some(why) = torn {
        let mut tail = Vec::new();
        wal.seek(SeekFrom::Start(offset))
            .and_then(|_| wal.read_to_end(&mut tail))
            .map_err(io_err("read", &wal_path))?;
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
        let len = wal.metadata().map_err(io_err("stat", &wal_path))?.len();
        tracing::warn!(path = %wal_path.display(), offset, cut = len - offset, why, "cutting torn tail of the write-ahead log");
        wal.set_len(offset).and_then(|()| wal.sync_all()).map_err(io_err("truncate", &wal_path))?;
    }
    // The open tiles after the checks above, which showed they are absent or right.
    for level in 0..builder.levels() {
        let width = (builder.count(TileKind::Hashes { level }) % u64::from(TILE_WIDTH)) as usize;
        if width > 0 {
            let (tile, data) = builder.open_hash_tile(level, width)?;
            check_or_write(store, &tile, &data)?;
        }
    }
    let width = (builder.size() % u64::from(TILE_WIDTH)) as usize;
    if width > 0 {
        let (tile, data) = builder.open_bundle(width)?;
        check_or_write(store, &tile, &data)?;
    }
    // Nothing changed since: the open tiles were just written.
    builder.take_partials()?;
    wal.seek(SeekFrom::End(0)).map_err(io_err("seek", &wal_path))?;
    Ok(Recovered { wal, builder, checkpoint: stored.map(|c| c.size) })
}

/// Compares a stored tile with what the log implies, writing it if missing.
fn check_or_write(store: &TileStore, tile: &Tile, data: &[u8]) -> Result<(), LogError> {
    let path = store.path(tile);
    match store.read_exact(tile).map_err(io_err("read", &path))? {
        Some(stored) if stored == data => {}
        Some(_) => return Err(LogError::Tampered { path, detail: "content differs from the entries".into() }),
        None => store.write(tile, data).map_err(io_err("write", &path))?,
    }
    if tile.is_full() {
        // A crash between writing a full tile and removing its partials leaves them behind.
        let partials = store.partial_dir(tile);
        if partials.exists() {
            fs::remove_dir_all(&partials).map_err(io_err("remove", &partials))?;
        }
    }
    Ok(())
}

/// Checks the partial versions of each level's rightmost tile against the log, and that no
/// tile or bundle lies beyond the log (evidence that an acknowledged frame was lost).
fn check_open_tiles(store: &TileStore, builder: &Builder) -> Result<(), LogError> {
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
            let path = store.path(&beyond);
            let partials = store.partial_widths(&beyond).map_err(io_err("read", &path))?;
            let exists = path.exists() || (beyond == next && !partials.is_empty());
            if exists {
                return Err(LogError::Tampered {
                    path,
                    detail: format!("it holds data beyond the log's {} entries", builder.size()),
                });
            }
        }
        for w in store.partial_widths(&full).map_err(io_err("read", &store.partial_dir(&full)))? {
            let partial = tile(index, w).map_err(custody_tlog::Error::from)?;
            let path = store.path(&partial);
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

/// The writer thread's state: the only owner of the write-ahead file and the tree.
struct Writer {
    wal: File,
    builder: Builder,
    signer: Ed25519Signer,
    checkpoint_path: PathBuf,
    /// Size of the last checkpoint written.
    checkpointed: Option<u64>,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(
        &mut self,
        rx: &Receiver<Job>,
        max_batch: usize,
        max_delay: Duration,
        interval: Duration,
    ) -> Result<(), String> {
        let mut next_checkpoint = Instant::now() + interval;
        let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
        loop {
            let first = match rx.recv_timeout(next_checkpoint.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                jobs.push(first);
                let deadline = Instant::now() + max_delay;
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok(job) => {
                            jobs.push(job);
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) => {}
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                if let Err(msg) = self.commit(&mut jobs) {
                    return Err(self.fail(rx, msg));
                }
            }
            if Instant::now() >= next_checkpoint {
                if let Err(msg) = self.checkpoint() {
                    return Err(self.fail(rx, msg));
                }
                next_checkpoint = Instant::now() + interval;
            }
        }
        self.checkpoint()
    }

    /// Fails closed: nothing more is accepted, and everything queued is refused.
    fn fail(&self, rx: &Receiver<Job>, msg: String) -> String {
        tracing::error!(error = %msg, "transparency log write failed; refusing all further entries");
        self.shared.failed.store(true, Ordering::Release);
        for (_, ack) in rx.try_iter() {
            ack.fail(&msg);
        }
        msg
    }

    /// Makes one batch durable, then publishes its tiles and answers it.
    fn commit(&mut self, jobs: &mut Vec<Job>) -> Result<(), String> {
        let start = self.builder.size();
        let (entries, acks): (Vec<Vec<u8>>, Vec<Ack>) = jobs.drain(..).unzip();
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let fail_all = |acks: Vec<Ack>, msg: String| {
            for ack in acks {
                ack.fail(&msg);
            }
            msg
        };
        // Signing before the sync is safe: receipts are handed out only after it.
        let receipts = match sign_batch(&self.signer, &self.shared.origin, start, &leaves) {
            Ok(r) => r,
            Err(e) => return Err(fail_all(acks, format!("cannot sign batch: {e}"))),
        };
        let root = receipts.first().map_or(Hash::EMPTY_ROOT, |r| r.batch_root);
        let frame = wal::encode(start, &entries, &root);
        if let Err(e) = self.wal.write_all(&frame).and_then(|()| self.wal.sync_data()) {
            return Err(fail_all(acks, format!("cannot write the write-ahead log: {e}")));
        }
        // Durable from here on: the receipts are true even if publishing tiles fails.
        let published = self.publish(entries, &leaves);
        if published.is_ok() {
            self.shared.published.write().unwrap_or_else(PoisonError::into_inner).size = self.builder.size();
        }
        for (ack, receipt) in acks.into_iter().zip(receipts) {
            ack.ok(receipt);
        }
        published
    }

    fn publish(&mut self, entries: Vec<Vec<u8>>, leaves: &[Hash]) -> Result<(), String> {
        let mut tiles = self.builder.append(entries, leaves).map_err(|e| format!("cannot build tiles: {e}"))?;
        tiles.extend(self.builder.take_partials().map_err(|e| format!("cannot build tiles: {e}"))?);
        for (tile, data) in &tiles {
            self.shared.store.write(tile, data).map_err(|e| format!("cannot write tile `{tile}`: {e}"))?;
        }
        Ok(())
    }

    /// Signs and durably writes a checkpoint if the tree changed since the last one.
    /// Ed25519 signatures are deterministic, so re-signing an unchanged tree (at open) gives
    /// the stored text again.
    fn checkpoint(&mut self) -> Result<(), String> {
        let size = self.builder.size();
        let have_text = !self.shared.published.read().unwrap_or_else(PoisonError::into_inner).checkpoint.is_empty();
        if self.checkpointed == Some(size) && have_text {
            return Ok(());
        }
        let text = Checkpoint::new(self.shared.origin.clone(), size, self.builder.root())
            .sign(&self.signer)
            .map_err(|e| format!("cannot sign checkpoint: {e}"))?
            .to_string();
        if self.checkpointed != Some(size) {
            write_atomic(&self.checkpoint_path, text.as_bytes(), true)
                .map_err(|e| format!("cannot write `{}`: {e}", self.checkpoint_path.display()))?;
            self.checkpointed = Some(size);
        }
        self.shared.published.write().unwrap_or_else(PoisonError::into_inner).checkpoint = text;
        Ok(())
    }
}
