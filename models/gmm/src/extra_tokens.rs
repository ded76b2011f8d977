//! Branches that declare a `slice:` (vllm-omni's `output_slice`): the model's
//! output for such a branch carries extra tokens, as a real model's does when
//! the condition's own tokens (Ideogram-4's text tokens) share its sequence.
//! The analytic model pads each output along the slice's axis with junk of
//! value [`JUNK`]: [`EXTRA`] tokens on the side the slice does not count from
//! and `offset` tokens on the side it does, so that the runtime's slice keeps
//! exactly the model's real prediction (and a wrong slice shows).

use cfg_core::branch::{BranchSpec, OutputSlice};
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::cuda::{launch, Buffer, CudaError, Device};

/// The junk value (exact in f32, f16 and bf16).
pub const JUNK: f32 = 1000.0;

/// Junk tokens on the side the slice does not count from.
pub const EXTRA: usize = 3;

/// Junk tokens before and after the real ones along the slice's axis.
pub fn padding(slice: &OutputSlice) -> (usize, usize) {
    if slice.from_end {
        (EXTRA, slice.offset)
    } else {
        (slice.offset, EXTRA)
    }
}

/// The runs of an output of `shape` padded along `slice.axis`: (runs, real
/// elements per run, padded elements per run, real run's first element in
/// the padded one); `None` where the axis is not one of the shape's (the
/// runtime then reports the mismatch).
fn runs(slice: &OutputSlice, shape: &Shape) -> Option<(usize, usize, usize, usize, Shape)> {
    let (d, a) = (shape.dims(), slice.axis);
    if a == 0 || a >= d.len() {
        return None;
    }
    let (before, after) = padding(slice);
    let inner: usize = d[a + 1..].iter().product();
    let mut padded = d.to_vec();
    padded[a] += before + after;
    Some((d[..a].iter().product(), d[a] * inner, padded[a] * inner, before * inner, Shape::new(padded)))
}

/// A host prediction with the junk tokens of `spec`'s slice (unchanged without one).
pub fn pad_host(spec: &BranchSpec, t: Tensor) -> Tensor {
    let Some((outer, real, padded, start, shape)) = spec.slice.as_ref().and_then(|s| runs(s, &t.shape)) else {
        return t;
    };
    let values = t.to_f32();
    let mut out = vec![JUNK; outer * padded];
    for o in 0..outer {
        out[o * padded + start..o * padded + start + real].copy_from_slice(&values[o * real..(o + 1) * real]);
    }
    Tensor::from_f32(t.dtype(), shape, &out)
}

/// The 32-bit pattern of two or one [`JUNK`] values of `dtype`.
fn junk_bits(dtype: DType) -> u32 {
    let one = Tensor::from_f32(dtype, Shape::new([1]), &[JUNK]);
    match *one.as_bytes() {
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
        [a, b] => u32::from_le_bytes([a, b, a, b]),
        _ => unreachable!("dtypes are 2 or 4 bytes"),
    }
}

/// [`pad_host`] on the device: a junk-filled buffer (a fill kernel) with the
/// real runs copied in device to device. Returns the buffer and its shape.
pub fn pad_device(dev: &Device, spec: &BranchSpec, buf: Buffer, shape: &Shape) -> Result<(Buffer, Shape), CudaError> {
    let Some((outer, real, padded, start, padded_shape)) = spec.slice.as_ref().and_then(|s| runs(s, shape)) else {
        return Ok((buf, shape.clone()));
    };
    let out = dev.alloc(buf.dtype, outer * padded)?;
    launch::poison(dev, &out, junk_bits(buf.dtype))?;
    let mut out = out;
    for o in 0..outer {
        let run = dev.copy_range(&buf, o * real, real)?;
        dev.copy_to(&run, &mut out, o * padded + start)?;
    }
    Ok((out, padded_shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_surrounds_the_real_tokens_where_the_slice_expects_it() {
        let t = Tensor::from_f32(DType::BF16, Shape::new([2, 2, 1]), &[1.0, 2.0, 3.0, 4.0]);
        let last = BranchSpec {
            slice: Some(OutputSlice { axis: 1, offset: 1, from_end: true }),
            ..BranchSpec::prompt(cfg_core::branch::Prompt::Positive)
        };
        let p = pad_host(&last, t.clone());
        assert_eq!(p.shape, Shape::new([2, 6, 1]));
        let j = JUNK;
        assert_eq!(p.to_f32(), [j, j, j, 1.0, 2.0, j, j, j, j, 3.0, 4.0, j]);
        let plain = BranchSpec::prompt(cfg_core::branch::Prompt::Positive);
        assert_eq!(pad_host(&plain, t.clone()), t);
        for dtype in DType::ALL {
            let bits = junk_bits(dtype);
            let one = Tensor::from_f32(dtype, Shape::new([1]), &[JUNK]);
            assert_eq!(&bits.to_le_bytes()[..dtype.size()], one.as_bytes(), "{dtype}");
        }
    }
}
