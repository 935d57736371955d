//! Exit codes, distinct per kind of failure so scripts can act on them.

/// The process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Success.
    Ok = 0,
    /// Something failed (I/O, storage, an unexpected answer).
    Error = 1,
    /// Bad input: arguments, config, schema or policy files.
    BadInput = 2,
    /// The operation was refused (denied, conflict, not found).
    Refused = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error carrying the exit code it should produce.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) Exit, pub(crate) String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Failure {}

/// An `anyhow` error with an exit code.
pub(crate) fn fail(code: Exit, msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure(code, msg.into()))
}
