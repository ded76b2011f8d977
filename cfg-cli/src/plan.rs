//! `cfg plan`: the per-step plan of a policy over M ranks, without running it:
//! per step the sampler's t and sigma (as windows and schedules see them),
//! each declared scale's value, the windows that are on, the active
//! branches, which rank runs which batched call, the collective and its bytes.

use crate::error::{CliError, CliResult};
use crate::grid::parse_set;
use crate::limits::{self, in_range, ranges};
use crate::models::{build, bytes, default_batch, outputs_in_policy_order, ModelKind};
use crate::policy_arg::PolicyArg;
use cfg_core::expr::{Expr, Policy};
use cfg_core::schedule::StepContext;
use cfg_core::window::Window;
use cfg_runtime::plan::{plan_run, Mode, StepPlan};
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use serde_json::json;
use std::process::ExitCode;

/// Arguments of `cfg plan`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// World size M (at most 1024).
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Number of steps (default: the policy's own, else 32; at most 10000).
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
    /// Timestep shift of the flow schedules.
    #[arg(long, default_value_t = 1.0)]
    pub shift: f64,
    /// Plan the deterministic mode (always gather) instead of the fast one.
    #[arg(long)]
    pub deterministic: bool,
    /// Replace a declared scale by a constant, NAME=V (repeatable).
    #[arg(long = "scale", value_name = "NAME=V")]
    pub scales: Vec<String>,
    /// Set any numeric parameter, PATH=V (repeatable; as `cfg sample --set`).
    #[arg(long = "set", value_name = "PATH=V")]
    pub sets: Vec<String>,
    /// Plan even when the memory estimate exceeds the available memory.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Print the plan as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Every `Windowed` of the policy: its path (as `--set` names it) and window.
fn windows(policy: &Policy) -> Vec<(String, &Window)> {
    fn walk<'a>(e: &'a Expr, owner: &str, k: &mut usize, out: &mut Vec<(String, &'a Window)>) {
        if let Expr::Windowed { window, .. } = e {
            out.push((format!("{owner}.Windowed[{k}]"), window));
            *k += 1;
        }
        for c in e.children() {
            walk(c, owner, k, out);
        }
    }
    let mut out = Vec::new();
    let owners = policy.outputs.iter().map(|(n, o)| (n, &o.guidance)).chain(policy.values.iter());
    for (owner, e) in owners {
        walk(e, owner, &mut 0, &mut out);
    }
    out
}

pub fn run(args: Args) -> CliResult {
    let ranks = in_range("--ranks", args.ranks, limits::MAX_PLAN_RANKS, "ranks")?;
    if let Some(s) = args.steps {
        in_range("--steps", s, limits::MAX_STEPS, "steps")?;
    }
    let batch = in_range("--batch", args.batch.unwrap_or(default_batch(args.model)), limits::MAX_BATCH, "samples")?;
    if !(args.shift > 0.0 && args.shift.is_finite()) {
        return Err(CliError("--shift must be a positive finite number".into()));
    }
    let loaded = cfg_policies::resolve(args.policy.or(cfg_policies::library::DEFAULT))?;
    let mut sets = Vec::new();
    for s in &args.scales {
        let (name, v) = parse_set("--scale", s)?;
        if loaded.policy.scales.get(&name).is_none() {
            let known: Vec<&str> = loaded.policy.scales.names().collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(CliError(format!(
                "--scale {name}: policy `{}` declares no scale `{name}` (it has: {known})",
                loaded.policy.name
            )));
        }
        sets.push((name, v));
    }
    for s in &args.sets {
        sets.push(parse_set("--set", s)?);
    }
    let loaded = cfg_policies::params::apply(&loaded, &sets).map_err(|e| CliError(e.to_string()))?;
    let policy = &loaded.policy;
    let steps = in_range("--steps", args.steps.or(policy.steps).unwrap_or(32), limits::MAX_STEPS, "steps")?;
    // Each step's plan holds a few words per rank.
    limits::check_memory(steps.saturating_mul(ranks.saturating_mul(64).saturating_add(1024)), args.no_memory_check)?;
    let model = build(args.model, policy, Some(batch));
    let outputs = outputs_in_policy_order(&model, policy);
    let mode = if args.deterministic { Mode::Deterministic } else { Mode::Fast };
    let sampler = Sampler { shift: args.shift, ..Sampler::new(args.sampler) };
    let times = sampler.times(steps);
    let plans = plan_run(policy, &cfg_core::lower::Overrides::none(), &outputs, &model, ranks, mode, &times)?;
    let branches = policy.branches.len();
    if ranks > branches {
        eprintln!(
            "warning: {ranks} ranks for {branches} branches: ranks {} stay idle at every step",
            ranges(&(branches..ranks).collect::<Vec<_>>())
        );
    }
    let wins = windows(policy);
    let ctx = |step: usize| StepContext {
        step,
        num_steps: steps,
        sigma: Some(times[step].1),
        chunks: cfg_core::schedule::ChunkTimes::NONE,
    };
    let scale_values = |step: usize| -> Vec<(String, Option<f64>)> {
        policy.scales.iter().map(|(n, s)| (n.to_string(), s.at(&ctx(step)))).collect()
    };
    let windows_on = |step: usize| -> Vec<usize> {
        (0..wins.len()).filter(|&w| wins[w].1.contains(&ctx(step)) == Some(true)).collect()
    };
    let calls: usize = plans.iter().map(|p| p.calls()).sum();
    let full = branches * steps;
    let moved: usize = plans.iter().map(|p| p.bytes()).sum();
    let adaptive = has_adaptive(policy);

    if args.json {
        let per_step: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(step, p)| {
                let scales: serde_json::Map<String, serde_json::Value> =
                    scale_values(step).into_iter().map(|(n, v)| (n, json!(v))).collect();
                json!({
                    "step": step,
                    "t": times[step].0,
                    "sigma": times[step].1,
                    "scales": scales,
                    "windows_on": windows_on(step).into_iter().map(|w| wins[w].0.clone()).collect::<Vec<_>>(),
                    "active": p.active,
                    "skipped": p.skipped,
                    "calls": rank_calls(p).into_iter().map(|(r, c)| json!({"rank": r, "calls": c})).collect::<Vec<_>>(),
                    "idle": p.idle,
                    "collective": p.collective.name(),
                    "gather_bytes": p.gather_bytes,
                    "reduce_bytes": p.reduce_bytes,
                })
            })
            .collect();
        let doc = json!({
            "policy": policy.name,
            "origin": loaded.origin,
            "branches": policy.branches.names().collect::<Vec<_>>(),
            "outputs": outputs.iter().map(|o| json!({
                "name": o.name, "shape": o.shape.0, "dtype": o.dtype.to_string(), "bytes": o.bytes()
            })).collect::<Vec<_>>(),
            "ranks": ranks,
            "steps": steps,
            "sampler": args.sampler.to_string(),
            "mode": if args.deterministic { "deterministic" } else { "fast" },
            "adaptive_assumed_unlatched": adaptive,
            "windows": wins.iter().map(|(p, w)| json!({"path": p, "window": cfg_policies::graph::window_label(w)})).collect::<Vec<_>>(),
            "plan": per_step,
            "model_calls": calls,
            "model_calls_without_windows": full,
            "payload_bytes": moved,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }

    let declared: Vec<&str> = policy.branches.names().collect();
    println!("policy `{}` ({}): {} branches [{}]", policy.name, loaded.origin, declared.len(), declared.join(", "));
    for o in &outputs {
        println!("  output `{}`: {} {} ({} per prediction)", o.name, o.shape, o.dtype, bytes(o.bytes()));
    }
    for (w, (path, window)) in wins.iter().enumerate() {
        println!("  window W{w}: {path} = {}", cfg_policies::graph::window_label(window));
    }
    println!(
        "{ranks} ranks, {steps} steps, {} sampler (t and sigma as windows and schedules see them), {} mode{}",
        args.sampler,
        if args.deterministic { "deterministic" } else { "fast" },
        if adaptive { " (adaptive guidance is assumed not to latch)" } else { "" }
    );
    println!();
    let mut rows: Vec<Vec<String>> = vec![[
        "step",
        "t",
        "sigma",
        "scales",
        "windows on",
        "active",
        "rank: batched calls",
        "idle",
        "collective",
        "gather",
        "reduce",
        "saved",
    ]
    .map(String::from)
    .to_vec()];
    for (step, plan) in plans.iter().enumerate() {
        let scales: Vec<String> = scale_values(step)
            .into_iter()
            .map(|(n, v)| {
                format!(
                    "{n}={}",
                    v.map_or("?".to_string(), |v| format!("{v:.4}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string())
                )
            })
            .collect();
        let on: Vec<String> = windows_on(step).into_iter().map(|w| format!("W{w}")).collect();
        let calls: Vec<String> = rank_calls(plan)
            .into_iter()
            .map(|(r, c)| format!("{r}:{}", c.iter().map(|g| format!("[{}]", g.join(","))).collect::<String>()))
            .collect();
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        rows.push(vec![
            step.to_string(),
            format!("{:.4}", times[step].0),
            format!("{:.4}", times[step].1),
            dash(scales.join(" ")),
            if wins.is_empty() { "-".into() } else { dash(on.join(",")) },
            dash(plan.active.join(",")),
            dash(calls.join(" ")),
            dash(ranges(&plan.idle)),
            plan.collective.name().to_string(),
            bytes(plan.gather_bytes),
            bytes(plan.reduce_bytes),
            dash(plan.skipped.join(",")),
        ]);
    }
    let right = [true, true, true, false, false, false, false, false, false, true, true, false];
    crate::table::print(&rows, &right);
    println!();
    println!(
        "model calls: {calls} of {full} ({} saved by windows); collective payload: {} in all, {} per step on average",
        full - calls,
        bytes(moved),
        bytes(moved / steps)
    );
    Ok(ExitCode::SUCCESS)
}

/// Per busy rank, its batched calls as branch names.
fn rank_calls(plan: &StepPlan) -> Vec<(usize, Vec<Vec<String>>)> {
    plan.groups
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(r, groups)| (r, groups.iter().map(|g| g.iter().map(|&i| plan.active[i].clone()).collect()).collect()))
        .collect()
}

fn has_adaptive(policy: &Policy) -> bool {
    fn walk(e: &Expr) -> bool {
        matches!(e, Expr::Adaptive { .. }) || e.children().into_iter().any(walk)
    }
    policy.outputs.iter().any(|(_, o)| walk(&o.guidance)) || policy.values.iter().any(|(_, e)| walk(e))
}
