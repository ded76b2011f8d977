//! `cfg sample`: not built yet (see the open issues).

use crate::error::{CliError, CliResult};

/// Arguments of `cfg sample`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(CliError("`cfg sample` is not implemented yet".into()))
}
