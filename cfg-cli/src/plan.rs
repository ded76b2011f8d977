//! `cfg plan`: the per-step plan of a policy over M ranks, without running it.

use crate::error::{CliError, CliResult};
use crate::models::{build, bytes, outputs_in_policy_order, overrides, ModelKind};
use cfg_runtime::plan::{plan_run, Mode};
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use std::process::ExitCode;

/// Arguments of `cfg plan`.
#[derive(clap::Args)]
pub struct Args {
    /// A policy file or built-in name.
    #[arg(long, default_value = cfg_policies::library::DEFAULT)]
    pub policy: String,
    /// World size M.
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Number of steps (default: the policy's own, else 32).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The model whose outputs and sizes are planned for.
    #[arg(long, value_enum, default_value = "gmm2d")]
    pub model: ModelKind,
    /// Batch size of the model.
    #[arg(long)]
    pub batch: Option<usize>,
    /// The scheduler (its sigmas drive sigma windows).
    #[arg(long, default_value = "euler")]
    pub sampler: SamplerKind,
    /// Plan the deterministic mode (always gather) instead of the fast one.
    #[arg(long)]
    pub deterministic: bool,
    /// Scale overrides, NAME=V.
    #[arg(long = "scale")]
    pub scales: Vec<String>,
}

pub fn run(args: Args) -> CliResult {
    if args.ranks == 0 {
        return Err(CliError("--ranks must be at least 1".into()));
    }
    let loaded = cfg_policies::resolve(&args.policy)?;
    let policy = loaded.policy;
    let steps = args.steps.or(policy.steps).unwrap_or(32);
    if steps == 0 {
        return Err(CliError("--steps must be at least 1".into()));
    }
    let model = build(args.model, &policy, args.batch);
    let outputs = outputs_in_policy_order(&model, &policy);
    let over = overrides(&policy, &args.scales).map_err(CliError)?;
    let mode = if args.deterministic { Mode::Deterministic } else { Mode::Fast };
    let times = Sampler::new(args.sampler).times(steps);
    let plans = plan_run(&policy, &over, &outputs, &model, args.ranks, mode, &times)?;

    let declared: Vec<&str> = policy.branches.names().collect();
    println!("policy `{}` ({}): {} branches [{}]", policy.name, loaded.origin, declared.len(), declared.join(", "));
    for o in &outputs {
        println!("  output `{}`: {} {} ({} per prediction)", o.name, o.shape, o.dtype, bytes(o.bytes()));
    }
    println!(
        "{} ranks, {steps} steps, {} sampler, {} mode{}",
        args.ranks,
        args.sampler,
        if args.deterministic { "deterministic" } else { "fast" },
        if has_adaptive(&policy) { " (adaptive guidance is assumed not to latch)" } else { "" }
    );
    println!();
    let mut rows: Vec<[String; 9]> =
        vec![["step", "t", "active", "rank: batched calls", "idle", "collective", "gather", "reduce", "saved"]
            .map(String::from)];
    for (plan, (t, _)) in plans.iter().zip(&times) {
        let ranks: Vec<String> = plan
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(r, groups)| {
                let calls: Vec<String> = groups
                    .iter()
                    .map(|g| format!("[{}]", g.iter().map(|&i| plan.active[i].as_str()).collect::<Vec<_>>().join(",")))
                    .collect();
                format!("{r}:{}", calls.join(""))
            })
            .collect();
        let idle = if plan.idle.is_empty() {
            "-".to_string()
        } else {
            plan.idle.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")
        };
        let saved = if plan.skipped.is_empty() { "-".to_string() } else { plan.skipped.join(",") };
        rows.push([
            plan.step.to_string(),
            format!("{t:.4}"),
            plan.active.join(","),
            ranks.join(" "),
            idle,
            plan.collective.name().to_string(),
            bytes(plan.gather_bytes),
            bytes(plan.reduce_bytes),
            saved,
        ]);
    }
    print_table(&rows);
    let calls: usize = plans.iter().map(|p| p.calls()).sum();
    let full = declared.len() * steps;
    let moved: usize = plans.iter().map(|p| p.bytes()).sum();
    println!();
    println!(
        "model calls: {calls} of {full} ({} saved by windows); collective payload: {} in all, {} per step on average",
        full - calls,
        bytes(moved),
        bytes(moved / steps)
    );
    Ok(ExitCode::SUCCESS)
}

fn has_adaptive(policy: &cfg_core::expr::Policy) -> bool {
    fn walk(e: &cfg_core::expr::Expr) -> bool {
        matches!(e, cfg_core::expr::Expr::Adaptive { .. }) || e.children().into_iter().any(walk)
    }
    policy.outputs.iter().any(|(_, o)| walk(&o.guidance)) || policy.values.iter().any(|(_, e)| walk(e))
}

/// Prints rows as columns as wide as their widest cell; numbers right-aligned.
fn print_table(rows: &[[String; 9]]) {
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..9).map(width).collect();
    let right = [true, true, false, false, false, false, true, true, false];
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((cell, &w), r)| if r { format!("{cell:>w$}") } else { format!("{cell:<w$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
