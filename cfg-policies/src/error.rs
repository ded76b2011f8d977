//! Errors and warnings, each with a file position.

use thiserror::Error;

/// What kind of mistake a policy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not valid RON for the schema (syntax, unknown field, wrong type).
    Syntax,
    /// Valid RON that breaks a rule of the language (unknown ref, inverted window...).
    Invalid,
}

/// A mistake in a policy, at `origin:line:col`.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{origin}:{line}:{col}: {message}")]
pub struct PolicyError {
    /// The file path, or `builtin:NAME`, or `<text>`.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// Syntax or validation.
    pub kind: ErrorKind,
}

/// Something suspicious but allowed (an unused branch), at `origin:line:col`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What was noticed.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: warning: {}", self.origin, self.line, self.col, self.message)
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{0}: is a directory, expected a policy file (.ron)")]
    Directory(String),
    /// Not a path (no `/`, no `.ron`) and not a built-in name.
    #[error(
        "`{0}` is not a built-in policy (run `cfg list` for the library); a policy file is named by a path \
         with a `/` or ending in `.ron` (for example `./{0}.ron`)"
    )]
    NotFound(String),
    /// The policy itself is wrong.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}
