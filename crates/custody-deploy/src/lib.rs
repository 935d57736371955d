//! # custody-deploy
//!
//! Trusted deployment: only code that the provider reviewed and built gets credentials to
//! protected data. The chain, each link in the transparency log:
//!
//! 1. **Review**: a reviewer signs an in-toto statement approving one commit and its tree
//!    ([`statement::review`], DSSE-signed with the reviewer's Ed25519 key).
//! 2. **Build**: [`build::build`] checks that commit out in a clean directory, runs the
//!    build, hashes the declared outputs, and the provider's build key signs an in-toto
//!    Statement with a SLSA provenance v1 predicate in a DSSE envelope ([`dsse`]).
//! 3. **Admission**: the launcher measures the binary ([`attest::Attester`]) and custody
//!    issues a short-lived workload credential only for a digest with a logged, unrevoked
//!    attestation whose commit was reviewed ([`registry::Registry`]). Revoking the digest
//!    revokes every credential issued for it.
//!
//! See [`attest`] for what the measurement proves on plain Linux and how hardware
//! attestation slots in.

pub mod attest;
pub mod build;
pub mod dsse;
pub mod keys;
pub mod registry;
pub mod statement;

/// Why a deployment step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// A DSSE envelope is malformed or its signature does not verify.
    #[error("envelope: {0}")]
    Envelope(String),
    /// A key file or public key is unusable.
    #[error("key {0}")]
    Key(String),
    /// The checkout, build command or outputs failed.
    #[error("build: {0}")]
    Build(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The registry failed.
    #[error("deploy registry: {0}")]
    Store(String),
    /// No such review or artifact.
    #[error("no {0}")]
    NotFound(String),
    /// A statement is not what the step needs (wrong type, no commit, unreviewed commit).
    #[error("{0}")]
    Refused(String),
}
