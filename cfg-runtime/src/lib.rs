//! Per-step planning and dispatch of guidance branches over M ranks.
//!
//! - [`plan`]: the per-step plan, a pure function (active branches, branch →
//!   rank assignment, batched groups, idle ranks, the collective by bytes).
//! - [`comm`]: the [`comm::Communicator`] trait; [`local`] implements it
//!   with threads of one process (NCCL lives in [`cuda`]).
//! - [`tensor`]: [`tensor::DeviceTensor`], a tensor where a rank's work
//!   happens (host memory, or CUDA device memory).
//! - [`backend`]: the [`backend::Backend`] trait; [`cpu`] runs the canonical
//!   program of `cfg-core`, [`cuda`] the same program with our kernels, NCCL
//!   and the sampler on the GPU (one guider and one loop serve both).
//! - [`model`]: the [`model::Model`] trait a model crate implements;
//!   [`guider`] is the per-step call, [`sample`] the whole loop, over the
//!   [`scheduler`]s, with noise from [`philox`].
//!
//! **Determinism.** In [`plan::Mode::Deterministic`] every rank gathers every
//! branch prediction in its own dtype and runs the canonical program, so the
//! final latents are bit-identical for every world size M, and every rank
//! holds the same latents after every step. This holds as long as the
//! model's prediction for a sample does not depend on which branches share
//! its batched call (the analytic model of `cfg-gmm` qualifies; real networks
//! whose kernels change reduction order with the batch size do not).
//! [`plan::Mode::Fast`] all-reduces f32 partial forms wherever that moves
//! fewer bytes; ranks still agree with each other, but the bits may depend on M.
#![deny(missing_docs)]
#![warn(clippy::all)]

pub mod backend;
pub mod comm;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod guider;
pub mod local;
pub mod model;
pub mod philox;
pub mod plan;
pub mod sample;
pub mod scheduler;
pub mod slice;
pub mod tensor;

pub use backend::{Backend, BackendError, UpdateStep};
pub use comm::Communicator;
pub use cpu::CpuBackend;
pub use error::RuntimeError;
pub use guider::{Guided, Guider, StepTiming};
pub use local::{run_local, LocalComm};
pub use model::{Call, Model, ModelError, OutputInfo, StepInfo};
pub use plan::{plan_run, plan_step, Collective, Mode, StepPlan};
pub use sample::{sample, SampleOptions, Sampled, StepReport};
pub use scheduler::{Sampler, SamplerKind};
pub use tensor::{DeviceBytes, DeviceTensor, Place};
