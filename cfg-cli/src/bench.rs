//! `cfg bench`: not built yet (see the open issues).

use crate::error::{CliError, CliResult};

/// Arguments of `cfg bench`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(CliError("`cfg bench` is not implemented yet".into()))
}
