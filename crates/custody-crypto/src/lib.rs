//! # custody-crypto
//!
//! The cryptography of the vault, kept free of storage and HTTP so it can be reviewed alone.
//!
//! - **Field encryption**: every value of an encrypted data class is sealed with
//!   XChaCha20-Poly1305 under its subject's data key (DEK). The associated data binds
//!   collection, record id, field and key version ([`FieldContext`]), so a ciphertext copied
//!   onto another record or field fails to open instead of yielding the wrong plaintext.
//!   XChaCha's 192-bit nonces make random nonces safe for the life of a key.
//! - **Key wrapping**: DEKs are stored only wrapped by the provider's key-encryption key
//!   through a [`KeyProvider`]. The default [`FileKeyProvider`] keeps the KEK in a 0600 file
//!   apart from record storage; an HSM provider can implement the same trait.
//! - **Blind indexes and pseudonyms**: HMAC-SHA-256 under keys that never leave the provider,
//!   so equality search never stores plaintext and events name subjects only by pseudonym.
//!
//! Destroying a subject's wrapped DEK makes every ciphertext sealed under it unreadable: that
//! is crypto-shredding.

mod aead;
mod error;
mod keyed;
mod provider;

pub use aead::{DataKey, FieldContext, KeyVersion, open_field, open_field_into, seal_field};
pub use error::CryptoError;
pub use keyed::{BlindIndexKey, BlindIndexTerm, PseudonymKey};
pub use provider::{FileKeyProvider, KeyProvider};
