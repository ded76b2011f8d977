//! The CLI's error: a message for the terminal; the process exits 1.

/// A failed command. Any displayable error converts into one.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// What every command returns.
pub type CliResult = Result<std::process::ExitCode, CliError>;
