//! # custody-egress
//!
//! The egress gateway's machinery: the only way data leaves the boundary. The server decides
//! *whether* a principal may export which data classes to which destination (Cedar, action
//! `export`); this crate decides *how* each field may cross and produces exactly the bytes
//! that leave, with their SHA-256 for the log entry.
//!
//! - [`Profiles`]: provider-controlled export profiles declaring per field `drop`, `pass`
//!   (unencrypted classes only), `pseudonymise`, a generalisation (`year`, `month`,
//!   `country`, `region`, `bucket:<width>`) or `aggregate` (only inside aggregates). A field
//!   a profile does not name is dropped, so a new field never leaks by default.
//! - [`ExportRequest`] → [`Plan`]: what was asked, checked against the profile and schema.
//!   Filters apply to transformed values only, so a filter cannot probe protected values.
//! - [`Exporter`]: transforms rows (pseudonyms are HMAC-SHA-256 under a key derived per
//!   destination and epoch: stable within an epoch, unlinkable across destinations and
//!   epochs) or aggregates them (counts and clamped sums, groups below `k` suppressed,
//!   optional Laplace or Gaussian noise), writing NDJSON or Parquet ([`OutputFormat`])
//!   through a [`DigestWriter`].
//! - [`BudgetStore`]: each destination's spent epsilon, durably committed before any noisy
//!   output exists, so neither a crash nor a restart refunds budget.
//!
//! - [`RowFormatter`]: the per-record half of a row export, shareable across threads, so a
//!   scan can format pages in parallel and hand [`FormattedRows`] to the [`Exporter`] in
//!   order, for exactly the bytes pushing each record would give.
//!
//! Memory is bounded by one row (NDJSON row exports), one row group (Parquet, at most 65,536
//! rows or 32 MiB of values) or the number of groups (aggregates, capped at [`MAX_GROUPS`]),
//! never by the number of records.

mod aggregate;
mod budget;
mod columnar;
mod error;
mod output;
mod profile;
mod request;
mod transform;

pub use aggregate::{MAX_GROUPS, Mechanism, NoiseSpec};
pub use budget::BudgetStore;
pub use error::EgressError;
pub use output::{DigestWriter, Exporter, FormattedRows, RowFormatter, Summary};
pub use profile::{Profile, Profiles, Transform};
pub use request::{AggregateSpec, Column, ExportRequest, Filter, OutputFormat, Plan, PlanKind, SumColumn, SumSpec};
pub use transform::{Pseudonymiser, epoch_at, generalise};
