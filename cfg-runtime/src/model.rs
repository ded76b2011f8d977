//! The model-facing API: what a model crate implements.

use crate::error::RuntimeError;
use crate::tensor::{CudaTensor, DeviceTensor, Place};
use cfg_core::branch::{BranchSpec, Modifier};
use cfg_core::expr::Policy;
use cfg_core::expr::Space;
use cfg_core::{DType, Shape, Tensor};

/// One output of a model (`sample`; or `video` and `audio`...): the shape and
/// dtype of its predictions. Latents of that output have the same shape, in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputInfo {
    /// The output's name, as the policy names it.
    pub name: String,
    /// The shape of a prediction (batch first).
    pub shape: Shape,
    /// The dtype of a prediction.
    pub dtype: DType,
}

impl OutputInfo {
    /// Bytes of one prediction of this output.
    pub fn bytes(&self) -> usize {
        self.shape.numel() * self.dtype.size()
    }
}

/// Where the sampler is when it calls the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The step index, `0..num_steps`.
    pub step: usize,
    /// The number of steps of the run.
    pub num_steps: usize,
    /// Flow time `t ∈ (0, 1]` of the latents: `x_t = (1 − t)·x₀ + t·ε`.
    pub t: f64,
    /// The scheduler's sigma, as windows and schedules of the policy see it.
    pub sigma: f64,
    /// Each frame chunk's own time, for a model that denoises chunks at
    /// different noise levels (MAGI-1's `Chunked` guidance reads them); empty
    /// when the whole latent is at the step's time.
    pub chunks: cfg_core::schedule::ChunkTimes,
}

/// A model call: the branches of one batched group, at one step.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The step.
    pub info: StepInfo,
    /// The branches to predict, by name and spec, in this order.
    pub branches: &'a [(String, BranchSpec)],
    /// The current latents, one f32 tensor per output (model output order).
    pub latents: &'a [Tensor],
    /// The space each output must be predicted in (model output order).
    pub spaces: &'a [Space],
}

/// A model call on the rank's device: the latents are where the rank's
/// tensors live (host memory, or GPU memory on a CUDA rank).
#[derive(Debug, Clone, Copy)]
pub struct DeviceCall<'a> {
    /// The step.
    pub info: StepInfo,
    /// The branches to predict, by name and spec, in this order.
    pub branches: &'a [(String, BranchSpec)],
    /// The current f32 latents, one per output (model output order).
    pub latents: &'a [&'a DeviceTensor],
    /// The space each output must be predicted in (model output order).
    pub spaces: &'a [Space],
}

/// A model's error; the runtime adds the rank, step and branches.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

/// A denoiser that predicts the branches it is handed.
///
/// Determinism: the runtime's deterministic mode is bit-identical for every
/// world size only if a sample's prediction does not depend on which other
/// branches (or samples) share its batched call. Models whose kernels pick
/// different reduction orders for different batch sizes break this.
pub trait Model {
    /// The outputs, each predicted once per branch.
    fn outputs(&self) -> Vec<OutputInfo>;

    /// Relative cost of one forward of a branch (the planner balances ranks
    /// by it). Defaults to the policy's `cost` times the modifier's extra
    /// work ([`BranchSpec::forward_cost`]).
    fn cost(&self, name: &str, spec: &BranchSpec) -> f64 {
        let _ = name;
        spec.forward_cost()
    }

    /// Whether two branches can share one batched forward. By default those
    /// with the same model modification can.
    fn can_batch(&self, a: &BranchSpec, b: &BranchSpec) -> bool {
        a.modify == b.modify || matches!((&a.modify, &b.modify), (Modifier::None, Modifier::None))
    }

    /// The time of each frame chunk at a step of flow time `t`, for a model
    /// that denoises chunks at different noise levels (MAGI-1: older chunks
    /// are cleaner); the sampler passes them to the guidance in
    /// [`StepInfo::chunks`]. By default none: every chunk is at the step's time.
    fn chunk_times(&self, step: usize, t: f64) -> cfg_core::schedule::ChunkTimes {
        let _ = (step, t);
        cfg_core::schedule::ChunkTimes::NONE
    }

    /// Predicts every branch of `call`: one `Vec` per branch (in call order)
    /// of one tensor per output (model output order), each of the output's
    /// shape and dtype.
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError>;

    /// [`Model::predict`] on the rank's device (`place`): the latents and the
    /// predictions stay where the rank's tensors live. The default runs
    /// `predict` on host tensors, through host copies on a CUDA rank
    /// ([`predict_on_host`]); a model with device kernels overrides it.
    fn predict_on(&self, place: &Place, call: &DeviceCall<'_>) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
        predict_on_host(self, place, call)
    }
}

/// [`Model::predict_on`] through [`Model::predict`]: on a CUDA rank the
/// latents are downloaded and the predictions uploaded (the step report
/// counts those bytes).
pub fn predict_on_host<M: Model + ?Sized>(
    model: &M,
    place: &Place,
    call: &DeviceCall<'_>,
) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
    let copy_error = |e: crate::cuda::CudaError| ModelError(format!("copying between host and device: {e}"));
    let latents: Vec<Tensor> = call
        .latents
        .iter()
        .map(|t| match (t, place) {
            (DeviceTensor::Host(t), _) => Ok(t.clone()),
            (DeviceTensor::Cuda(c), Place::Cuda(dev)) => dev.download(&c.buf, &c.shape).map_err(copy_error),
            (DeviceTensor::Cuda(_), Place::Host) => Err(ModelError("latents in CUDA memory on a host rank".into())),
        })
        .collect::<Result<_, _>>()?;
    let host = Call { info: call.info, branches: call.branches, latents: &latents, spaces: call.spaces };
    let preds = model.predict(&host)?;
    preds
        .into_iter()
        .map(|per_output| {
            per_output
                .into_iter()
                .map(|t| match place {
                    Place::Host => Ok(DeviceTensor::Host(t)),
                    Place::Cuda(dev) => {
                        let buf = dev.upload(&t).map_err(copy_error)?;
                        Ok(DeviceTensor::Cuda(CudaTensor { buf, shape: t.shape.clone() }))
                    }
                })
                .collect()
        })
        .collect()
}

/// The model's outputs in the policy's order, and for each model output the
/// index of the policy output of the same name (an error when the two disagree).
pub fn match_outputs<M: Model + ?Sized>(
    model: &M,
    policy: &Policy,
) -> Result<(Vec<OutputInfo>, Vec<usize>), RuntimeError> {
    let model_outputs = model.outputs();
    let names: Vec<&str> = policy.outputs.names().collect();
    let mut sorted = names.clone();
    let mut model_names: Vec<&str> = model_outputs.iter().map(|o| o.name.as_str()).collect();
    sorted.sort();
    model_names.sort();
    if sorted != model_names {
        return Err(RuntimeError::Config(format!(
            "policy `{}` has outputs {names:?} but the model predicts {model_names:?}",
            policy.name
        )));
    }
    let outputs = names
        .iter()
        .map(|n| model_outputs.iter().find(|o| o.name == *n).expect("names compared above").clone())
        .collect();
    let model_to_policy =
        model_outputs.iter().map(|o| names.iter().position(|n| *n == o.name).expect("names compared above")).collect();
    Ok((outputs, model_to_policy))
}
