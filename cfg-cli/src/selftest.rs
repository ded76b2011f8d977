//! `cfg selftest`: not built yet (see the open issues).

use crate::error::{CliError, CliResult};

/// Arguments of `cfg selftest`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(CliError("`cfg selftest` is not implemented yet".into()))
}
