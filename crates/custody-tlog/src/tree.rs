//! Merkle tree math over stored hashes: tree hashes, inclusion and consistency proofs.
//!
//! The tree is the one of [RFC 6962 §2.1](https://www.rfc-editor.org/rfc/rfc6962.html#section-2.1):
//! `MTH(D[0:n])` splits at the largest power of two below `n`. A log keeps the hash of every
//! *complete* subtree (a perfect binary subtree of `2^level` leaves starting at a multiple of
//! `2^level`); any tree hash or proof is then a handful of those hashes combined.
//!
//! Storage order follows Go's `golang.org/x/mod/sumdb/tlog`: appending leaf `n` stores its leaf
//! hash and then, bottom up, the hash of every complete subtree that leaf finishes. Numbering
//! stored hashes in that order gives each node `(level, n)` a dense, append-only
//! [`StoredIndex`] ([`stored_hash_index`]); a storage layer only ever appends, and tiles
//! (c2sp.org/tlog-tiles, see [`crate::tile`]) are a packing of the same hashes.
//!
//! Proofs are the RFC 6962 §2.1.1 audit paths and §2.1.2 consistency proofs, checked with the
//! algorithms of [RFC 9162 §2.1.3.2 and §2.1.4.2](https://www.rfc-editor.org/rfc/rfc9162.html#section-2.1.3.2),
//! so they interoperate with Certificate Transparency, sumdb and every tlog-tiles client.
//!
//! [`Frontier`] is the sequencer's in-memory helper: the right edge of the tree, enough to
//! append leaves and compute the new root without reading storage.

use crate::Error;
use crate::hash::{Hash, node_hash};

/// Largest tree size supported: `2^63 - 1` leaves, as in Go's tlog (sizes are `int64` there).
/// Every stored-hash index of such a tree fits in a `u64`.
pub const MAX_TREE_SIZE: u64 = (1 << 63) - 1;

/// Position of a complete subtree's hash in storage order (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredIndex(pub u64);

/// A source of stored hashes: storage, tiles, or memory.
pub trait HashReader {
    /// Returns the hashes stored at `indexes`, in the same order.
    ///
    /// # Errors
    ///
    /// Whatever the storage fails with, typically [`Error::MissingHash`] or [`Error::ReadHashes`].
    fn read_hashes(&self, indexes: &[StoredIndex]) -> Result<Vec<Hash>, Error>;
}

/// Stored hashes kept in memory in storage order: `hashes[i]` is the hash at `StoredIndex(i)`.
impl HashReader for [Hash] {
    fn read_hashes(&self, indexes: &[StoredIndex]) -> Result<Vec<Hash>, Error> {
        indexes
            .iter()
            .map(|&i| usize::try_from(i.0).ok().and_then(|i| self.get(i)).copied().ok_or(Error::MissingHash(i)))
            .collect()
    }
}

impl HashReader for Vec<Hash> {
    fn read_hashes(&self, indexes: &[StoredIndex]) -> Result<Vec<Hash>, Error> {
        self.as_slice().read_hashes(indexes)
    }
}

impl<R: HashReader + ?Sized> HashReader for &R {
    fn read_hashes(&self, indexes: &[StoredIndex]) -> Result<Vec<Hash>, Error> {
        (**self).read_hashes(indexes)
    }
}

/// The number of hashes stored for a tree of `n` leaves: `2n - popcount(n)`.
///
/// Saturates at `u64::MAX` for `n > MAX_TREE_SIZE`.
pub fn stored_hash_count(n: u64) -> u64 {
    if n > MAX_TREE_SIZE {
        return u64::MAX;
    }
    count(n)
}

/// `2n - popcount(n)`; exact for `n <= 2^63`.
fn count(n: u64) -> u64 {
    n.wrapping_mul(2).wrapping_sub(u64::from(n.count_ones()))
}

/// The storage position of the hash of the complete subtree `n` at `level` (covering leaves
/// `n·2^level .. (n+1)·2^level`).
///
/// # Errors
///
/// [`Error::NodeOutOfRange`] if that subtree does not fit in a tree of [`MAX_TREE_SIZE`].
pub fn stored_hash_index(level: u8, n: u64) -> Result<StoredIndex, Error> {
    let fits = level < 63 && n.checked_add(1).is_some_and(|end| end <= MAX_TREE_SIZE >> level);
    if !fits {
        return Err(Error::NodeOutOfRange { level, n });
    }
    Ok(StoredIndex(index_of(level, n)))
}

/// [`stored_hash_index`] for a node already known to lie in a tree of at most `MAX_TREE_SIZE`.
fn index_of(level: u8, n: u64) -> u64 {
    // The node is stored right after the hashes of all leaves before its last leaf `m`, and
    // after the `level` hashes below it that leaf `m` completes.
    let m = (n.wrapping_add(1) << level).wrapping_sub(1);
    count(m).wrapping_add(u64::from(level))
}

/// The inverse of [`stored_hash_index`]: the `(level, n)` of the hash stored at `index`.
///
/// Indexes past the last hash of a [`MAX_TREE_SIZE`] tree give a meaningless (but harmless)
/// answer; [`stored_hash_index`] of it will not round-trip.
pub fn split_stored_hash_index(index: StoredIndex) -> (u8, u64) {
    // Find the leaf m whose hashes include `index`: the largest m with count(m) <= index.
    // count(m) lies in [2m - 64, 2m], so start at index/2 and step up at most ~65 times.
    let index = index.0;
    let mut m = index / 2;
    while m < MAX_TREE_SIZE && count(m + 1) <= index {
        m += 1;
    }
    // For supported indexes, index - count(m) <= trailing_ones(m) < 63.
    let level = u8::try_from(index.wrapping_sub(count(m))).unwrap_or(u8::MAX);
    (level, m.checked_shr(u32::from(level)).unwrap_or(0))
}

fn check_size(size: u64) -> Result<(), Error> {
    if size > MAX_TREE_SIZE {
        return Err(Error::TreeTooLarge(size));
    }
    Ok(())
}

/// Reads hashes and checks that the reader kept its side of the contract.
fn read<R: HashReader + ?Sized>(reader: &R, indexes: &[StoredIndex]) -> Result<Vec<Hash>, Error> {
    let hashes = reader.read_hashes(indexes)?;
    if hashes.len() != indexes.len() {
        return Err(Error::ShortRead { got: hashes.len(), want: indexes.len() });
    }
    Ok(hashes)
}

/// The largest power of two strictly below `x` (`x >= 2`): RFC 6962's split point `k`.
fn split_point(x: u64) -> u64 {
    1 << (63 - (x - 1).leading_zeros())
}

/// Decomposes `D[lo:hi]` into maximal complete subtrees, left to right, as `(level, n)`.
///
/// For the ranges RFC 6962 recurses into (`lo` a multiple of a power of two at least
/// `hi - lo`) these are exactly the subtrees whose right fold is `MTH(D[lo:hi])`.
fn complete_subtrees(mut lo: u64, hi: u64, out: &mut Vec<(u8, u64)>) {
    while lo < hi {
        let len_log = 63 - (hi - lo).leading_zeros();
        let level = lo.trailing_zeros().min(len_log);
        // level <= 63, so both the cast and the shift are in range.
        out.push((level as u8, lo >> level));
        lo += 1 << level;
    }
}

/// Folds subtree hashes from the right: `node(h0, node(h1, ... node(hk-1, hk)))`.
fn fold_right(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let Some(last) = iter.next() else {
        return Hash::EMPTY_ROOT;
    };
    iter.fold(*last, |acc, h| node_hash(h, &acc))
}

/// Hashes of several ranges `D[lo:hi]`, read in one batch.
fn range_hashes<R: HashReader + ?Sized>(ranges: &[(u64, u64)], reader: &R) -> Result<Vec<Hash>, Error> {
    let mut nodes = Vec::new();
    let mut counts = Vec::with_capacity(ranges.len());
    for &(lo, hi) in ranges {
        let before = nodes.len();
        complete_subtrees(lo, hi, &mut nodes);
        counts.push(nodes.len() - before);
    }
    let indexes: Vec<StoredIndex> = nodes.iter().map(|&(level, n)| StoredIndex(index_of(level, n))).collect();
    let hashes = read(reader, &indexes)?;
    let mut rest = hashes.as_slice();
    let mut out = Vec::with_capacity(ranges.len());
    for count in counts {
        let (these, tail) =
            rest.split_at_checked(count).ok_or(Error::ShortRead { got: hashes.len(), want: indexes.len() })?;
        out.push(fold_right(these));
        rest = tail;
    }
    Ok(out)
}

/// The hashes to store when appending leaf `n` (with hash `leaf`) to a tree of size `n`: the
/// leaf hash, then the hash of each complete subtree it finishes, in storage order.
///
/// # Errors
///
/// [`Error::TreeTooLarge`] past [`MAX_TREE_SIZE`]; the reader's errors.
pub fn stored_hashes<R: HashReader + ?Sized>(n: u64, leaf: Hash, reader: &R) -> Result<Vec<Hash>, Error> {
    check_size(n.saturating_add(1))?;
    let completed = n.trailing_ones();
    // The left siblings on the way up, requested in increasing storage order (highest first).
    let indexes: Vec<StoredIndex> =
        (0..completed).rev().map(|level| StoredIndex(index_of(level as u8, (n >> level) - 1))).collect();
    let siblings = read(reader, &indexes)?;
    let mut out = Vec::with_capacity(siblings.len() + 1);
    let mut h = leaf;
    out.push(h);
    for sibling in siblings.iter().rev() {
        h = node_hash(sibling, &h);
        out.push(h);
    }
    Ok(out)
}

/// `MTH(D[0:n])`, the root hash of the tree of the first `n` leaves.
///
/// # Errors
///
/// [`Error::TreeTooLarge`] past [`MAX_TREE_SIZE`]; the reader's errors.
pub fn tree_hash<R: HashReader + ?Sized>(n: u64, reader: &R) -> Result<Hash, Error> {
    check_size(n)?;
    let hashes = range_hashes(&[(0, n)], reader)?;
    Ok(hashes.first().copied().unwrap_or(Hash::EMPTY_ROOT))
}

/// The RFC 6962 §2.1.1 audit path proving leaf `n` is in the tree of size `t`, ordered from the
/// leaf's sibling up to the root's child.
///
/// # Errors
///
/// [`Error::IndexOutOfRange`] unless `n < t`; [`Error::TreeTooLarge`]; the reader's errors.
pub fn prove_record<R: HashReader + ?Sized>(t: u64, n: u64, reader: &R) -> Result<Vec<Hash>, Error> {
    check_size(t)?;
    if n >= t {
        return Err(Error::IndexOutOfRange { index: n, size: t });
    }
    // PATH(m, D[lo:hi]) recurses into the half holding m and adds the other half's hash.
    let (mut lo, mut hi) = (0, t);
    let mut siblings = Vec::new();
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if n < lo + k {
            siblings.push((lo + k, hi));
            hi = lo + k;
        } else {
            siblings.push((lo, lo + k));
            lo += k;
        }
    }
    siblings.reverse();
    range_hashes(&siblings, reader)
}

/// The root that an audit path for leaf `n` with hash `leaf` in a tree of size `t` leads to
/// (RFC 9162 §2.1.3.2). Compare it with a trusted root, or use [`check_record`].
///
/// # Errors
///
/// [`Error::IndexOutOfRange`] unless `n < t`; [`Error::InvalidProof`] if the path has the wrong
/// length for `(n, t)`.
pub fn root_from_record_proof(proof: &[Hash], t: u64, n: u64, leaf: &Hash) -> Result<Hash, Error> {
    if n >= t {
        return Err(Error::IndexOutOfRange { index: n, size: t });
    }
    let (mut f, mut s) = (n, t - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(Error::InvalidProof);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(Error::InvalidProof);
    }
    Ok(r)
}

/// Checks that `proof` proves leaf `n` with hash `leaf` is in the tree of size `t` and root `root`.
///
/// # Errors
///
/// [`Error::InvalidProof`] if it does not; [`Error::IndexOutOfRange`] unless `n < t`.
pub fn check_record(proof: &[Hash], t: u64, root: &Hash, n: u64, leaf: &Hash) -> Result<(), Error> {
    if root_from_record_proof(proof, t, n, leaf)? == *root { Ok(()) } else { Err(Error::InvalidProof) }
}

/// The RFC 6962 §2.1.2 consistency proof that the tree of size `n` is a prefix of the tree of
/// size `t`. Empty when `n == t`.
///
/// # Errors
///
/// [`Error::IndexOutOfRange`] unless `1 <= n <= t`; [`Error::TreeTooLarge`]; the reader's errors.
pub fn prove_tree<R: HashReader + ?Sized>(t: u64, n: u64, reader: &R) -> Result<Vec<Hash>, Error> {
    check_size(t)?;
    if n == 0 || n > t {
        return Err(Error::IndexOutOfRange { index: n, size: t });
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled: each step adds one sibling range; the walk ends at a
    // subtree equal to the old tree's right edge, which is included unless it is the old root.
    let (mut m, mut lo, mut hi, mut whole_old_tree) = (n, 0, t, true);
    let mut ranges = Vec::new();
    while m != hi - lo {
        let k = split_point(hi - lo);
        if m <= k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            m -= k;
            lo += k;
            whole_old_tree = false;
        }
    }
    if !whole_old_tree {
        ranges.push((lo, hi));
    }
    ranges.reverse();
    range_hashes(&ranges, reader)
}

/// Checks that `proof` proves the tree of size `n` and root `old_root` is a prefix of the tree
/// of size `t` and root `root` (RFC 9162 §2.1.4.2).
///
/// # Errors
///
/// [`Error::InvalidProof`] if it does not, including for `n == 0` (a consistency proof from
/// the empty tree is meaningless: every tree extends it); [`Error::IndexOutOfRange`] if `n > t`.
pub fn check_tree(proof: &[Hash], t: u64, root: &Hash, n: u64, old_root: &Hash) -> Result<(), Error> {
    if n > t {
        return Err(Error::IndexOutOfRange { index: n, size: t });
    }
    if n == 0 {
        return Err(Error::InvalidProof);
    }
    if n == t {
        return if proof.is_empty() && old_root == root { Ok(()) } else { Err(Error::InvalidProof) };
    }
    // When the old tree is a complete subtree its root is the first node of the path; it is
    // not repeated in the proof.
    let (first, rest) = if n.is_power_of_two() {
        (*old_root, proof)
    } else {
        let (first, rest) = proof.split_first().ok_or(Error::InvalidProof)?;
        (*first, rest)
    };
    let (mut f, mut s) = (n - 1, t - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in rest {
        if s == 0 {
            return Err(Error::InvalidProof);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && fr == *old_root && sr == *root { Ok(()) } else { Err(Error::InvalidProof) }
}

/// The right edge of a tree: the roots of its maximal complete subtrees, largest (leftmost)
/// first, one per set bit of the size. Also called a compact range.
///
/// It is all a sequencer needs in memory: [`Frontier::extend`] appends a batch of `k` leaves
/// with `O(k)` hashing (each leaf completes one subtree on average), returns every new stored
/// hash in storage order, and the new root in another `O(log n)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

/// What [`Frontier::extend`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Storage position of `hashes[0]`: the stored-hash count of the old tree.
    pub first_index: StoredIndex,
    /// The new stored hashes, contiguous in storage order.
    pub hashes: Vec<Hash>,
    /// The new tree size.
    pub size: u64,
    /// The new root hash.
    pub root: Hash,
}

impl Appended {
    /// The new hashes with their storage positions.
    pub fn indexed(&self) -> impl Iterator<Item = (StoredIndex, Hash)> + '_ {
        (self.first_index.0..).zip(self.hashes.iter()).map(|(i, h)| (StoredIndex(i), *h))
    }
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// A frontier from its parts, e.g. as saved by a sequencer.
    ///
    /// # Errors
    ///
    /// [`Error::TreeTooLarge`]; [`Error::InvalidFrontier`] unless there is exactly one node per
    /// set bit of `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Frontier, Error> {
        check_size(size)?;
        if nodes.len() != size.count_ones() as usize {
            return Err(Error::InvalidFrontier { size, nodes: nodes.len() });
        }
        Ok(Frontier { size, nodes })
    }

    /// Reads the frontier of the tree of `size` from storage.
    ///
    /// # Errors
    ///
    /// [`Error::TreeTooLarge`]; the reader's errors.
    pub fn from_reader<R: HashReader + ?Sized>(size: u64, reader: &R) -> Result<Frontier, Error> {
        check_size(size)?;
        let mut nodes = Vec::new();
        complete_subtrees(0, size, &mut nodes);
        let indexes: Vec<StoredIndex> = nodes.iter().map(|&(level, n)| StoredIndex(index_of(level, n))).collect();
        Frontier::from_parts(size, read(reader, &indexes)?)
    }

    /// The tree size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The root hash of the tree (`SHA-256("")` when empty).
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }

    /// Appends one leaf hash, pushing the new stored hashes (the leaf, then each subtree it
    /// completes) onto `stored`.
    ///
    /// # Errors
    ///
    /// [`Error::TreeTooLarge`] if the tree is full.
    pub fn push(&mut self, leaf: Hash, stored: &mut Vec<Hash>) -> Result<(), Error> {
        check_size(self.size.saturating_add(1))?;
        let mut h = leaf;
        stored.push(h);
        let mut level = 0;
        while (self.size >> level) & 1 == 1 {
            // INVARIANT: one node per set bit of size, so a node exists for this bit.
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(&left, &h);
            stored.push(h);
            level += 1;
        }
        self.nodes.push(h);
        self.size += 1;
        Ok(())
    }

    /// Appends a batch of leaf hashes; on error the frontier is unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::TreeTooLarge`] if the batch does not fit.
    pub fn extend(&mut self, leaves: &[Hash]) -> Result<Appended, Error> {
        let new_size = u64::try_from(leaves.len()).ok().and_then(|k| self.size.checked_add(k)).unwrap_or(u64::MAX);
        check_size(new_size)?;
        let first_index = StoredIndex(count(self.size));
        let mut hashes = Vec::with_capacity(leaves.len() * 2);
        for leaf in leaves {
            self.push(*leaf, &mut hashes)?;
        }
        Ok(Appended { first_index, hashes, size: self.size, root: self.root() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// Builds storage for `n` leaves `"leaf i"` by repeated `stored_hashes`.
    fn build(n: u64) -> (Vec<Hash>, Vec<Hash>) {
        let mut storage = Vec::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let leaf = leaf_hash(format!("leaf {i}").as_bytes());
            let new = stored_hashes(i, leaf, &storage).unwrap();
            storage.extend(new);
            leaves.push(leaf);
            assert_eq!(storage.len() as u64, stored_hash_count(i + 1));
        }
        (storage, leaves)
    }

    /// MTH straight from the RFC 6962 definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => Hash::EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn stored_hash_index_round_trips() {
        let mut expected = 0u64;
        // Walk storage order directly: leaf m, then the subtrees it completes.
        for m in 0..2000u64 {
            for level in 0..=m.trailing_ones() as u8 {
                let n = m >> level;
                assert_eq!(stored_hash_index(level, n).unwrap(), StoredIndex(expected));
                assert_eq!(split_stored_hash_index(StoredIndex(expected)), (level, n));
                expected += 1;
            }
        }
        assert!(stored_hash_index(63, 0).is_err());
        assert!(stored_hash_index(0, MAX_TREE_SIZE).is_err());
        assert!(stored_hash_index(0, MAX_TREE_SIZE - 1).is_ok());
        let top = stored_hash_index(62, 0).unwrap();
        assert_eq!(split_stored_hash_index(top), (62, 0));
        let last = stored_hash_index(0, MAX_TREE_SIZE - 1).unwrap();
        assert_eq!(split_stored_hash_index(last), (0, MAX_TREE_SIZE - 1));
        // Does not panic or spin at the very end of the index space.
        for i in [u64::MAX, u64::MAX - 1, u64::MAX - 64, u64::MAX - 65, u64::MAX / 2 + 7] {
            let (level, n) = split_stored_hash_index(StoredIndex(i));
            if let Ok(back) = stored_hash_index(level, n) {
                assert_eq!(back, StoredIndex(i));
            }
        }
    }

    #[test]
    fn tree_hash_matches_definition_and_proofs_check() {
        let (storage, leaves) = build(70);
        for t in 0..=70u64 {
            let root = tree_hash(t, &storage).unwrap();
            assert_eq!(root, mth(&leaves[..t as usize]), "size {t}");
            for n in 0..t {
                let p = prove_record(t, n, &storage).unwrap();
                check_record(&p, t, &root, n, &leaves[n as usize]).unwrap();
                assert!(check_record(&p, t, &root, n, &leaf_hash(b"other")).is_err());
                if t > 1 {
                    assert!(check_record(&p, t, &root, (n + 1) % t, &leaves[n as usize]).is_err());
                }
            }
            for n in 1..=t {
                let p = prove_tree(t, n, &storage).unwrap();
                let old = tree_hash(n, &storage).unwrap();
                check_tree(&p, t, &root, n, &old).unwrap();
                if n < t {
                    assert!(check_tree(&p, t, &root, n, &root).is_err());
                    assert!(check_tree(&p[1..], t, &root, n, &old).is_err());
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let (storage, leaves) = build(5);
        let root = tree_hash(5, &storage).unwrap();
        assert!(matches!(prove_record(5, 5, &storage), Err(Error::IndexOutOfRange { index: 5, size: 5 })));
        assert!(prove_tree(5, 0, &storage).is_err());
        assert!(prove_tree(5, 6, &storage).is_err());
        assert!(matches!(tree_hash(6, &storage), Err(Error::MissingHash(_))));
        assert!(tree_hash(u64::MAX, &storage).is_err());
        assert!(check_record(&[], 0, &root, 0, &leaves[0]).is_err());
        assert!(check_record(&[root; 70], u64::MAX, &root, u64::MAX - 1, &root).is_err());
        assert!(check_tree(&[root; 70], u64::MAX, &root, u64::MAX - 1, &root).is_err());
        assert!(check_tree(&[], u64::MAX, &root, 1, &root).is_err());
        assert!(check_tree(&[], 5, &root, 0, &Hash::EMPTY_ROOT).is_err());
    }

    #[test]
    fn frontier_matches_storage() {
        let (storage, leaves) = build(300);
        let mut f = Frontier::new();
        assert_eq!(f.root(), Hash::EMPTY_ROOT);
        let mut done = 0usize;
        for batch in [1usize, 2, 5, 8, 0, 13, 27, 100, 144] {
            let before = stored_hash_count(done as u64) as usize;
            let out = f.extend(&leaves[done..done + batch]).unwrap();
            done += batch;
            assert_eq!(out.size, done as u64);
            assert_eq!(out.first_index, StoredIndex(before as u64));
            assert_eq!(out.hashes, storage[before..stored_hash_count(done as u64) as usize]);
            assert_eq!(out.root, tree_hash(done as u64, &storage).unwrap());
            assert_eq!(Frontier::from_reader(done as u64, &storage).unwrap(), f);
        }
        assert!(Frontier::from_parts(3, vec![Hash::EMPTY_ROOT]).is_err());
        let mut full = Frontier::from_parts(MAX_TREE_SIZE, vec![Hash::EMPTY_ROOT; 63]).unwrap();
        assert!(matches!(full.extend(&[Hash::EMPTY_ROOT]), Err(Error::TreeTooLarge(_))));
        assert_eq!(full.size(), MAX_TREE_SIZE);
    }
}
