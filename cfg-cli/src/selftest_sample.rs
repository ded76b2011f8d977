//! The end-to-end check of `cfg selftest --device cuda`: the default policy
//! (and CFG++, whose sampler re-noises with a second prediction) on the 2-D mixture, sampled on the GPU (model kernel, device combine and
//! update, latents resident) and on the CPU with the same seed and steps; the
//! final latents are compared ([`compare_samples`]); and the GMM kernel's
//! predictions against the CPU model's ([`compare_predictions`]), which tells
//! a model difference from a loop difference when the first check fails.
//!
//! Bit-identity is expected: the update and the combine are the CPU's
//! arithmetic, and the model kernel's softmax and the Philox normals use the
//! portable `exp`/`log`/`sin`/`cos` (`cfg_core::portable_math` and its CUDA
//! twin), built from exactly rounded operations only. Any difference fails.

use crate::error::CliError;
use crate::models::{build, ModelKind};
use cfg_core::DType;
use cfg_runtime::cuda::CudaBackend;
use cfg_runtime::cuda::Device;
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::{sample, CpuBackend, LocalComm, Mode, SampleOptions};
use std::sync::Arc;

/// Samples of the check (the 2-D model's points).
const BATCH: usize = 1024;
/// Seed of both runs.
const SEED: u64 = 7;

/// The result of one GPU-vs-CPU comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleCheck {
    /// What ran (`sample gmm2d euler`).
    pub name: String,
    /// Largest difference: absolute for samples, in ulps of the dtype when `in_ulps`.
    pub max_abs: f64,
    /// Whether `max_abs` counts ulps (predictions) rather than absolute units.
    pub in_ulps: bool,
    /// `‖gpu − cpu‖/‖cpu‖`.
    pub rel_error: f64,
    /// Whether both are within tolerance.
    pub ok: bool,
}

impl SampleCheck {
    /// The row of `cfg selftest`'s table: name, dtype, measure, pass.
    pub fn row(&self) -> (String, DType, String, bool) {
        let measure = if self.in_ulps {
            format!("max {} ulp, rel {:.1e}", self.max_abs, self.rel_error)
        } else {
            format!("max {:.1e}, rel {:.1e}", self.max_abs, self.rel_error)
        };
        (self.name.clone(), DType::F32, measure, self.ok)
    }
}

/// Samples `policy` (a library name) on the 2-D model with `kind` on `dev`
/// and on the CPU (one rank each) and compares the final latents.
pub fn compare_sample(dev: &Arc<Device>, name: &str, kind: SamplerKind) -> Result<SampleCheck, CliError> {
    let policy = cfg_policies::resolve(name)?.policy;
    let model = build(ModelKind::Gmm2d, &policy, Some(BATCH));
    let opts = SampleOptions {
        steps: policy.steps.unwrap_or(32),
        sampler: Sampler::new(kind),
        seed: SEED,
        mode: Mode::Deterministic,
        ..SampleOptions::default()
    };
    let comm = LocalComm::group(1, DEFAULT_TIMEOUT).pop().expect("a group of one");
    let gpu = sample(&model, &policy, &opts, comm, CudaBackend::on(dev.clone()), &mut |_| {})?;
    let comm = LocalComm::group(1, DEFAULT_TIMEOUT).pop().expect("a group of one");
    let cpu = sample(&model, &policy, &opts, comm, CpuBackend, &mut |_| {})?;
    let (mut max_abs, mut diff2, mut norm2) = (0.0f64, 0.0f64, 0.0f64);
    for ((_, g), (_, c)) in gpu.outputs.iter().zip(&cpu.outputs) {
        for (&a, &b) in g.to_f32().iter().zip(&c.to_f32()) {
            let d = a as f64 - b as f64;
            // A NaN anywhere must fail the check, not vanish in a max.
            max_abs = if d.is_nan() { f64::INFINITY } else { max_abs.max(d.abs()) };
            diff2 += d * d;
            norm2 += b as f64 * b as f64;
        }
    }
    let rel_error = if norm2 > 0.0 { (diff2 / norm2).sqrt() } else { diff2.sqrt() };
    let ok = max_abs == 0.0;
    let name = if name == cfg_policies::library::DEFAULT { String::new() } else { format!("{name} ") };
    Ok(SampleCheck { name: format!("sample gmm2d {name}{kind}"), max_abs, in_ulps: false, rel_error, ok })
}

/// The GMM kernel against the CPU model, one step's predictions: two outputs
/// (joint and isolated responsibilities), every branch kind and space, f32
/// (2-D) and bf16 (tokens). Passes when bit-identical (the portable
/// `exp`/`log` on both sides). `max_abs` counts ulps here.
pub fn compare_predictions(dev: &Device) -> Result<SampleCheck, CliError> {
    use cfg_core::expr::Space;
    use cfg_core::Tensor;
    use cfg_gmm::GmmModel;
    use cfg_runtime::model::{Call, Model, StepInfo};

    let models =
        [GmmModel::planar(&["video", "audio"], 96), GmmModel::tokens(&["video", "audio"], 2, 64, 16, DType::BF16)];
    let specs = GmmModel::branch_kinds();
    let (mut worst, mut diff2, mut norm2) = (0.0f64, 0.0f64, 0.0f64);
    for m in &models {
        let outs = m.outputs();
        let latents: Vec<Tensor> = outs
            .iter()
            .enumerate()
            .map(|(o, info)| {
                let v = cfg_runtime::philox::normal_vec(SEED, 0, o as u32, info.shape.numel());
                Tensor::from_f32(DType::F32, info.shape.clone(), &v)
            })
            .collect();
        let on_device = latents.iter().map(|t| dev.upload(t)).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = on_device.iter().collect();
        for spec in &specs {
            for (t, spaces) in [(0.95, [Space::Eps, Space::V]), (0.4, [Space::X0, Space::Eps]), (0.03, [Space::V; 2])] {
                let branches = [("b".to_string(), spec.clone())];
                let info =
                    StepInfo { step: 0, num_steps: 1, t, sigma: t, chunks: cfg_core::schedule::ChunkTimes::NONE };
                let call = Call { info, branches: &branches, latents: &latents, spaces: &spaces };
                let want = m.predict(&call).map_err(|e| CliError(e.0))?.remove(0);
                let got = m.predict_branch_device(dev, spec, &refs, t, t, &spaces)?;
                for ((w, g), info) in want.iter().zip(&got).zip(&outs) {
                    let g = dev.download(g, &info.shape)?;
                    for (&a, &b) in g.to_f32().iter().zip(&w.to_f32()) {
                        let d = a as f64 - b as f64;
                        let ulps = if d.is_nan() { f64::INFINITY } else { d.abs() / info.dtype.ulp(b as f64) };
                        worst = worst.max(ulps);
                        diff2 += d * d;
                        norm2 += b as f64 * b as f64;
                    }
                }
            }
        }
    }
    let rel_error = if norm2 > 0.0 { (diff2 / norm2).sqrt() } else { diff2.sqrt() };
    Ok(SampleCheck {
        name: "gmm kernel predictions".into(),
        max_abs: worst,
        in_ulps: true,
        rel_error,
        ok: worst == 0.0,
    })
}

/// [`compare_sample`] of the default policy with the deterministic flow
/// Euler sampler and the stochastic ancestral one (its noise drawn on the
/// device), and of CFG++ (`cfg_pp`: the sampler re-noises with the uncond
/// prediction) with every sampler.
pub fn compare_samples(dev: &Arc<Device>) -> Result<Vec<SampleCheck>, CliError> {
    let default = cfg_policies::library::DEFAULT;
    [
        (default, SamplerKind::Euler),
        (default, SamplerKind::Ancestral),
        ("cfg_pp", SamplerKind::Euler),
        ("cfg_pp", SamplerKind::Ddim),
        ("cfg_pp", SamplerKind::Ancestral),
    ]
    .into_iter()
    .map(|(name, k)| compare_sample(dev, name, k))
    .collect()
}
