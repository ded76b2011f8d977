//! `cfg check FILE|NAME...`: validate policies.

use crate::error::{CliError, CliResult};
use cfg_core::expr::Expr;
use std::process::ExitCode;

/// Arguments of `cfg check`.
#[derive(clap::Args)]
pub struct Args {
    /// Policy files or built-in names; with none, the whole built-in library.
    pub policies: Vec<String>,
}

pub fn run(args: Args) -> CliResult {
    let targets: Vec<String> = if args.policies.is_empty() {
        cfg_policies::library::names().into_iter().map(String::from).collect()
    } else {
        args.policies
    };
    let mut failed = 0usize;
    for t in &targets {
        match cfg_policies::resolve(t) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("{w}");
                }
                println!("{}", summary(&loaded));
            }
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(CliError(format!("{failed} of {} policies failed validation", targets.len())));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line: name, branches, outputs, operators.
pub fn summary(loaded: &cfg_policies::Loaded) -> String {
    let p = &loaded.policy;
    let mut ops: Vec<&str> = Vec::new();
    let mut stack: Vec<&Expr> = p.outputs.iter().map(|(_, o)| &o.guidance).collect();
    stack.extend(p.values.iter().map(|(_, e)| e));
    while let Some(e) = stack.pop() {
        if !matches!(e, Expr::Ref(_) | Expr::Use(_) | Expr::Sum(_) | Expr::Diff(..)) {
            ops.push(e.operator());
        }
        stack.extend(e.children());
    }
    ops.sort();
    ops.dedup();
    let branches: Vec<&str> = p.branches.names().collect();
    let outputs: Vec<&str> = p.outputs.names().collect();
    format!(
        "ok {}: {} branches ({}), {} outputs ({}), operators: {}",
        loaded.origin,
        branches.len(),
        branches.join(", "),
        outputs.len(),
        outputs.join(", "),
        ops.join(", ")
    )
}
