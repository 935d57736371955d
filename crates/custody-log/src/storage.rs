//! Where the log keeps its bytes: [`LogStorage`], and [`FileStorage`], the embedded default.
//!
//! The log itself decides what is durable when; a storage only has to keep three things with
//! the guarantees each method states: the write-ahead frames (the truth: appended, durable on
//! return, cut only when the log says so), the tiles derived from them (overwritable, need not
//! be durable), and the latest checkpoint (replaced durably and atomically). That is small
//! enough for a database to implement; the PostgreSQL backend does it with three tables.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use custody_tlog::tile::TILE_WIDTH;
use custody_tlog::{Tile, TileKind};

use crate::tiles::cut;

/// One thing a storage keeps, to name it in errors.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// The write-ahead frames.
    Frames,
    /// A tile or entry bundle.
    Tile(&'a Tile),
    /// The partial versions of a tile.
    Partials(&'a Tile),
    /// The latest checkpoint.
    Checkpoint,
}

/// The log's storage. Methods take `&self`: the writer, publisher, tile writer and readers
/// share one storage from their own threads.
pub trait LogStorage: Send + Sync + fmt::Debug {
    /// Where `item` lives, for error messages (a file path, or a table and key).
    fn location(&self, item: Item<'_>) -> PathBuf;

    /// Appends `frame` after the stored frames; on return it is durable.
    ///
    /// # Errors
    /// Any I/O failure; the log then fails closed.
    fn append_frame(&self, frame: &[u8]) -> io::Result<()>;

    /// A reader of the stored frames from byte `offset` to their end.
    ///
    /// # Errors
    /// Any I/O failure.
    fn read_frames(&self, offset: u64) -> io::Result<Box<dyn Read + Send + '_>>;

    /// The stored frames' length in bytes.
    ///
    /// # Errors
    /// Any I/O failure.
    fn frames_len(&self) -> io::Result<u64>;

    /// Cuts the stored frames to `len` bytes; on return the cut is durable.
    ///
    /// # Errors
    /// Any I/O failure.
    fn truncate_frames(&self, len: u64) -> io::Result<()>;

    /// The stored bytes of exactly `tile` (this width), if stored.
    ///
    /// # Errors
    /// Any I/O failure.
    fn read_tile(&self, tile: &Tile) -> io::Result<Option<Vec<u8>>>;

    /// Stores `tile`, replacing what was there; need not be durable or atomic (the log
    /// publishes a tile only after this returns and rebuilds torn ones at open). Storing a
    /// full tile removes its partial versions.
    ///
    /// # Errors
    /// Any I/O failure.
    fn write_tile(&self, tile: &Tile, data: &[u8]) -> io::Result<()>;

    /// The widths of the partial versions stored for the tile at `tile`'s coordinates.
    ///
    /// # Errors
    /// Any I/O failure.
    fn partial_widths(&self, tile: &Tile) -> io::Result<Vec<u16>>;

    /// Removes the partial versions of the tile at `tile`'s coordinates.
    ///
    /// # Errors
    /// Any I/O failure.
    fn remove_partials(&self, tile: &Tile) -> io::Result<()>;

    /// The stored checkpoint, if any.
    ///
    /// # Errors
    /// Any I/O failure.
    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>>;

    /// Replaces the stored checkpoint; on return the new one is durable, and a crash at any
    /// point leaves either the old or the new one.
    ///
    /// # Errors
    /// Any I/O failure.
    fn write_checkpoint(&self, text: &[u8]) -> io::Result<()>;
}

/// The bytes of `tile` from `storage`. A partial tile that is not stored is cut from a wider
/// version of the same tile (its prefix): the full one, or a wider partial.
pub(crate) fn read_or_cut(storage: &dyn LogStorage, tile: &Tile) -> io::Result<Option<Vec<u8>>> {
    if let Some(b) = storage.read_tile(tile)? {
        return Ok(Some(b));
    }
    if tile.is_full() {
        return Ok(None);
    }
    let wider = storage.partial_widths(tile)?.into_iter().filter(|&w| w > tile.width()).chain([TILE_WIDTH]);
    for w in wider {
        let from = match tile.kind() {
            TileKind::Hashes { level } => Tile::hashes(level, tile.index(), w),
            TileKind::Entries => Tile::entries(tile.index(), w),
        };
        let Ok(from) = from else { continue };
        let Some(data) = storage.read_tile(&from)? else { continue };
        return cut(tile, &from, &data).map(Some);
    }
    Ok(None)
}

/// Files under `<data dir>/log/`: `entries.wal`, `tile/…` at the C2SP paths, `checkpoint`.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    wal: Mutex<File>,
}

impl FileStorage {
    /// Opens (creating) the files in `dir`.
    ///
    /// # Errors
    /// Any I/O failure.
    pub fn open(dir: &Path) -> io::Result<FileStorage> {
        fs::create_dir_all(dir)?;
        let wal = OpenOptions::new().create(true).read(true).append(true).open(dir.join("entries.wal"))?;
        File::open(dir)?.sync_all()?;
        Ok(FileStorage { dir: dir.to_path_buf(), wal: Mutex::new(wal) })
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, File> {
        self.wal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn partial_dir(&self, tile: &Tile) -> PathBuf {
        let mut p = self.dir.join(tile.full().path()).into_os_string();
        p.push(".p");
        PathBuf::from(p)
    }
}

impl LogStorage for FileStorage {
    fn location(&self, item: Item<'_>) -> PathBuf {
        match item {
            Item::Frames => self.dir.join("entries.wal"),
            Item::Tile(t) => self.dir.join(t.path()),
            Item::Partials(t) => self.partial_dir(t),
            Item::Checkpoint => self.dir.join("checkpoint"),
        }
    }

    fn append_frame(&self, frame: &[u8]) -> io::Result<()> {
        let mut wal = self.wal();
        wal.write_all(frame)?;
        wal.sync_data()
    }

    fn read_frames(&self, offset: u64) -> io::Result<Box<dyn Read + Send + '_>> {
        let mut f = self.wal().try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    fn frames_len(&self) -> io::Result<u64> {
        Ok(self.wal().metadata()?.len())
    }

    fn truncate_frames(&self, len: u64) -> io::Result<()> {
        let wal = self.wal();
        wal.set_len(len)?;
        wal.sync_all()
    }

    fn read_tile(&self, tile: &Tile) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(tile.path())) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// In place, without a temporary file and rename: file creation is the costliest part
    /// of publishing, and a crash mid-write leaves a prefix that the next open rewrites.
    fn write_tile(&self, tile: &Tile, data: &[u8]) -> io::Result<()> {
        let path = self.dir.join(tile.path());
        match fs::write(&path, data) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path.parent().ok_or_else(|| io::Error::other("tile path has no parent"))?)?;
                fs::write(&path, data)?;
            }
            other => other?,
        }
        if tile.is_full()
            && let Err(e) = self.remove_partials(tile)
        {
            tracing::warn!(tile = %tile, error = %e, "cannot remove superseded partial tiles");
        }
        Ok(())
    }

    fn partial_widths(&self, tile: &Tile) -> io::Result<Vec<u16>> {
        let read = match fs::read_dir(self.partial_dir(tile)) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut widths = Vec::new();
        for entry in read {
            let name = entry?.file_name();
            // Temporary files from an interrupted write are not tiles.
            if let Some(w) = name.to_str().and_then(|n| n.parse::<u16>().ok()) {
                widths.push(w);
            }
        }
        widths.sort_unstable();
        Ok(widths)
    }

    fn remove_partials(&self, tile: &Tile) -> io::Result<()> {
        match fs::remove_dir_all(self.partial_dir(tile)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join("checkpoint")) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Temporary file, fsync, rename, directory fsync.
    fn write_checkpoint(&self, text: &[u8]) -> io::Result<()> {
        let path = self.dir.join("checkpoint");
        let tmp = self.dir.join("checkpoint.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}
