//! # custody-tlog
//!
//! The transparency-log formats custody's audit log is built from, as a pure library: no I/O,
//! no clock, no async. Storage, HTTP serving and witnessing live in the crates above it; a
//! verifier (`custody-verify`) needs only this crate.
//!
//! | module | what | spec |
//! | --- | --- | --- |
//! | [`hash`] | `SHA-256(0x00‖entry)` leaves, `SHA-256(0x01‖l‖r)` nodes | [RFC 6962 §2.1](https://www.rfc-editor.org/rfc/rfc6962.html#section-2.1) |
//! | [`tree`] | tree hashes, inclusion and consistency proofs over stored hashes; the sequencer's [`Frontier`] | RFC 6962 §2.1.1–2.1.2, [RFC 9162 §2.1.3–2.1.4](https://www.rfc-editor.org/rfc/rfc9162.html#section-2.1.3) |
//! | [`tile`] | tile and entry-bundle paths, which tiles a tree has, bundle encoding, hashes from tiles | [c2sp.org/tlog-tiles](https://c2sp.org/tlog-tiles) |
//! | [`checkpoint`] | the signed tree head text | [c2sp.org/tlog-checkpoint](https://c2sp.org/tlog-checkpoint) |
//! | [`note`] | signed notes, Ed25519 keys, vkeys, witness cosignatures | [c2sp.org/signed-note](https://c2sp.org/signed-note), [c2sp.org/tlog-cosignature](https://c2sp.org/tlog-cosignature) |
//! | [`receipt`] | custody's per-event receipt: a signed batch root plus an audit path | this crate |
//!
//! ## Why not the `tlog_tiles` / `signed_note` crates
//!
//! Cloudflare azul's published `tlog_tiles` 0.2.0 and `signed_note` 0.2.0 build on stable Rust
//! and on ed25519-dalek 2 / sha2 0.10, but they do not fit here: `tlog_tiles` 0.2.0 is a port of
//! Go's sumdb tiles, so it writes and accepts `tile/<H>/<L>/<N>` and `tile/<H>/data/<N>`
//! rather than the C2SP `tile/<L>/<N>` and `tile/entries/<N>` (it rejects
//! `tile/0/x001/x234/067`), has no entry-bundle codec and no incremental frontier, and asserts
//! or unwraps on some inputs; `signed_note` 0.2.0 has no tlog-cosignature (type `0x04`)
//! support. Both pull base64 0.21 and thiserror 1 beside the workspace's 0.22 and 2. The
//! formats are small and fully specified, so this crate implements them directly, tested
//! against the RFC 6962, C2SP, Go and Certificate Transparency vectors in `testdata/tlog`.
//!
//! ## Panics
//!
//! None on any input: sizes, indexes, proofs, paths and texts from outside are checked and
//! answered with an [`Error`].

pub mod checkpoint;
pub mod hash;
pub mod note;
pub mod receipt;
pub mod tile;
pub mod tree;

pub use checkpoint::Checkpoint;
pub use hash::{HASH_SIZE, Hash, leaf_hash, node_hash};
pub use note::{
    CosignatureSigner, CosignatureVerifier, Ed25519Signer, Ed25519Verifier, KeyId, Note, NoteSignature, NoteSigner,
    NoteVerifier, VerifiedNote, Verifier,
};
pub use receipt::{Receipt, sign_batch};
pub use tile::{Tile, TileKind};
pub use tree::{
    Appended, Frontier, HashReader, MAX_TREE_SIZE, StoredIndex, check_record, check_tree, prove_record, prove_tree,
    root_from_record_proof, split_stored_hash_index, stored_hash_count, stored_hash_index, stored_hashes, tree_hash,
};

/// Input that does not follow its format. The detail says what was wrong, never echoing the
/// input itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A hash is not 32 bytes of canonical base64.
    #[error("malformed hash: {0}")]
    Hash(&'static str),
    /// A checkpoint text (c2sp.org/tlog-checkpoint).
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    /// A signed note or one of its signature lines (c2sp.org/signed-note).
    #[error("malformed note: {0}")]
    Note(&'static str),
    /// A verifier or signer key string, or a key name.
    #[error("malformed key: {0}")]
    Key(&'static str),
    /// A tile or entry-bundle path (c2sp.org/tlog-tiles).
    #[error("malformed tile path: {0}")]
    TilePath(&'static str),
    /// Tile contents.
    #[error("malformed tile: {0}")]
    Tile(&'static str),
    /// An entry bundle (c2sp.org/tlog-tiles).
    #[error("malformed entry bundle: {0}")]
    EntryBundle(&'static str),
    /// A receipt or its statement.
    #[error("malformed receipt: {0}")]
    Receipt(&'static str),
}

/// Why a tlog operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input does not follow its format.
    #[error(transparent)]
    Malformed(#[from] ParseError),
    /// An index (or old tree size) is not inside the tree it refers to.
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index or old size asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size beyond [`MAX_TREE_SIZE`].
    #[error("tree size {0} exceeds the supported maximum")]
    TreeTooLarge(u64),
    /// A complete subtree that no supported tree contains.
    #[error("subtree {n} at level {level} is outside any supported tree")]
    NodeOutOfRange {
        /// Its level.
        level: u8,
        /// Its index within the level.
        n: u64,
    },
    /// A frontier whose node count does not match its size.
    #[error("frontier of size {size} cannot have {nodes} nodes")]
    InvalidFrontier {
        /// The size given.
        size: u64,
        /// The number of nodes given.
        nodes: usize,
    },
    /// A proof that does not prove what it claims.
    #[error("proof does not verify")]
    InvalidProof,
    /// A hash that storage does not hold (yet).
    #[error("stored hash {} is not available", .0.0)]
    MissingHash(StoredIndex),
    /// A [`HashReader`] or [`tile::TileReader`] returned the wrong number of items.
    #[error("storage returned {got} items for {want} requested")]
    ShortRead {
        /// How many came back.
        got: usize,
        /// How many were asked for.
        want: usize,
    },
    /// Storage failed.
    #[error("reading stored hashes failed")]
    ReadHashes(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No signature on a note is from a known key, so its text must be ignored.
    #[error("note has no signature from a known key")]
    UnverifiedNote,
    /// A signature from a known key does not verify; the whole note is rejected.
    #[error("signature by known key `{name}+{key_id}` does not verify")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: KeyId,
    },
    /// Two known verifiers share a key name and ID, so a signature cannot be attributed.
    #[error("more than one known key is `{name}+{key_id}`")]
    AmbiguousKey {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: KeyId,
    },
    /// The entry given does not hash to the receipt's leaf hash.
    #[error("entry does not match the receipt's leaf hash")]
    LeafMismatch,
    /// An entry longer than an entry bundle's 16-bit length prefix allows.
    #[error("entry of {0} bytes is too large for an entry bundle")]
    EntryTooLarge(usize),
    /// A checkpoint from a different log than expected.
    #[error("checkpoint origin is `{found}`, expected `{expected}`")]
    OriginMismatch {
        /// The origin expected.
        expected: String,
        /// The origin found.
        found: String,
    },
}
