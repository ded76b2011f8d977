//! Tensor shapes and the reduction groups defined over them.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::fmt;

/// The dims of a shape; up to six live inline, so copying a shape (as every
/// step's tensors do) allocates nothing.
pub type Dims = SmallVec<[usize; 6]>;

/// A dense row-major shape. The first dim is the batch; the last is the
/// per-token feature width. Any rank ≥ 1 is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape(pub Dims);

impl Shape {
    /// A shape from its dims.
    pub fn new(dims: impl AsRef<[usize]>) -> Self {
        Shape(SmallVec::from_slice(dims.as_ref()))
    }

    /// The dims.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// The batch size (first dim; 1 for a scalar).
    pub fn batch(&self) -> usize {
        self.0.first().copied().unwrap_or(1)
    }

    /// The width of the last dim (a token's features).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }

    /// Elements per sample (all non-batch dims).
    pub fn per_sample(&self) -> usize {
        if self.0.len() <= 1 {
            1
        } else {
            self.0[1..].iter().product()
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}
