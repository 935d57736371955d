use thiserror::Error;

/// What went wrong in the vault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The storage engine failed; the operation had no effect.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored bytes do not decode: storage was altered or corrupted.
    #[error("stored record `{0}` is corrupt")]
    Corrupt(String),
    /// A ciphertext or wrapped key failed authentication.
    #[error("integrity check failed for {0}")]
    Integrity(String),
    /// The record does not exist.
    #[error("no record `{0}`")]
    NotFound(String),
    /// A create named an id that is already taken.
    #[error("record `{0}` already exists")]
    AlreadyExists(String),
    /// The subject's key was destroyed: their data is erased.
    #[error("subject `{0}` was erased")]
    Erased(String),
    /// An update tried to move a record to another subject or jurisdiction.
    #[error("record `{0}` belongs to another subject or jurisdiction")]
    OwnerMismatch(String),
    /// A KEK rotation step was asked for in the wrong state.
    #[error("KEK rotation: {0}")]
    Rotation(String),
    /// The key provider failed.
    #[error("key provider: {0}")]
    Key(#[from] custody_crypto::CryptoError),
}

impl From<redb::Error> for VaultError {
    fn from(e: redb::Error) -> Self {
        VaultError::Storage(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for VaultError {
            fn from(e: $t) -> Self {
                VaultError::Storage(e.to_string())
            }
        }
    )*};
}
from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
