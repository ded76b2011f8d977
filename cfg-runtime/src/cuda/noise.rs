//! Philox noise on the device, keyed as [`crate::philox`] is.

use super::device::Device;
use super::error::CudaError;
use super::kernels;
use super::launch::{launch, param};
use cfg_core::DType;

/// The generator's raw words for elements `0..n` of `(seed, step, stream)`;
/// bit-identical to [`crate::philox::philox4x32_10`] under the same mapping.
pub fn philox_words(dev: &Device, seed: u64, step: u32, stream: u32, n: usize) -> Result<Vec<u32>, CudaError> {
    run(dev, "philox_u32", seed, step, stream, n)
}

/// Standard normals for elements `0..n` (Box–Muller in f64 on the device).
pub fn philox_normals(dev: &Device, seed: u64, step: u32, stream: u32, n: usize) -> Result<Vec<f32>, CudaError> {
    Ok(run(dev, "philox_normal_f32", seed, step, stream, n)?.into_iter().map(f32::from_bits).collect())
}

fn run(dev: &Device, name: &str, seed: u64, step: u32, stream: u32, n: usize) -> Result<Vec<u32>, CudaError> {
    let out = dev.alloc(DType::F32, n)?;
    let (o, n64) = (out.addr(dev), n as i64);
    let k = dev.function(&kernels::PHILOX, name)?;
    // SAFETY: matches `philox_*(u64, u32, u32, u32*/float*, i64)`; `out` holds n words.
    unsafe {
        launch(
            dev,
            &k,
            dev.grid(n.div_ceil(4)),
            &mut [param(&seed), param(&step), param(&stream), param(&o), param(&n64)],
        )
    }?;
    let bytes = dev.download_bytes(&out)?;
    Ok(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}
