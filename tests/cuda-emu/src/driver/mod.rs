//! The CUDA driver API, emulated: devices, contexts, streams, events, memory,
//! modules and launches (the PTX runs in [`crate::ptx`]).

pub mod api;
pub mod codes;
pub mod device;
pub mod state;
pub mod stream;
