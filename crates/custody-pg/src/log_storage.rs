//! The transparency log's storage in schema `custody_log`.
//!
//! Frames are one row per appended frame keyed by its byte offset in the stream (`start`), so
//! `read_frames(offset)` finds the row holding `offset` with one index probe and streams from
//! there in chunks; a second writer appending at an offset already taken fails on the primary
//! key instead of interleaving. Tiles are rows keyed by (level, index, width), entry bundles
//! at level -1. The checkpoint is a single row, replaced in one transaction.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use custody_log::{Item, LogStorage};
use custody_tlog::tile::TILE_WIDTH;
use custody_tlog::{Tile, TileKind};

use crate::PgError;
use crate::db::{self, Db};

/// [`LogStorage`] on PostgreSQL.
#[derive(Debug)]
pub struct PgLogStorage {
    db: Db,
    /// The frames' length, once known: this node is the log's only writer.
    len: Mutex<Option<u64>>,
    /// The sequencer epoch this node writes under, if it was elected: every write first checks
    /// it under a share lock on `custody_log.leader`, so a deposed node's writes fail.
    fence: Option<i64>,
}

/// The check every fenced write makes first, in the write's own transaction.
const FENCE: &str = "SELECT 1 FROM custody_log.leader WHERE id = 0 AND epoch = $1 FOR SHARE";

fn deposed(epoch: i64) -> PgError {
    PgError::Deposed(epoch)
}

/// Fails unless `epoch` is still the sequencer's, holding the leader row until `tx` ends.
async fn check_fence(tx: &tokio_postgres::Transaction<'_>, fence: Option<i64>) -> Result<(), PgError> {
    if let Some(epoch) = fence
        && tx.query_opt(FENCE, &[&epoch]).await?.is_none()
    {
        return Err(deposed(epoch));
    }
    Ok(())
}

/// Rows fetched per round trip while streaming frames.
const FRAME_ROWS: i64 = 32;

fn coords(tile: &Tile) -> (i16, i64, i16) {
    let level = match tile.kind() {
        TileKind::Hashes { level } => i16::from(level),
        TileKind::Entries => -1,
    };
    (level, i64::try_from(tile.index()).unwrap_or(i64::MAX), i16::try_from(tile.width()).unwrap_or(i16::MAX))
}

fn full_width() -> i16 {
    i16::try_from(TILE_WIDTH).unwrap_or(i16::MAX)
}

fn offset(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::other(format!("offset {v} is out of range")))
}

impl PgLogStorage {
    pub(crate) fn on(db: Db) -> Result<PgLogStorage, PgError> {
        let schema = db::LOG;
        let db = Db::connect_existing(db, schema)?;
        Ok(PgLogStorage { db, len: Mutex::new(None), fence: None })
    }

    /// This storage, writing only while `epoch` is the sequencer's (see [`crate::Lease`]).
    #[must_use]
    pub fn fenced(mut self, epoch: i64) -> PgLogStorage {
        self.fence = Some(epoch);
        self
    }

    fn cached_len(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.len.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stored_len(&self) -> Result<u64, PgError> {
        let len = self.db.run(|pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_opt("SELECT start + length(data) FROM custody_log.frames ORDER BY start DESC LIMIT 1", &[])
                .await?;
            Ok(row.map(|r| r.get::<_, i64>(0)).unwrap_or(0))
        })?;
        u64::try_from(len).map_err(|_| PgError::Corrupt("custody_log.frames".into()))
    }

    /// Up to [`FRAME_ROWS`] frames from the one holding byte `from`, as (start, bytes).
    fn chunk(&self, from: i64) -> Result<Vec<(i64, Vec<u8>)>, PgError> {
        self.db.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached(
                    "SELECT start, data FROM custody_log.frames
                     WHERE start >= COALESCE((SELECT max(start) FROM custody_log.frames WHERE start <= $1), 0)
                     ORDER BY start LIMIT $2",
                )
                .await?;
            let rows = client.query(&st, &[&from, &FRAME_ROWS]).await?;
            Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1))).collect())
        })
    }
}

/// Streams the frames from an offset, fetching rows as the log's recovery reads.
struct FrameReader<'a> {
    storage: &'a PgLogStorage,
    pos: i64,
    buf: Vec<u8>,
    at: usize,
    done: bool,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.buf.len() && !self.done {
            self.buf.clear();
            self.at = 0;
            let rows = self.storage.chunk(self.pos)?;
            if rows.is_empty() {
                self.done = true;
            }
            for (start, data) in rows {
                let end = start + i64::try_from(data.len()).unwrap_or(i64::MAX);
                if end <= self.pos {
                    continue;
                }
                if start > self.pos {
                    return Err(io::Error::other(format!("custody_log.frames has a gap at byte {}", self.pos)));
                }
                let skip = usize::try_from(self.pos - start).unwrap_or(usize::MAX);
                self.buf.extend_from_slice(data.get(skip..).unwrap_or_default());
                self.pos = end;
            }
            if self.buf.is_empty() {
                self.done = true;
            }
        }
        let avail = self.buf.get(self.at..).unwrap_or_default();
        let n = avail.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), avail.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.at += n;
        Ok(n)
    }
}

impl LogStorage for PgLogStorage {
    fn location(&self, item: Item<'_>) -> PathBuf {
        let db = &self.db.name;
        PathBuf::from(match item {
            Item::Frames => format!("postgres:{db}/custody_log.frames"),
            Item::Tile(t) => format!("postgres:{db}/custody_log.tiles/{}", t.path()),
            Item::Partials(t) => format!("postgres:{db}/custody_log.tiles/{}.p", t.full().path()),
            Item::Checkpoint => format!("postgres:{db}/custody_log.checkpoint"),
        })
    }

    fn append_frame(&self, frame: &[u8]) -> io::Result<()> {
        let mut len = self.cached_len();
        let start = match *len {
            Some(l) => l,
            None => self.stored_len()?,
        };
        let (at, data, fence) = (offset(start)?, frame.to_vec(), self.fence);
        self.db.run(move |pool| async move {
            let client = pool.get().await?;
            match fence {
                None => {
                    let st =
                        client.prepare_cached("INSERT INTO custody_log.frames (start, data) VALUES ($1, $2)").await?;
                    client.execute(&st, &[&at, &data]).await?;
                }
                Some(epoch) => {
                    // One statement: the CTE's share lock waits for (and then sees) a takeover.
                    let st = client
                        .prepare_cached(
                            "WITH l AS (SELECT 1 FROM custody_log.leader WHERE id = 0 AND epoch = $3 FOR SHARE)
                             INSERT INTO custody_log.frames (start, data) SELECT $1, $2 FROM l",
                        )
                        .await?;
                    if client.execute(&st, &[&at, &data, &epoch]).await? == 0 {
                        return Err(deposed(epoch));
                    }
                }
            }
            Ok(())
        })?;
        *len = Some(start + frame.len() as u64);
        Ok(())
    }

    fn read_frames(&self, offset: u64) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(FrameReader { storage: self, pos: self::offset(offset)?, buf: Vec::new(), at: 0, done: false }))
    }

    fn frames_len(&self) -> io::Result<u64> {
        let len = self.stored_len()?;
        *self.cached_len() = Some(len);
        Ok(len)
    }

    fn truncate_frames(&self, len: u64) -> io::Result<()> {
        let mut cached = self.cached_len();
        let (cut, fence) = (offset(len)?, self.fence);
        self.db.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, fence).await?;
            tx.execute("DELETE FROM custody_log.frames WHERE start >= $1", &[&cut]).await?;
            tx.execute(
                "UPDATE custody_log.frames SET data = substring(data FROM 1 FOR ($1 - start)::int)
                 WHERE start < $1 AND start + length(data) > $1",
                &[&cut],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })?;
        *cached = Some(len);
        Ok(())
    }

    fn read_tile(&self, tile: &Tile) -> io::Result<Option<Vec<u8>>> {
        let (l, i, w) = coords(tile);
        Ok(self.db.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached("SELECT data FROM custody_log.tiles WHERE level = $1 AND idx = $2 AND width = $3")
                .await?;
            Ok(client.query_opt(&st, &[&l, &i, &w]).await?.map(|r| r.get::<_, Vec<u8>>(0)))
        })?)
    }

    fn write_tile(&self, tile: &Tile, data: &[u8]) -> io::Result<()> {
        let (l, i, w) = coords(tile);
        let (data, full) = (data.to_vec(), tile.is_full());
        let (fw, fence) = (full_width(), self.fence);
        Ok(self.db.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, fence).await?;
            let st = tx
                .prepare_cached(
                    "INSERT INTO custody_log.tiles (level, idx, width, data) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (level, idx, width) DO UPDATE SET data = excluded.data",
                )
                .await?;
            tx.execute(&st, &[&l, &i, &w, &data]).await?;
            if full {
                tx.execute(
                    "DELETE FROM custody_log.tiles WHERE level = $1 AND idx = $2 AND width < $3",
                    &[&l, &i, &fw],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })?)
    }

    fn partial_widths(&self, tile: &Tile) -> io::Result<Vec<u16>> {
        let (l, i, _) = coords(tile);
        let fw = full_width();
        let widths = self.db.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT width FROM custody_log.tiles WHERE level = $1 AND idx = $2 AND width < $3 ORDER BY width",
                    &[&l, &i, &fw],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get::<_, i16>(0)).collect::<Vec<_>>())
        })?;
        Ok(widths.into_iter().filter_map(|w| u16::try_from(w).ok()).collect())
    }

    fn remove_partials(&self, tile: &Tile) -> io::Result<()> {
        let (l, i, _) = coords(tile);
        let (fw, fence) = (full_width(), self.fence);
        Ok(self.db.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, fence).await?;
            tx.execute("DELETE FROM custody_log.tiles WHERE level = $1 AND idx = $2 AND width < $3", &[&l, &i, &fw])
                .await?;
            tx.commit().await?;
            Ok(())
        })?)
    }

    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.db.run(|pool| async move {
            let client = pool.get().await?;
            let row = client.query_opt("SELECT body FROM custody_log.checkpoint WHERE id = 0", &[]).await?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })?)
    }

    fn write_checkpoint(&self, text: &[u8]) -> io::Result<()> {
        let (body, fence) = (text.to_vec(), self.fence);
        Ok(self.db.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, fence).await?;
            tx.execute(
                "INSERT INTO custody_log.checkpoint (id, body) VALUES (0, $1)
                     ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&body],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })?)
    }
}
