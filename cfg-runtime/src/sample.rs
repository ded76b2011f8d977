//! The sampling loop: the whole denoising run on one rank.

use crate::backend::Backend;
use crate::comm::{check_fingerprint, fingerprint, Communicator};
use crate::error::RuntimeError;
use crate::guider::{Guider, StepTiming};
use crate::model::{Model, StepInfo};
use crate::philox::{normal_vec, INIT_STEP};
use crate::plan::{Mode, StepPlan};
use crate::scheduler::Sampler;
use cfg_core::expr::Policy;
use cfg_core::lower::Overrides;
use cfg_core::tensor::TensorData;
use cfg_core::Tensor;

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
    /// Its plan.
    pub plan: StepPlan,
    /// Where the time went.
    pub timing: StepTiming,
    /// SHA-256 of the latents after the step (all outputs, f32 bytes).
    pub fingerprint: [u8; 32],
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
    let times = opts.sampler.times(opts.steps);
    let mut latents: Vec<Tensor> = guider
        .outputs()
        .iter()
        .enumerate()
        .map(|(o, info)| {
            let z = normal_vec(opts.seed, INIT_STEP, o as u32, info.shape.numel());
            let x: Vec<f32> = z.iter().map(|&v| (times[0].0 * v as f64) as f32).collect();
            Tensor { shape: info.shape.clone(), data: TensorData::F32(x) }
        })
        .collect();
    let spaces = guider.spaces().to_vec();
    let mut reports = Vec::with_capacity(opts.steps);
    for step in 0..opts.steps {
        let (t, sigma) = times[step];
        let t_next = times[step + 1].0;
        let info = StepInfo { step, num_steps: opts.steps, t, sigma };
        let guided = guider.step(model, &latents, info)?;
        for (o, (x, pred)) in latents.iter_mut().zip(&guided.outputs).enumerate() {
            let noise = opts.sampler.is_stochastic().then(|| normal_vec(opts.seed, step as u32, o as u32, x.len()));
            let TensorData::F32(xs) = &mut x.data else { unreachable!("latents are f32") };
            opts.sampler.update(spaces[o], xs, &pred.to_f32(), t, t_next, noise.as_deref());
        }
        let parts: Vec<&[u8]> = latents.iter().map(|t| t.as_bytes()).collect();
        let fp = fingerprint(&parts);
        let last = step + 1 == opts.steps;
        if last || (opts.fingerprint_every > 0 && (step + 1) % opts.fingerprint_every == 0) {
            // The last check is also the closing barrier: no rank returns
            // success while another has failed.
            if let Err(e) = check_fingerprint(guider.comm_mut(), step, &fp) {
                if !matches!(e, RuntimeError::PeerFailed { .. }) {
                    guider.comm_mut().abort(step, &e.to_string());
                }
                return Err(e);
            }
        }
        let report = StepReport { step, t, plan: guided.plan, timing: guided.timing, fingerprint: fp };
        on_step(&report);
        reports.push(report);
    }
    let names = policy.outputs.names().map(String::from);
    Ok(Sampled { outputs: names.zip(latents).collect(), reports })
}
