//! The sampling loop on one CUDA device, with the latents resident there.
//!
//! The same run as [`crate::sample::sample`] on one rank: Philox initial
//! latents (drawn on the device), then per step the policy is lowered and
//! planned, every active branch is predicted by a [`DeviceModel`] from the
//! device latents, [`cuda::evaluate`] combines the predictions on the device
//! and a small kernel (`kernels/update.cu`) applies the sampler's update in
//! place. Nothing crosses to the host except the final latents (and what the
//! evaluator itself downloads: adaptive-guidance latches, APG momentum).
//!
//! The update is the CPU's f64 arithmetic, so for equal predictions the
//! latents are bit-identical; the noise and a device model's transcendental
//! functions may round differently from the CPU's by an ulp.
//!
//! Step reports carry a latents fingerprint only after the last step and
//! every `fingerprint_every` steps (each of those downloads the latents);
//! the other steps' fingerprints are all zeros.

use crate::comm::fingerprint;
use crate::cuda::launch::driver;
use crate::cuda::{self, kernels, Buffer, CudaError, Device, ExecOptions};
use crate::error::RuntimeError;
use crate::guider::StepTiming;
use crate::model::{Model, ModelError, OutputInfo, StepInfo};
use crate::philox::INIT_STEP;
use crate::plan::plan_step;
use crate::sample::{SampleOptions, Sampled, StepReport};
use crate::scheduler::SamplerKind;
use cfg_core::branch::BranchSpec;
use cfg_core::expr::{Policy, Space};
use cfg_core::lower::lower;
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::DType;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use std::time::Instant;

/// The update kernels (`kernels/update.cu`, after the prelude and Philox).
pub const UPDATE: kernels::KernelModule = kernels::KernelModule::new(
    "update",
    &[
        kernels::COMMON,
        kernels::PORTABLE_MATH,
        include_str!("../kernels/philox.cu"),
        include_str!("../kernels/update.cu"),
    ],
    &["init_latents", "update_f32", "update_f16", "update_bf16"],
);

/// A model call on the device: the branches of one batched group at one step.
#[derive(Debug, Clone, Copy)]
pub struct DeviceCall<'a> {
    /// The step.
    pub info: StepInfo,
    /// The branches to predict, by name and spec, in this order.
    pub branches: &'a [(String, BranchSpec)],
    /// The current f32 latents on the device, one per output (model output order).
    pub latents: &'a [&'a Buffer],
    /// The space each output must be predicted in (model output order).
    pub spaces: &'a [Space],
}

/// A [`Model`] that can also predict from device latents into device buffers.
pub trait DeviceModel: Model {
    /// Predicts every branch of `call` on `dev`: one `Vec` per branch (call
    /// order) of one buffer per output (model output order), each holding the
    /// output's element count in its dtype.
    fn predict_device(&self, dev: &Device, call: &DeviceCall<'_>) -> Result<Vec<Vec<Buffer>>, ModelError>;
}

/// `struct UpdateArgs` of `kernels/update.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UpdateArgs {
    t: f64,
    t_next: f64,
    keep: f64,
    c: f64,
    seed: u64,
    n: i64,
    step: u32,
    stream: u32,
    space: i32,
    kind: i32,
}

// SAFETY: `repr(C)` plain data laid out as its C twin (four doubles, two
// 64-bit and four 32-bit integers, no padding).
unsafe impl DeviceRepr for UpdateArgs {}

/// Runs the whole sampling loop on `dev` (world size 1) and returns the final
/// latents, downloaded, in the policy's output order. `opts.mode` only
/// affects the plans reported; with one rank nothing is exchanged.
pub fn sample_device<M: DeviceModel + ?Sized>(
    dev: &Device,
    model: &M,
    policy: &Policy,
    opts: &SampleOptions,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Sampled, RuntimeError> {
    if opts.steps == 0 {
        return Err(RuntimeError::Config("the number of steps must be at least 1".into()));
    }
    let (outputs, model_to_policy) = crate::model::match_outputs(model, policy)?;
    let spaces: Vec<Space> = policy.outputs.iter().map(|(_, spec)| spec.space).collect();
    let model_spaces: Vec<Space> = model_to_policy.iter().map(|&p| spaces[p]).collect();
    let times = opts.sampler.times(opts.steps);
    let backend = |step: usize, output: &str, e: CudaError| RuntimeError::Backend {
        rank: 0,
        step,
        output: output.to_string(),
        message: e.to_string(),
    };

    let mut latents = Vec::with_capacity(outputs.len());
    for (o, info) in outputs.iter().enumerate() {
        let x = init_latents(dev, opts.seed, o as u32, times[0].0, info.shape.numel())
            .map_err(|e| backend(0, &info.name, e))?;
        latents.push(x);
    }
    let mut state = GuidanceState::new();
    state.start();
    let mut reports = Vec::with_capacity(opts.steps);
    // The final latents, downloaded after the last step.
    let mut finals = Vec::with_capacity(outputs.len());
    for step in 0..opts.steps {
        let (t, sigma) = times[step];
        let t_next = times[step + 1].0;
        let info = StepInfo { step, num_steps: opts.steps, t, sigma };
        let ctx = StepContext { step, num_steps: opts.steps, sigma: Some(sigma) };
        let program = lower(policy, &ctx, &state, &opts.overrides).map_err(|source| RuntimeError::Core {
            rank: 0,
            step,
            source: Box::new(source),
        })?;
        let plan = plan_step(step, policy, &program, &outputs, model, 1, opts.mode);
        let mut timing = StepTiming::default();

        // Every active branch's prediction, per policy output (taken by the combine).
        let clock = Instant::now();
        let mut preds: Vec<Vec<Option<Buffer>>> = Vec::with_capacity(plan.active.len());
        preds.resize_with(plan.active.len(), Vec::new);
        let model_latents: Vec<&Buffer> = model_to_policy.iter().map(|&p| &latents[p]).collect();
        for group in &plan.groups[0] {
            let branches: Vec<(String, BranchSpec)> = group
                .iter()
                .map(|&i| {
                    let name = plan.active[i].clone();
                    let spec = policy.branches.get(&name).cloned().expect("active branches are declared");
                    (name, spec)
                })
                .collect();
            let call = DeviceCall { info, branches: &branches, latents: &model_latents, spaces: &model_spaces };
            let names = || branches.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
            let got = model.predict_device(dev, &call).map_err(|e| RuntimeError::Model {
                rank: 0,
                step,
                branches: names(),
                message: e.0,
            })?;
            if got.len() != branches.len() {
                return Err(bad(step, &names(), "*", format!("{} branch predictions", branches.len()), got.len()));
            }
            for (&i, per_output) in group.iter().zip(got) {
                preds[i] = check_prediction(step, &plan.active[i], per_output, &outputs, &model_to_policy)?;
            }
        }
        dev.sync().map_err(|e| backend(step, "*", e))?;
        timing.model = clock.elapsed();

        let clock = Instant::now();
        let mut combined = Vec::with_capacity(outputs.len());
        for (p, (prog, o)) in program.outputs.iter().zip(&outputs).enumerate() {
            let mut inputs = Vec::with_capacity(prog.branches.len());
            for b in &prog.branches {
                let i = plan.active.binary_search(b).expect("program branches are active");
                inputs.push(preds[i][p].take().expect("each output's prediction is read by one program"));
            }
            let out = cuda::evaluate(dev, prog, &inputs, o.dtype, &o.shape, &mut state, ExecOptions::default())
                .map_err(|e| backend(step, &o.name, e))?;
            combined.push(out);
        }
        dev.sync().map_err(|e| backend(step, "*", e))?;
        timing.combine = clock.elapsed();

        for (o, (x, pred)) in latents.iter().zip(&combined).enumerate() {
            let args = update_args(opts, spaces[o], step, o, x.len, t, t_next);
            update(dev, x, pred, args).map_err(|e| backend(step, &outputs[o].name, e))?;
        }

        let fp = if step + 1 == opts.steps {
            for (x, info) in latents.iter().zip(&outputs) {
                let t = dev.download(x, &info.shape).map_err(|e| backend(step, &info.name, e))?;
                finals.push((info.name.clone(), t));
            }
            fingerprint(&finals.iter().map(|(_, t)| t.as_bytes()).collect::<Vec<_>>())
        } else if opts.fingerprint_every > 0 && (step + 1) % opts.fingerprint_every == 0 {
            let bytes = latents.iter().map(|x| dev.download_bytes(x)).collect::<Result<Vec<_>, _>>();
            let bytes = bytes.map_err(|e| backend(step, "*", e))?;
            fingerprint(&bytes.iter().map(Vec::as_slice).collect::<Vec<_>>())
        } else {
            [0; 32]
        };
        let report = StepReport { step, t, plan, timing, fingerprint: fp };
        on_step(&report);
        reports.push(report);
    }
    Ok(Sampled { outputs: finals, reports })
}

fn bad(step: usize, branch: &str, output: &str, expected: String, got: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::BadPrediction {
        rank: 0,
        step,
        branch: branch.to_string(),
        output: output.to_string(),
        expected,
        got: got.to_string(),
    }
}

/// Checks one branch's buffers (model order) against the outputs and returns
/// them in the policy's order.
fn check_prediction(
    step: usize,
    branch: &str,
    per_output: Vec<Buffer>,
    outputs: &[OutputInfo],
    model_to_policy: &[usize],
) -> Result<Vec<Option<Buffer>>, RuntimeError> {
    if per_output.len() != outputs.len() {
        return Err(bad(step, branch, "*", format!("{} outputs", outputs.len()), per_output.len()));
    }
    let mut ordered: Vec<Option<Buffer>> = Vec::with_capacity(outputs.len());
    ordered.resize_with(outputs.len(), || None);
    for (m, b) in per_output.into_iter().enumerate() {
        let o = &outputs[model_to_policy[m]];
        if b.dtype != o.dtype || b.len != o.shape.numel() {
            let (expected, got) = (format!("{} {}", o.shape.numel(), o.dtype), format!("{} {}", b.len, b.dtype));
            return Err(bad(step, branch, &o.name, expected, got));
        }
        ordered[model_to_policy[m]] = Some(b);
    }
    Ok(ordered)
}

/// The update's parameters for output `o` at `step`, with the ancestral
/// coefficients computed as [`crate::scheduler::Sampler::update`] does.
fn update_args(opts: &SampleOptions, space: Space, step: usize, o: usize, n: usize, t: f64, t_next: f64) -> UpdateArgs {
    let s = &opts.sampler;
    let c = if s.is_stochastic() && t_next > 0.0 {
        let r = (t_next * (1.0 - t) / ((1.0 - t_next) * t)).powi(2);
        s.eta * t_next * (1.0 - r).max(0.0).sqrt()
    } else {
        0.0
    };
    let keep = (t_next * t_next - c * c).max(0.0).sqrt();
    UpdateArgs {
        t,
        t_next,
        keep,
        c,
        seed: opts.seed,
        n: n as i64,
        step: step as u32,
        stream: o as u32,
        space: match space {
            Space::Eps => 0,
            Space::V => 1,
            Space::X0 => 2,
        },
        kind: match s.kind {
            SamplerKind::Euler => 0,
            SamplerKind::Ddim => 1,
            SamplerKind::Ancestral => 2,
        },
    }
}

/// One thread per Philox block of four elements.
fn grid(dev: &Device, n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(4).div_ceil(256).clamp(1, dev.sms() as usize * 16);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// `t0·z` with `z` the Philox normals of `(seed, INIT_STEP, stream)`: f32 latents on the device.
pub fn init_latents(dev: &Device, seed: u64, stream: u32, t0: f64, n: usize) -> Result<Buffer, CudaError> {
    let x = dev.alloc(DType::F32, n)?;
    let (a, n64) = (x.addr(dev), n as i64);
    let k = dev.function(&UPDATE, "init_latents")?;
    // SAFETY: matches `init_latents(u64, u32, u32, double, float*, i64)`; `x` holds n f32.
    unsafe {
        dev.stream()
            .launch_builder(&k)
            .arg(&seed)
            .arg(&INIT_STEP)
            .arg(&stream)
            .arg(&t0)
            .arg(&a)
            .arg(&n64)
            .launch(grid(dev, n))
    }
    .map_err(driver)?;
    Ok(x)
}

/// Updates the f32 latents `x` in place from the combined prediction `pred`.
fn update(dev: &Device, x: &Buffer, pred: &Buffer, args: UpdateArgs) -> Result<(), CudaError> {
    if x.dtype != DType::F32 || pred.len != x.len {
        return Err(CudaError::Unsupported(format!(
            "update: latents {} {} and prediction {} {} differ",
            x.len, x.dtype, pred.len, pred.dtype
        )));
    }
    let k = dev.function(&UPDATE, &format!("update_{}", pred.dtype.name()))?;
    let (xa, pa) = (x.addr(dev), pred.addr(dev));
    // SAFETY: matches `update_<dtype>(float*, const T*, UpdateArgs)`; both
    // buffers hold `args.n` elements of their dtype (checked above).
    unsafe { dev.stream().launch_builder(&k).arg(&xa).arg(&pa).arg(&args).launch(grid(dev, x.len)) }.map_err(driver)?;
    Ok(())
}
