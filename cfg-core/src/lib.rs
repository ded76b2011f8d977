//! Vocabulary and arithmetic of classifier-free guidance.
//!
//! A guidance [`expr::Expr`] is lowered, per step, into a canonical
//! [`program::Program`]: weighted linear forms over branch predictions feeding
//! non-linear operators with per-token or per-sample reductions. Every backend
//! executes that program in one fixed evaluation order (explicit fused
//! multiply-add, f32 accumulation), so backends agree bit for bit.
#![deny(missing_docs)]
#![warn(clippy::all)]

pub mod apg_fused;
pub mod branch;
pub mod canon;
pub mod chunked;
pub mod cpu;
pub mod dtype;
pub mod error;
pub mod expr;
pub mod fdg;
pub mod fdg_reference;
pub mod fused;
pub mod layout;
pub mod lower;
pub mod lower_cache;
pub mod par;
pub mod portable_math;
pub mod program;
pub mod recycle;
pub mod reduce;
pub mod reference;
pub mod schedule;
pub mod shape;
pub mod simd;
pub mod slot;
pub mod split;
pub mod state;
pub mod tcfg;
pub mod tensor;
pub mod values;
pub mod view;
pub mod window;
pub mod zeroed;

pub use dtype::DType;
pub use error::CoreError;
pub use shape::Shape;
pub use tensor::Tensor;
