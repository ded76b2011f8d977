//! The CPU backend: runs the canonical program of `cfg-core` (rayon, explicit
//! fma) and the sampler on host tensors.

use crate::backend::{
    advance_counters, check_forms_size, check_partial_inputs, identity_forms, Backend, BackendError, UpdateStep,
};
use crate::philox::{normal_vec, INIT_STEP};
use crate::scheduler::Sampler;
use crate::slice::Rows;
use crate::tensor::{DeviceBytes, DeviceTensor, Place};
use cfg_core::cpu::{combine_into, evaluate, round_to};
use cfg_core::expr::Space;
use cfg_core::program::{Program, Value};
use cfg_core::state::GuidanceState;
use cfg_core::tensor::TensorData;
use cfg_core::{DType, Shape, Tensor};

/// The CPU backend; it holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// The host tensor of `t`, or an error naming what was expected.
fn host<'a>(t: &'a DeviceTensor, what: &str) -> Result<&'a Tensor, BackendError> {
    t.as_host().ok_or_else(|| BackendError(format!("the CPU backend was given {what} in CUDA device memory")))
}

/// `out = Σ w·x` in f32 over `present` (all of one dtype and of `out.len()`
/// elements), in their order, with fma: one form's partial sum.
fn partial_form(present: &[(&Tensor, f32)], out: &mut [f32]) -> Result<(), BackendError> {
    let Some((first, _)) = present.first() else {
        out.fill(0.0);
        return Ok(());
    };
    macro_rules! go {
        ($variant:ident) => {{
            let terms: Option<Vec<_>> = present
                .iter()
                .map(|(t, w)| match &t.data {
                    TensorData::$variant(v) if v.len() == out.len() => Some((v.as_slice(), *w)),
                    _ => None,
                })
                .collect();
            let terms = terms.ok_or_else(|| BackendError("local branch predictions differ in dtype or size".into()))?;
            combine_into(&terms, out);
        }};
    }
    match first.dtype() {
        DType::F32 => go!(F32),
        DType::F16 => go!(F16),
        DType::BF16 => go!(BF16),
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn place(&self) -> Place {
        Place::Host
    }

    fn evaluate(
        &mut self,
        program: &Program,
        inputs: &[&DeviceTensor],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<DeviceTensor, BackendError> {
        let inputs = inputs.iter().map(|t| host(t, "a prediction")).collect::<Result<Vec<_>, _>>()?;
        Ok(evaluate(program, &inputs, dtype, shape, state)?.into())
    }

    fn partial_forms(
        &mut self,
        program: &Program,
        local: &[Option<&DeviceTensor>],
        shape: &Shape,
    ) -> Result<DeviceTensor, BackendError> {
        check_partial_inputs(program, local.len())?;
        let n = shape.numel();
        let mut out = vec![0.0f32; program.forms.len() * n];
        for (form, out) in program.forms.iter().zip(out.chunks_mut(n.max(1))) {
            let mut terms = Vec::with_capacity(form.terms.len());
            for &(b, w) in &form.terms {
                if let Some(t) = local[b] {
                    terms.push((host(t, "a prediction")?, w));
                }
            }
            partial_form(&terms, out)?;
        }
        Ok(Tensor { shape: Shape::new([out.len()]), data: TensorData::F32(out) }.into())
    }

    fn evaluate_forms(
        &mut self,
        program: &Program,
        forms: &DeviceTensor,
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<DeviceTensor, BackendError> {
        let n = shape.numel();
        check_forms_size(program, forms, n)?;
        let Some(TensorData::F32(forms)) = forms.as_host().map(|t| &t.data) else {
            return Err(BackendError("the CPU backend was given reduced forms in CUDA device memory".into()));
        };
        // A linear program's result is one reduced form, only rounded.
        if let (true, Value::Form(i)) = (program.is_linear(), program.result) {
            advance_counters(program, state);
            return Ok(round_to(dtype, shape, &forms[i * n..(i + 1) * n]).into());
        }
        let identity = identity_forms(program);
        let inputs: Vec<Tensor> = (0..program.forms.len())
            .map(|i| Tensor { shape: shape.clone(), data: TensorData::F32(forms[i * n..(i + 1) * n].to_vec()) })
            .collect();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let out = evaluate(&identity, &refs, DType::F32, shape, state)?;
        Ok(match dtype {
            DType::F32 => out,
            _ => round_to(dtype, shape, &out.to_f32()),
        }
        .into())
    }

    fn init_latents(&mut self, seed: u64, output: usize, t0: f64, shape: &Shape) -> Result<DeviceTensor, BackendError> {
        let z = normal_vec(seed, INIT_STEP, output as u32, shape.numel());
        let x: Vec<f32> = z.iter().map(|&v| (t0 * v as f64) as f32).collect();
        Ok(Tensor { shape: shape.clone(), data: TensorData::F32(x) }.into())
    }

    fn update(
        &mut self,
        sampler: &Sampler,
        space: Space,
        x: &mut DeviceTensor,
        pred: &DeviceTensor,
        renoise: Option<&DeviceTensor>,
        at: UpdateStep,
    ) -> Result<(), BackendError> {
        let pred = host(pred, "a prediction")?.to_f32();
        let renoise = renoise.map(|r| host(r, "a re-noising prediction").map(Tensor::to_f32)).transpose()?;
        let Some(Tensor { data: TensorData::F32(xs), .. }) = x.as_host_mut() else {
            return Err(BackendError("the CPU backend updates f32 latents in host memory".into()));
        };
        if pred.len() != xs.len() {
            return Err(BackendError(format!("update: {} latents, {} predictions", xs.len(), pred.len())));
        }
        if let Some(r) = renoise.as_ref().filter(|r| r.len() != xs.len()) {
            return Err(BackendError(format!("update: {} latents, {} re-noising predictions", xs.len(), r.len())));
        }
        let noise = sampler.is_stochastic().then(|| normal_vec(at.seed, at.step as u32, at.output as u32, xs.len()));
        sampler.update(space, xs, &pred, renoise.as_deref(), at.t, at.t_next, noise.as_deref());
        Ok(())
    }

    fn narrow(&mut self, t: &DeviceTensor, rows: &Rows, shape: &Shape) -> Result<DeviceTensor, BackendError> {
        let t = host(t, "a prediction")?;
        if t.len() < rows.outer * rows.got || rows.outer * rows.want != shape.numel() {
            return Err(BackendError(format!("slice of {} elements {}: {rows:?} does not fit", t.len(), t.shape)));
        }
        let bytes = crate::slice::cut_bytes(t.as_bytes(), t.dtype().size(), rows);
        let cut = Tensor::from_bytes(t.dtype(), shape.clone(), &bytes)
            .ok_or_else(|| BackendError(format!("slice: {} bytes for {shape} {}", bytes.len(), t.dtype())))?;
        Ok(cut.into())
    }

    fn pack(&mut self, parts: &[&DeviceTensor]) -> Result<DeviceBytes, BackendError> {
        let mut bytes = Vec::with_capacity(parts.iter().map(|t| t.bytes()).sum());
        for t in parts {
            bytes.extend_from_slice(host(t, "a prediction")?.as_bytes());
        }
        Ok(DeviceBytes::Host(bytes))
    }

    fn unpack(
        &mut self,
        bytes: &DeviceBytes,
        offset: usize,
        dtype: DType,
        shape: &Shape,
    ) -> Result<DeviceTensor, BackendError> {
        let DeviceBytes::Host(bytes) = bytes else {
            return Err(BackendError("the CPU backend was given bytes in CUDA device memory".into()));
        };
        let n = shape.numel() * dtype.size();
        bytes
            .get(offset..offset + n)
            .and_then(|b| Tensor::from_bytes(dtype, shape.clone(), b))
            .map(DeviceTensor::Host)
            .ok_or_else(|| BackendError(format!("{} bytes hold no {n} bytes at offset {offset}", bytes.len())))
    }

    fn upload(&mut self, t: Tensor) -> Result<DeviceTensor, BackendError> {
        Ok(t.into())
    }

    fn download(&mut self, t: &DeviceTensor) -> Result<Tensor, BackendError> {
        Ok(host(t, "a tensor")?.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::SamplerKind;

    #[test]
    fn a_renoise_prediction_of_another_length_is_an_error() {
        let mut x: DeviceTensor = Tensor::from_f32(DType::F32, Shape::new([4]), &[0.5; 4]).into();
        let pred: DeviceTensor = Tensor::from_f32(DType::BF16, Shape::new([4]), &[0.1; 4]).into();
        let short: DeviceTensor = Tensor::from_f32(DType::BF16, Shape::new([3]), &[0.1; 3]).into();
        let at = UpdateStep { seed: 1, step: 0, output: 0, t: 0.6, t_next: 0.4 };
        let s = Sampler::new(SamplerKind::Euler);
        let e = CpuBackend.update(&s, Space::Eps, &mut x, &pred, Some(&short), at).unwrap_err();
        assert!(e.0.contains("4 latents, 3 re-noising predictions"), "{e}");
        CpuBackend.update(&s, Space::Eps, &mut x, &pred, Some(&pred), at).unwrap();
    }

    #[test]
    fn narrow_keeps_the_runs_and_refuses_what_does_not_fit() {
        let t: DeviceTensor = Tensor::from_f32(DType::F16, Shape::new([2, 3]), &[1., 2., 3., 4., 5., 6.]).into();
        let rows = crate::slice::Rows { outer: 2, got: 3, want: 2, start: 1 };
        let cut = CpuBackend.narrow(&t, &rows, &Shape::new([2, 2])).unwrap();
        assert_eq!(cut.as_host().unwrap().to_f32(), [2., 3., 5., 6.]);
        let too_many = crate::slice::Rows { outer: 3, ..rows };
        assert!(CpuBackend.narrow(&t, &too_many, &Shape::new([3, 2])).is_err());
    }
}
