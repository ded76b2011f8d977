//! The CPU backend: runs the canonical program of `cfg-core` (rayon, explicit fma).

use crate::backend::{check_forms_size, check_partial_sizes, forms_as_inputs, Backend, BackendError};
use cfg_core::cpu::{combine_into, evaluate, round_to};
use cfg_core::program::{Form, Program, Value};
use cfg_core::state::GuidanceState;
use cfg_core::tensor::TensorData;
use cfg_core::{DType, Shape, Tensor};

/// The CPU backend; it holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn evaluate(
        &mut self,
        program: &Program,
        inputs: &[&Tensor],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<Tensor, BackendError> {
        Ok(evaluate(program, inputs, dtype, shape, state)?)
    }

    fn partial_forms(
        &mut self,
        program: &Program,
        local: &[Option<&Tensor>],
        shape: &Shape,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let n = shape.numel();
        check_partial_sizes(program, local.len(), out.len(), n)?;
        for (form, out) in program.forms.iter().zip(out.chunks_mut(n.max(1))) {
            local_form(form, local, n, out)?;
        }
        Ok(())
    }

    fn evaluate_forms(
        &mut self,
        program: &Program,
        forms: &[f32],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<Tensor, BackendError> {
        let n = shape.numel();
        check_forms_size(program, forms.len(), n)?;
        // A linear program's result is one reduced form: round it, nothing else runs.
        if let (true, Value::Form(i)) = (program.is_linear(), program.result) {
            for slot in &program.counters {
                state.advance(slot);
            }
            return Ok(round_to(dtype, shape, &forms[i * n..(i + 1) * n]));
        }
        // The reduced forms become the inputs of a program whose forms are the
        // identity (1·x is exact), so the non-linear ops run unchanged.
        let (identity, inputs) = forms_as_inputs(program, forms, shape);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let out = evaluate(&identity, &refs, DType::F32, shape, state)?;
        Ok(match dtype {
            DType::F32 => out,
            _ => round_to(dtype, shape, &out.to_f32()),
        })
    }
}

/// `out = Σ w_k·x_k` over the terms whose branch is local, zeros if none.
fn local_form(form: &Form, local: &[Option<&Tensor>], n: usize, out: &mut [f32]) -> Result<(), BackendError> {
    let present: Vec<(&Tensor, f32)> = form.terms.iter().filter_map(|&(b, w)| local[b].map(|t| (t, w))).collect();
    let Some((first, _)) = present.first() else {
        out.fill(0.0);
        return Ok(());
    };
    if present.iter().any(|(t, _)| t.dtype() != first.dtype() || t.len() != n) {
        return Err(BackendError("local branch predictions differ in dtype or size".into()));
    }
    macro_rules! go {
        ($variant:ident) => {{
            let terms: Vec<_> = present
                .iter()
                .map(|(t, w)| match &t.data {
                    TensorData::$variant(v) => (v.as_slice(), *w),
                    _ => unreachable!("dtypes checked above"),
                })
                .collect();
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
