//! The `Backend` trait: what a rank runs on its device.
//!
//! A backend evaluates the canonical guidance program, computes the partial
//! linear forms of fast mode, moves a rank's bytes for the collectives, and
//! runs the sampler's update, all on [`DeviceTensor`]s in its own memory
//! (host memory for [`crate::cpu::CpuBackend`], GPU memory for
//! [`crate::cuda::CudaBackend`]). Every backend must give the same bits as
//! the CPU backend for [`Backend::evaluate`] (the canonical program of
//! `cfg-core`); that is what makes deterministic mode bit-identical.

use crate::scheduler::Sampler;
use crate::slice::Rows;
use crate::tensor::{DeviceBytes, DeviceTensor, Place};
use cfg_core::expr::Space;
use cfg_core::program::{Form, Program};
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use thiserror::Error;

/// Where a sampler update is: the run's seed, the step, the output's index
/// (its noise stream) and the flow times it moves between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStep {
    /// Seed of the run.
    pub seed: u64,
    /// The step.
    pub step: usize,
    /// The output's index (the Philox stream of its noise).
    pub output: usize,
    /// Flow time before the step.
    pub t: f64,
    /// Flow time after the step.
    pub t_next: f64,
}

/// Runs guidance programs and the sampler on one rank's device.
pub trait Backend: Send {
    /// A short name (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// Where this backend's tensors live.
    fn place(&self) -> Place;

    /// Deterministic mode: evaluates `program` on every branch prediction
    /// (`inputs` follow `program.branches`, all of `dtype` and `shape`), in the
    /// canonical order. Updates the operators' `state`.
    fn evaluate(
        &mut self,
        program: &Program,
        inputs: &[&DeviceTensor],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<DeviceTensor, BackendError>;

    /// Fast mode, before the all-reduce: this rank's f32 partial sums of every
    /// linear form of `program`, `forms.len() × shape.numel()` values, form
    /// after form. `local[i]` is `Some` for the branches (indexed as
    /// `program.branches`) this rank predicted; the others contribute zero.
    /// A form with none of its terms here is zeros.
    fn partial_forms(
        &mut self,
        program: &Program,
        local: &[Option<&DeviceTensor>],
        shape: &Shape,
    ) -> Result<DeviceTensor, BackendError>;

    /// Fast mode, after the all-reduce: evaluates the rest of `program` from
    /// its reduced forms (`forms.len() × shape.numel()` f32 values) and
    /// rounds the result to `dtype`. Updates the operators' `state`.
    fn evaluate_forms(
        &mut self,
        program: &Program,
        forms: &DeviceTensor,
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<DeviceTensor, BackendError>;

    /// The initial f32 latents of output `output`: `t0·z`, `z` the Philox
    /// normals of `(seed, INIT_STEP, output)`.
    fn init_latents(&mut self, seed: u64, output: usize, t0: f64, shape: &Shape) -> Result<DeviceTensor, BackendError>;

    /// The sampler's update of the f32 latents `x`, in place, from the
    /// combined prediction `pred` in working space `space`; with CFG++ the
    /// noise direction comes from `renoise` (same space, dtype and length).
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        sampler: &Sampler,
        space: Space,
        x: &mut DeviceTensor,
        pred: &DeviceTensor,
        renoise: Option<&DeviceTensor>,
        at: UpdateStep,
    ) -> Result<(), BackendError>;

    /// The part of a branch's prediction `t` that its `slice` keeps (see
    /// [`crate::slice`]): `rows` of it, a new tensor of `shape`, on this device.
    fn narrow(&mut self, t: &DeviceTensor, rows: &Rows, shape: &Shape) -> Result<DeviceTensor, BackendError>;

    /// The bytes of `parts`, one after the other (a gather's payload).
    fn pack(&mut self, parts: &[&DeviceTensor]) -> Result<DeviceBytes, BackendError>;

    /// The tensor of `dtype` and `shape` at byte `offset` of `bytes`.
    fn unpack(
        &mut self,
        bytes: &DeviceBytes,
        offset: usize,
        dtype: DType,
        shape: &Shape,
    ) -> Result<DeviceTensor, BackendError>;

    /// Brings a tensor here from the host (a host-only model's prediction).
    fn upload(&mut self, t: Tensor) -> Result<DeviceTensor, BackendError>;

    /// A host copy of a tensor (final latents, fingerprints).
    fn download(&mut self, t: &DeviceTensor) -> Result<Tensor, BackendError>;

    /// Bytes copied between the host and this backend's device so far (0 on the host).
    fn host_bytes(&self) -> u64 {
        0
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

/// A copy of `program` whose inputs are its own reduced forms: the forms are
/// the identity (`1·x` is exact), so the non-linear ops run unchanged.
pub fn identity_forms(program: &Program) -> Program {
    let mut p = program.clone();
    p.branches = (0..program.forms.len()).map(|i| format!("form{i:04}")).collect();
    p.forms = (0..program.forms.len()).map(|i| Form { terms: vec![(i, 1.0)] }).collect();
    p
}

/// Checks the inputs of [`Backend::partial_forms`]: one slot per branch.
pub(crate) fn check_partial_inputs(program: &Program, local: usize) -> Result<(), BackendError> {
    if local != program.branches.len() {
        return Err(BackendError(format!(
            "partial forms of `{}`: expected {} branches, got {local}",
            program.output,
            program.branches.len(),
        )));
    }
    Ok(())
}

/// Checks the buffer of [`Backend::evaluate_forms`]: one f32 per element of every form.
pub(crate) fn check_forms_size(program: &Program, forms: &DeviceTensor, n: usize) -> Result<(), BackendError> {
    if forms.len() != program.forms.len() * n || forms.dtype() != DType::F32 {
        return Err(BackendError(format!(
            "reduced forms of `{}`: expected {} f32 values, got {} {}",
            program.output,
            program.forms.len() * n,
            forms.len(),
            forms.dtype(),
        )));
    }
    Ok(())
}

/// The state's counters advance as a linear program's evaluation would.
pub(crate) fn advance_counters(program: &Program, state: &mut GuidanceState) {
    for slot in &program.counters {
        state.advance(slot);
    }
}
