//! The sampler on a CUDA device: the initial latents (Philox normals drawn on
//! the device) and the in-place update of the f32 latents from a combined
//! prediction (and CFG++'s re-noising prediction), with the CPU sampler's f64 arithmetic and the same noise
//! (`kernels/update.cu`), so the latents stay bit-identical to the CPU's.

use super::kernels;
use super::kernels::KernelName;
use super::launch::{launch, param};
use super::{Buffer, CudaError, Device};
use crate::philox::INIT_STEP;
use crate::scheduler::{Sampler, SamplerKind};
use cfg_core::expr::Space;
use cfg_core::DType;
use cudarc::driver::{DeviceRepr, LaunchConfig};

/// The update kernels (`kernels/update.cu`, after the prelude and Philox).
pub const UPDATE: kernels::KernelModule = kernels::KernelModule::new(
    "update",
    &[
        kernels::COMMON,
        kernels::PORTABLE_MATH,
        include_str!("../../kernels/philox.cu"),
        include_str!("../../kernels/update.cu"),
    ],
    &["init_latents", "update_f32", "update_f16", "update_bf16"],
);

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

/// The update's parameters for output `o` at `step`, with the ancestral
/// coefficients computed as [`crate::scheduler::Sampler::update`] does.
#[allow(clippy::too_many_arguments)]
fn update_args(
    s: &Sampler,
    seed: u64,
    space: Space,
    step: usize,
    o: usize,
    n: usize,
    t: f64,
    t_next: f64,
) -> UpdateArgs {
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
        seed,
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
        launch(
            dev,
            &k,
            grid(dev, n),
            &mut [param(&seed), param(&INIT_STEP), param(&stream), param(&t0), param(&a), param(&n64)],
        )
    }?;
    Ok(x)
}

/// Updates the f32 latents `x` (output `o`) in place from the combined
/// prediction `pred` and, with CFG++, the re-noising prediction `renoise`
/// (same dtype and length), stepping from flow time `t` to `t_next` at `step`.
#[allow(clippy::too_many_arguments)]
pub fn update(
    dev: &Device,
    sampler: &Sampler,
    seed: u64,
    space: Space,
    step: usize,
    o: usize,
    x: &Buffer,
    (pred, renoise): (&Buffer, Option<&Buffer>),
    (t, t_next): (f64, f64),
) -> Result<(), CudaError> {
    let args = update_args(sampler, seed, space, step, o, x.len, t, t_next);
    if x.dtype != DType::F32 || pred.len != x.len {
        return Err(CudaError::Unsupported(format!(
            "update: latents {} {} and prediction {} {} differ",
            x.len, x.dtype, pred.len, pred.dtype
        )));
    }
    if let Some(r) = renoise.filter(|r| r.len != x.len || r.dtype != pred.dtype) {
        return Err(CudaError::Unsupported(format!(
            "update: prediction {} {} and re-noising prediction {} {} differ",
            pred.len, pred.dtype, r.len, r.dtype
        )));
    }
    let k = dev.function(&UPDATE, KernelName::of(format_args!("update_{}", pred.dtype.name())).as_str())?;
    // A null pointer: no re-noising prediction (the plain update).
    let (xa, pa, ra) = (x.addr(dev), pred.addr(dev), renoise.map_or(0u64, |r| r.addr(dev)));
    // SAFETY: matches `update_<dtype>(float*, const T*, const T*, UpdateArgs)`;
    // the buffers hold `args.n` elements of their dtype (checked above) and
    // the kernel reads `renoise` only when it is not null.
    unsafe { launch(dev, &k, grid(dev, x.len), &mut [param(&xa), param(&pa), param(&ra), param(&args)]) }
}
