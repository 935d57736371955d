use thiserror::Error;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgError {
    /// The connection string does not parse.
    #[error("postgres url `{url}` is not valid: {detail} (try `host=/run/postgresql dbname=custody user=custody`)")]
    Url {
        /// The offending string, as given.
        url: String,
        /// What the driver said.
        detail: String,
    },
    /// No connection could be had from the pool (server down, wrong credentials, pool exhausted).
    #[error("cannot get a PostgreSQL connection: {0}")]
    Connect(String),
    /// A statement failed; the operation had no effect.
    #[error("PostgreSQL: {0}")]
    Query(String),
    /// A migration failed; the schema is as it was before it.
    #[error("migration `{name}` failed: {detail}")]
    Migration {
        /// The migration's name.
        name: String,
        /// What PostgreSQL said.
        detail: String,
    },
    /// A stored value does not decode: the database was altered or corrupted.
    #[error("stored value `{0}` is corrupt")]
    Corrupt(String),
    /// The client runtime could not start, or stopped while a query was pending.
    #[error("PostgreSQL client runtime: {0}")]
    Runtime(String),
    /// This node's sequencer lease was superseded (another node took over the log); it must
    /// stop writing the log.
    #[error("this node no longer holds the log's sequencer lease (its epoch {0} was superseded)")]
    Deposed(i64),
    /// A throwaway cluster for tests or benchmarks could not be started.
    #[error("temporary PostgreSQL: {0}")]
    Temp(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Query(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Connect(describe(&e)),
            other => PgError::Connect(other.to_string()),
        }
    }
}

impl From<PgError> for custody_vault::VaultError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Corrupt(what) => custody_vault::VaultError::Corrupt(what),
            other => custody_vault::VaultError::Storage(other.to_string()),
        }
    }
}

impl From<PgError> for std::io::Error {
    fn from(e: PgError) -> Self {
        std::io::Error::other(e)
    }
}

/// The server's own message when there is one: the driver's `Display` alone says only "db error".
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}
