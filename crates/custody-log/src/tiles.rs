//! The tree as tiles: building them as entries arrive, and keeping them as files.
//!
//! [`Builder`] holds the sequencer's whole in-memory state: the [`Frontier`] and, for each
//! tile level and for the entries, the contents of the rightmost tile that is not yet full.
//! Every stored hash a batch adds either lands in one of those or completes a full tile, so
//! tiles are produced without reading storage back.
//!
//! [`TileStore`] keeps full tiles as files at their C2SP paths under `log/`; [`OpenTiles`]
//! keeps the open ones in memory. Tiles are not fsynced: they are derived from the
//! write-ahead file and rebuilt or checked against it at every open.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use custody_tlog::tile::{TILE_HEIGHT, TILE_WIDTH, TileReader, decode_entry_bundle, encode_entry_bundle};
use custody_tlog::{Frontier, Hash, Tile, TileKind};

/// `TILE_WIDTH` as a `usize`.
const WIDTH: usize = TILE_WIDTH as usize;

/// The frontier plus the open (not yet full) tile of every level and of the entries.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    frontier: Frontier,
    /// `levels[k]`: hashes of the rightmost, not yet full tile at tile level `k`.
    levels: Vec<Vec<Hash>>,
    /// Entries of the rightmost, not yet full entry bundle.
    entries: Vec<Vec<u8>>,
    /// Which open tiles changed since [`Builder::take_partials`] last ran.
    dirty_levels: Vec<bool>,
    dirty_entries: bool,
}

impl Builder {
    pub(crate) fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub(crate) fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The frontier (for the root at a size inside a batch).
    pub(crate) fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Appends a batch and returns the tiles and bundles it filled, in order.
    ///
    /// # Errors
    /// As [`Frontier::extend`] and [`encode_entry_bundle`].
    pub(crate) fn append(
        &mut self,
        entries: Vec<Vec<u8>>,
        leaves: &[Hash],
    ) -> Result<Vec<(Tile, Vec<u8>)>, custody_tlog::Error> {
        let old = self.frontier.size();
        let appended = self.frontier.extend(leaves)?;
        let mut full = Vec::new();
        let mut hashes = appended.hashes.iter();
        for (i, entry) in (old..).zip(entries) {
            // Frontier::push stores the leaf then one hash per subtree leaf `i` completes:
            // tree levels 0..=trailing_ones(i), node `i >> level` at each.
            for level in 0..=i.trailing_ones() {
                let Some(hash) = hashes.next() else { break };
                if level % u32::from(TILE_HEIGHT) != 0 {
                    continue;
                }
                let k = (level / u32::from(TILE_HEIGHT)) as usize;
                if self.levels.len() <= k {
                    self.levels.resize(k + 1, Vec::new());
                    self.dirty_levels.resize(k + 1, false);
                }
                let (Some(open), Some(dirty)) = (self.levels.get_mut(k), self.dirty_levels.get_mut(k)) else {
                    continue;
                };
                open.push(*hash);
                *dirty = true;
                if open.len() == WIDTH {
                    let index = (i >> level) / u64::from(TILE_WIDTH);
                    let tile = Tile::hashes(k as u8, index, TILE_WIDTH)?;
                    full.push((tile, open.iter().flat_map(|h| h.0).collect()));
                    open.clear();
                }
            }
            self.entries.push(entry);
            self.dirty_entries = true;
            if self.entries.len() == WIDTH {
                let tile = Tile::entries(i / u64::from(TILE_WIDTH), TILE_WIDTH)?;
                full.push((tile, encode_entry_bundle(self.entries.iter().map(Vec::as_slice))?));
                self.entries.clear();
            }
        }
        Ok(full)
    }

    /// The open tiles that changed since the last call, as partial tiles.
    pub(crate) fn take_partials(&mut self) -> Result<Vec<(Tile, Vec<u8>)>, custody_tlog::Error> {
        let mut out = Vec::new();
        let dirty = std::mem::take(&mut self.dirty_levels);
        for (k, (open, dirty)) in self.levels.iter().zip(&dirty).enumerate() {
            if *dirty && !open.is_empty() {
                out.push(self.open_hash_tile(k as u8, open.len())?);
            }
        }
        self.dirty_levels = vec![false; dirty.len()];
        if std::mem::take(&mut self.dirty_entries) && !self.entries.is_empty() {
            out.push(self.open_bundle(self.entries.len())?);
        }
        Ok(out)
    }

    /// Items at tile level `level` (hash levels) or entries (`None`) in the current tree.
    pub(crate) fn count(&self, kind: TileKind) -> u64 {
        match kind {
            TileKind::Entries => self.size(),
            TileKind::Hashes { level } => {
                self.size().checked_shr(u32::from(level) * u32::from(TILE_HEIGHT)).unwrap_or(0)
            }
        }
    }

    /// The open hash tile of `level` cut to `width` hashes (`width` at most its length).
    pub(crate) fn open_hash_tile(&self, level: u8, width: usize) -> Result<(Tile, Vec<u8>), custody_tlog::Error> {
        let open = self.levels.get(usize::from(level)).map(Vec::as_slice).unwrap_or_default();
        let hashes = open.get(..width).unwrap_or_default();
        let index = self.count(TileKind::Hashes { level }) / u64::from(TILE_WIDTH);
        let tile = Tile::hashes(level, index, u16::try_from(width).unwrap_or(0))?;
        Ok((tile, hashes.iter().flat_map(|h| h.0).collect()))
    }

    /// The open entry bundle cut to `width` entries.
    pub(crate) fn open_bundle(&self, width: usize) -> Result<(Tile, Vec<u8>), custody_tlog::Error> {
        let entries = self.entries.get(..width).unwrap_or_default();
        let tile = Tile::entries(self.size() / u64::from(TILE_WIDTH), u16::try_from(width).unwrap_or(0))?;
        Ok((tile, encode_entry_bundle(entries.iter().map(Vec::as_slice))?))
    }

    /// A copy of the open tiles, for readers.
    pub(crate) fn open_tiles(&self) -> OpenTiles {
        OpenTiles { size: self.size(), levels: self.levels.clone(), entries: self.entries.clone() }
    }

    /// The number of hash tile levels with at least one hash.
    pub(crate) fn levels(&self) -> u8 {
        (0..=custody_tlog::tile::MAX_TILE_LEVEL).take_while(|&l| self.count(TileKind::Hashes { level: l }) > 0).count()
            as u8
    }
}

/// The open (not yet full) tiles of the published tree, served from memory: writing a
/// partial tile file for every batch made file creation the log's bottleneck (ext4 inode
/// allocation dominated a profile at 4096 appends in flight), and partial tiles are derived
/// data anyway. Full tiles are files; see [`TileStore`].
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenTiles {
    size: u64,
    levels: Vec<Vec<Hash>>,
    entries: Vec<Vec<u8>>,
}

impl OpenTiles {
    /// The tree size these tiles belong to.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether `tile` exists in the tree of this size (its items are all present).
    pub(crate) fn covers(&self, tile: &Tile) -> bool {
        let count = match tile.kind() {
            TileKind::Entries => self.size,
            TileKind::Hashes { level } => self.size.checked_shr(u32::from(level) * u32::from(TILE_HEIGHT)).unwrap_or(0),
        };
        tile.index()
            .checked_mul(u64::from(TILE_WIDTH))
            .and_then(|first| first.checked_add(u64::from(tile.width())))
            .is_some_and(|end| end <= count)
    }

    /// The bytes of `tile` if it lies in one of the open tiles, `None` if it lies in a full
    /// tile (read from the [`TileStore`]). The caller checks [`OpenTiles::covers`] first.
    pub(crate) fn get(&self, tile: &Tile) -> Option<Result<Vec<u8>, custody_tlog::Error>> {
        let width = usize::from(tile.width());
        match tile.kind() {
            TileKind::Hashes { level } => {
                let count = self.size.checked_shr(u32::from(level) * u32::from(TILE_HEIGHT)).unwrap_or(0);
                let open = self.levels.get(usize::from(level))?;
                (tile.index() == count / u64::from(TILE_WIDTH))
                    .then(|| Ok(open.get(..width).unwrap_or_default().iter().flat_map(|h| h.0).collect()))
            }
            TileKind::Entries => (tile.index() == self.size / u64::from(TILE_WIDTH))
                .then(|| encode_entry_bundle(self.entries.get(..width).unwrap_or_default().iter().map(Vec::as_slice))),
        }
    }
}

/// Tiles and entry bundles as files under the log directory.
#[derive(Debug, Clone)]
pub(crate) struct TileStore {
    dir: PathBuf,
}

impl TileStore {
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The file of `tile`.
    pub(crate) fn path(&self, tile: &Tile) -> PathBuf {
        self.dir.join(tile.path())
    }

    /// The directory holding the partial versions of the tile at `tile`'s coordinates.
    pub(crate) fn partial_dir(&self, tile: &Tile) -> PathBuf {
        let mut p = self.path(&tile.full()).into_os_string();
        p.push(".p");
        PathBuf::from(p)
    }

    /// The stored bytes of exactly `tile`, if that file exists.
    pub(crate) fn read_exact(&self, tile: &Tile) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(tile)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bytes of `tile`. A partial tile that is not on disk is cut from a wider version of
    /// the same tile (its prefix): the full one, once the partials are removed, or a wider
    /// partial, for a tree size that fell inside a batch.
    pub(crate) fn read(&self, tile: &Tile) -> io::Result<Option<Vec<u8>>> {
        if let Some(b) = self.read_exact(tile)? {
            return Ok(Some(b));
        }
        if tile.is_full() {
            return Ok(None);
        }
        let wider = self.partial_widths(tile)?.into_iter().filter(|&w| w > tile.width()).chain([TILE_WIDTH]);
        for w in wider {
            let from = match tile.kind() {
                TileKind::Hashes { level } => Tile::hashes(level, tile.index(), w),
                TileKind::Entries => Tile::entries(tile.index(), w),
            };
            let Ok(from) = from else { continue };
            let Some(data) = self.read_exact(&from)? else { continue };
            return cut(tile, &from, &data).map(Some);
        }
        Ok(None)
    }

    /// The widths of the partial versions stored for the tile at `tile`'s coordinates.
    pub(crate) fn partial_widths(&self, tile: &Tile) -> io::Result<Vec<u16>> {
        let dir = self.partial_dir(tile);
        let read = match fs::read_dir(&dir) {
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

    /// Writes `data` as `tile`, neither atomically nor durably: readers reach a tile only
    /// once the published size covers it, which happens after this returns, and a crash
    /// mid-write leaves a prefix that the next open recognises and rewrites. No temporary
    /// file and rename: file creation is the costliest part of publishing. Writing a full
    /// tile removes the partial versions it supersedes.
    pub(crate) fn write(&self, tile: &Tile, data: &[u8]) -> io::Result<()> {
        let path = self.path(tile);
        match fs::write(&path, data) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path.parent().ok_or_else(|| io::Error::other("tile path has no parent"))?)?;
                fs::write(&path, data)?;
            }
            other => other?,
        }
        if tile.is_full() {
            match fs::remove_dir_all(self.partial_dir(tile)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(tile = %tile, error = %e, "cannot remove superseded partial tiles");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl TileReader for TileStore {
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

/// The bytes of `tile` cut from `data`, the bytes of `from`: a wider version of the same
/// tile, whose prefix it is.
pub(crate) fn cut(tile: &Tile, from: &Tile, data: &[u8]) -> io::Result<Vec<u8>> {
    let width = usize::from(tile.width());
    match tile.kind() {
        TileKind::Hashes { .. } => data
            .get(..width * custody_tlog::HASH_SIZE)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::other(format!("tile `{from}` is shorter than its width"))),
        TileKind::Entries => {
            let entries = decode_entry_bundle(data, from.width()).map_err(io::Error::other)?;
            let prefix = entries.get(..width).unwrap_or_default();
            encode_entry_bundle(prefix.iter().copied()).map_err(io::Error::other)
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename, creating directories. With
/// `durable`, the file and then its directory are fsynced, so after return the new content
/// survives a crash; without, readers still never see a partial file.
pub(crate) fn write_atomic(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use custody_tlog::leaf_hash;
    use custody_tlog::tile::{new_entry_bundles, new_tiles, read_tile_data};

    /// Batches of awkward sizes produce exactly the tiles the spec lists, with the contents
    /// read from a full store of hashes.
    #[test]
    fn builder_emits_the_spec_tiles() {
        let mut b = Builder::default();
        let mut storage: Vec<Hash> = Vec::new();
        let mut size = 0u64;
        for batch in [1u64, 255, 1, 300, 65_000, 7, 1000] {
            let entries: Vec<Vec<u8>> = (size..size + batch).map(|i| i.to_be_bytes().to_vec()).collect();
            let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
            for (i, l) in (size..).zip(&leaves) {
                storage.extend(custody_tlog::stored_hashes(i, *l, &storage).unwrap());
            }
            let mut out = b.append(entries.clone(), &leaves).unwrap();
            out.extend(b.take_partials().unwrap());
            let mut expected: Vec<Tile> = new_tiles(size, size + batch);
            expected.extend(new_entry_bundles(size, size + batch));
            let mut got: Vec<Tile> = out.iter().map(|(t, _)| *t).collect();
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "batch {batch} at {size}");
            for (t, data) in out {
                if t.kind() != TileKind::Entries {
                    assert_eq!(data, read_tile_data(&t, &storage).unwrap(), "{t}");
                } else {
                    let first = t.index() * 256;
                    let want: Vec<Vec<u8>> =
                        (first..first + u64::from(t.width())).map(|i| i.to_be_bytes().to_vec()).collect();
                    assert_eq!(data, encode_entry_bundle(want.iter().map(Vec::as_slice)).unwrap());
                }
            }
            size += batch;
            assert_eq!(b.root(), custody_tlog::tree_hash(size, &storage).unwrap());
        }
        assert_eq!(b.levels(), 3);
    }
}
