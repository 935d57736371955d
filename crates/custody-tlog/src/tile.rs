//! The tiled log layout of [c2sp.org/tlog-tiles](https://c2sp.org/tlog-tiles).
//!
//! A tiled log publishes its Merkle tree as *tiles*: the hashes at every eighth level of the
//! tree, 256 to a tile, at `tile/<L>/<N>[.p/<W>]`. The `N`-th tile at level `L` holds
//! `MTH(D[(N·256 + i)·256^L : (N·256 + i + 1)·256^L])` for `i` in `0..256`; the levels in between
//! are recomputed by hashing. The rightmost tile of each level is usually *partial*, `W < 256`
//! hashes, at a `.p/<W>` path. Entries are published the same way as *entry bundles* at
//! `tile/entries/<N>[.p/<W>]`, each entry a big-endian `u16` length and the bytes.
//!
//! `N` is written in zero-padded groups of three digits, all but the last prefixed with `x`
//! (`1234067` is `x001/x234/067`), so a file system can serve the tree directly. Paths are parsed
//! strictly: only the one canonical path of each tile is accepted.
//!
//! Tiles are packings of the stored hashes of [`crate::tree`]; [`read_tile_data`] builds a tile
//! from any [`HashReader`], and [`TileHashReader`] turns stored tiles back into a
//! [`HashReader`] for proofs.

use std::collections::BTreeMap;
use std::fmt;

use crate::hash::{HASH_SIZE, Hash, node_hash};
use crate::tree::{HashReader, MAX_TREE_SIZE, StoredIndex, split_stored_hash_index, stored_hash_index};
use crate::{Error, ParseError};

/// Tree levels per tile (tlog-tiles fixes it at 8).
pub const TILE_HEIGHT: u8 = 8;
/// Hashes or entries in a full tile or bundle.
pub const TILE_WIDTH: u16 = 256;
/// Highest tile level the spec allows.
pub const MAX_TILE_LEVEL: u8 = 63;
/// Largest entry an entry bundle can carry.
pub const MAX_ENTRY_SIZE: usize = u16::MAX as usize;

/// Longest canonical path: `tile/entries/` + seven index groups + `.p/255`.
const MAX_PATH_LEN: usize = 64;

/// What a tile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileKind {
    /// Merkle tree hashes at tree level `8 · level`.
    Hashes {
        /// The tile level `L` (0 holds leaf hashes).
        level: u8,
    },
    /// Log entries: an entry bundle.
    Entries,
}

/// A tile or entry bundle's coordinates: kind, index `N` within its level and width `W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    kind: TileKind,
    index: u64,
    width: u16,
}

impl Tile {
    /// Hash tile `index` at `level`, holding `width` hashes.
    ///
    /// # Errors
    ///
    /// [`ParseError::Tile`] unless `level <= 63` and `1 <= width <= 256`.
    pub fn hashes(level: u8, index: u64, width: u16) -> Result<Tile, ParseError> {
        if level > MAX_TILE_LEVEL {
            return Err(ParseError::Tile("level above 63"));
        }
        Tile::new(TileKind::Hashes { level }, index, width)
    }

    /// Entry bundle `index`, holding `width` entries.
    ///
    /// # Errors
    ///
    /// [`ParseError::Tile`] unless `1 <= width <= 256`.
    pub fn entries(index: u64, width: u16) -> Result<Tile, ParseError> {
        Tile::new(TileKind::Entries, index, width)
    }

    fn new(kind: TileKind, index: u64, width: u16) -> Result<Tile, ParseError> {
        if width == 0 || width > TILE_WIDTH {
            return Err(ParseError::Tile("width not in 1..=256"));
        }
        Ok(Tile { kind, index, width })
    }

    /// What the tile holds.
    pub fn kind(&self) -> TileKind {
        self.kind
    }

    /// The hash level `L`, or `None` for an entry bundle.
    pub fn level(&self) -> Option<u8> {
        match self.kind {
            TileKind::Hashes { level } => Some(level),
            TileKind::Entries => None,
        }
    }

    /// The index `N` within its level.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The number of hashes or entries, `1..=256`.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Whether it is full (256 wide); full tiles never change.
    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The full tile at the same coordinates.
    pub fn full(&self) -> Tile {
        Tile { width: TILE_WIDTH, ..*self }
    }

    /// The tile's path relative to the log prefix, e.g. `tile/0/x001/x234/067.p/8`.
    pub fn path(&self) -> String {
        self.to_string()
    }

    /// Parses a canonical tile or entry-bundle path.
    ///
    /// # Errors
    ///
    /// [`ParseError::TilePath`] for anything but the exact canonical form: a level above 63
    /// or with leading zeros, index groups not of three digits or with a redundant leading
    /// `x000`, a width outside `1..=255` or with leading zeros, `.p/256`, or trailing text.
    pub fn parse_path(path: &str) -> Result<Tile, ParseError> {
        const BAD: ParseError = ParseError::TilePath("not a canonical tile path");
        if path.len() > MAX_PATH_LEN {
            return Err(ParseError::TilePath("too long"));
        }
        let rest = path.strip_prefix("tile/").ok_or(BAD)?;
        let (kind, rest) = rest.split_once('/').ok_or(BAD)?;
        let kind = if kind == "entries" {
            TileKind::Entries
        } else {
            let level = parse_decimal(kind).ok_or(BAD)?;
            let level = u8::try_from(level).ok().filter(|l| *l <= MAX_TILE_LEVEL).ok_or(BAD)?;
            TileKind::Hashes { level }
        };
        let (groups, width) = match rest.split_once(".p/") {
            Some((groups, width)) => {
                let width = parse_decimal(width)
                    .and_then(|w| u16::try_from(w).ok())
                    .filter(|w| (1..TILE_WIDTH).contains(w))
                    .ok_or(BAD)?;
                (groups, width)
            }
            None => (rest, TILE_WIDTH),
        };
        let mut index: u64 = 0;
        let mut groups = groups.split('/').peekable();
        while let Some(group) = groups.next() {
            let digits = if groups.peek().is_some() { group.strip_prefix('x').ok_or(BAD)? } else { group };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BAD);
            }
            let value: u64 = digits.parse().map_err(|_| BAD)?;
            index = index.checked_mul(1000).and_then(|i| i.checked_add(value)).ok_or(BAD)?;
        }
        let tile = Tile::new(kind, index, width).map_err(|_| BAD)?;
        // Rejects the remaining non-canonical spellings, such as a leading `x000/` group.
        if tile.path() != path {
            return Err(BAD);
        }
        Ok(tile)
    }
}

/// A decimal with no sign and no leading zeros (bar "0").
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

/// The path, relative to the log prefix.
impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TileKind::Hashes { level } => write!(f, "tile/{level}/")?,
            TileKind::Entries => f.write_str("tile/entries/")?,
        }
        let mut groups = Vec::with_capacity(7);
        let mut n = self.index;
        groups.push(n % 1000);
        n /= 1000;
        while n > 0 {
            groups.push(n % 1000);
            n /= 1000;
        }
        let last = groups.len() - 1;
        for (i, group) in groups.iter().rev().enumerate() {
            if i == last {
                write!(f, "{group:03}")?;
            } else {
                write!(f, "x{group:03}/")?;
            }
        }
        if !self.is_full() {
            write!(f, ".p/{}", self.width)?;
        }
        Ok(())
    }
}

/// The number of hashes at tile level `level` (tree level `8·level`) in a tree of `size`.
fn hashes_at_level(size: u64, level: u8) -> u64 {
    size.checked_shr(u32::from(level) * u32::from(TILE_HEIGHT)).unwrap_or(0)
}

/// The tiles of `kind` at one level for `count` items: all full ones from `first_full`, then
/// the partial one if any.
fn level_tiles(kind: TileKind, first_full: u64, count: u64) -> impl Iterator<Item = Tile> {
    let full = count / u64::from(TILE_WIDTH);
    let partial = (count % u64::from(TILE_WIDTH)) as u16;
    (first_full..full).map(move |index| Tile { kind, index, width: TILE_WIDTH }).chain((partial > 0).then_some(Tile {
        kind,
        index: full,
        width: partial,
    }))
}

/// Every hash tile of a tree of `size`, full and partial, level by level from level 0.
///
/// For size 70,000 that is 273 full level-0 tiles, one of width 112, one full level-1 tile, one
/// of width 17 and one level-2 tile of width 1 (the spec's example).
pub fn tiles_for_size(size: u64) -> impl Iterator<Item = Tile> {
    (0..=MAX_TILE_LEVEL)
        .map(move |level| (level, hashes_at_level(size, level)))
        .take_while(|&(_, count)| count > 0)
        .flat_map(|(level, count)| level_tiles(TileKind::Hashes { level }, 0, count))
}

/// The hash tiles to publish when the tree grows from `old_size` to `new_size`: every tile
/// whose contents changed (newly full ones and the new partial ones). Empty unless
/// `new_size > old_size`.
pub fn new_tiles(old_size: u64, new_size: u64) -> Vec<Tile> {
    let mut tiles = Vec::new();
    if new_size <= old_size {
        return tiles;
    }
    for level in 0..=MAX_TILE_LEVEL {
        let (old, new) = (hashes_at_level(old_size, level), hashes_at_level(new_size, level));
        if new == 0 {
            break;
        }
        if old != new {
            let first = old / u64::from(TILE_WIDTH);
            tiles.extend(level_tiles(TileKind::Hashes { level }, first, new));
        }
    }
    tiles
}

/// Every entry bundle of a log of `size` entries, full and partial.
pub fn entry_bundles_for_size(size: u64) -> impl Iterator<Item = Tile> {
    level_tiles(TileKind::Entries, 0, size)
}

/// The entry bundles to publish when the log grows from `old_size` to `new_size`.
pub fn new_entry_bundles(old_size: u64, new_size: u64) -> Vec<Tile> {
    if new_size <= old_size {
        return Vec::new();
    }
    level_tiles(TileKind::Entries, old_size / u64::from(TILE_WIDTH), new_size).collect()
}

/// The hash tile holding the stored hash at `index`, with the smallest width that covers it.
/// Any wider tile at the same coordinates holds it too.
///
/// # Errors
///
/// [`Error::NodeOutOfRange`] if the index is beyond any supported tree.
pub fn tile_for_stored_hash(index: StoredIndex) -> Result<Tile, Error> {
    let (level, n) = split_stored_hash_index(index);
    // Validate through the forward mapping, which bounds the node to a supported tree.
    if stored_hash_index(level, n)? != index {
        return Err(Error::NodeOutOfRange { level, n });
    }
    let (tile_level, sub) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
    // The node spans tile-level hashes [n·2^sub, (n+1)·2^sub), all inside one tile.
    let first = n << sub;
    let end = (n + 1) << sub;
    let tile_index = first / u64::from(TILE_WIDTH);
    let width = (end - tile_index * u64::from(TILE_WIDTH)) as u16;
    Ok(Tile { kind: TileKind::Hashes { level: tile_level }, index: tile_index, width })
}

/// The stored hash at `index`, computed from the data of `tile` (which must hold it).
///
/// # Errors
///
/// [`ParseError::Tile`] if the tile does not hold that hash or `data` is not `width · 32`
/// bytes; [`Error::NodeOutOfRange`].
pub fn hash_from_tile(tile: &Tile, data: &[u8], index: StoredIndex) -> Result<Hash, Error> {
    let needed = tile_for_stored_hash(index)?;
    if needed.kind != tile.kind || needed.index != tile.index || needed.width > tile.width {
        return Err(ParseError::Tile("tile does not hold the requested hash").into());
    }
    if data.len() != usize::from(tile.width) * HASH_SIZE {
        return Err(ParseError::Tile("data length does not match the width").into());
    }
    let (level, _) = split_stored_hash_index(index);
    let sub = level % TILE_HEIGHT;
    let count = 1usize << sub;
    let start = usize::from(needed.width) - count;
    let bytes = data
        .get(start * HASH_SIZE..(start + count) * HASH_SIZE)
        .ok_or(ParseError::Tile("tile does not hold the requested hash"))?;
    let mut hashes: Vec<Hash> = bytes.chunks_exact(HASH_SIZE).map(Hash::from_slice).collect::<Result<_, _>>()?;
    // A perfect subtree of 2^sub hashes: hash pairs until one is left.
    while hashes.len() > 1 {
        hashes = hashes
            .chunks_exact(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                _ => Hash::EMPTY_ROOT,
            })
            .collect();
    }
    hashes.first().copied().ok_or_else(|| ParseError::Tile("empty tile").into())
}

/// The contents of hash tile `tile`: its `width` hashes concatenated, read from storage.
///
/// # Errors
///
/// [`ParseError::Tile`] for an entry bundle; [`Error::NodeOutOfRange`]; the reader's errors.
pub fn read_tile_data<R: HashReader + ?Sized>(tile: &Tile, reader: &R) -> Result<Vec<u8>, Error> {
    let TileKind::Hashes { level } = tile.kind else {
        return Err(ParseError::Tile("entry bundles hold no hashes").into());
    };
    let tree_level = u32::from(level) * u32::from(TILE_HEIGHT);
    let tree_level = u8::try_from(tree_level).map_err(|_| Error::NodeOutOfRange { level: u8::MAX, n: tile.index })?;
    let first = tile
        .index
        .checked_mul(u64::from(TILE_WIDTH))
        .ok_or(Error::NodeOutOfRange { level: tree_level, n: tile.index })?;
    let indexes =
        (0..u64::from(tile.width)).map(|i| stored_hash_index(tree_level, first + i)).collect::<Result<Vec<_>, _>>()?;
    let hashes = reader.read_hashes(&indexes)?;
    if hashes.len() != indexes.len() {
        return Err(Error::ShortRead { got: hashes.len(), want: indexes.len() });
    }
    Ok(hashes.iter().flat_map(|h| h.0).collect())
}

/// A source of tile contents: the storage layer, or an HTTP client with a cache.
pub trait TileReader {
    /// Returns the data of each tile, in order.
    ///
    /// # Errors
    ///
    /// Whatever the storage fails with.
    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, Error>;
}

/// Reads stored hashes out of the tiles of a tree of `size`, for [`crate::tree`]'s functions.
///
/// It does not authenticate tiles. That is fine for proofs, which the client checks against a
/// signed root anyway (a forged tile yields a proof that fails), and for a log reading its own
/// storage; anything else must check hashes it reads against a trusted root.
#[derive(Debug)]
pub struct TileHashReader<'a, T: ?Sized> {
    size: u64,
    tiles: &'a T,
}

impl<'a, T: TileReader + ?Sized> TileHashReader<'a, T> {
    /// A reader of the tree of `size` stored in `tiles`.
    ///
    /// # Errors
    ///
    /// [`Error::TreeTooLarge`] past [`MAX_TREE_SIZE`].
    pub fn new(size: u64, tiles: &'a T) -> Result<TileHashReader<'a, T>, Error> {
        if size > MAX_TREE_SIZE {
            return Err(Error::TreeTooLarge(size));
        }
        Ok(TileHashReader { size, tiles })
    }

    /// The tile as the tree of `self.size` has it, if that holds the hash at `index`.
    fn tile_in_tree(&self, index: StoredIndex) -> Result<Tile, Error> {
        let needed = tile_for_stored_hash(index)?;
        let level = needed.level().unwrap_or(0);
        let available = hashes_at_level(self.size, level)
            .saturating_sub(needed.index * u64::from(TILE_WIDTH))
            .min(u64::from(TILE_WIDTH));
        if available < u64::from(needed.width) {
            return Err(Error::MissingHash(index));
        }
        Ok(Tile { width: available as u16, ..needed })
    }
}

impl<T: TileReader + ?Sized> HashReader for TileHashReader<'_, T> {
    fn read_hashes(&self, indexes: &[StoredIndex]) -> Result<Vec<Hash>, Error> {
        let tiles: Vec<Tile> = indexes.iter().map(|&i| self.tile_in_tree(i)).collect::<Result<_, _>>()?;
        let mut unique: BTreeMap<Tile, usize> = BTreeMap::new();
        for tile in &tiles {
            let next = unique.len();
            unique.entry(*tile).or_insert(next);
        }
        let mut order: Vec<(Tile, usize)> = unique.iter().map(|(t, i)| (*t, *i)).collect();
        order.sort_by_key(|&(_, i)| i);
        let wanted: Vec<Tile> = order.iter().map(|&(t, _)| t).collect();
        let data = self.tiles.read_tiles(&wanted)?;
        if data.len() != wanted.len() {
            return Err(Error::ShortRead { got: data.len(), want: wanted.len() });
        }
        indexes
            .iter()
            .zip(&tiles)
            .map(|(&index, tile)| {
                let position = unique.get(tile).copied().unwrap_or(usize::MAX);
                let bytes = data.get(position).ok_or(Error::MissingHash(index))?;
                hash_from_tile(tile, bytes, index)
            })
            .collect()
    }
}

/// Encodes an entry bundle: each entry as a big-endian `u16` length and its bytes.
///
/// # Errors
///
/// [`Error::EntryTooLarge`] for an entry over 65,535 bytes; [`ParseError::EntryBundle`] for
/// no entries or more than 256.
pub fn encode_entry_bundle<'a, I>(entries: I) -> Result<Vec<u8>, Error>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut out = Vec::new();
    let mut count = 0usize;
    for entry in entries {
        count += 1;
        if count > usize::from(TILE_WIDTH) {
            return Err(ParseError::EntryBundle("more than 256 entries").into());
        }
        let len = u16::try_from(entry.len()).map_err(|_| Error::EntryTooLarge(entry.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    if count == 0 {
        return Err(ParseError::EntryBundle("no entries").into());
    }
    Ok(out)
}

/// Decodes an entry bundle of exactly `width` entries.
///
/// # Errors
///
/// [`ParseError::EntryBundle`] if a length or entry is cut short, bytes follow the last
/// entry, or the count is not `width`.
pub fn decode_entry_bundle(data: &[u8], width: u16) -> Result<Vec<&[u8]>, ParseError> {
    let mut entries = Vec::with_capacity(usize::from(width));
    let mut rest = data;
    while !rest.is_empty() {
        if entries.len() >= usize::from(width) {
            return Err(ParseError::EntryBundle("more entries than the width"));
        }
        let (len, tail) = rest.split_first_chunk::<2>().ok_or(ParseError::EntryBundle("truncated length"))?;
        let (entry, tail) = tail
            .split_at_checked(usize::from(u16::from_be_bytes(*len)))
            .ok_or(ParseError::EntryBundle("truncated entry"))?;
        entries.push(entry);
        rest = tail;
    }
    if entries.len() != usize::from(width) {
        return Err(ParseError::EntryBundle("fewer entries than the width"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use crate::tree::{prove_record, stored_hashes, tree_hash};

    #[test]
    fn paths() {
        let t = Tile::hashes(0, 1_234_067, 256).unwrap();
        assert_eq!(t.path(), "tile/0/x001/x234/067");
        assert_eq!(Tile::parse_path("tile/0/x001/x234/067").unwrap(), t);
        let p = Tile::hashes(3, 1_234_067, 1).unwrap();
        assert_eq!(p.path(), "tile/3/x001/x234/067.p/1");
        let e = Tile::entries(0, 112).unwrap();
        assert_eq!(e.path(), "tile/entries/000.p/112");
        assert_eq!(Tile::parse_path("tile/entries/000.p/112").unwrap(), e);
        assert_eq!(Tile::entries(1000, 256).unwrap().path(), "tile/entries/x001/000");
        let max = Tile::entries(u64::MAX, 255).unwrap();
        assert_eq!(max.path(), "tile/entries/x018/x446/x744/x073/x709/x551/615.p/255");
        assert_eq!(Tile::parse_path(&max.path()).unwrap(), max);
        assert_eq!(Tile::parse_path("tile/63/000").unwrap().level(), Some(63));
    }

    #[test]
    fn non_canonical_paths_are_rejected() {
        for bad in [
            "",
            "tile",
            "tile/",
            "tile/0",
            "tile/0/",
            "/tile/0/000",
            "tile/0/000/",
            "tile/00/000",
            "tile/01/000",
            "tile/64/000",
            "tile/-1/000",
            "tile/+1/000",
            "tile/data/000",
            "tile/8/0/000",
            "tile/0/00",
            "tile/0/0000",
            "tile/0/x000/001",
            "tile/0/x001/x234",
            "tile/0/001/234",
            "tile/0/x1/234",
            "tile/0/xx01/234",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/010",
            "tile/0/000.p/",
            "tile/0/000.p/1/",
            "tile/0/000.p/1.p/1",
            "tile/0/000.P/1",
            "tile/0/000.p",
            "tile/0/00a",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            "tile/entries/x018/x446/x744/x073/x709/x551/616.p/255",
            "tile/entries/x001/x000/x000/x000/x000/x000/x000/000",
            "tile/entries/000.p/1x",
            "tile/Entries/000",
            "tile/0/٠٠٠",
        ] {
            assert!(Tile::parse_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tiles_for_size_matches_the_spec_example() {
        let tiles: Vec<Tile> = tiles_for_size(70_000).collect();
        let count =
            |level: u8, full: bool| tiles.iter().filter(|t| t.level() == Some(level) && t.is_full() == full).count();
        assert_eq!(count(0, true), 273);
        assert_eq!(count(0, false), 1);
        assert_eq!(count(1, true), 1);
        assert_eq!(count(1, false), 1);
        assert_eq!(count(2, false), 1);
        assert_eq!(tiles.len(), 277);
        let partial_widths: Vec<u16> = tiles.iter().filter(|t| !t.is_full()).map(Tile::width).collect();
        assert_eq!(partial_widths, [112, 17, 1]);
        let t256: Vec<String> = tiles_for_size(256).map(|t| t.path()).collect();
        assert_eq!(t256, ["tile/0/000", "tile/1/000.p/1"]);
        assert_eq!(tiles_for_size(0).count(), 0);
        // The largest tree has hashes up to level 7; shifting further yields none, no panic.
        assert_eq!(hashes_at_level(u64::MAX, 7), 255);
        assert_eq!(hashes_at_level(u64::MAX, 8), 0);
        assert_eq!(hashes_at_level(u64::MAX, 63), 0);
        assert_eq!(new_tiles(u64::MAX - 1, u64::MAX).len(), 1);
        assert_eq!(entry_bundles_for_size(70_000).count(), 274);
    }

    #[test]
    fn new_tiles_are_the_changed_ones() {
        // Go's TestNewTilesForSize cases, at tlog-tiles' height 8.
        assert!(new_tiles(1, 1).is_empty());
        assert_eq!(new_tiles(100, 101).len(), 1);
        let paths: Vec<String> = new_tiles(255, 257).iter().map(Tile::path).collect();
        assert_eq!(paths, ["tile/0/000", "tile/0/001.p/1", "tile/1/000.p/1"]);
        let paths: Vec<String> = new_tiles(256, 300).iter().map(Tile::path).collect();
        assert_eq!(paths, ["tile/0/001.p/44"]);
        // Growing from every size to every larger one: the union of new tiles over a chain
        // of growths is exactly the set of tiles that exist.
        for (a, b) in [(0, 70_000), (0, 65_536), (65_535, 65_537)] {
            let mut expected: Vec<Tile> = tiles_for_size(b).collect();
            let mut got = new_tiles(0, a);
            got.retain(|t| t.is_full());
            got.extend(new_tiles(a, b));
            expected.sort();
            got.sort();
            got.dedup();
            assert_eq!(got, expected, "{a}..{b}");
        }
        let paths: Vec<String> = new_entry_bundles(255, 513).iter().map(Tile::path).collect();
        assert_eq!(paths, ["tile/entries/000", "tile/entries/001", "tile/entries/002.p/1"]);
    }

    struct MemTiles(BTreeMap<Tile, Vec<u8>>);

    impl TileReader for MemTiles {
        fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, Error> {
            tiles.iter().map(|t| self.0.get(t).cloned().ok_or(Error::MissingHash(StoredIndex(0)))).collect()
        }
    }

    #[test]
    fn tiles_serve_every_hash_and_proof() {
        let n = 70_000u64;
        let mut storage = Vec::new();
        for i in 0..n {
            let new = stored_hashes(i, leaf_hash(&i.to_be_bytes()), &storage).unwrap();
            storage.extend(new);
        }
        let mut tiles = BTreeMap::new();
        for tile in tiles_for_size(n) {
            tiles.insert(tile, read_tile_data(&tile, &storage).unwrap());
        }
        let store = MemTiles(tiles);
        let reader = TileHashReader::new(n, &store).unwrap();
        let sample: Vec<StoredIndex> = (0..storage.len() as u64).step_by(97).map(StoredIndex).collect();
        let from_tiles = reader.read_hashes(&sample).unwrap();
        for (i, h) in sample.iter().zip(&from_tiles) {
            assert_eq!(*h, storage[i.0 as usize], "{i:?}");
        }
        assert_eq!(tree_hash(n, &reader).unwrap(), tree_hash(n, &storage).unwrap());
        for leaf in [0, 1, 255, 256, 65_535, 65_536, 69_999] {
            assert_eq!(prove_record(n, leaf, &reader).unwrap(), prove_record(n, leaf, &storage).unwrap());
        }
        // Hashes of a bigger tree are not in this one's tiles.
        let beyond = stored_hash_index(0, n).unwrap();
        assert!(reader.read_hashes(&[beyond]).is_err());
        // Wrong tile data is an error, not a panic.
        let t = tile_for_stored_hash(StoredIndex(5)).unwrap();
        assert!(hash_from_tile(&t, &[0; 31], StoredIndex(5)).is_err());
        assert!(hash_from_tile(&Tile::hashes(1, 0, 256).unwrap(), &[0; 8192], StoredIndex(5)).is_err());
        assert!(read_tile_data(&Tile::entries(0, 1).unwrap(), &storage).is_err());
    }

    #[test]
    fn entry_bundles() {
        let entries: [&[u8]; 3] = [b"", b"hello", &[0xff; 300]];
        let bundle = encode_entry_bundle(entries).unwrap();
        assert_eq!(&bundle[..9], &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(decode_entry_bundle(&bundle, 3).unwrap(), entries);
        assert!(decode_entry_bundle(&bundle, 2).is_err());
        assert!(decode_entry_bundle(&bundle, 4).is_err());
        assert!(decode_entry_bundle(&bundle[..bundle.len() - 1], 3).is_err());
        assert!(decode_entry_bundle(&bundle[..1], 1).is_err());
        let mut trailing = bundle.clone();
        trailing.push(0);
        assert!(decode_entry_bundle(&trailing, 3).is_err());
        assert!(decode_entry_bundle(&[], 1).is_err());
        let big = vec![0u8; 65_536];
        assert!(matches!(encode_entry_bundle([big.as_slice()]), Err(Error::EntryTooLarge(65_536))));
        let max = vec![1u8; 65_535];
        let b = encode_entry_bundle([max.as_slice()]).unwrap();
        assert_eq!(decode_entry_bundle(&b, 1).unwrap(), [max.as_slice()]);
        assert!(encode_entry_bundle(std::iter::empty::<&[u8]>()).is_err());
        let many = vec![&b"x"[..]; 257];
        assert!(encode_entry_bundle(many.iter().copied()).is_err());
        assert!(encode_entry_bundle(many[..256].iter().copied()).is_ok());
    }
}
