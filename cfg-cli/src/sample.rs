//! `cfg sample`: run a policy on the analytic model over in-process ranks.
//!
//! With no arguments: standard CFG on the 2-D class-conditional mixture, two
//! ranks, and a PNG scatter plot of the samples over the true densities.
//! Everything that can be checked before the first step is: argument ranges,
//! parameter overrides, output paths and the memory the run needs. Output
//! files are written to a temporary file and renamed into place only when
//! every rank succeeded, so a failed run leaves no partial file.
//!
//! `--device cuda --ranks M` runs one rank per GPU (threads, NCCL between
//! them) with the latents resident on each device: the model's kernel, the
//! collectives, the combine and the sampler update all run there, in the same
//! loop (`cfg_runtime::sample`) as the CPU ranks; the summary is the same.

use crate::error::{CliError, CliResult};
use crate::finite::{describe, latents_message, Checked, HINT};
use crate::grid::{self, Point};
use crate::limits::{self, in_range};
use crate::models::{build, default_batch, ModelKind};
use crate::outpath::{self, write_atomically, Kind};
use crate::plot::{write_png, Panel};
use crate::policy_arg::PolicyArg;
use crate::quality::score;
use crate::report::{self, RunResult};
use cfg_core::Tensor;
use cfg_gmm::GmmModel;
use cfg_runtime::cuda::bootstrap::BootstrapEnv;
use cfg_runtime::cuda::{run_nccl_threads, CudaBackend, Device, NcclCommunicator, NcclOptions};
use cfg_runtime::model::{Call, DeviceCall, Model, ModelError, OutputInfo};
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::tensor::{DeviceTensor, Place};
use cfg_runtime::{
    run_local, sample, Backend, Communicator, CpuBackend, LocalComm, Mode, RuntimeError, SampleOptions, Sampled,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Arguments of `cfg sample`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// The analytic model.
    #[arg(long, value_enum, default_value = "gmm2d")]
    pub model: ModelKind,
    /// Batch size (default: 4096 for gmm2d, 4 for tokens).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Where to run: `cpu` (in-process ranks) or `cuda` (one rank per GPU,
    /// latents resident on the devices; under torchrun, this process's GPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: SampleDevice,
    /// Number of ranks M: threads on the CPU, GPUs 0..M on CUDA (default: 2 on
    /// cpu, 1 on cuda; under torchrun, WORLD_SIZE).
    #[arg(long)]
    pub ranks: Option<usize>,
    /// Number of steps (default: the policy's own, else 32; at most 10000).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Replace a declared scale by a constant, NAME=V (repeatable).
    #[arg(long = "scale", value_name = "NAME=V")]
    pub scales: Vec<String>,
    /// Set any numeric parameter, PATH=V (repeatable): a declared scale
    /// (`scale=4`) or an operator field (`sample.Apg.momentum=-0.3`);
    /// `cfg check --params POLICY` lists the paths.
    #[arg(long = "set", value_name = "PATH=V")]
    pub sets: Vec<String>,
    /// Seed of the initial noise and of the stochastic sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The scheduler: euler (flow matching), ddim or ancestral.
    #[arg(long, default_value = "euler")]
    pub sampler: SamplerKind,
    /// Timestep shift of the flow schedules.
    #[arg(long, default_value_t = 1.0)]
    pub shift: f64,
    /// Bit-identical for every M (gather); otherwise all-reduce where cheaper.
    #[arg(long)]
    pub deterministic: bool,
    /// Write the final samples here (safetensors, f32, one tensor per output and run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the scatter plot here (.png; gmm2d; default `samples.png`).
    #[arg(long, conflicts_with = "no_plot")]
    pub plot: Option<PathBuf>,
    /// Write no plot.
    #[arg(long)]
    pub no_plot: bool,
    /// Sweep an axis, AXIS=V1,V2,... (repeatable; one run per combination):
    /// seed, steps, sampler, policy, or any --set path (e.g. scale=1,2,4,8).
    #[arg(long, value_name = "AXIS=V1,V2,...")]
    pub grid: Vec<String>,
    /// Check that ranks agree every K steps (0: after the last step only).
    #[arg(long, default_value_t = 0)]
    pub fingerprint_every: usize,
    /// Seconds a rank waits for the others before failing the run.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Keep going when a prediction or the latents become NaN or infinite
    /// (by default the run stops with an error naming the step).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Run even when the memory estimate exceeds the available memory.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Print the summary as JSON on stdout (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Testing aid: make the model fail on RANK at STEP.
    #[arg(long, hide = true, value_name = "RANK:STEP")]
    pub inject_fault: Option<String>,
}

/// Where `cfg sample` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleDevice {
    /// In-process ranks on the CPU backend.
    Cpu,
    /// CUDA ranks: one per GPU (`--ranks M` uses GPUs 0..M, one thread each,
    /// with NCCL between them).
    Cuda,
}

/// The model, failing on purpose on one rank at one step (`--inject-fault`).
struct Faulty<'a> {
    inner: &'a GmmModel,
    rank: usize,
    fault: Option<(usize, usize)>,
}

impl Model for Faulty<'_> {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.inner.outputs()
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError> {
        self.check(call.info.step)?;
        self.inner.predict(call)
    }
    fn predict_on(&self, place: &Place, call: &DeviceCall<'_>) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
        self.check(call.info.step)?;
        self.inner.predict_on(place, call)
    }
}

impl Faulty<'_> {
    fn check(&self, step: usize) -> Result<(), ModelError> {
        if self.fault == Some((self.rank, step)) {
            return Err(ModelError("injected fault (--inject-fault)".into()));
        }
        Ok(())
    }
}

/// One run, ready to go.
struct Run {
    point: Point,
    policy: cfg_policies::Loaded,
    model: GmmModel,
    opts: SampleOptions,
}

pub fn run(args: Args) -> CliResult {
    // 1. Everything that can fail before the first step.
    // Under torchrun (WORLD_SIZE set) a CUDA run is one rank of WORLD_SIZE
    // processes, one GPU each, bootstrapped from RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT.
    let torchrun = match args.device {
        SampleDevice::Cuda if std::env::var_os("WORLD_SIZE").is_some() => Some(BootstrapEnv::from_env()?),
        _ => None,
    };
    if let (Some(env), Some(r)) = (&torchrun, args.ranks) {
        if r != env.world_size {
            return Err(CliError(format!("--ranks {r}, but torchrun's WORLD_SIZE is {}", env.world_size)));
        }
    }
    let ranks = torchrun.as_ref().map(|e| e.world_size).or(args.ranks).unwrap_or(match args.device {
        SampleDevice::Cpu => 2,
        SampleDevice::Cuda => 1,
    });
    in_range("--ranks", ranks, limits::MAX_SAMPLE_RANKS, "ranks (in-process ranks are threads)")?;
    if !(args.timeout > 0.0 && args.timeout.is_finite() && args.timeout <= 1e6) {
        return Err(CliError("--timeout must be a positive number of seconds (at most 1e6)".into()));
    }
    if !(args.shift > 0.0 && args.shift.is_finite()) {
        return Err(CliError("--shift must be a positive finite number".into()));
    }
    if let Some(s) = args.steps {
        in_range("--steps", s, limits::MAX_STEPS, "steps")?;
    }
    let batch = in_range("--batch", args.batch.unwrap_or(default_batch(args.model)), limits::MAX_BATCH, "samples")?;
    let fault = args.inject_fault.as_deref().map(parse_fault).transpose().map_err(CliError)?;
    let scales = args.scales.iter().map(|s| grid::parse_set("--scale", s)).collect::<Result<Vec<_>, CliError>>()?;
    let sets = args.sets.iter().map(|s| grid::parse_set("--set", s)).collect::<Result<Vec<_>, CliError>>()?;
    let axes = grid::parse(&args.grid)?;
    let plot = match (&args.plot, args.model, args.no_plot) {
        (_, _, true) => None,
        (Some(p), _, _) => Some(p.clone()),
        (None, ModelKind::Gmm2d, _) => Some(PathBuf::from("samples.png")),
        (None, _, _) => None,
    };
    if plot.is_some() && args.model != ModelKind::Gmm2d {
        return Err(CliError("--plot needs the 2-D model (--model gmm2d)".into()));
    }
    if let Some(p) = &args.out {
        outpath::check("--out", p, Kind::Tensors)?;
    }
    if let Some(p) = &plot {
        outpath::check("--plot", p, Kind::Png)?;
    }
    let mode = if args.deterministic { Mode::Deterministic } else { Mode::Fast };
    let mut runs = Vec::new();
    let mut policies: BTreeMap<String, cfg_policies::Loaded> = BTreeMap::new();
    for point in grid::points(&axes)? {
        let name = point.policy.clone().unwrap_or_else(|| args.policy.or(cfg_policies::library::DEFAULT).to_string());
        if !policies.contains_key(&name) {
            let loaded = cfg_policies::resolve(&name)?;
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            policies.insert(name.clone(), loaded);
        }
        let base = &policies[&name];
        for (n, _) in &scales {
            if base.policy.scales.get(n).is_none() {
                let known: Vec<&str> = base.policy.scales.names().collect();
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                return Err(CliError(format!(
                    "--scale {n}: policy `{}` declares no scale `{n}` (it has: {known}); --set reaches other parameters",
                    base.policy.name
                )));
            }
        }
        let all: Vec<(String, f64)> = scales.iter().chain(&sets).chain(&point.sets).cloned().collect();
        let loaded = cfg_policies::params::apply(base, &all).map_err(|e| CliError(e.to_string()))?;
        let steps = point.steps.or(args.steps).or(loaded.policy.steps).unwrap_or(32);
        in_range(if point.steps.is_some() { "--grid steps" } else { "--steps" }, steps, limits::MAX_STEPS, "steps")?;
        let sampler = Sampler { shift: args.shift, ..Sampler::new(point.sampler.unwrap_or(args.sampler)) };
        let opts = SampleOptions {
            steps,
            sampler,
            seed: point.seed.unwrap_or(args.seed),
            mode,
            overrides: cfg_core::lower::Overrides::none(),
            fingerprint_every: args.fingerprint_every,
        };
        let model = build(args.model, &loaded.policy, Some(batch));
        runs.push(Run { point, policy: loaded, model, opts });
    }
    limits::check_memory(estimate(&runs, ranks), args.no_memory_check)?;
    for (name, p) in &policies {
        let branches = p.policy.branches.len();
        if ranks > branches {
            eprintln!(
                "warning: {ranks} ranks for the {branches} branches of `{name}`: ranks {} stay idle at every step",
                limits::ranges(&(branches..ranks).collect::<Vec<_>>())
            );
        }
    }
    let placement = match (args.device, &torchrun) {
        (SampleDevice::Cuda, Some(env)) => {
            let dev = Device::new(env.local_rank)?;
            format!("rank {} of {} processes (torchrun), {}", env.rank, env.world_size, dev.describe())
        }
        (SampleDevice::Cpu, _) => format!("{ranks} ranks"),
        (SampleDevice::Cuda, None) => {
            let count = cfg_runtime::cuda::device_count()?;
            if ranks > count {
                return Err(CliError(format!(
                    "--ranks {ranks} on CUDA needs {ranks} GPUs (one per rank); this machine has {count}"
                )));
            }
            format!("{ranks} CUDA rank{} on {}", if ranks == 1 { "" } else { "s" }, Device::new(0)?.describe())
        }
    };

    // 2. The runs.
    if !args.json {
        let first = &runs[0];
        println!(
            "policy `{}` ({}), model {} {}, {placement}, {} steps, {} sampler, {} mode, seed {}",
            first.policy.policy.name,
            first.policy.origin,
            model_name(args.model),
            first
                .model
                .outputs()
                .iter()
                .map(|o| format!("{}{} {}", o.name, o.shape, o.dtype))
                .collect::<Vec<_>>()
                .join(" + "),
            first.opts.steps,
            first.opts.sampler.kind,
            if args.deterministic { "deterministic" } else { "fast" },
            first.opts.seed
        );
    }
    let mut results = Vec::new();
    for r in &runs {
        let started = Instant::now();
        let timeout = Duration::from_secs_f64(args.timeout);
        let sampled = match &torchrun {
            Some(env) => run_torchrun_rank(r, env, timeout, fault)?,
            None => run_ranks(r, (args.device, ranks), timeout, fault, args.allow_nonfinite)?,
        };
        if !args.allow_nonfinite {
            for (name, x) in &sampled.outputs {
                if let Some(d) = describe(x) {
                    return Err(CliError(format!("{}; {HINT}", latents_message(r.opts.steps - 1, name, &d))));
                }
            }
        }
        let quality = sampled
            .outputs
            .iter()
            .enumerate()
            .map(|(k, (_, x))| score(r.model.mixture(k), &x.to_f32(), r.model.labels()))
            .collect();
        let result = RunResult {
            coords: r.point.coords.clone(),
            policy: r.policy.policy.name.clone(),
            steps: r.opts.steps,
            sampler: r.opts.sampler.kind.to_string(),
            seed: r.opts.seed,
            sampled,
            wall: started.elapsed(),
            quality,
        };
        if !args.json {
            if !result.coords.is_empty() {
                println!("\n== {} ==", result.label());
            }
            report::print_text(&result);
        }
        results.push(result);
    }
    if !args.json && results.len() > 1 {
        report::print_table(&results);
    }

    // 3. The files (under torchrun, rank 0 writes them: every rank holds the same latents).
    if torchrun.as_ref().is_some_and(|e| e.rank != 0) {
        return Ok(ExitCode::SUCCESS);
    }
    let mut wrote = Vec::new();
    if let Some(path) = &args.out {
        write_safetensors(path, &results)?;
        wrote.push(path.display().to_string());
    }
    if let Some(path) = &plot {
        let cols = match (axes.last(), results[0].sampled.outputs.len()) {
            (_, n) if n > 1 => n,
            (Some(a), _) => a.values.len().min(6),
            (None, _) => 1,
        };
        let panels: Vec<Panel<'_>> = runs
            .iter()
            .zip(&results)
            .flat_map(|(r, s)| {
                let multi = s.sampled.outputs.len() > 1;
                s.sampled.outputs.iter().enumerate().map(move |(k, (name, x))| {
                    let q = &s.quality[k];
                    // A grid over policies names the policy in its label already.
                    let mut what = match &s.coords {
                        c if c.is_empty() => r.policy.policy.name.clone(),
                        c if c.iter().any(|(axis, _)| axis == "policy") => s.label(),
                        _ => format!("{} {}", r.policy.policy.name, s.label()),
                    };
                    if multi {
                        what = format!("{what} `{name}`");
                    }
                    Panel {
                        title: format!("{what}: {:.1}% on class, SW1 {:.3}", 100.0 * q.on_class, q.sliced_w1),
                        points: match &x.data {
                            cfg_core::tensor::TensorData::F32(v) => v.as_slice(),
                            _ => &[],
                        },
                        labels: r.model.labels(),
                        mixture: r.model.mixture(k),
                    }
                })
            })
            .collect();
        write_atomically(path, |tmp| write_png(tmp, &panels, cols))?;
        wrote.push(path.display().to_string());
    }
    if args.json {
        let doc = serde_json::json!({
            "runs": results.iter().map(report::to_json).collect::<Vec<_>>(),
            "wrote": wrote,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for w in &wrote {
            println!("wrote {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn model_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Gmm2d => "gmm2d",
        ModelKind::Tokens => "tokens",
    }
}

/// Bytes the largest run needs at once, plus the results every run keeps.
fn estimate(runs: &[Run], ranks: usize) -> usize {
    let per_run = |r: &Run| -> (usize, usize) {
        let outs = r.model.outputs();
        let numel: usize = outs.iter().map(|o| o.shape.numel()).sum();
        let pred: usize = outs.iter().map(|o| o.bytes()).sum();
        let branches = r.policy.policy.branches.len();
        // Per rank: latents, every gathered prediction, and f32 temporaries of the combine and update.
        let rank = numel.saturating_mul(4 * 5).saturating_add(pred.saturating_mul(branches));
        // Scoring: each point in f64, with two exact draws of the same size.
        let scoring = numel.saturating_mul(8 * 4);
        (rank.saturating_mul(ranks).saturating_add(scoring), numel.saturating_mul(4))
    };
    let peak = runs.iter().map(|r| per_run(r).0).max().unwrap_or(0);
    let kept: usize = runs.iter().map(|r| per_run(r).1).fold(0, usize::saturating_add);
    peak.saturating_add(kept)
}

fn parse_fault(s: &str) -> Result<(usize, usize), String> {
    let (r, st) = s.split_once(':').ok_or_else(|| format!("--inject-fault `{s}`: expected RANK:STEP"))?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("--inject-fault `{s}`: expected RANK:STEP"));
    Ok((parse(r)?, parse(st)?))
}

/// A progress bar of `steps` on a terminal, hidden otherwise.
fn progress(steps: usize) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(steps as u64);
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    }
}

/// Runs this process's rank of a torchrun launch on GPU `LOCAL_RANK`, with
/// NCCL across the processes.
fn run_torchrun_rank(
    run: &Run,
    env: &BootstrapEnv,
    timeout: Duration,
    fault: Option<(usize, usize)>,
) -> Result<Sampled, CliError> {
    let options = NcclOptions { timeout, init_timeout: timeout, ..NcclOptions::default() };
    let mut comm = NcclCommunicator::from_bootstrap(env, options)?;
    let backend = CudaBackend::on(comm.device());
    let faulty = Faulty { inner: &run.model, rank: env.rank, fault };
    let bar = progress(run.opts.steps);
    let mut on_step = |_: &cfg_runtime::StepReport| bar.inc(1);
    let result = sample(&faulty, &run.policy.policy, &run.opts, &mut comm, backend, &mut on_step);
    bar.finish_and_clear();
    result.map_err(|e| CliError(format!("rank {} of {} failed; {e}", env.rank, env.world_size)))
}

/// Runs the sampler on `ranks` threads: in-process ranks on the CPU, or one
/// CUDA rank per GPU (NCCL between them); on failure returns the root cause.
fn run_ranks(
    run: &Run,
    (device, ranks): (SampleDevice, usize),
    timeout: Duration,
    fault: Option<(usize, usize)>,
    allow_nonfinite: bool,
) -> Result<Sampled, CliError> {
    let bar = progress(run.opts.steps);
    let finding = Mutex::new(None);
    let names: Vec<String> = run.model.outputs().into_iter().map(|o| o.name).collect();
    /// What a rank's run needs: the run, the injected fault, the progress bar
    /// and, when checked, the output names and where the first non-finite
    /// finding goes.
    type Job<'a> =
        (&'a Run, Option<(usize, usize)>, &'a ProgressBar, Option<(&'a [String], &'a Mutex<Option<String>>)>);
    /// One rank's run, with its progress shown by rank 0.
    fn one<C: Communicator, B: Backend>(job: Job<'_>, comm: C, backend: B) -> Result<Sampled, RuntimeError> {
        let (run, fault, bar, check) = job;
        let rank = comm.rank();
        let faulty = Faulty { inner: &run.model, rank, fault };
        let mut on_step = |r: &cfg_runtime::StepReport| {
            if rank == 0 {
                bar.set_message(r.plan.collective.name());
                bar.inc(1);
            }
        };
        let policy = &run.policy.policy;
        match check {
            None => sample(&faulty, policy, &run.opts, comm, backend, &mut on_step),
            Some((names, finding)) => {
                let checked = Checked { inner: &faulty, names: names.to_vec(), finding };
                sample(&checked, policy, &run.opts, comm, backend, &mut on_step)
            }
        }
    }
    // Predictions are checked on the host only: on a GPU that would copy every
    // prediction to the host; the final latents are checked on every device.
    let check = (!allow_nonfinite && device == SampleDevice::Cpu).then_some((names.as_slice(), &finding));
    let job: Job<'_> = (run, fault, &bar, check);
    let results: Vec<Result<Sampled, RuntimeError>> = match device {
        SampleDevice::Cpu => run_local(ranks, timeout, |comm| one(job, comm, CpuBackend)),
        SampleDevice::Cuda if ranks == 1 => {
            let backend = CudaBackend::new(0)?;
            let comm = LocalComm::group(1, timeout).pop().expect("a group of one");
            vec![one(job, comm, backend)]
        }
        SampleDevice::Cuda => {
            let options = NcclOptions { timeout, init_timeout: timeout, ..NcclOptions::default() };
            let ordinals: Vec<usize> = (0..ranks).collect();
            run_nccl_threads(&ordinals, options, |comm| {
                let backend = CudaBackend::on(comm.device());
                one(job, comm, backend)
            })?
        }
    };
    bar.finish_and_clear();
    let mut ok = Vec::new();
    let mut errors: Vec<RuntimeError> = Vec::new();
    for r in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Ok(ok.swap_remove(0));
    }
    if let Some(found) = finding.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(CliError(format!("{found}; {HINT}")));
    }
    // The failing rank's own error says most; the others report it second-hand.
    let root = errors.iter().find(|e| !matches!(e, RuntimeError::PeerFailed { .. })).unwrap_or(&errors[0]);
    Err(CliError(format!("{} of {ranks} ranks failed; {root}", errors.len())))
}

fn write_safetensors(path: &Path, results: &[RunResult]) -> Result<(), CliError> {
    let mut views = Vec::new();
    for r in results {
        for (name, t) in &r.sampled.outputs {
            let label = r.label();
            let key = if label.is_empty() { name.clone() } else { format!("{name}@{label}") };
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.0.to_vec(), t.as_bytes())
                .map_err(|e| CliError(format!("{key}: {e}")))?;
            views.push((key, view));
        }
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| CliError(e.to_string()))?;
    write_atomically(path, |tmp| std::fs::write(tmp, &bytes).map_err(|e| e.to_string()))
}
