//! # custody-core
//!
//! The vocabulary every other custody crate speaks: validated identifiers, the declared
//! schema of collections and data classes, the shape of a record, and the access event that
//! records each decision. Nothing here does I/O, so the verifier and monitor can depend on it
//! without pulling in storage or server code.
//!
//! Identifiers are newtypes that can only be built through validation ("parse, don't
//! validate"): once a handler holds a [`RecordId`] it knows the id is bounded and printable.

mod error;
mod event;
mod id;
mod principal;
mod schema;

pub use error::{IdError, SchemaError, SchemaFileError};
pub use event::{
    AccessEvent, Action, Decision, DeployEvent, ExportEvent, ExportField, FieldOutcome, KeyEvent, LogEntry,
    PolicySetEvent, PrincipalEvent, PseudonymId, SubjectEvent,
};
pub use id::{CollectionName, DataClass, FieldName, Jurisdiction, PrincipalId, RecordId, SubjectId};
pub use principal::{PrincipalAttrs, PrincipalKind, PrincipalRecord};
pub use schema::{ClassSpec, CollectionSchema, DEFAULT_CLASSES, FieldSpec, FieldType, Schema, ValidatedFields};
