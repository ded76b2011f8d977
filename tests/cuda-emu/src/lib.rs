//! A stand-in for `libcuda.so` and `libnccl.so` that runs the project's PTX on
//! the CPU, so CI exercises every GPU code path without a GPU.
//!
//! - [`ptx`]: the PTX interpreter (and sanitizer);
//! - [`memory`]: bounds-checked device memory;
//! - `driver`: the CUDA driver API functions the project calls;
//! - `nccl`: the NCCL functions, ranks as threads of one process.
#![warn(clippy::all)]
#![allow(clippy::missing_safety_doc)]

pub mod driver;
pub mod memory;
pub mod nccl;
pub mod ptx;
