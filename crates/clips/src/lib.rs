//! # clips
//!
//! The reference short-video social app hosted inside a custody boundary. clips keeps no
//! database of its own: users, videos (and their bytes, as content-addressed chunks), follows,
//! likes, comments and watch events all live in custody, reached through
//! [`custody_client`] as one workload principal. Every read and write clips makes is therefore
//! decided by Cedar policy and recorded in custody's transparency log.
//!
//! - [`store`]: clips' data model on top of custody collections (the only storage).
//! - [`media`]: splitting video bytes into SHA-256-addressed chunks and putting them back.
//! - [`feed`]: the For You feed, ranked from follows, engagement and watch history.
//! - [`api`]: the HTTP JSON API.
//! - [`seed`]: synthetic users, videos and activity for demos and benchmarks.
//! - [`deploy`]: clips' custody schema and Cedar policies, which live beside this crate.

pub mod api;
pub mod deploy;
pub mod error;
pub mod feed;
pub mod media;
pub mod seed;
pub mod store;

pub use error::ClipsError;
pub use store::Store;
