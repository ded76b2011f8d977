//! `cfg combine`: not built yet (see the open issues).

use crate::error::{CliError, CliResult};

/// Arguments of `cfg combine`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(CliError("`cfg combine` is not implemented yet".into()))
}
