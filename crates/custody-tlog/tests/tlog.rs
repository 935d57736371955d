//! custody-tlog's integration tests: published test vectors (`testdata/tlog`, see its README)
//! and property tests of the tree, tile and format invariants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "tlog/properties.rs"]
mod properties;
#[path = "tlog/vectors.rs"]
mod vectors;
