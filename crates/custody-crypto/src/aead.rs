//! Field sealing with XChaCha20-Poly1305 and context-bound associated data.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CryptoError;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// A 256-bit symmetric key: a subject's DEK, or a KEK. Zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes, for wrapping.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// The version of a subject's DEK; bound into every ciphertext so a rotated key cannot be
/// confused with its predecessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(pub u32);

/// Where a sealed value belongs. All of it is authenticated as associated data.
#[derive(Debug, Clone, Copy)]
pub struct FieldContext<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The record id.
    pub record: &'a str,
    /// The field name.
    pub field: &'a str,
    /// The DEK version the value is sealed under.
    pub key_version: KeyVersion,
}

impl FieldContext<'_> {
    /// Length-prefixed encoding, so no two distinct contexts share bytes.
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.collection.len() + self.record.len() + self.field.len());
        out.extend_from_slice(b"custody/field/v1");
        for part in [self.collection, self.record, self.field] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(&self.key_version.0.to_be_bytes());
        out
    }
}

/// Seals `plaintext` for the place `ctx` names.
///
/// Output: format byte, 24-byte random nonce, ciphertext with tag.
pub fn seal_field(key: &DataKey, ctx: &FieldContext<'_>, plaintext: &[u8]) -> Vec<u8> {
    seal_raw(key, &ctx.aad(), plaintext)
}

/// Opens a value sealed by [`seal_field`] for the same context.
///
/// # Errors
/// [`CryptoError::Integrity`] if the bytes were altered or belong to another context or key;
/// [`CryptoError::Malformed`] if they are not a custody ciphertext at all.
pub fn open_field(key: &DataKey, ctx: &FieldContext<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    open_raw(key, &ctx.aad(), sealed)
}

pub(crate) fn seal_raw(key: &DataKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let mut nonce = [0u8; NONCE_LEN];
    // Nonce uniqueness: XChaCha20's 192-bit nonces are drawn at random, so two seals under one
    // key collide with probability about n²/2¹⁹³ (negligible for any n a key ever sees). The
    // draw comes from the per-thread CSPRNG (ChaCha12, seeded from the OS and reseeded from it
    // periodically and after fork), which is as unpredictable as the OS generator for this
    // purpose but costs no system call per field: the OS generator here was one `getrandom`
    // per sealed field, a visible share of bulk writes.
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    // Encryption with a valid key and in-memory buffers cannot fail; an error here would
    // mean a broken AEAD implementation, so we refuse to emit anything rather than panic.
    match cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad }) {
        Ok(ct) => out.extend_from_slice(&ct),
        Err(_) => out.clear(),
    }
    out
}

pub(crate) fn open_raw(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (&format, rest) = sealed.split_first().ok_or(CryptoError::Malformed("empty"))?;
    if format != FORMAT_V1 {
        return Err(CryptoError::Malformed("unknown format version"));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("too short"));
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| CryptoError::Integrity)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn ctx<'a>(record: &'a str, field: &'a str) -> FieldContext<'a> {
        FieldContext { collection: "profiles", record, field, key_version: KeyVersion(1) }
    }

    #[test]
    fn round_trip() {
        let k = DataKey::generate();
        let sealed = seal_field(&k, &ctx("r1", "email"), b"a@b.c");
        assert_eq!(open_field(&k, &ctx("r1", "email"), &sealed).unwrap(), b"a@b.c");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let k = DataKey::generate();
        let sealed = seal_field(&k, &ctx("r1", "email"), b"secret value");
        for i in 0..sealed.len() * 8 {
            let mut t = sealed.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(open_field(&k, &ctx("r1", "email"), &t).is_err(), "bit {i}");
        }
    }

    #[test]
    fn moved_ciphertext_is_rejected() {
        let k = DataKey::generate();
        let sealed = seal_field(&k, &ctx("r1", "email"), b"x");
        assert!(matches!(open_field(&k, &ctx("r2", "email"), &sealed), Err(CryptoError::Integrity)));
        assert!(matches!(open_field(&k, &ctx("r1", "phone"), &sealed), Err(CryptoError::Integrity)));
        let other = FieldContext { key_version: KeyVersion(2), ..ctx("r1", "email") };
        assert!(matches!(open_field(&k, &other, &sealed), Err(CryptoError::Integrity)));
        assert!(matches!(open_field(&DataKey::generate(), &ctx("r1", "email"), &sealed), Err(CryptoError::Integrity)));
    }

    #[test]
    fn contexts_do_not_collide_by_concatenation() {
        assert_ne!(ctx("ab", "c").aad(), ctx("a", "bc").aad());
    }
}
