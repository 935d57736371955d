//! # custody-server
//!
//! The guarded data path. A request is authenticated ([`auth`]), each data class it touches
//! is decided by Cedar ([`custody_policy`]), the vault opens only permitted fields, the
//! access event is made durable by the audit sink, and only then is anything released.
//!
//! [`guard::Guard`] is that path without HTTP, so it can be tested and benchmarked in
//! process; [`api::app`] puts it behind axum with problem+json errors, OpenAPI, health and
//! Prometheus metrics; [`admin`] holds the operator operations (principals, policy reload)
//! served on a unix socket inside the data dir.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod deploy;
pub mod egress;
pub mod error;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod setup;
pub mod subject;
pub mod tls;
pub mod witness;

pub use custody_api as wire;
pub use error::ApiError;
pub use guard::{Guard, GuardError};
pub use setup::{DataDir, KeyProviderConfig, ServerConfig, ServerState, Storage, open_principal_store};
