use thiserror::Error;

/// Why a policy set could not be loaded; the previous set (if any) stays in force.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy directory or a file in it could not be read.
    #[error("cannot read policies at `{path}`: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory holds no `.cedar` file; an empty set would deny everything silently.
    #[error("no `.cedar` policy file in `{0}`")]
    Empty(String),
    /// A file does not parse as Cedar.
    #[error("`{file}` does not parse: {diagnostics}")]
    Parse {
        /// The file.
        file: String,
        /// Cedar's diagnostics.
        diagnostics: String,
    },
    /// Two policies share an id.
    #[error("policy id `{0}` is used twice")]
    DuplicateId(String),
    /// The set parses but does not validate against custody's Cedar schema.
    #[error("policy set does not validate against the custody schema: {0}")]
    Validation(String),
    /// The built-in Cedar schema failed to load (a bug in custody).
    #[error("custody's Cedar schema is invalid: {0}")]
    Schema(String),
}
