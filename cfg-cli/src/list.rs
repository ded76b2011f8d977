//! `cfg list`: the built-in policy library.

use crate::error::CliResult;
use std::process::ExitCode;

/// Arguments of `cfg list`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    for name in cfg_policies::library::names() {
        let loaded = cfg_policies::resolve(name)?;
        let p = &loaded.policy;
        println!("{name:<20} {:<2} branches  {}", p.branches.len(), p.summary);
    }
    Ok(ExitCode::SUCCESS)
}
