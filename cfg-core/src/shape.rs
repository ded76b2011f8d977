//! Tensor shapes and the reduction groups defined over them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A dense row-major shape. The first dim is the batch; the last is the
/// per-token feature width. Any rank ≥ 1 is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// A shape from its dims.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
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
