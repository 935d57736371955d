//! # custody-pg
//!
//! The PostgreSQL backend: [`PgStore`] implements the vault's [`custody_vault::RecordStore`],
//! [`custody_vault::KeyStore`] and [`custody_vault::PrincipalStore`], and [`PgLogStorage`]
//! implements [`custody_log::LogStorage`], so a node can keep its state in a database that
//! operators already run at scale instead of the embedded redb files.
//!
//! ## Layout
//!
//! Three schemas, each created by the migrations in `migrations/` (applied at connect, under an
//! advisory lock so that several nodes starting at once apply them once):
//!
//! - `custody_records`: records (with the subject as a column, the distribution key when
//!   sharding by subject), blind-index entries, principals;
//! - `custody_keys`: wrapped subject DEKs and system keys; with [`PgConfig::keys_url`] this
//!   schema lives in a different database (or cluster) from records, so a copy of the records
//!   database alone decrypts nothing, and crypto-shredding destroys a key where no record
//!   backup holds it;
//! - `custody_log`: the transparency log's frames, tiles and checkpoint, and the row naming
//!   the node that holds the log's sequencer [`Lease`] (several nodes, one writer).
//!
//! ## Why tokio-postgres on a runtime of its own
//!
//! The storage traits are synchronous, and the server calls them both from `spawn_blocking`
//! (writes) and directly from its async handlers (reads). The synchronous `postgres` crate
//! drives each connection with a private `block_on`, which panics inside a tokio runtime, so it
//! cannot serve the read path. Instead this crate owns a small multi-threaded tokio runtime
//! with a `deadpool` pool of `tokio-postgres` connections; a trait method spawns its query
//! there and waits on a channel. The caller's thread blocks for one round trip, exactly as it
//! blocks on a redb read today, and never enters the other runtime.

mod db;
mod error;
mod lease;
mod log_storage;
mod store;
pub mod testing;

pub use db::PgConfig;
pub use error::PgError;
pub use lease::{Election, Lease, Seen};
pub use log_storage::PgLogStorage;
pub use store::PgStore;
