//! The `Backend` trait: where a rank runs the canonical guidance program.
//!
//! Inputs and outputs are host [`Tensor`]s; a device backend uploads, runs its
//! kernels and downloads. Every backend must give the same bits as
//! [`crate::cpu::CpuBackend`] for [`Backend::evaluate`] (the canonical program
//! of `cfg-core`); that is what makes deterministic mode bit-identical.

use cfg_core::cpu::round_to;
use cfg_core::program::{Form, Program, Value};
use cfg_core::state::GuidanceState;
use cfg_core::tensor::TensorData;
use cfg_core::{DType, Shape, Tensor};
use thiserror::Error;

/// Runs guidance programs.
pub trait Backend: Send {
    /// A short name (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// Deterministic mode: evaluates `program` on every branch prediction
    /// (`inputs` follow `program.branches`, all of `dtype` and `shape`), in the
    /// canonical order. Updates the operators' `state`.
    fn evaluate(
        &mut self,
        program: &Program,
        inputs: &[&Tensor],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<Tensor, BackendError>;

    /// `out = Σ w·x` in f32 over `terms` (at least one; all of one dtype and
    /// of `out.len()` elements), in their order, with fma: one form's partial sum.
    fn partial_form(&mut self, terms: &[(&Tensor, f32)], out: &mut [f32]) -> Result<(), BackendError>;

    /// Fast mode, before the all-reduce: this rank's f32 partial sums of every
    /// linear form of `program`, `forms.len() × shape.numel()` values, form
    /// after form. `local[i]` is `Some` for the branches (indexed as
    /// `program.branches`) this rank predicted; the others contribute zero.
    /// A rank holding none of a form's terms writes zeros.
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
            let terms: Vec<(&Tensor, f32)> = form.terms.iter().filter_map(|&(b, w)| local[b].map(|t| (t, w))).collect();
            let Some((first, _)) = terms.first() else {
                out.fill(0.0);
                continue;
            };
            if terms.iter().any(|(t, _)| t.dtype() != first.dtype() || t.len() != n) {
                return Err(BackendError("local branch predictions differ in dtype or size".into()));
            }
            self.partial_form(&terms, out)?;
        }
        Ok(())
    }

    /// Fast mode, after the all-reduce: evaluates the rest of `program` from
    /// its reduced forms (`forms.len() × shape.numel()` f32 values), and
    /// rounds the result to `dtype`. Updates the operators' `state`.
    ///
    /// A linear program's result is one reduced form, only rounded; otherwise
    /// the forms become the inputs of a copy of `program` whose forms are the
    /// identity (`1·x` is exact), so the non-linear ops run unchanged on this
    /// backend's [`Backend::evaluate`].
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
        if let (true, Value::Form(i)) = (program.is_linear(), program.result) {
            for slot in &program.counters {
                state.advance(slot);
            }
            return Ok(round_to(dtype, shape, &forms[i * n..(i + 1) * n]));
        }
        let (identity, inputs) = forms_as_inputs(program, forms, shape);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let out = self.evaluate(&identity, &refs, DType::F32, shape, state)?;
        Ok(match dtype {
            DType::F32 => out,
            _ => round_to(dtype, shape, &out.to_f32()),
        })
    }
}

/// A backend failure; the runtime adds the rank and step.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{0}")]
pub struct BackendError(pub String);

impl From<cfg_core::CoreError> for BackendError {
    fn from(e: cfg_core::CoreError) -> Self {
        BackendError(e.to_string())
    }
}

/// The reduced forms as inputs of a copy of `program` whose forms are the identity.
fn forms_as_inputs(program: &Program, forms: &[f32], shape: &Shape) -> (Program, Vec<Tensor>) {
    let n = shape.numel();
    let mut p = program.clone();
    p.branches = (0..program.forms.len()).map(|i| format!("form{i:04}")).collect();
    p.forms = (0..program.forms.len()).map(|i| Form { terms: vec![(i, 1.0)] }).collect();
    let inputs = (0..program.forms.len())
        .map(|i| Tensor { shape: shape.clone(), data: TensorData::F32(forms[i * n..(i + 1) * n].to_vec()) })
        .collect();
    (p, inputs)
}

/// Checks the buffers of [`Backend::partial_forms`]: one slot per branch, one
/// f32 per element of every form.
fn check_partial_sizes(program: &Program, local: usize, out: usize, n: usize) -> Result<(), BackendError> {
    if out != program.forms.len() * n || local != program.branches.len() {
        return Err(BackendError(format!(
            "partial forms of `{}`: expected {} branches and {} values, got {local} and {out}",
            program.output,
            program.branches.len(),
            program.forms.len() * n,
        )));
    }
    Ok(())
}

/// Checks the buffer of [`Backend::evaluate_forms`]: one f32 per element of every form.
fn check_forms_size(program: &Program, forms: usize, n: usize) -> Result<(), BackendError> {
    if forms != program.forms.len() * n {
        return Err(BackendError(format!(
            "reduced forms of `{}`: expected {} values, got {forms}",
            program.output,
            program.forms.len() * n,
        )));
    }
    Ok(())
}
