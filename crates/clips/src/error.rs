//! What can go wrong in clips, each variant saying what to do about it.

use custody_client::ClientError;
use thiserror::Error;

/// Why a clips operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClipsError {
    /// custody refused or failed the request; its status and problem say why.
    #[error("custody: {0}")]
    Custody(#[from] ClientError),
    /// The user, video or comment does not exist.
    #[error("no {0}")]
    NotFound(String),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    BadInput(String),
    /// Stored data is not what clips wrote (a chunk whose bytes do not match its address).
    #[error("integrity: {0}")]
    Integrity(String),
}

impl ClipsError {
    /// The HTTP status clips answers with.
    pub fn status(&self) -> u16 {
        match self {
            ClipsError::Custody(e) => match e.status().map(|s| s.as_u16()) {
                Some(404) => 404,
                Some(403) => 403,
                Some(409) => 409,
                Some(400) => 400,
                // The record's subject was erased: gone for good, not a failure of custody.
                Some(410) => 410,
                _ => 502,
            },
            ClipsError::NotFound(_) => 404,
            ClipsError::BadInput(_) => 400,
            ClipsError::Integrity(_) => 500,
        }
    }

    /// Whether custody answered that the record does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClipsError::NotFound(_)) || self.status() == 404
    }
}
