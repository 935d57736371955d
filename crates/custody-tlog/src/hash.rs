//! RFC 6962 hashing: the leaf and interior-node hashes of a Merkle Tree Hash (MTH).
//!
//! [RFC 6962 §2.1](https://www.rfc-editor.org/rfc/rfc6962.html#section-2.1) domain-separates
//! leaves from interior nodes with a one-byte prefix (`0x00` and `0x01`), so a leaf can never be
//! passed off as a node (the second-preimage attack on plain Merkle trees). The hash of the
//! empty tree is SHA-256 of the empty string.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::ParseError;

/// Size of a [`Hash`](struct@Hash) in bytes.
pub const HASH_SIZE: usize = 32;

/// A SHA-256 hash in a Merkle tree: a leaf hash, an interior node or a root.
///
/// Text forms are standard base64 (as in checkpoints and proofs) via [`Hash::to_base64`] and
/// [`Hash::from_base64`]; `Debug` shows lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_SIZE]);

impl Hash {
    /// The root of the empty tree, `SHA-256("")` (RFC 6962 §2.1: `MTH({}) = SHA-256()`).
    pub const EMPTY_ROOT: Hash = Hash([
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae,
        0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
    ]);

    /// The hash bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_SIZE] {
        &self.0
    }

    /// Standard base64 with padding, the form used in checkpoints and proofs.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses standard, padded, canonical base64 of exactly 32 bytes.
    ///
    /// # Errors
    ///
    /// [`ParseError::Hash`] if the text is not canonical base64 or does not decode to 32 bytes.
    pub fn from_base64(text: &str) -> Result<Hash, ParseError> {
        // 32 bytes are 44 base64 characters; checking first bounds the work on hostile input.
        if text.len() != 44 {
            return Err(ParseError::Hash("not 44 base64 characters"));
        }
        let bytes = STANDARD.decode(text).map_err(|_| ParseError::Hash("invalid base64"))?;
        Self::from_slice(&bytes)
    }

    /// Takes exactly 32 bytes.
    ///
    /// # Errors
    ///
    /// [`ParseError::Hash`] if `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash, ParseError> {
        <[u8; HASH_SIZE]>::try_from(bytes).map(Hash).map_err(|_| ParseError::Hash("not 32 bytes"))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Hash {
    /// Standard base64, as in checkpoints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::str::FromStr for Hash {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::from_base64(s)
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Hash::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// The hash of a log entry: `SHA-256(0x00 || entry)` (RFC 6962 §2.1).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry);
    Hash(h.finalize().into())
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)` (RFC 6962 §2.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(Hash(Sha256::digest(b"").into()), Hash::EMPTY_ROOT);
    }

    #[test]
    fn leaf_and_node_are_domain_separated() {
        // RFC 6962 reference values (transparency-dev/merkle testonly): leaf "" and leaf 0x00.
        let l0 = leaf_hash(b"");
        let l1 = leaf_hash(&[0x00]);
        assert_eq!(l0.to_base64(), "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=");
        let n = node_hash(&l0, &l1);
        assert_eq!(format!("{n:?}"), "Hash(fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125)");
        let mut concat = Vec::new();
        concat.extend_from_slice(&l0.0);
        concat.extend_from_slice(&l1.0);
        assert_ne!(leaf_hash(&concat), n);
    }

    #[test]
    fn base64_is_strict() {
        let h = leaf_hash(b"hello world");
        // Go's sumdb tlog note test: RecordHash("hello world").
        assert_eq!(h.to_base64(), "TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=");
        assert_eq!(Hash::from_base64(&h.to_base64()), Ok(h));
        for bad in [
            "",
            "TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0",
            "TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb1=", // non-zero trailing bits
            "TszzRgjTG6xce-z2AG31kAXYKBgQVtCSCE40HmuwBb0=", // URL alphabet
            " szzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=",
            "TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=",
        ] {
            assert!(Hash::from_base64(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_uses_base64() {
        let h = leaf_hash(b"x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_base64()));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hash>("\"AAAA\"").is_err());
    }
}
