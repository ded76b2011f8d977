//! `cfg combine`: replay dumped branch predictions through a policy.
//!
//! Input tensors are named `<step>/<branch>` (or `<step>/<branch>/<output>` for
//! policies with several outputs); the combined predictions are written as
//! `<step>/<output>` in the input's dtype, and where an output declares
//! `renoise` (CFG++), its re-noising prediction as `<step>/<output>/renoise`.
//! Operator state (APG momentum,
//! zero-init counters, adaptive latches) carries across the steps of the file.
//!
//! Branch tensors may also carry diffusers' names (`pred_cond`,
//! `pred_uncond`, `pred_cond_skip`, `pred_cond_ptb`, `pred_cond_seg`) or any name mapped with
//! `--map FILE_NAME=BRANCH`. Every step's inputs and outputs are checked for
//! NaN and infinity (unless `--allow-nonfinite`).

use crate::error::{CliError, CliResult};
use crate::finite::{describe, HINT};
use crate::grid::parse_set;
use crate::limits::{self, in_range};
use crate::outpath::{self, Kind};
use crate::policy_arg::PolicyArg;
use crate::tensors;
use cfg_core::lower::{lower, Overrides};
use cfg_core::reference::{evaluate_f64, relative_error, ReferenceState};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::{cpu, CoreError, Tensor};
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `cfg combine`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Branch predictions, `<step>/<branch>[/<output>]` (safetensors).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the combined predictions, `<step>/<output>` (safetensors;
    /// must not be the input).
    #[arg(long)]
    pub output: PathBuf,
    /// Number of sampling steps (default: the steps present in the input).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The scheduler's sigma at each step, comma-separated (default: the input's
    /// `sigmas` metadata, a JSON list). More sigmas than steps: a warning.
    #[arg(long, value_delimiter = ',')]
    pub sigmas: Option<Vec<f64>>,
    /// Replace a declared scale by a constant, NAME=V (repeatable).
    #[arg(long = "scale", value_name = "NAME=V")]
    pub scales: Vec<String>,
    /// Set any numeric parameter, PATH=V (repeatable; `cfg check --params POLICY` lists them).
    #[arg(long = "set", value_name = "PATH=V")]
    pub sets: Vec<String>,
    /// Read branch BRANCH from tensors named `<step>/NAME` (repeatable), e.g.
    /// `--map noise_pred_text=cond`. diffusers' `pred_cond`, `pred_uncond`,
    /// `pred_cond_skip`, `pred_cond_ptb` and `pred_cond_seg` are understood without it.
    #[arg(long = "map", value_name = "NAME=BRANCH")]
    pub map: Vec<String>,
    /// Write NaN or infinite outputs instead of stopping at the first one.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Print each step's relative error against the f64 reference.
    #[arg(long)]
    pub reference: bool,
}

/// diffusers' guider names for our usual branch names.
const DIFFUSERS: [(&str, &str); 5] = [
    ("pred_cond", "cond"),
    ("pred_uncond", "uncond"),
    ("pred_cond_skip", "skip"),
    ("pred_cond_ptb", "perturbed"),
    ("pred_cond_seg", "blurred"),
];

/// Refuses `--output` naming the same file as `--input` (compared as canonical paths).
fn check_not_input(input: &Path, output: &Path) -> Result<(), CliError> {
    let canonical = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        Some(outpath::folder(p).canonicalize().ok()?.join(p.file_name()?))
    };
    if let (Some(a), Some(b)) = (canonical(input), canonical(output)) {
        if a == b {
            return Err(CliError(format!(
                "--output {} is the input file: writing it would destroy the dump; choose another name",
                output.display()
            )));
        }
    }
    Ok(())
}

pub fn run(args: Args) -> CliResult {
    let loaded = cfg_policies::resolve(args.policy.required()?)?;
    let mut sets = Vec::new();
    for s in &args.scales {
        let (name, v) = parse_set("--scale", s)?;
        if loaded.policy.scales.get(&name).is_none() {
            let known: Vec<&str> = loaded.policy.scales.names().collect();
            return Err(CliError(format!(
                "--scale {name}: the policy declares no scale `{name}` (it has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        sets.push((name, v));
    }
    for s in &args.sets {
        sets.push(parse_set("--set", s)?);
    }
    let loaded = cfg_policies::params::apply(&loaded, &sets).map_err(|e| CliError(e.to_string()))?;
    let policy = &loaded.policy;
    let overrides = Overrides::none();
    let mut map: Vec<(String, String)> = Vec::new();
    for m in &args.map {
        let (name, branch) = m.split_once('=').ok_or_else(|| CliError(format!("--map `{m}`: expected NAME=BRANCH")))?;
        let (name, branch) = (name.trim(), branch.trim());
        if policy.branches.get(branch).is_none() {
            let known: Vec<&str> = policy.branches.names().collect();
            return Err(CliError(format!(
                "--map {m}: policy `{}` has no branch `{branch}` (it has: {})",
                policy.name,
                known.join(", ")
            )));
        }
        if name.is_empty() || name.contains('/') {
            return Err(CliError(format!("--map `{m}`: NAME is the part of a tensor name after `<step>/`")));
        }
        map.push((name.to_string(), branch.to_string()));
    }
    if let Some(n) = args.steps {
        in_range("--steps", n, limits::MAX_STEPS, "steps")?;
    }
    check_not_input(&args.input, &args.output)?;
    outpath::check("--output", &args.output, Kind::Tensors)?;

    let bytes = tensors::read_bytes(&args.input)?;
    let file = tensors::open(&bytes, &args.input)?;
    let sigmas = match args.sigmas.clone() {
        Some(s) => Some(s),
        None => sigmas_from_metadata(&tensors::metadata(&bytes, &args.input)?, &args.input)?,
    };
    let num_steps = match args.steps {
        Some(n) => n,
        None => steps_in_file(&file).ok_or_else(|| {
            CliError(format!("{}: no tensor is named `<step>/<branch>`; nothing to combine", args.input.display()))
        })?,
    };
    in_range("--steps", num_steps, limits::MAX_STEPS, "steps")?;
    if let Some(s) = &sigmas {
        if s.len() > num_steps {
            eprintln!(
                "warning: {} sigmas for {num_steps} steps: the last {} are not used",
                s.len(),
                s.len() - num_steps
            );
        }
    }

    let inputs = Inputs { file: &file, path: &args.input, multi: policy.outputs.len() > 1, map: &map };
    warn_unused(&inputs, policy, num_steps);
    let mut state = GuidanceState::new();
    let mut reference = ReferenceState::new();
    state.start();
    let mut written: Vec<(String, Tensor)> = Vec::new();
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut reads = 0usize;
    for step in 0..num_steps {
        let sigma = sigmas.as_ref().and_then(|s| s.get(step).copied());
        let ctx = StepContext { step, num_steps, sigma, chunks: cfg_core::schedule::ChunkTimes::NONE };
        let program = lower(policy, &ctx, &state, &overrides).map_err(|e| {
            let hint = match &sigmas {
                None => " (pass --sigmas or store a `sigmas` list in the input's metadata)".to_string(),
                Some(s) if step >= s.len() => format!(" (only {} sigmas were given)", s.len()),
                Some(_) => String::new(),
            };
            match e {
                // Their messages already name the step.
                CoreError::SigmaRequired { .. } | CoreError::WeightOutOfRange { .. } => CliError(format!("{e}{hint}")),
                _ => CliError(format!("step {step}: {e}{hint}")),
            }
        })?;
        for out in &program.outputs {
            let branch_tensors = out
                .branches
                .iter()
                .map(|b| inputs.branch(step, b, &out.output))
                .collect::<Result<Vec<Tensor>, CliError>>()?;
            let (dtype, shape) = match branch_tensors.first() {
                Some(t) => (t.dtype(), t.shape.clone()),
                // No branch is on (a zero-init step): take the shape from any branch.
                None => inputs.any_branch(step, policy.branches.names(), &out.output)?,
            };
            for (b, t) in out.branches.iter().zip(&branch_tensors) {
                if t.dtype() != dtype || t.shape != shape {
                    return Err(CliError(format!(
                        "step {step}, output `{}`: tensor `{}` is {} {} but `{}` is {dtype} {shape}: \
                         all branches of an output must share dtype and shape",
                        out.output,
                        inputs.name(step, b, &out.output),
                        t.dtype(),
                        t.shape,
                        inputs.name(step, &out.branches[0], &out.output),
                    )));
                }
            }
            if !args.allow_nonfinite {
                for (b, t) in out.branches.iter().zip(&branch_tensors) {
                    if let Some(d) = describe(t) {
                        return Err(CliError(format!(
                            "step {step}, branch `{b}`, output `{}`: the input is not finite ({d}); {HINT}",
                            out.output
                        )));
                    }
                }
            }
            let refs: Vec<&Tensor> = branch_tensors.iter().collect();
            let result = cpu::evaluate(out, &refs, dtype, &shape, &mut state)
                .map_err(|e| CliError(format!("step {step}, output `{}`: {e}", out.output)))?;
            if !args.allow_nonfinite {
                if let Some(d) = describe(&result) {
                    return Err(CliError(format!(
                        "step {step}, output `{}`: the combined prediction is not finite ({d}) although its \
                         inputs are: the guided value overflows {dtype}; lower the scales, or {HINT}",
                        out.output
                    )));
                }
            }
            if args.reference {
                let exact = evaluate_f64(out, &refs, &shape, &mut reference);
                let got: Vec<f64> = result.to_f32().into_iter().map(f64::from).collect();
                println!(
                    "step {step} {}: relative error {:.3e} vs the f64 reference ({dtype})",
                    out.output,
                    relative_error(&got, &exact)
                );
            }
            reads += out.branches.len();
            read.extend(out.branches.iter().cloned());
            written.push((format!("{step}/{}", out.output), result));
            // CFG++: the sampler's re-noising prediction, beside the guided one.
            if let Some(rp) = out.renoise_program() {
                let renoise = cpu::evaluate(&rp, &refs, dtype, &shape, &mut state)
                    .map_err(|e| CliError(format!("step {step}, output `{}` (renoise): {e}", out.output)))?;
                if !args.allow_nonfinite {
                    if let Some(d) = describe(&renoise) {
                        return Err(CliError(format!(
                            "step {step}, output `{}`: the re-noising prediction is not finite ({d}) although \
                             its inputs are: it overflows {dtype}; lower its weights, or {HINT}",
                            out.output
                        )));
                    }
                }
                written.push((format!("{step}/{}/renoise", out.output), renoise));
            }
        }
    }

    let mut meta = HashMap::new();
    meta.insert("policy".to_string(), policy.name.clone());
    meta.insert("steps".to_string(), num_steps.to_string());
    if let Some(s) = &sigmas {
        meta.insert("sigmas".to_string(), serde_json::to_string(s)?);
    }
    let out_bytes = tensors::to_bytes(&written, meta)?;
    tensors::write_atomic(&args.output, &out_bytes)?;
    let outputs: Vec<&str> = policy.outputs.names().collect();
    let read: Vec<String> = read.into_iter().collect();
    println!(
        "combined {num_steps} steps with `{}`: {} outputs ({}), read {reads} branch tensors ({}), wrote {} tensors to {}",
        loaded.origin,
        outputs.len(),
        outputs.join(", "),
        read.join(", "),
        written.len(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The branch predictions of the input file.
struct Inputs<'a> {
    file: &'a SafeTensors<'a>,
    path: &'a Path,
    /// Several outputs: tensors are `<step>/<branch>/<output>`.
    multi: bool,
    /// `--map`: file name → branch.
    map: &'a [(String, String)],
}

impl Inputs<'_> {
    fn name(&self, step: usize, branch: &str, output: &str) -> String {
        if self.multi {
            format!("{step}/{branch}/{output}")
        } else {
            format!("{step}/{branch}")
        }
    }

    /// The names a branch's tensors may carry: `--map`ped names, its own, diffusers'.
    fn names_of<'b>(&'b self, branch: &'b str) -> impl Iterator<Item = &'b str> {
        let mapped = self.map.iter().filter(move |(_, b)| b == branch).map(|(n, _)| n.as_str());
        let diffusers = DIFFUSERS.iter().filter(move |(_, b)| *b == branch).map(|(n, _)| *n);
        mapped.chain(std::iter::once(branch)).chain(diffusers)
    }

    /// The branch a file name stands for (`--map`, diffusers' names, or itself).
    fn branch_of<'b>(&'b self, name: &'b str) -> &'b str {
        if let Some((_, b)) = self.map.iter().find(|(n, _)| n == name) {
            return b;
        }
        DIFFUSERS.iter().find(|(n, _)| *n == name).map_or(name, |(_, b)| b)
    }

    /// Looks up `<step>/<branch>` under each of its names; a single-output
    /// policy also accepts `<step>/<branch>/<output>`.
    fn find(&self, step: usize, branch: &str, output: &str) -> Result<Option<Tensor>, CliError> {
        for alias in self.names_of(branch) {
            if let Some(t) = tensors::load(self.file, &self.name(step, alias, output))? {
                return Ok(Some(t));
            }
            if !self.multi {
                if let Some(t) = tensors::load(self.file, &format!("{step}/{alias}/{output}"))? {
                    return Ok(Some(t));
                }
            }
        }
        Ok(None)
    }

    fn branch(&self, step: usize, branch: &str, output: &str) -> Result<Tensor, CliError> {
        self.find(step, branch, output)?.ok_or_else(|| {
            CliError(format!(
                "step {step}: no prediction of branch `{branch}` for output `{output}` (expected a tensor `{}` in {})",
                self.name(step, branch, output),
                self.path.display()
            ))
        })
    }

    /// The dtype and shape of any branch's tensor at this step.
    fn any_branch<'b>(
        &self,
        step: usize,
        branches: impl Iterator<Item = &'b str>,
        output: &str,
    ) -> Result<(cfg_core::DType, cfg_core::Shape), CliError> {
        for b in branches {
            if let Some(t) = self.find(step, b, output)? {
                return Ok((t.dtype(), t.shape.clone()));
            }
        }
        Err(CliError(format!(
            "step {step}: output `{output}` uses no branch at this step and the input has no tensor \
             `{}` to take its shape from",
            self.name(step, "<branch>", output)
        )))
    }
}

/// Warns about tensors that are not `<step>/<branch>[/<output>]` of this policy
/// within the steps combined: a misspelt branch would otherwise go unnoticed.
fn warn_unused(inputs: &Inputs<'_>, policy: &cfg_core::expr::Policy, steps: usize) {
    let (mut unknown, mut beyond) = (Vec::new(), Vec::new());
    for name in inputs.file.names() {
        let mut parts = name.split('/');
        let step = parts.next().and_then(|s| s.parse::<usize>().ok());
        let branch = parts.next().map(|b| inputs.branch_of(b));
        let output = parts.next();
        let known = branch.is_some_and(|b| policy.branches.get(b).is_some())
            && output.is_none_or(|o| policy.outputs.get(o).is_some())
            && parts.next().is_none();
        match step {
            Some(s) if known && s >= steps => beyond.push(name.to_string()),
            Some(_) if known => {}
            _ => unknown.push(name.to_string()),
        }
    }
    let list = |v: &mut Vec<String>| {
        v.sort();
        let more = if v.len() > 3 { format!(" and {} more", v.len() - 3) } else { String::new() };
        format!("{}{more}", v.iter().take(3).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
    };
    if !unknown.is_empty() {
        let branches: Vec<&str> = policy.branches.names().collect();
        eprintln!(
            "warning: {}: {} tensors are not `<step>/<branch>` of this policy and are not read: {} \
             (its branches: {}; --map NAME=BRANCH reads other names)",
            inputs.path.display(),
            unknown.len(),
            list(&mut unknown),
            branches.join(", ")
        );
    }
    if !beyond.is_empty() {
        eprintln!(
            "warning: {}: {} tensors lie beyond the {steps} steps combined and are not read: {}",
            inputs.path.display(),
            beyond.len(),
            list(&mut beyond)
        );
    }
}

/// The number of steps in the file: one more than the largest `<step>` prefix.
fn steps_in_file(file: &SafeTensors<'_>) -> Option<usize> {
    file.names().iter().filter_map(|n| n.split('/').next()?.parse::<usize>().ok()).max().map(|m| m + 1)
}

/// The `sigmas` metadata entry, a JSON list of numbers.
fn sigmas_from_metadata(meta: &HashMap<String, String>, path: &Path) -> Result<Option<Vec<f64>>, CliError> {
    let Some(text) = meta.get("sigmas") else {
        return Ok(None);
    };
    serde_json::from_str::<Vec<f64>>(text).map(Some).map_err(|e| {
        CliError(format!("{}: metadata `sigmas` is not a JSON list of numbers ({e}): `{text}`", path.display()))
    })
}
