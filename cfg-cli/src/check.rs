//! `cfg check FILE|NAME...`: validate policies.

use crate::error::{CliError, CliResult};
use cfg_core::expr::Expr;
use std::process::ExitCode;

/// Arguments of `cfg check`.
#[derive(clap::Args)]
pub struct Args {
    /// Policies: files (a path with a `/` or ending in `.ron`) or built-in
    /// names; with none, the whole built-in library.
    pub policies: Vec<String>,
    /// The same, as an option (repeatable).
    #[arg(long = "policy", value_name = "POLICY")]
    pub flagged: Vec<String>,
    /// Also list every numeric parameter with its `--set` path and value.
    #[arg(long)]
    pub params: bool,
}

pub fn run(args: Args) -> CliResult {
    let given: Vec<String> = args.policies.into_iter().chain(args.flagged).collect();
    let targets: Vec<String> =
        if given.is_empty() { cfg_policies::library::names().into_iter().map(String::from).collect() } else { given };
    let mut failed = 0usize;
    for t in &targets {
        match cfg_policies::resolve(t) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("{w}");
                }
                println!("{}", summary(&loaded));
                if args.params {
                    for p in cfg_policies::params::parameters(&loaded.policy) {
                        match p.value {
                            Some(v) => println!("  --set {}={v}", p.path),
                            // A declared scale with a schedule, or an absent optional field.
                            None if !p.path.contains('.') => {
                                println!("  --set {}=V  (a schedule now; V makes it constant)", p.path)
                            }
                            None => println!("  --set {}=V  (absent now)", p.path),
                        }
                    }
                }
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
