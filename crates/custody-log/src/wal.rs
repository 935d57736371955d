//! The write-ahead file `entries.wal`: one self-checking frame per batch.
//!
//! ```text
//! magic   4 bytes   "CLW1"
//! first   u64 BE    log index of the batch's first entry
//! count   u32 BE    entries in the batch, at least 1
//! count × (u32 BE length, entry bytes)
//! root    32 bytes  RFC 6962 MTH of the batch's entries (the root its receipts sign)
//! ```
//!
//! The trailer is the batch root, computed anyway for the receipts, so a frame checks itself
//! as a whole: a frame is valid only if every byte of it is present and its entries hash to
//! its root. See the crate docs for why whole-frame checking is what makes torn tails safe to
//! cut.

use std::io::Read;

use custody_tlog::tile::MAX_ENTRY_SIZE;
use custody_tlog::{Hash, leaf_hash};

/// First bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"CLW1";
/// Bytes before the first record.
const HEADER_LEN: usize = 16;
/// A sanity bound on a frame's entry count, far above any configured batch.
const MAX_FRAME_ENTRIES: u32 = 1 << 24;

/// A decoded, checked frame.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The entries.
    pub(crate) entries: Vec<Vec<u8>>,
    /// Their leaf hashes.
    pub(crate) leaves: Vec<Hash>,
    /// Bytes the frame occupies.
    pub(crate) len: u64,
}

/// What reading at some offset found.
#[derive(Debug)]
pub(crate) enum Found {
    /// A valid frame.
    Frame(Frame),
    /// Nothing: the end of the file.
    End,
    /// Bytes that are not a valid frame; the reason.
    Invalid(&'static str),
}

/// Encodes a batch as one frame.
pub(crate) fn encode<E: AsRef<[u8]>>(first: u64, entries: &[E], root: &Hash) -> Vec<u8> {
    let body: usize = entries.iter().map(|e| 4 + e.as_ref().len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + body + 32);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&first.to_be_bytes());
    // Batches are bounded by the configured max batch, well below u32::MAX.
    out.extend_from_slice(&u32::try_from(entries.len()).unwrap_or(u32::MAX).to_be_bytes());
    for entry in entries {
        let entry = entry.as_ref();
        // Entries are checked against MAX_ENTRY_SIZE at submit.
        out.extend_from_slice(&u32::try_from(entry.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(entry);
    }
    out.extend_from_slice(&root.0);
    out
}

/// The RFC 6962 Merkle Tree Hash of `leaves`, built bottom up by pairing neighbours (a lone
/// last node moves up unchanged, which gives the RFC's left-balanced tree).
pub(crate) fn batch_root(leaves: &[Hash]) -> Hash {
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => custody_tlog::node_hash(l, r),
                [single] => *single,
                _ => Hash::EMPTY_ROOT,
            })
            .collect();
    }
    level.first().copied().unwrap_or(Hash::EMPTY_ROOT)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the input ended first.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(buf.get_mut(done..).unwrap_or_default()) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads one frame. `expected_first`, if given, is the index the frame must start at.
///
/// # Errors
/// Only the reader's I/O errors; bad bytes are [`Found::Invalid`].
pub(crate) fn read_frame<R: Read>(r: &mut R, expected_first: Option<u64>) -> std::io::Result<Found> {
    let mut header = [0u8; HEADER_LEN];
    let mut first_byte = [0u8; 1];
    if !fill(r, &mut first_byte)? {
        return Ok(Found::End);
    }
    header[0] = first_byte[0];
    if !fill(r, header.get_mut(1..).unwrap_or_default())? {
        return Ok(Found::Invalid("header runs past the end of the file"));
    }
    let (magic, rest) = header.split_at(4);
    if magic != MAGIC {
        return Ok(Found::Invalid("bad frame magic"));
    }
    let (first, count) = rest.split_at(8);
    let first = u64::from_be_bytes(first.try_into().unwrap_or_default());
    let count = u32::from_be_bytes(count.try_into().unwrap_or_default());
    if count == 0 || count > MAX_FRAME_ENTRIES {
        return Ok(Found::Invalid("bad entry count"));
    }
    if expected_first.is_some_and(|e| e != first) {
        return Ok(Found::Invalid("frame does not start at the next index"));
    }
    let mut entries = Vec::with_capacity(count.min(4096) as usize);
    let mut len = HEADER_LEN as u64 + 32;
    for _ in 0..count {
        let mut l = [0u8; 4];
        if !fill(r, &mut l)? {
            return Ok(Found::Invalid("record runs past the end of the file"));
        }
        let l = u32::from_be_bytes(l) as usize;
        if l > MAX_ENTRY_SIZE {
            return Ok(Found::Invalid("record longer than an entry may be"));
        }
        let mut entry = vec![0u8; l];
        if !fill(r, &mut entry)? {
            return Ok(Found::Invalid("record runs past the end of the file"));
        }
        len += 4 + l as u64;
        entries.push(entry);
    }
    let mut root = [0u8; 32];
    if !fill(r, &mut root)? {
        return Ok(Found::Invalid("frame trailer runs past the end of the file"));
    }
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    if batch_root(&leaves) != Hash(root) {
        return Ok(Found::Invalid("entries do not hash to the frame's batch root"));
    }
    Ok(Found::Frame(Frame { entries, leaves, len }))
}

/// Whether `tail` holds a valid frame at any offset after its first byte: evidence that the
/// bad bytes at its start are not a torn last write (nothing is ever written after one).
pub(crate) fn valid_frame_after(tail: &[u8]) -> Option<usize> {
    (1..tail.len()).find(|&at| {
        let Some(rest) = tail.get(at..) else { return false };
        rest.starts_with(&MAGIC) && matches!(read_frame(&mut &rest[..], None), Ok(Found::Frame(_)))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn frame(first: u64, entries: &[Vec<u8>]) -> Vec<u8> {
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        encode(first, entries, &batch_root(&leaves))
    }

    #[test]
    fn round_trip_and_every_truncation_is_invalid() {
        let entries = vec![b"a".to_vec(), Vec::new(), vec![7; 300]];
        let bytes = frame(5, &entries);
        let Found::Frame(f) = read_frame(&mut bytes.as_slice(), Some(5)).unwrap() else { panic!() };
        assert_eq!((f.entries, f.len), (entries.clone(), bytes.len() as u64));
        assert!(matches!(read_frame(&mut &bytes[..], Some(6)).unwrap(), Found::Invalid(_)));
        assert!(matches!(read_frame(&mut &bytes[..0], None).unwrap(), Found::End));
        for cut in 1..bytes.len() {
            assert!(matches!(read_frame(&mut &bytes[..cut], None).unwrap(), Found::Invalid(_)), "{cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(!matches!(read_frame(&mut b.as_slice(), Some(5)).unwrap(), Found::Frame(_)), "{i}");
        }
    }

    #[test]
    fn batch_root_is_rfc6962() {
        let leaves: Vec<Hash> = (0..13u8).map(|i| leaf_hash(&[i])).collect();
        let mut f = custody_tlog::Frontier::new();
        assert_eq!(batch_root(&leaves), f.extend(&leaves).unwrap().root);
        assert_eq!(batch_root(&[]), Hash::EMPTY_ROOT);
    }

    #[test]
    fn finds_frames_after_garbage() {
        let mut bytes = vec![0xAA; 10];
        assert_eq!(valid_frame_after(&bytes), None);
        bytes.extend(frame(0, &[b"x".to_vec()]));
        assert_eq!(valid_frame_after(&bytes), Some(10));
    }
}
