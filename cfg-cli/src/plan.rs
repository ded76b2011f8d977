//! `cfg plan`: not built yet (see the open issues).

use crate::error::{CliError, CliResult};

/// Arguments of `cfg plan`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(CliError("`cfg plan` is not implemented yet".into()))
}
