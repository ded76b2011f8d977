//! The non-finite check: one pass over a tensor's bits, no conversion; and a
//! model wrapper that runs it on every step of `cfg sample`.
//!
//! The wrapper sees each step's latents before the model does, so the update
//! of step k (the combined prediction applied by the sampler) is checked when
//! step k + 1 begins, and the last one by the caller after the run. Each rank
//! checks the predictions of its own branches.

use cfg_core::{DType, Tensor};
use cfg_runtime::model::{Call, Model, ModelError, OutputInfo};
use std::sync::Mutex;

/// What to add to a non-finite error.
pub const HINT: &str = "pass --allow-nonfinite to keep non-finite values";

/// The model, checking latents and predictions for NaN and infinity.
pub struct Checked<'a, M: Model + ?Sized> {
    /// The model.
    pub inner: &'a M,
    /// The model's output names, in its order.
    pub names: Vec<String>,
    /// The first finding of any rank: what is not finite, where.
    pub finding: &'a Mutex<Option<String>>,
}

impl<M: Model + ?Sized> Checked<'_, M> {
    fn found(&self, message: String) -> ModelError {
        let mut f = self.finding.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(message.clone());
        ModelError(message)
    }
}

impl<M: Model + ?Sized> Model for Checked<'_, M> {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.inner.outputs()
    }
    fn cost(&self, name: &str, spec: &cfg_core::branch::BranchSpec) -> f64 {
        self.inner.cost(name, spec)
    }
    fn can_batch(&self, a: &cfg_core::branch::BranchSpec, b: &cfg_core::branch::BranchSpec) -> bool {
        self.inner.can_batch(a, b)
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let step = call.info.step;
        if step > 0 {
            for (x, name) in call.latents.iter().zip(&self.names) {
                if let Some(d) = describe(x) {
                    return Err(self.found(latents_message(step - 1, name, &d)));
                }
            }
        }
        let out = self.inner.predict(call)?;
        for ((branch, _), preds) in call.branches.iter().zip(&out) {
            for (p, name) in preds.iter().zip(&self.names) {
                if let Some(d) = describe(p) {
                    return Err(self.found(format!(
                        "step {step}, branch `{branch}`, output `{name}`: the model's prediction is not finite ({d})"
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// The message for latents found non-finite after the update of `step`.
pub fn latents_message(step: usize, output: &str, what: &str) -> String {
    format!(
        "step {step}, output `{output}`: the guided prediction left the f32 range ({what} in the latents after \
         this step's update): lower the scales"
    )
}

/// The first element of `t` that is NaN or infinite: its index and what it is.
pub fn first_non_finite(t: &Tensor) -> Option<(usize, &'static str)> {
    let b = t.as_bytes();
    // Exponent all ones: NaN when the mantissa is not zero, else ±infinity.
    let what = |nan: bool, neg: bool| {
        if nan {
            "NaN"
        } else if neg {
            "-inf"
        } else {
            "+inf"
        }
    };
    match t.dtype() {
        DType::F32 => b
            .chunks_exact(4)
            .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .map(|i| {
                let v = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
                (i, what(v & 0x007f_ffff != 0, v >> 31 == 1))
            }),
        DType::F16 | DType::BF16 => {
            let (exp, man) = if t.dtype() == DType::F16 { (0x7c00u16, 0x03ffu16) } else { (0x7f80, 0x007f) };
            b.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & exp == exp).map(|i| {
                let v = u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
                (i, what(v & man != 0, v >> 15 == 1))
            })
        }
    }
}

/// ` (NaN at element 17)`, or nothing when every element is finite.
pub fn describe(t: &Tensor) -> Option<String> {
    first_non_finite(t).map(|(i, what)| format!("{what} at element {i}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfg_core::Shape;

    #[test]
    fn finds_nan_and_infinities_in_every_dtype() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let t = |v: &[f32]| Tensor::from_f32(dtype, Shape::new([v.len()]), v);
            assert_eq!(first_non_finite(&t(&[0.0, 1.0, -2.5])), None, "{dtype}");
            assert_eq!(first_non_finite(&t(&[0.0, f32::NAN, 1.0])), Some((1, "NaN")), "{dtype}");
            assert_eq!(first_non_finite(&t(&[0.0, 1.0, f32::NEG_INFINITY])), Some((2, "-inf")), "{dtype}");
            assert_eq!(first_non_finite(&t(&[f32::INFINITY])), Some((0, "+inf")), "{dtype}");
        }
        // f32's largest value is finite, and overflows f16.
        let big = Tensor::from_f32(DType::F32, Shape::new([1]), &[f32::MAX]);
        assert_eq!(first_non_finite(&big), None);
    }
}
