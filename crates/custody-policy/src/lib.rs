//! # custody-policy
//!
//! Every read, write, search and delete in custody is decided here, by
//! [Cedar](https://docs.cedarpolicy.com/) policies, **once per data class** the request
//! touches. The resource is a `Custody::Data` entity: (collection, data class, jurisdiction,
//! and the subject when one record is concerned); the context carries the principal's
//! location, the boundary's jurisdiction, and the stated purpose, justification and
//! approvals. The schema custody ships (`custody.cedarschema`) fixes those shapes, and every
//! policy set is validated against it in strict mode before it can take effect.
//!
//! Default is deny: a class is released only when some `permit` matches and no `forbid` does.
//!
//! A [`PolicyEngine`] holds the current set behind an atomic pointer: a reload that fails to
//! parse or validate returns Cedar's diagnostics and leaves the previous set in force.

mod engine;
mod error;

pub use engine::{
    CEDAR_SCHEMA, ClassDecision, DenyReason, LoadedPolicies, PolicyEngine, PolicySetHash, PreparedPrincipal,
    RequestContext, ResourceRef,
};
pub use error::PolicyError;
