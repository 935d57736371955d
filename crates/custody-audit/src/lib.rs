//! # custody-audit
//!
//! custody releases nothing until the access event that records the decision is durable.
//! This crate defines that contract, the [`AuditSink`] trait, and the embedded default: an
//! append-only, hash-chained, fsynced event file ([`FileAuditSink`]).
//!
//! ## Group commit
//! One fsync per event would cap custody at the disk's sync rate. The file sink runs a single
//! writer thread that takes every event queued while the previous sync ran, writes them in
//! one go, syncs once, and only then acknowledges each of them. Latency stays about one sync;
//! throughput grows with concurrency.
//!
//! ## Failure
//! If a write or sync fails the sink stops accepting events for good (fail closed): the
//! server answers 503 and releases nothing, and an operator must look at the disk. A torn
//! last line (a crash during a write) was never acknowledged and is cut off at the next open.

mod file;

pub use file::{FileAuditSink, FileSinkOptions};

use custody_core::LogEntry;
use thiserror::Error;

/// Proof that an event was made durable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditReceipt {
    /// The event's position in the sink (0-based).
    pub index: u64,
    /// Sink-specific evidence (the transparency log puts its signed receipt here).
    pub detail: serde_json::Value,
}

/// Why an event could not be made durable. Callers must fail closed on every variant.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The sink's queue is full; retry later (HTTP 503 with Retry-After).
    #[error("audit queue is full")]
    Overloaded,
    /// The sink failed to write or sync and accepts nothing more.
    #[error("audit sink failed: {0}")]
    Failed(String),
    /// The sink was shut down.
    #[error("audit sink is closed")]
    Closed,
}

/// A receipt the sink's writer left for the waiting task to build: the writer only hands
/// over what it has, so formatting receipts never holds up the next batch.
pub type Deferred = Box<dyn FnOnce() -> Result<AuditReceipt, AuditError> + Send>;

/// How a [`Pending`] is answered.
enum Answer {
    /// With the finished receipt.
    Ready(tokio::sync::oneshot::Receiver<Result<AuditReceipt, AuditError>>),
    /// With a receipt the waiting task finishes ([`Deferred`]).
    Deferred(tokio::sync::oneshot::Receiver<Result<Deferred, AuditError>>),
}

/// An event handed to a sink, durable once [`Pending::durable`] resolves.
pub struct Pending(Answer);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Answer::Ready(_) => "Pending(ready)",
            Answer::Deferred(_) => "Pending(deferred)",
        })
    }
}

impl Pending {
    /// Builds a pending acknowledgement from a channel a sink will answer on.
    pub fn new(rx: tokio::sync::oneshot::Receiver<Result<AuditReceipt, AuditError>>) -> Self {
        Self(Answer::Ready(rx))
    }

    /// Builds a pending acknowledgement whose receipt the waiting task finishes: the sink
    /// answers, once the event is durable, with a [`Deferred`] that builds it.
    pub fn deferred(rx: tokio::sync::oneshot::Receiver<Result<Deferred, AuditError>>) -> Self {
        Self(Answer::Deferred(rx))
    }

    /// Waits until the event is durable.
    ///
    /// # Errors
    /// Any [`AuditError`]; a sink that vanished counts as [`AuditError::Closed`].
    pub async fn durable(self) -> Result<AuditReceipt, AuditError> {
        match self.0 {
            Answer::Ready(rx) => rx.await.unwrap_or(Err(AuditError::Closed)),
            Answer::Deferred(rx) => rx.await.unwrap_or(Err(AuditError::Closed)).and_then(|finish| finish()),
        }
    }

    /// Blocking variant of [`Pending::durable`] for non-async callers.
    ///
    /// # Errors
    /// As [`Pending::durable`].
    pub fn wait(self) -> Result<AuditReceipt, AuditError> {
        match self.0 {
            Answer::Ready(rx) => rx.blocking_recv().unwrap_or(Err(AuditError::Closed)),
            Answer::Deferred(rx) => rx.blocking_recv().unwrap_or(Err(AuditError::Closed)).and_then(|finish| finish()),
        }
    }
}

/// Where access events (and the policy, principal and key changes that give them meaning) go
/// before anything is released.
pub trait AuditSink: Send + Sync + 'static {
    /// Queues `entry`; the returned [`Pending`] resolves once it is durable.
    ///
    /// # Errors
    /// [`AuditError::Overloaded`] when the queue is full, [`AuditError::Failed`] or
    /// [`AuditError::Closed`] when the sink cannot accept anything.
    fn submit(&self, entry: &LogEntry) -> Result<Pending, AuditError>;
}
