//! `cfg sample`: run a policy on the analytic model over in-process ranks.
//!
//! With no arguments: standard CFG on the 2-D class-conditional mixture, two
//! ranks, and a PNG scatter plot of the samples over the true densities.
//! Output files are written to a temporary file and renamed into place only
//! when every rank succeeded, so a failed run leaves no partial file.
//!
//! `--device cuda --ranks M` runs one rank per GPU (threads, NCCL between
//! them) with the latents resident on each device: the model's kernel, the
//! collectives, the combine and the sampler update all run there, in the same
//! loop (`cfg_runtime::sample`) as the CPU ranks; the summary is the same.

use crate::error::{CliError, CliResult};
use crate::models::{build, bytes, overrides, ModelKind};
use crate::plot::{write_png, Panel};
use crate::quality::score;
use cfg_core::lower::Overrides;
use cfg_core::Tensor;
use cfg_gmm::GmmModel;
use cfg_runtime::cuda::{run_nccl_threads, CudaBackend, Device, NcclOptions};
use cfg_runtime::model::{Call, DeviceCall, Model, ModelError, OutputInfo};
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::tensor::{DeviceTensor, Place};
use cfg_runtime::{
    run_local, sample, Backend, Communicator, CpuBackend, LocalComm, Mode, RuntimeError, SampleOptions, Sampled,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `cfg sample`.
#[derive(clap::Args)]
pub struct Args {
    /// A policy file or built-in name.
    #[arg(long, default_value = cfg_policies::library::DEFAULT)]
    pub policy: String,
    /// The analytic model.
    #[arg(long, value_enum, default_value = "gmm2d")]
    pub model: ModelKind,
    /// Batch size (default: 4096 for gmm2d, 4 for tokens).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Where to run: `cpu` (in-process ranks) or `cuda` (one rank on GPU 0,
    /// latents resident on the device).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: SampleDevice,
    /// Number of in-process ranks M (default: 2 on cpu; cuda runs 1).
    #[arg(long)]
    pub ranks: Option<usize>,
    /// Number of steps (default: the policy's own, else 32).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Scale overrides, NAME=V (repeatable).
    #[arg(long = "scale")]
    pub scales: Vec<String>,
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
    /// Write the final samples here (safetensors, f32, one tensor per output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the scatter plot here (gmm2d; default `samples.png`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// One run per value, one panel each: NAME=V1,V2,... (e.g. scale=1,2,4,8).
    #[arg(long)]
    pub grid: Option<String>,
    /// Check that ranks agree every K steps (0: after the last step only).
    #[arg(long, default_value_t = 0)]
    pub fingerprint_every: usize,
    /// Seconds a rank waits for the others before failing the run.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
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

/// One run of the grid (or the only run).
struct Run {
    label: String,
    overrides: Overrides,
}

pub fn run(args: Args) -> CliResult {
    let ranks = args.ranks.unwrap_or(match args.device {
        SampleDevice::Cpu => 2,
        SampleDevice::Cuda => 1,
    });
    if ranks == 0 {
        return Err(CliError("--ranks must be at least 1".into()));
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(CliError("--timeout must be a positive number of seconds".into()));
    }
    if !(args.shift > 0.0 && args.shift.is_finite()) {
        return Err(CliError("--shift must be positive".into()));
    }
    let loaded = cfg_policies::resolve(&args.policy)?;
    let policy = loaded.policy;
    let steps = args.steps.or(policy.steps).unwrap_or(32);
    if steps == 0 {
        return Err(CliError("--steps must be at least 1".into()));
    }
    let fault = args.inject_fault.as_deref().map(parse_fault).transpose().map_err(CliError)?;
    let model = build(args.model, &policy, args.batch);
    let base = overrides(&policy, &args.scales).map_err(CliError)?;
    let runs = match &args.grid {
        None => vec![Run { label: String::new(), overrides: base }],
        Some(grid) => grid_runs(&policy, &base, grid).map_err(CliError)?,
    };
    let mode = if args.deterministic { Mode::Deterministic } else { Mode::Fast };
    let sampler = Sampler { shift: args.shift, ..Sampler::new(args.sampler) };
    let plot = match (&args.plot, args.model) {
        (Some(p), _) => Some(p.clone()),
        (None, ModelKind::Gmm2d) => Some(PathBuf::from("samples.png")),
        (None, _) => None,
    };
    if plot.is_some() && args.model != ModelKind::Gmm2d {
        return Err(CliError("--plot needs the 2-D model (--model gmm2d)".into()));
    }
    let placement = match args.device {
        SampleDevice::Cpu => format!("{ranks} ranks"),
        SampleDevice::Cuda => {
            let count = cfg_runtime::cuda::device_count()?;
            if ranks > count {
                return Err(CliError(format!(
                    "--ranks {ranks} on CUDA needs {ranks} GPUs (one per rank); this machine has {count}"
                )));
            }
            format!("{ranks} CUDA rank{} on {}", if ranks == 1 { "" } else { "s" }, Device::new(0)?.describe())
        }
    };
    println!(
        "policy `{}` ({}), model {:?} {}, {placement}, {steps} steps, {} sampler, {} mode, seed {}",
        policy.name,
        loaded.origin,
        args.model,
        model.outputs().iter().map(|o| format!("{}{} {}", o.name, o.shape, o.dtype)).collect::<Vec<_>>().join(" + "),
        args.sampler,
        if args.deterministic { "deterministic" } else { "fast" },
        args.seed
    );

    let mut results = Vec::new();
    for r in &runs {
        let opts = SampleOptions {
            steps,
            sampler,
            seed: args.seed,
            mode,
            overrides: r.overrides.clone(),
            fingerprint_every: args.fingerprint_every,
        };
        let started = Instant::now();
        let timeout = Duration::from_secs_f64(args.timeout);
        let sampled = run_ranks(&model, &policy, &opts, (args.device, ranks), timeout, fault)?;
        if !r.label.is_empty() {
            println!("\n== {} ==", r.label);
        }
        summarize(&model, &sampled, started.elapsed());
        results.push(sampled);
    }

    if let Some(path) = &args.out {
        write_safetensors(path, &runs, &results)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &plot {
        let panels: Vec<Panel<'_>> = runs
            .iter()
            .zip(&results)
            .map(|(r, s)| {
                let q = score(model.mixture(0), &s.outputs[0].1.to_f32(), model.labels());
                let what =
                    if r.label.is_empty() { policy.name.clone() } else { format!("{} {}", policy.name, r.label) };
                Panel {
                    title: format!("{what}: {:.1}% on class", 100.0 * q.on_class),
                    points: match &s.outputs[0].1.data {
                        cfg_core::tensor::TensorData::F32(v) => v.as_slice(),
                        _ => unreachable!("latents are f32"),
                    },
                    labels: model.labels(),
                    mixture: model.mixture(0),
                }
            })
            .collect();
        write_atomically(path, |tmp| write_png(tmp, &panels))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_fault(s: &str) -> Result<(usize, usize), String> {
    let (r, st) = s.split_once(':').ok_or_else(|| format!("--inject-fault `{s}`: expected RANK:STEP"))?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("--inject-fault `{s}`: expected RANK:STEP"));
    Ok((parse(r)?, parse(st)?))
}

fn grid_runs(policy: &cfg_core::expr::Policy, base: &Overrides, grid: &str) -> Result<Vec<Run>, String> {
    let (name, values) = grid.split_once('=').ok_or_else(|| format!("--grid `{grid}`: expected NAME=V1,V2,..."))?;
    let mut runs = Vec::new();
    for v in values.split(',').filter(|v| !v.trim().is_empty()) {
        let item = format!("{}={}", name.trim(), v.trim());
        let one = overrides(policy, std::slice::from_ref(&item))?;
        let mut o = base.clone();
        o.scales.extend(one.scales);
        runs.push(Run { label: item, overrides: o });
    }
    if runs.is_empty() {
        return Err(format!("--grid `{grid}`: no values"));
    }
    Ok(runs)
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

/// Runs the sampler on `ranks` threads: in-process ranks on the CPU, or one
/// CUDA rank per GPU (NCCL between them); on failure returns the root cause.
fn run_ranks(
    model: &GmmModel,
    policy: &cfg_core::expr::Policy,
    opts: &SampleOptions,
    (device, ranks): (SampleDevice, usize),
    timeout: Duration,
    fault: Option<(usize, usize)>,
) -> Result<Sampled, CliError> {
    let bar = progress(opts.steps);
    /// One rank's run, with its progress shown by rank 0.
    fn one<C: Communicator, B: Backend>(
        job: (&GmmModel, &cfg_core::expr::Policy, &SampleOptions, Option<(usize, usize)>, &ProgressBar),
        comm: C,
        backend: B,
    ) -> Result<Sampled, RuntimeError> {
        let (model, policy, opts, fault, bar) = job;
        let rank = comm.rank();
        let faulty = Faulty { inner: model, rank, fault };
        let mut on_step = |r: &cfg_runtime::StepReport| {
            if rank == 0 {
                bar.set_message(r.plan.collective.name());
                bar.inc(1);
            }
        };
        sample(&faulty, policy, opts, comm, backend, &mut on_step)
    }
    let job = (model, policy, opts, fault, &bar);
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
    // The failing rank's own error says most; the others report it second-hand.
    let root = errors.iter().find(|e| !matches!(e, RuntimeError::PeerFailed { .. })).unwrap_or(&errors[0]);
    Err(CliError(format!("{} of {ranks} ranks failed; {root}", errors.len())))
}

fn summarize(model: &GmmModel, s: &Sampled, wall: Duration) {
    let steps = s.reports.len().max(1) as f64;
    let mut timing = cfg_runtime::StepTiming::default();
    for r in &s.reports {
        timing += r.timing;
    }
    let moved: usize = s.reports.iter().map(|r| r.plan.bytes()).sum();
    let calls: usize = s.reports.iter().map(|r| r.plan.calls()).sum();
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps;
    println!(
        "time per step (rank 0): model {:.3} ms, combine {:.3} ms, communication {:.3} ms; wall {:.2} s",
        per(timing.model),
        per(timing.combine),
        per(timing.comm),
        wall.as_secs_f64()
    );
    let collectives: Vec<&str> = {
        let mut v: Vec<&str> = s.reports.iter().map(|r| r.plan.collective.name()).collect();
        v.dedup();
        v
    };
    println!(
        "model calls {calls}; collective payload {} in all ({} per step; {})",
        bytes(moved),
        bytes((moved as f64 / steps) as usize),
        collectives.join(" → ")
    );
    for (k, (name, x)) in s.outputs.iter().enumerate() {
        let q = score(model.mixture(k), &x.to_f32(), model.labels());
        println!(
            "output `{name}`: {:.2}% of {} points on the requested class; mean log-likelihood {:.3}",
            100.0 * q.on_class,
            q.points,
            q.log_likelihood
        );
        let errs: Vec<String> = q
            .per_class
            .iter()
            .enumerate()
            .map(|(c, (n, m, cov))| format!("class {c} (n={n}): mean err {m:.3}, cov err {cov:.3}"))
            .collect();
        for e in errs {
            println!("  {e}");
        }
    }
    let hex: String = s.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
    println!("sha256 {hex}");
}

/// Writes through a temporary file in the same directory, renamed into
/// place only on success.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(".cfg-")
        .suffix(&ext)
        .tempfile_in(&dir)
        .map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    write(tmp.path()).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    let file = tmp.persist(path).map_err(|e| CliError(format!("{}: {}", path.display(), e.error)))?;
    // Temporary files are private; a result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    }
    drop(file);
    Ok(())
}

fn write_safetensors(path: &Path, runs: &[Run], results: &[Sampled]) -> Result<(), CliError> {
    let mut views = Vec::new();
    for (r, s) in runs.iter().zip(results) {
        for (name, t) in &s.outputs {
            let key = if r.label.is_empty() { name.clone() } else { format!("{name}@{}", r.label) };
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.0.clone(), t.as_bytes())
                .map_err(|e| CliError(format!("{key}: {e}")))?;
            views.push((key, view));
        }
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| CliError(e.to_string()))?;
    write_atomically(path, |tmp| std::fs::write(tmp, &bytes).map_err(|e| e.to_string()))
}
