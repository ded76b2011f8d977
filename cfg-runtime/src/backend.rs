//! The `Backend` trait: where a rank runs the canonical guidance program.
//!
//! Inputs and outputs are host [`Tensor`]s; a device backend uploads, runs its
//! kernels and downloads. Every backend must give the same bits as
//! [`crate::cpu::CpuBackend`] for [`Backend::evaluate`] (the canonical program
//! of `cfg-core`); that is what makes deterministic mode bit-identical.

use cfg_core::program::Program;
use cfg_core::state::GuidanceState;
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
    ) -> Result<(), BackendError>;

    /// Fast mode, after the all-reduce: evaluates the rest of `program` from
    /// its reduced forms (`forms.len() × shape.numel()` f32 values), and
    /// rounds the result to `dtype`. Updates the operators' `state`.
    fn evaluate_forms(
        &mut self,
        program: &Program,
        forms: &[f32],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<Tensor, BackendError>;
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
