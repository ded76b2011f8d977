//! Per-step planning and dispatch of guidance branches over M ranks.
#![deny(missing_docs)]
#![warn(clippy::all)]

pub mod cuda;
