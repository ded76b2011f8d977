//! The GMM prediction on a CUDA device (`kernels/gmm.cu`).
//!
//! [`GmmModel::predict_branch_device`] fills one device buffer per output for
//! a branch from the device latents; the model's `predict_on` uses it on a
//! CUDA rank, so the runtime's loop keeps everything in device memory.
//!
//! Per call the host computes, in f64 and exactly as the CPU model does, the
//! tables that depend on the step and the branch (component variances at
//! `t`, their logs, the posterior-mean coefficients, the log weights, and
//! which components each sample may use; PAG's and SEG's tempering is folded
//! into the variances, their logs and the log weights) and uploads them (a
//! few kB); the
//! kernel does the rest (likelihoods, log-sum-exp responsibilities, `E[x₀|x_t]`,
//! the output space). The softmax's `exp` and `log` are the portable ones
//! (`cfg_core::portable_math`, `kernels/portable_math.cu`) the CPU model uses
//! too, so predictions are the CPU model's bits.
//!
//! Always built: without libcuda no [`Device`] can be opened (the runtime
//! returns [`CudaError::NoDriver`]), so nothing here is reached.

use crate::model::{pulled_mean, terms, Condition, GmmModel};
use cfg_core::branch::BranchSpec;
use cfg_core::expr::Space;
use cfg_runtime::cuda::kernels::{KernelModule, COMMON, PORTABLE_MATH};
use cfg_runtime::cuda::{Buffer, CudaError, Device};
use cfg_runtime::model::{DeviceCall, Model, ModelError};
use cfg_runtime::tensor::{CudaTensor, DeviceTensor};
use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use thiserror::Error;

/// The kernel module: the runtime's prelude, then `kernels/gmm.cu`.
pub const GMM: KernelModule = KernelModule::new(
    "gmm",
    &[COMMON, PORTABLE_MATH, include_str!("../kernels/gmm.cu")],
    &["gmm_predict_f32", "gmm_predict_f16", "gmm_predict_bf16"],
);

/// Most outputs the kernel predicts at once.
pub const MAX_PARTS: usize = 4;
/// Most mixture components the kernel handles (one bit each per sample).
pub const MAX_COMPONENTS: usize = 32;

/// Why a device prediction failed.
#[derive(Debug, Error)]
pub enum GmmCudaError {
    /// The device failed.
    #[error(transparent)]
    Cuda(#[from] CudaError),
    /// The call does not fit the model (latents, spaces, time, condition).
    #[error("{0}")]
    Input(String),
}

impl From<GmmCudaError> for ModelError {
    fn from(e: GmmCudaError) -> Self {
        ModelError(e.to_string())
    }
}

/// `struct GmmArgs` of `kernels/gmm.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct GmmArgs {
    x: [u64; MAX_PARTS],
    out: [u64; MAX_PARTS],
    table: u64,
    allowed: u64,
    nag_table: u64,
    nag_allowed: u64,
    t: f64,
    a: f64,
    nag_scale: f64,
    nag_tau: f64,
    nag_alpha: f64,
    items: i64,
    tokens: i64,
    parts: i32,
    comps: i32,
    dim: i32,
    isolate: i32,
    nag: i32,
    part_dim: [i32; MAX_PARTS],
    part_offset: [i32; MAX_PARTS],
    space: [i32; MAX_PARTS],
}

// SAFETY: `repr(C)` plain data laid out as its C twin: 19 eight-byte fields,
// then 17 four-byte ones (220 bytes, padded to 224).
unsafe impl DeviceRepr for GmmArgs {}

impl GmmModel {
    /// Predicts branch `spec` at flow time `t` (noise level `sigma`, which
    /// NAG's `sigma_end` reads) from the device `latents` (f32, one per
    /// output in model order) into one new buffer per output, in the model's
    /// dtype, each output in its `spaces` entry.
    pub fn predict_branch_device(
        &self,
        dev: &Device,
        spec: &BranchSpec,
        latents: &[&Buffer],
        t: f64,
        sigma: f64,
        spaces: &[Space],
    ) -> Result<Vec<Buffer>, GmmCudaError> {
        self.check_device_call(latents, t, spaces)?;
        let cond = self.condition(spec);
        let nag = self.nag(spec, sigma);
        let stream = dev.stream();
        let upload = |cond: Condition| -> Result<_, GmmCudaError> {
            let table = stream.clone_htod(&self.table(cond, t)).map_err(|e| driver("cuMemcpyHtoD", e))?;
            let masks = stream.clone_htod(&self.masks(cond)?).map_err(|e| driver("cuMemcpyHtoD", e))?;
            Ok((table, masks))
        };
        let (table, masks) = upload(cond)?;
        let negative = nag.map(|n| upload(n.negative)).transpose()?;
        let outs = self
            .parts
            .iter()
            .map(|p| dev.alloc(self.dtype, self.batch * self.tokens * p.dim))
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = GmmArgs {
            table: table.device_ptr(stream).0,
            allowed: masks.device_ptr(stream).0,
            t,
            a: 1.0 - t,
            items: (self.batch * self.tokens) as i64,
            tokens: self.tokens as i64,
            parts: self.parts.len() as i32,
            comps: self.mixture.components.len() as i32,
            dim: self.mixture.dim as i32,
            isolate: i32::from(cond.isolate),
            ..GmmArgs::default()
        };
        if let (Some(n), Some((table, masks))) = (nag, &negative) {
            args.nag = 1;
            args.nag_table = table.device_ptr(stream).0;
            args.nag_allowed = masks.device_ptr(stream).0;
            (args.nag_scale, args.nag_tau, args.nag_alpha) = (n.scale, n.tau, n.alpha);
        }
        for (p, part) in self.parts.iter().enumerate() {
            args.x[p] = latents[p].addr(dev);
            args.out[p] = outs[p].addr(dev);
            args.part_dim[p] = part.dim as i32;
            args.part_offset[p] = part.offset as i32;
            args.space[p] = match spaces[p] {
                Space::Eps => 0,
                Space::V => 1,
                Space::X0 => 2,
            };
        }
        let k = dev.function(&GMM, &format!("gmm_predict_{}", self.dtype.name()))?;
        let items = self.batch * self.tokens;
        let blocks = items.div_ceil(128).clamp(1, dev.sms() as usize * 32);
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `gmm_predict_<dtype>(GmmArgs)`; every pointer in
        // `args` addresses a live buffer of the size the kernel reads or
        // writes (latents and outputs checked above, tables built for this
        // mixture and batch); `table` and `masks` are freed on the stream
        // after the launch (or after a sync), never before it runs.
        unsafe { stream.launch_builder(&k).arg(&args).launch(cfg) }.map_err(|e| driver("kernel launch", e))?;
        drop((table, masks, negative));
        Ok(outs)
    }

    fn check_device_call(&self, latents: &[&Buffer], t: f64, spaces: &[Space]) -> Result<(), GmmCudaError> {
        let input = |m: String| Err(GmmCudaError::Input(m));
        if self.parts.len() > MAX_PARTS || self.mixture.components.len() > MAX_COMPONENTS {
            return input(format!(
                "the device model handles at most {MAX_PARTS} outputs and {MAX_COMPONENTS} components \
                 (this one has {} and {})",
                self.parts.len(),
                self.mixture.components.len()
            ));
        }
        if latents.len() != self.parts.len() || spaces.len() != self.parts.len() {
            return input(format!("expected {} latents and spaces", self.parts.len()));
        }
        if !(t > 0.0 && t <= 1.0) {
            return input(format!("flow time {t} is outside (0, 1]"));
        }
        for (part, x) in self.parts.iter().zip(latents) {
            let n = self.batch * self.tokens * part.dim;
            if x.dtype != cfg_core::DType::F32 || x.len != n {
                return input(format!("output `{}`: expected {n} f32 latents, got {} {}", part.name, x.len, x.dtype));
            }
        }
        Ok(())
    }

    /// Per sample, the bit set of the components its class allows under `cond`.
    fn masks(&self, cond: Condition) -> Result<Vec<u32>, GmmCudaError> {
        self.labels
            .iter()
            .map(|&label| {
                let allowed = self.allowed(cond, label);
                if allowed.is_empty() {
                    return Err(GmmCudaError::Input("no mixture component satisfies the branch's condition".into()));
                }
                Ok(allowed.iter().fold(0u32, |m, &j| m | (1 << j)))
            })
            .collect()
    }

    /// `mean`, `var`, `ln var`, `coef` (each `J × D`, component-major) and
    /// `ln π` (`J`) at time `t`, with the CPU model's expressions.
    fn table(&self, cond: Condition, t: f64) -> Vec<f64> {
        let comps = &self.mixture.components;
        let jd = comps.len() * self.mixture.dim;
        let a = 1.0 - t;
        let mut v = vec![0.0f64; 4 * jd + comps.len()];
        let (mean, rest) = v.split_at_mut(jd);
        let (var, rest) = rest.split_at_mut(jd);
        let (log_var, rest) = rest.split_at_mut(jd);
        let (coef, log_weight) = rest.split_at_mut(jd);
        for (j, c) in comps.iter().enumerate() {
            log_weight[j] = cond.prior * c.weight.ln();
            for k in 0..self.mixture.dim {
                let i = j * self.mixture.dim + k;
                mean[i] = pulled_mean(cond, c.mean[k], self.center[k]);
                // The likelihood's terms and the posterior mean's
                // coefficient, as in `predict_sample`.
                (var[i], log_var[i], coef[i]) = terms(cond, a, t, c.std[k]);
            }
        }
        v
    }
}

fn driver(context: &'static str, e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver { context, message: format!("{e:?}") }
}

impl GmmModel {
    /// [`cfg_runtime::Model::predict_on`] on a CUDA rank: the kernel reads the
    /// latents and writes the predictions in device memory.
    pub(crate) fn predict_on_cuda(
        &self,
        dev: &Device,
        call: &DeviceCall<'_>,
    ) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
        let latents: Vec<&Buffer> = call
            .latents
            .iter()
            .map(|t| {
                t.as_cuda().map(|c| &c.buf).ok_or_else(|| ModelError("latents in host memory on a CUDA rank".into()))
            })
            .collect::<Result<_, _>>()?;
        let outputs = self.outputs();
        call.branches
            .iter()
            .map(|(name, spec)| {
                let bufs = self
                    .predict_branch_device(dev, spec, &latents, call.info.t, call.info.sigma, call.spaces)
                    .map_err(|e| ModelError(format!("branch `{name}`: {e}")))?;
                bufs.into_iter()
                    .zip(&outputs)
                    .map(|(buf, o)| {
                        let (buf, shape) = crate::extra_tokens::pad_device(dev, spec, buf, &o.shape)
                            .map_err(|e| ModelError(format!("branch `{name}`: {e}")))?;
                        Ok(DeviceTensor::Cuda(CudaTensor { buf, shape }))
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfg_core::portable_math;
    use cfg_core::{DType, Tensor};
    use cfg_runtime::model::{Call, Model, StepInfo};
    use std::mem::size_of;

    /// `gmm.cu` line for line, in Rust (with the portable `exp`/`ln`): checks
    /// that the host tables and the kernel's loop are the CPU model's math.
    fn kernel_in_rust(m: &GmmModel, spec: &BranchSpec, lat: &[Vec<f32>], t: f64, spaces: &[Space]) -> Vec<Vec<f32>> {
        let cond = m.condition(spec);
        let nag = m.nag(spec, t);
        let upload = |c: Condition| (m.masks(c).unwrap(), m.table(c, t));
        let positive = upload(cond);
        let negative = nag.map(|n| upload(n.negative));
        let (comps, d) = (m.mixture.components.len(), m.mixture.dim);
        let jd = comps * d;
        let a = 1.0 - t;
        let softmax = |v: &mut Vec<f64>| {
            let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut lse = m;
            if m != f64::NEG_INFINITY {
                let mut s = 0.0;
                for x in v.iter() {
                    s += portable_math::exp(x - m);
                }
                lse = m + portable_math::ln(s);
            }
            v.iter_mut().for_each(|x| *x = portable_math::exp(*x - lse));
        };
        // `responsibilities` of gmm.cu: rows of logits, then probabilities; the slots' components.
        let responsibilities = |(masks, table): &(Vec<u32>, Vec<f64>), item: usize| {
            let (mean, var, log_var, log_weight) =
                (&table[..jd], &table[jd..2 * jd], &table[2 * jd..3 * jd], &table[4 * jd..]);
            let mask = masks[item / m.tokens];
            let idx: Vec<usize> = (0..comps).filter(|j| (mask >> j) & 1 == 1).collect();
            let mut lp: Vec<Vec<f64>> = m
                .parts
                .iter()
                .enumerate()
                .map(|(p, part)| {
                    idx.iter()
                        .map(|&j| {
                            let mut acc = 0.0;
                            for k in 0..part.dim {
                                let jk = j * d + part.offset + k;
                                let z = lat[p][item * part.dim + k] as f64 - a * mean[jk];
                                acc -= 0.5 * (z * z / var[jk] + log_var[jk]);
                            }
                            acc
                        })
                        .collect()
                })
                .collect();
            if cond.isolate {
                for row in lp.iter_mut() {
                    row.iter_mut().zip(&idx).for_each(|(l, &j)| *l += log_weight[j]);
                    softmax(row);
                }
            } else {
                for c in 0..idx.len() {
                    let mut s = 0.0;
                    for row in &lp {
                        s += row[c];
                    }
                    lp[0][c] = log_weight[idx[c]] + s;
                }
                softmax(&mut lp[0]);
            }
            (lp, idx)
        };
        let posterior_mean = |table: &[f64], r: &[f64], idx: &[usize], jk0: usize, xk: f64| {
            let (mean, coef) = (&table[..jd], &table[3 * jd..4 * jd]);
            let mut x0 = 0.0;
            for (c, &j) in idx.iter().enumerate() {
                let jk = j * d + jk0;
                x0 += r[c] * (mean[jk] + coef[jk] * (xk - a * mean[jk]));
            }
            x0
        };
        let mut out: Vec<Vec<f32>> = m.parts.iter().map(|p| vec![0.0; m.batch * m.tokens * p.dim]).collect();
        for item in 0..m.batch * m.tokens {
            let (lp, idx) = responsibilities(&positive, item);
            let neg = negative.as_ref().map(|n| responsibilities(n, item));
            for (p, part) in m.parts.iter().enumerate() {
                let row = if cond.isolate { p } else { 0 };
                let x = |k: usize| lat[p][item * part.dim + k] as f64;
                let zp = |k: usize| posterior_mean(&positive.1, &lp[row], &idx, part.offset + k, x(k));
                let zn = |k: usize| {
                    let ((_, table), (lpn, idxn)) = (negative.as_ref().unwrap(), neg.as_ref().unwrap());
                    posterior_mean(table, &lpn[row], idxn, part.offset + k, x(k))
                };
                let mut factor = 0.0;
                if let Some(n) = nag {
                    let (mut l1_positive, mut l1_guided) = (0.0f64, 0.0f64);
                    for k in 0..part.dim {
                        l1_positive += zp(k).abs();
                        l1_guided += (zp(k) * n.scale - zn(k) * (n.scale - 1.0)).abs();
                    }
                    let ratio = l1_guided.max(1e-6) / l1_positive.max(1e-6);
                    factor = ratio.min(n.tau) / ratio;
                }
                for k in 0..part.dim {
                    let mut x0 = zp(k);
                    if let Some(n) = nag {
                        let guided = x0 * n.scale - zn(k) * (n.scale - 1.0);
                        x0 = guided * factor * n.alpha + x0 * (1.0 - n.alpha);
                    }
                    let value = match spaces[p] {
                        Space::X0 => x0,
                        Space::V => (x(k) - x0) / t,
                        Space::Eps => (x(k) - a * x0) / t,
                    };
                    out[p][item * part.dim + k] = value as f32;
                }
            }
        }
        out
    }

    #[test]
    fn the_kernels_formulation_is_the_cpu_model_bit_for_bit() {
        let planar = GmmModel::planar(&["video", "audio"], 12);
        let tokens = GmmModel::tokens(&["video", "audio"], 3, 5, 8, DType::F32);
        let specs = GmmModel::branch_kinds();
        for m in [planar, tokens] {
            let outs = m.outputs();
            let lat: Vec<Vec<f32>> = outs
                .iter()
                .enumerate()
                .map(|(o, info)| cfg_runtime::philox::normal_vec(3, 0, o as u32, info.shape.numel()))
                .collect();
            let tensors: Vec<Tensor> =
                outs.iter().zip(&lat).map(|(info, v)| Tensor::from_f32(DType::F32, info.shape.clone(), v)).collect();
            for spec in &specs {
                for (t, spaces) in [(0.9, [Space::Eps, Space::V]), (0.3, [Space::X0, Space::Eps]), (1.0, [Space::V; 2])]
                {
                    let branches = [("b".to_string(), spec.clone())];
                    let info =
                        StepInfo { step: 0, num_steps: 1, t, sigma: t, chunks: cfg_core::schedule::ChunkTimes::NONE };
                    let call = Call { info, branches: &branches, latents: &tensors, spaces: &spaces };
                    let want = m.predict(&call).unwrap().remove(0);
                    let got = kernel_in_rust(&m, spec, &lat, t, &spaces);
                    for (w, g) in want.iter().zip(&got) {
                        let wb: Vec<u32> = w.to_f32().iter().map(|x| x.to_bits()).collect();
                        let gb: Vec<u32> = g.iter().map(|x| x.to_bits()).collect();
                        assert_eq!(wb, gb, "{spec:?} at t = {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn args_have_the_c_layout() {
        assert_eq!(size_of::<GmmArgs>(), 224);
    }

    #[test]
    fn masks_follow_the_branch_condition() {
        let m = GmmModel::planar(&["sample"], 6);
        let cond = m.condition(&BranchSpec::prompt(cfg_core::branch::Prompt::Positive));
        let masks = m.masks(cond).unwrap();
        // Class c owns components 2c and 2c + 1.
        for (b, mask) in masks.iter().enumerate() {
            assert_eq!(*mask, 0b11 << (2 * (b % 6)), "sample {b}");
        }
        let uncond = m.condition(&BranchSpec::prompt(cfg_core::branch::Prompt::Empty));
        assert!(m.masks(uncond).unwrap().iter().all(|&x| x == (1 << 12) - 1));
    }
}
