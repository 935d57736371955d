//! What can go wrong in the egress gateway, each variant saying what to change.

use thiserror::Error;

/// Why an export could not be planned or produced.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The profile file does not parse.
    #[error("export profiles: {0}")]
    ProfileParse(String),
    /// The profiles contradict the schema; every problem with its key path.
    #[error("export profiles are invalid: {}", .0.join("; "))]
    ProfileInvalid(Vec<String>),
    /// The request is malformed or asks for something its profile does not allow.
    #[error("{0}")]
    BadRequest(String),
    /// An aggregate has more groups than the gateway keeps in memory.
    #[error("the aggregate has more than {0} groups; group by coarser fields")]
    TooManyGroups(usize),
    /// The destination's differential-privacy budget cannot pay for this export.
    #[error(
        "the epsilon budget of destination `{destination}` is exhausted: {spent} spent of {limit}, this export asks {asked}"
    )]
    BudgetExhausted {
        /// The destination.
        destination: String,
        /// Epsilon spent so far.
        spent: f64,
        /// Epsilon this export asks for.
        asked: f64,
        /// The destination's total budget.
        limit: f64,
    },
    /// The budget store failed; nothing was charged and nothing is released.
    #[error("epsilon budget store: {0}")]
    Budget(String),
    /// Encoding the Parquet output failed, or a value did not fit its column's type.
    #[error("writing the Parquet export: {0}")]
    Parquet(String),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for EgressError {
            fn from(e: $t) -> Self {
                EgressError::Budget(e.to_string())
            }
        }
    )*};
}
from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
