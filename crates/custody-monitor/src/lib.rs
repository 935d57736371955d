//! # custody-monitor
//!
//! An independent auditor of a custody transparency log. It depends only on the log formats
//! (`custody-tlog`), the offline verifier (`custody-verify`) and the public event and policy
//! formats (`custody-core`, `custody-policy`), never on server code, so it checks the log the
//! way anyone outside the provider can.
//!
//! - [`follow`]: fetch the signed checkpoint, check its signature (and witness cosignatures),
//!   check it extends the last one verified, fetch every new entry bundle and check every entry
//!   hashes into the signed tree. Any failure is a [`follow::LogFault`] with a clear message.
//! - [`rules`]: judge what the log records against a TOML rule file, including a Cedar replay
//!   of recent denials under each new policy set.
//! - [`witness`]: a C2SP tlog-witness that cosigns checkpoints (c2sp.org/tlog-cosignature)
//!   only when they are consistent with the last one it cosigned.
//! - [`report`]: a self-contained HTML page with charts over the verified entries.
//! - [`history`]: every access to one subject's data, with verified inclusion proofs.
//! - [`memlog`]: a log built in memory and served over loopback HTTP, for benchmarks and tests.

pub mod alert;
pub mod follow;
pub mod history;
pub mod memlog;
pub mod report;
pub mod rules;
pub mod source;
pub mod state;
pub mod witness;

use std::path::PathBuf;

/// Why the monitor could not do its work (as opposed to a log fault it found, which is a
/// [`follow::LogFault`]).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The log could not be reached or answered with an unexpected status.
    #[error("fetching `{url}` failed: {detail}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// A state file could not be read or written.
    #[error("state file `{path}`: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A state file exists but is not what the monitor wrote.
    #[error("state file `{path}` is corrupt: {detail}; move it away to start over")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The rule file is invalid.
    #[error("rule file `{path}`: {detail}")]
    Rules {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A key given on the command line is malformed.
    #[error("malformed key: {0}")]
    Key(String),
    /// The log served an inclusion proof that does not verify against the verified checkpoint.
    #[error("the log's inclusion proof for entry {index} in the tree of size {size} does not verify")]
    ProofFailed {
        /// The entry.
        index: u64,
        /// The verified tree size.
        size: u64,
    },
    /// An internal tree computation failed (a bug, or absurd sizes from the log).
    #[error("tree computation failed: {0}")]
    Tree(#[from] custody_tlog::Error),
}

impl MonitorError {
    pub(crate) fn state(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MonitorError {
        let path = path.into();
        move |source| MonitorError::State { path, source }
    }
}
