//! The sampling loop: the whole denoising run on one rank, on any device.
//!
//! The latents live where the backend keeps tensors (host memory, or GPU
//! memory on a CUDA rank) from the initial noise to the last update; per
//! step only small values cross to the host (see [`StepReport::host_bytes`]),
//! plus the latents when a fingerprint is checked (every
//! [`SampleOptions::fingerprint_every`] steps and after the last) and at the end.

use crate::backend::{Backend, UpdateStep};
use crate::comm::{check_fingerprint, fingerprint, Communicator};
use crate::error::RuntimeError;
use crate::guider::{Guider, StepTiming};
use crate::model::{Model, StepInfo};
use crate::plan::{Mode, StepPlan};
use crate::scheduler::Sampler;
use crate::tensor::DeviceTensor;
use cfg_core::expr::Policy;
use cfg_core::lower::Overrides;
use cfg_core::Tensor;
use std::sync::Arc;

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Number of denoising steps.
    pub steps: usize,
    /// The scheduler.
    pub sampler: Sampler,
    /// Seed of the initial latents and of stochastic samplers' noise.
    pub seed: u64,
    /// Deterministic (gather) or fast (all-reduce where cheaper).
    pub mode: Mode,
    /// Scale overrides.
    pub overrides: Overrides,
    /// Check that all ranks hold the same latents every this many steps
    /// (0: only after the last step, which is always checked).
    pub fingerprint_every: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            steps: 32,
            sampler: Sampler::default(),
            seed: 0,
            mode: Mode::Deterministic,
            overrides: Overrides::none(),
            fingerprint_every: 0,
        }
    }
}

/// What one step did, on this rank.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step.
    pub step: usize,
    /// Flow time of the step.
    pub t: f64,
    /// Its plan (shared by the steps whose program repeats).
    pub plan: Arc<StepPlan>,
    /// Where the time went.
    pub timing: StepTiming,
    /// SHA-256 of the latents after the step (all outputs, f32 bytes); on a
    /// device rank only where it is checked (else zeros).
    pub fingerprint: [u8; 32],
    /// Bytes copied between the host and the rank's device during the step
    /// (0 on the CPU): small values (latches, per-sample factors), and the
    /// latents where the fingerprint is checked.
    pub host_bytes: u64,
}

/// The result of a run, on one rank.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The final latents (f32), one per output, in the policy's order, by name.
    pub outputs: Vec<(String, Tensor)>,
    /// One report per step.
    pub reports: Vec<StepReport>,
}

impl Sampled {
    /// SHA-256 of the final latents (all outputs' f32 bytes, in order).
    pub fn fingerprint(&self) -> [u8; 32] {
        let parts: Vec<&[u8]> = self.outputs.iter().map(|(_, t)| t.as_bytes()).collect();
        fingerprint(&parts)
    }
}

/// Runs the whole sampling loop on this rank. Every rank of the group must
/// call it with the same arguments; each returns the same latents.
/// `on_step` sees every step's report (for progress bars).
pub fn sample<M, C, B>(
    model: &M,
    policy: &Policy,
    opts: &SampleOptions,
    comm: C,
    backend: B,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Sampled, RuntimeError>
where
    M: Model + ?Sized,
    C: Communicator,
    B: Backend,
{
    if opts.steps == 0 {
        return Err(RuntimeError::Config("the number of steps must be at least 1".into()));
    }
    let mut guider = Guider::new(policy.clone(), opts.overrides.clone(), model, comm, backend, opts.mode)?;
    guider.start();
    let rank = guider.rank();
    let times = opts.sampler.times(opts.steps);
    let outputs = guider.outputs().to_vec();
    let spaces = guider.spaces().to_vec();
    let backend_error = |step: usize, output: &str, e: crate::backend::BackendError| RuntimeError::Backend {
        rank,
        step,
        output: output.to_string(),
        message: e.0,
    };
    let mut latents: Vec<DeviceTensor> = Vec::with_capacity(outputs.len());
    for (o, info) in outputs.iter().enumerate() {
        let x = guider.backend_mut().init_latents(opts.seed, o, times[0].0, &info.shape);
        latents.push(x.map_err(|e| backend_error(0, &info.name, e))?);
    }
    let on_host = latents.iter().all(|x| x.as_host().is_some());
    let mut reports = Vec::with_capacity(opts.steps);
    let mut finals = Vec::new();
    for step in 0..opts.steps {
        let (t, sigma) = times[step];
        let t_next = times[step + 1].0;
        let copied = guider.backend_mut().host_bytes();
        let info = StepInfo { step, num_steps: opts.steps, t, sigma, chunks: model.chunk_times(step, t) };
        let guided = guider.step(model, &latents, info)?;
        let last = step + 1 == opts.steps;
        let check = last || (opts.fingerprint_every > 0 && (step + 1) % opts.fingerprint_every == 0);
        // The update, and the fingerprint of the new latents: host latents are
        // hashed every step (no copy), device latents where checked.
        let mut finish = || -> Result<[u8; 32], RuntimeError> {
            for (o, (x, pred)) in latents.iter_mut().zip(&guided.outputs).enumerate() {
                let at = UpdateStep { seed: opts.seed, step, output: o, t, t_next };
                let b = guider.backend_mut();
                b.update(&opts.sampler, spaces[o], x, pred, guided.renoise[o].as_ref(), at)
                    .map_err(|e| backend_error(step, &outputs[o].name, e))?;
            }
            if !(check || on_host) {
                return Ok([0; 32]);
            }
            let mut host = Vec::with_capacity(latents.len());
            for (x, info) in latents.iter().zip(&outputs) {
                host.push(guider.backend_mut().download(x).map_err(|e| backend_error(step, &info.name, e))?);
            }
            let fp = fingerprint(&host.iter().map(Tensor::as_bytes).collect::<Vec<_>>());
            if last {
                finals = host;
            }
            Ok(fp)
        };
        let fp = match finish() {
            Ok(fp) => fp,
            Err(e) => {
                // Every rank must learn of it, or the others wait at the next collective.
                guider.comm_mut().abort(step, &e.to_string());
                return Err(e);
            }
        };
        if check {
            // The last check is also the closing barrier: no rank returns
            // success while another has failed.
            if let Err(e) = check_fingerprint(guider.comm_mut(), step, &fp) {
                if !matches!(e, RuntimeError::PeerFailed { .. }) {
                    guider.comm_mut().abort(step, &e.to_string());
                }
                return Err(e);
            }
        }
        let host_bytes = guider.backend_mut().host_bytes() - copied;
        let report = StepReport { step, t, plan: guided.plan, timing: guided.timing, fingerprint: fp, host_bytes };
        on_step(&report);
        reports.push(report);
    }
    let names = policy.outputs.names().map(String::from);
    Ok(Sampled { outputs: names.zip(finals).collect(), reports })
}
