//! `cfg graph FILE|NAME`: print the branch graph.

use crate::error::CliResult;
use std::process::ExitCode;

/// Output format of the graph.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Graphviz DOT.
    Dot,
    /// An indented tree per output.
    Text,
}

/// Arguments of `cfg graph`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub policy: crate::policy_arg::PolicyArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub fn run(args: Args) -> CliResult {
    let loaded = cfg_policies::resolve(args.policy.required()?)?;
    let graph = cfg_policies::graph::build(&loaded.policy);
    match args.format {
        Format::Dot => print!("{}", graph.to_dot(&loaded.policy.name)),
        Format::Text => print!("{}", graph.to_text()),
    }
    Ok(ExitCode::SUCCESS)
}
