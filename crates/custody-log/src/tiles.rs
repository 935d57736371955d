//! The tree as tiles: building them as entries arrive, and serving the open ones.
//!
//! [`Builder`] holds the sequencer's whole in-memory state: the [`Frontier`] and, for each
//! tile level and for the entries, the contents of the rightmost tile that is not yet full.
//! Every stored hash a batch adds either lands in one of those or completes a full tile, so
//! tiles are produced without reading storage back.
//!
//! [`OpenTiles`] keeps the open ones in memory for readers; full tiles go to the
//! [`LogStorage`](crate::LogStorage). Tiles are not made durable: they are derived from the
//! write-ahead frames and rebuilt or checked against them at every open.

use std::io;
use std::sync::Arc;

use custody_tlog::tile::{TILE_HEIGHT, TILE_WIDTH, decode_entry_bundle, encode_entry_bundle};
use custody_tlog::{Frontier, Hash, Tile, TileKind};

/// `TILE_WIDTH` as a `usize`.
const WIDTH: usize = TILE_WIDTH as usize;

/// The frontier plus the open (not yet full) tile of every level and of the entries.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    frontier: Frontier,
    /// `levels[k]`: hashes of the rightmost, not yet full tile at tile level `k`.
    levels: Vec<Vec<Hash>>,
    /// Entries of the rightmost, not yet full entry bundle (shared with the write-ahead
    /// frame and the open tiles readers see, so snapshots do not copy them).
    entries: Vec<Arc<[u8]>>,
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
        entries: Vec<Arc<[u8]>>,
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
                full.push((tile, encode_entry_bundle(self.entries.iter().map(|e| &**e))?));
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
        Ok((tile, encode_entry_bundle(entries.iter().map(|e| &**e))?))
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
/// data anyway. Full tiles are in the [`LogStorage`](crate::LogStorage).
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenTiles {
    size: u64,
    levels: Vec<Vec<Hash>>,
    entries: Vec<Arc<[u8]>>,
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
    /// tile (read from storage). The caller checks [`OpenTiles::covers`] first.
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
                .then(|| encode_entry_bundle(self.entries.get(..width).unwrap_or_default().iter().map(|e| &**e))),
        }
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
            let mut out = b.append(entries.iter().map(|e| Arc::from(e.as_slice())).collect(), &leaves).unwrap();
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
