//! custody's receipts: proof, handed back with every response, that an access event was
//! committed to the log.
//!
//! The audit sink makes events durable in batches (group commit), so it signs once per batch:
//! a short *batch statement* committing to the log, the batch's position and the RFC 6962
//! Merkle Tree Hash of the batch's own entries,
//!
//! ```text
//! custody-receipt/v1
//! <origin>
//! <batch start> <batch size>
//! <base64 batch root>
//! ```
//!
//! signed as a [signed note](https://c2sp.org/signed-note) by the log's Ed25519 key. Each
//! [`Receipt`] carries the statement's fields, the signature line, and the entry's audit path
//! within the batch tree. Anyone with the log's vkey and the entry checks it offline
//! ([`Receipt::verify`]); [`Receipt::to_note`] gives the statement as an ordinary signed note,
//! so generic note tooling can check the signature too.
//!
//! The first line separates the statement's domain from every other text the key signs: a
//! checkpoint's second line is a bare number and its third is base64, and the statement's
//! third line has a space, so no statement is ever a valid checkpoint or vice versa. The
//! `/v1` leaves room for later versions.
//!
//! The batch root is over the batch alone (`MTH(D[start : start + size])`), so a receipt is
//! ready as soon as the batch is durable, before any checkpoint covers it. Its index links it
//! to the log: an inclusion proof at `index` against a later checkpoint shows the same entry
//! in the log itself.

use crate::hash::{Hash, leaf_hash, node_hash};
use crate::note::{Note, NoteSignature, NoteSigner, NoteVerifier};
use crate::tree::{MAX_TREE_SIZE, check_record};
use crate::{Error, ParseError};

/// First line of a batch statement.
pub const RECEIPT_HEADER: &str = "custody-receipt/v1";

/// Proof that one entry is in a signed batch of a log. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The log's origin.
    pub origin: String,
    /// The entry's index in the log.
    pub index: u64,
    /// The entry's RFC 6962 leaf hash.
    pub leaf_hash: Hash,
    /// `MTH` of the batch's entries.
    pub batch_root: Hash,
    /// The entry's audit path in the batch tree, from the leaf up.
    pub batch_path: Vec<Hash>,
    /// Log index of the batch's first entry.
    pub batch_start: u64,
    /// Number of entries in the batch.
    pub batch_size: u64,
    /// The log key's note signature over the batch statement.
    pub signature: NoteSignature,
}

/// The batch statement text the log signs.
///
/// # Errors
///
/// [`ParseError::Receipt`] if the origin is empty or not one line, the batch is empty, or it
/// ends past [`MAX_TREE_SIZE`].
pub fn batch_statement(
    origin: &str,
    batch_start: u64,
    batch_size: u64,
    batch_root: &Hash,
) -> Result<String, ParseError> {
    if origin.is_empty() || origin.chars().any(|c| c < ' ') {
        return Err(ParseError::Receipt("origin is not one non-empty line"));
    }
    if batch_size == 0 {
        return Err(ParseError::Receipt("empty batch"));
    }
    if batch_start.checked_add(batch_size).is_none_or(|end| end > MAX_TREE_SIZE) {
        return Err(ParseError::Receipt("batch ends past the largest tree"));
    }
    Ok(format!("{RECEIPT_HEADER}\n{origin}\n{batch_start} {batch_size}\n{batch_root}\n"))
}

impl Receipt {
    /// The batch statement this receipt's signature covers.
    ///
    /// # Errors
    ///
    /// As [`batch_statement`].
    pub fn statement(&self) -> Result<String, ParseError> {
        batch_statement(&self.origin, self.batch_start, self.batch_size, &self.batch_root)
    }

    /// The statement as a signed note.
    ///
    /// # Errors
    ///
    /// As [`batch_statement`]; [`ParseError::Note`] for an invalid signature line.
    pub fn to_note(&self) -> Result<String, ParseError> {
        let mut note = Note::new(self.statement()?)?;
        note.add_signature(self.signature.clone())?;
        Ok(note.to_string())
    }

    /// Checks that `entry` is the receipt's entry, that it is at `index` in the batch, and
    /// that the log key `verifier` signed the batch.
    ///
    /// # Errors
    ///
    /// [`Error::LeafMismatch`] if the entry is another; [`Error::IndexOutOfRange`] if the
    /// index is outside the batch; [`Error::InvalidProof`] if the audit path does not lead to
    /// the batch root; [`Error::UnverifiedNote`] if the signature is not by `verifier`'s key;
    /// [`Error::InvalidSignature`] if it is but does not verify; [`Error::Malformed`] for a
    /// malformed statement.
    pub fn verify(&self, verifier: &dyn NoteVerifier, entry: &[u8]) -> Result<(), Error> {
        if leaf_hash(entry) != self.leaf_hash {
            return Err(Error::LeafMismatch);
        }
        let note = self.to_note()?;
        let batch_end = self.batch_start.saturating_add(self.batch_size);
        if self.index < self.batch_start || self.index >= batch_end {
            return Err(Error::IndexOutOfRange { index: self.index, size: batch_end });
        }
        check_record(
            &self.batch_path,
            self.batch_size,
            &self.batch_root,
            self.index - self.batch_start,
            &self.leaf_hash,
        )?;
        Note::open(note.as_bytes(), &[verifier])?;
        Ok(())
    }
}

/// Signs a batch of entries, given by leaf hash, that the log holds at `batch_start ..` and
/// returns one receipt per entry, in order. One signature and `O(k log k)` work for `k`
/// entries.
///
/// # Errors
///
/// As [`batch_statement`] (an empty batch included); the signer's errors.
pub fn sign_batch(
    signer: &dyn NoteSigner,
    origin: &str,
    batch_start: u64,
    leaves: &[Hash],
) -> Result<Vec<Receipt>, Error> {
    let batch_size = u64::try_from(leaves.len()).map_err(|_| ParseError::Receipt("batch too large"))?;
    let levels = batch_levels(leaves);
    let batch_root = levels.last().and_then(|top| top.first()).copied().unwrap_or(Hash::EMPTY_ROOT);
    let mut note = Note::new(batch_statement(origin, batch_start, batch_size, &batch_root)?)?;
    note.sign(signer)?;
    let signature = note.signatures().first().cloned().ok_or(ParseError::Note("no signature"))?;
    Ok((batch_start..)
        .zip(leaves.iter().enumerate())
        .map(|(index, (position, leaf))| Receipt {
            origin: origin.to_owned(),
            index,
            leaf_hash: *leaf,
            batch_root,
            batch_path: audit_path(&levels, position),
            batch_start,
            batch_size,
            signature: signature.clone(),
        })
        .collect())
}

/// The levels of the RFC 6962 tree over `leaves`, bottom up. Built by pairing neighbours and
/// carrying a lone last node up unchanged, which yields the same left-balanced tree as the
/// RFC's split at the largest power of two.
fn batch_levels(leaves: &[Hash]) -> Vec<Vec<Hash>> {
    let mut levels = vec![leaves.to_vec()];
    while let Some(level) = levels.last().filter(|l| l.len() > 1) {
        let next = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                [single] => *single,
                _ => Hash::EMPTY_ROOT,
            })
            .collect();
        levels.push(next);
    }
    levels
}

/// The audit path of leaf `position`: its sibling at each level where it has one.
fn audit_path(levels: &[Vec<Hash>], mut position: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    for level in levels {
        if let Some(sibling) = level.get(position ^ 1) {
            path.push(*sibling);
        }
        position >>= 1;
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{Ed25519Signer, Ed25519Verifier};
    use crate::tree::{prove_record, stored_hashes, tree_hash};

    fn signer() -> Ed25519Signer {
        Ed25519Signer::from_seed("custody.example/log", &[3; 32]).unwrap()
    }

    #[test]
    fn batch_paths_are_rfc6962_paths() {
        for k in 1..=40usize {
            let entries: Vec<Vec<u8>> = (0..k).map(|i| format!("e{i}").into_bytes()).collect();
            let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
            let mut storage = Vec::new();
            for (i, leaf) in leaves.iter().enumerate() {
                let new = stored_hashes(i as u64, *leaf, &storage).unwrap();
                storage.extend(new);
            }
            let receipts = sign_batch(&signer(), "custody.example/log", 1000, &leaves).unwrap();
            assert_eq!(receipts.len(), k);
            for (i, r) in receipts.iter().enumerate() {
                assert_eq!(r.batch_root, tree_hash(k as u64, &storage).unwrap());
                assert_eq!(r.batch_path, prove_record(k as u64, i as u64, &storage).unwrap());
                assert_eq!(r.index, 1000 + i as u64);
                r.verify(&signer().verifier(), &entries[i]).unwrap();
            }
        }
    }

    #[test]
    fn tampering_is_caught() {
        let entries: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let receipts = sign_batch(&signer(), "custody.example/log", 7, &leaves).unwrap();
        let v = signer().verifier();
        let r = &receipts[1];
        r.verify(&v, b"b").unwrap();
        assert!(matches!(r.verify(&v, b"a"), Err(Error::LeafMismatch)));

        let mut t = r.clone();
        t.index = 9;
        assert!(matches!(t.verify(&v, b"b"), Err(Error::InvalidProof)));
        t.index = 10;
        assert!(matches!(t.verify(&v, b"b"), Err(Error::IndexOutOfRange { .. })));
        let mut t = r.clone();
        t.batch_path[0].0[0] ^= 1;
        assert!(matches!(t.verify(&v, b"b"), Err(Error::InvalidProof)));
        // A different root with a matching path still needs the signature.
        let mut t = receipts[0].clone();
        t.batch_size = 1;
        t.batch_root = t.leaf_hash;
        t.batch_path.clear();
        assert!(matches!(t.verify(&v, b"a"), Err(Error::InvalidSignature { .. })));
        let mut t = r.clone();
        t.origin = "custody.example/other".into();
        assert!(matches!(t.verify(&v, b"b"), Err(Error::InvalidSignature { .. })));
        let other = Ed25519Signer::from_seed("custody.example/log", &[4; 32]).unwrap();
        assert!(matches!(r.verify(&other.verifier(), b"b"), Err(Error::UnverifiedNote)));
        let mut t = r.clone();
        t.origin = "two\nlines".into();
        assert!(matches!(t.verify(&v, b"b"), Err(Error::Malformed(_))));
    }

    #[test]
    fn statement_and_json() {
        let leaves = [leaf_hash(b"x")];
        let r = sign_batch(&signer(), "custody.example/log", 41, &leaves).unwrap().remove(0);
        assert_eq!(r.statement().unwrap(), format!("custody-receipt/v1\ncustody.example/log\n41 1\n{}\n", leaves[0]));
        // The signature is an ordinary note signature over the statement.
        let vkey = signer().verifier_key();
        let v = Ed25519Verifier::from_verifier_key(&vkey).unwrap();
        Note::open(r.to_note().unwrap().as_bytes(), &[&v]).unwrap();
        // And the statement is never a checkpoint.
        assert!(crate::Checkpoint::parse(&r.statement().unwrap()).is_err());

        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"signature\":\"— custody.example/log "));
        let back: Receipt = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let extra = json.replacen('{', "{\"extra\":1,", 1);
        assert!(serde_json::from_str::<Receipt>(&extra).is_err());

        assert!(sign_batch(&signer(), "custody.example/log", 0, &[]).is_err());
        assert!(sign_batch(&signer(), "", 0, &leaves).is_err());
        assert!(sign_batch(&signer(), "o", MAX_TREE_SIZE, &leaves).is_err());
    }
}
