//! `cfg combine`: replay dumped branch predictions through a policy.
//!
//! Input tensors are named `<step>/<branch>` (or `<step>/<branch>/<output>` for
//! policies with several outputs); the combined predictions are written as
//! `<step>/<output>` in the input's dtype. Operator state (APG momentum,
//! zero-init counters, adaptive latches) carries across the steps of the file.

use crate::error::{CliError, CliResult};
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
    /// A policy file or built-in name.
    #[arg(long)]
    pub policy: String,
    /// Branch predictions, `<step>/<branch>[/<output>]` (safetensors).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the combined predictions, `<step>/<output>` (safetensors).
    #[arg(long)]
    pub output: PathBuf,
    /// Number of sampling steps (default: the steps present in the input).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The scheduler's sigma at each step, comma-separated (default: the input's
    /// `sigmas` metadata, a JSON list).
    #[arg(long, value_delimiter = ',')]
    pub sigmas: Option<Vec<f64>>,
    /// Override a declared scale with a constant (repeatable).
    #[arg(long = "scale", value_name = "NAME=V", value_parser = parse_scale)]
    pub scales: Vec<(String, f64)>,
    /// Print each step's relative error against the f64 reference.
    #[arg(long)]
    pub reference: bool,
}

fn parse_scale(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))?;
    let v: f64 = value.trim().parse().map_err(|_| format!("`{value}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{value}` is not a finite number"));
    }
    Ok((name.trim().to_string(), v))
}

pub fn run(args: Args) -> CliResult {
    let loaded = cfg_policies::resolve(&args.policy)?;
    let policy = &loaded.policy;
    let mut overrides = Overrides::none();
    for (name, v) in &args.scales {
        if policy.scales.get(name).is_none() {
            let known: Vec<&str> = policy.scales.names().collect();
            return Err(CliError(format!(
                "--scale {name}: the policy declares no scale `{name}` (it has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        overrides = overrides.with(name, *v);
    }

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
    if num_steps == 0 {
        return Err(CliError("--steps must be at least 1".into()));
    }

    let inputs = Inputs { file: &file, path: &args.input, multi: policy.outputs.len() > 1 };
    let mut state = GuidanceState::new();
    let mut reference = ReferenceState::new();
    state.start();
    let mut written: Vec<(String, Tensor)> = Vec::new();
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut reads = 0usize;
    for step in 0..num_steps {
        let sigma = sigmas.as_ref().and_then(|s| s.get(step).copied());
        let ctx = StepContext { step, num_steps, sigma };
        let program = lower(policy, &ctx, &state, &overrides).map_err(|e| {
            let hint = match &sigmas {
                None => " (pass --sigmas or store a `sigmas` list in the input's metadata)".to_string(),
                Some(s) if step >= s.len() => format!(" (only {} sigmas were given)", s.len()),
                Some(_) => String::new(),
            };
            match e {
                // Its message already names the step.
                CoreError::SigmaRequired { .. } => CliError(format!("{e}{hint}")),
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
            let refs: Vec<&Tensor> = branch_tensors.iter().collect();
            let result = cpu::evaluate(out, &refs, dtype, &shape, &mut state)
                .map_err(|e| CliError(format!("step {step}, output `{}`: {e}", out.output)))?;
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
}

impl Inputs<'_> {
    fn name(&self, step: usize, branch: &str, output: &str) -> String {
        if self.multi {
            format!("{step}/{branch}/{output}")
        } else {
            format!("{step}/{branch}")
        }
    }

    /// Looks up `<step>/<branch>`; a single-output policy also accepts `<step>/<branch>/<output>`.
    fn find(&self, step: usize, branch: &str, output: &str) -> Result<Option<Tensor>, CliError> {
        let name = self.name(step, branch, output);
        if let Some(t) = tensors::load(self.file, &name)? {
            return Ok(Some(t));
        }
        if !self.multi {
            return tensors::load(self.file, &format!("{step}/{branch}/{output}"));
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
                return Ok((t.dtype(), t.shape));
            }
        }
        Err(CliError(format!(
            "step {step}: output `{output}` uses no branch at this step and the input has no tensor \
             `{}` to take its shape from",
            self.name(step, "<branch>", output)
        )))
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
