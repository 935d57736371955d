use thiserror::Error;

/// What went wrong in a cryptographic operation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A ciphertext failed authentication: tampered, truncated, or moved from another
    /// record, field or key. Never retried, never ignored.
    #[error("ciphertext failed authentication (tampered, moved, or wrong key)")]
    Integrity,
    /// A ciphertext had an unknown format version or was too short to parse.
    #[error("ciphertext is malformed: {0}")]
    Malformed(&'static str),
    /// The key file could not be read or written.
    #[error("key file `{path}`: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists but is unusable (wrong size, or readable by others).
    #[error("key file `{path}` is unusable: {reason}")]
    KeyFileInvalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The KEK version that wrapped a key is not held: it was destroyed (after a rotation)
    /// or belongs to another deployment.
    #[error("no KEK of version {0}: it was destroyed or never existed here")]
    UnknownKek(u32),
    /// The current KEK cannot be destroyed; rotate to a new one first.
    #[error("KEK version {0} is current; rotate to a new KEK before destroying it")]
    KekInUse(u32),
    /// The key provider (an HSM) failed or refused an operation; `detail` names the call and
    /// the provider's reason. Callers fail closed: nothing is wrapped or unwrapped.
    #[error("key provider `{provider}`: {detail}")]
    Provider {
        /// The provider (`pkcs11`).
        provider: &'static str,
        /// What failed and why.
        detail: String,
    },
}
