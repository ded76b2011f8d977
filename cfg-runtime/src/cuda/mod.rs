//! The CUDA backend (cudarc + NVRTC) and the NCCL communicator.
//!
//! Everything here loads the CUDA libraries at run time: on a machine without
//! them every entry point returns [`CudaError::NoDriver`] (or `NoNvrtc`,
//! `NoNccl`) and nothing panics.

mod device;
mod error;
pub mod kernels;
mod params;
mod ptx_cache;

pub use device::{device_count, driver_available, Buffer, Device};
mod memory;
pub use error::CudaError;
pub use memory::DeviceMem;
mod exec;
mod external;
mod fdg;
pub mod launch;

pub use exec::{evaluate, evaluate_into, ExecOptions};
pub use external::ExternalStream;

mod backend;

pub use backend::CudaBackend;
mod noise;
pub mod sampler;

pub use noise::{philox_normals, philox_words};
pub mod bootstrap;
mod nccl;
mod staging;

pub use nccl::{nccl_available, run_nccl_threads, NcclCommunicator, NcclId, NcclOptions};
