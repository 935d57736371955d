use thiserror::Error;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of identifier (e.g. "record id").
        kind: &'static str,
    },
    /// The identifier was longer than its kind allows.
    #[error("{kind} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Which kind of identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The identifier was shorter than its kind allows.
    #[error("{kind} is {len} bytes long, the minimum is {min}")]
    TooShort {
        /// Which kind of identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The minimum in bytes.
        min: usize,
    },
    /// The identifier contained a character its kind does not allow.
    #[error("{kind} `{value}` contains `{ch}`; allowed: {allowed}")]
    BadChar {
        /// Which kind of identifier.
        kind: &'static str,
        /// The refused value, truncated for display.
        value: String,
        /// The first refused character.
        ch: char,
        /// A human description of the allowed alphabet.
        allowed: &'static str,
    },
}

/// A record that does not match its collection's declared schema.
///
/// Each variant names the field (or collection) at fault so an API can answer 400 with it.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The collection is not declared.
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    /// A field that the collection does not declare.
    #[error("unknown field `{field}` in collection `{collection}`")]
    UnknownField {
        /// The collection.
        collection: String,
        /// The undeclared field.
        field: String,
    },
    /// A value of the wrong JSON type.
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        /// The field.
        field: String,
        /// The declared type.
        expected: &'static str,
        /// What the request sent.
        got: &'static str,
    },
    /// A string value that does not parse as its declared type (e.g. a bad date).
    #[error("field `{field}`: {reason}")]
    BadValue {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required field was missing.
    #[error("missing required field `{0}`")]
    MissingField(String),
    /// A value longer than the per-field limit.
    #[error("field `{field}` is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// The field.
        field: String,
        /// Its encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The record's `subject` is missing.
    #[error("missing `subject`: every record must name the end user it is about")]
    MissingSubject,
    /// An identifier in the record was malformed.
    #[error("{0}")]
    BadId(#[from] IdError),
}

/// A schema file that cannot be used; each problem carries its key path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SchemaFileError {
    /// The file is not valid TOML or does not have the expected shape.
    #[error("schema is not valid: {0}")]
    Parse(String),
    /// The file parsed but has problems; all of them are listed.
    #[error("schema has {} problem(s): {}", .0.len(), .0.join("; "))]
    Invalid(Vec<String>),
}
