//! The CPU backend: runs the canonical program of `cfg-core` (rayon, explicit fma).

use crate::backend::{Backend, BackendError};
use cfg_core::cpu::{combine_into, evaluate};
use cfg_core::program::Program;
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

    fn partial_form(&mut self, present: &[(&Tensor, f32)], out: &mut [f32]) -> Result<(), BackendError> {
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
                let terms =
                    terms.ok_or_else(|| BackendError("local branch predictions differ in dtype or size".into()))?;
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
}
