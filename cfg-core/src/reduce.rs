//! Reduction groups and the canonical reduction order.
//!
//! Every backend reduces a group of `len` elements the same way, so that
//! statistics (norms, dots, sums) agree bit for bit:
//! 1. the group is cut into segments of [`SEGMENT`] consecutive elements;
//! 2. in a segment, lane `l` of [`LANES`] accumulates elements `l, l+LANES, ...`
//!    in order with `fma(a, b, acc)` in f32;
//! 3. the lanes are folded by a fixed binary tree (`lane[l] += lane[l + s]`
//!    for s = LANES/2, ..., 1), as a 256-thread CUDA block does in shared memory;
//! 4. segment results are summed in f64, in segment order.

use crate::shape::Shape;
use serde::{Deserialize, Serialize};

/// Lanes of the canonical reduction (a CUDA block of this many threads).
pub const LANES: usize = 256;
/// Elements per segment.
pub const SEGMENT: usize = 8192;

/// Over which elements a statistic is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reduce {
    /// Each token: over the last dim.
    Token,
    /// Each (sample, channel): over the token dims, for each feature of the last dim.
    Channel,
    /// Each sample: over all non-batch dims.
    Sample,
    /// The whole tensor.
    Tensor,
}

/// The reduction groups of a shape: `count` groups of `len` elements each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groups {
    /// How the groups are laid out.
    pub reduce: Reduce,
    /// Number of groups.
    pub count: usize,
    /// Elements per group.
    pub len: usize,
    /// Width of the last dim (for channel groups).
    width: usize,
    /// Elements per sample (for channel groups).
    per_sample: usize,
}

impl Groups {
    /// The groups of `reduce` over `shape`.
    pub fn new(reduce: Reduce, shape: &Shape) -> Groups {
        let n = shape.numel();
        let width = shape.last().max(1);
        let per_sample = shape.per_sample().max(1);
        let (count, len) = match reduce {
            Reduce::Token => (n / width, width),
            Reduce::Channel => (shape.batch() * width, per_sample / width),
            Reduce::Sample => (shape.batch(), per_sample),
            Reduce::Tensor => (1, n),
        };
        Groups { reduce, count, len, width, per_sample }
    }

    /// The flat index of element `k` of group `g`.
    #[inline]
    pub fn index(&self, g: usize, k: usize) -> usize {
        match self.reduce {
            Reduce::Channel => (g / self.width) * self.per_sample + k * self.width + g % self.width,
            _ => g * self.len + k,
        }
    }

    /// The group that flat index `i` belongs to.
    #[inline]
    pub fn group_of(&self, i: usize) -> usize {
        match self.reduce {
            Reduce::Channel => (i / self.per_sample) * self.width + i % self.width,
            _ => i / self.len.max(1),
        }
    }
}

/// Folds lanes by the canonical binary tree.
#[inline]
pub fn fold_lanes_f32(lanes: &mut [f32; LANES]) -> f32 {
    let mut s = LANES / 2;
    while s > 0 {
        for l in 0..s {
            lanes[l] += lanes[l + s];
        }
        s /= 2;
    }
    lanes[0]
}

/// Folds f64 lanes by the canonical binary tree.
#[inline]
pub fn fold_lanes_f64(lanes: &mut [f64; LANES]) -> f64 {
    let mut s = LANES / 2;
    while s > 0 {
        for l in 0..s {
            lanes[l] += lanes[l + s];
        }
        s /= 2;
    }
    lanes[0]
}

/// Σ a(k)·b(k) over `len` elements in the canonical order (f32 lanes, f64 segments).
#[inline]
pub fn dot_f32(len: usize, mut pair: impl FnMut(usize) -> (f32, f32)) -> f64 {
    let mut total = 0.0f64;
    let mut start = 0;
    while start < len {
        let end = (start + SEGMENT).min(len);
        let mut lanes = [0.0f32; LANES];
        for k in start..end {
            let (a, b) = pair(k);
            let l = (k - start) % LANES;
            lanes[l] = a.mul_add(b, lanes[l]);
        }
        total += fold_lanes_f32(&mut lanes) as f64;
        start = end;
    }
    total
}

/// Σ a(k)·b(k) with products and lanes in f64 (APG's projection), canonical order.
#[inline]
pub fn dot_f64(len: usize, mut pair: impl FnMut(usize) -> (f64, f64)) -> f64 {
    let mut total = 0.0f64;
    let mut start = 0;
    while start < len {
        let end = (start + SEGMENT).min(len);
        let mut lanes = [0.0f64; LANES];
        for k in start..end {
            let (a, b) = pair(k);
            let l = (k - start) % LANES;
            lanes[l] = a.mul_add(b, lanes[l]);
        }
        total += fold_lanes_f64(&mut lanes);
        start = end;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_groups_stride_over_tokens() {
        let g = Groups::new(Reduce::Channel, &Shape::new([2, 3, 4]));
        assert_eq!((g.count, g.len), (8, 3));
        assert_eq!(g.index(0, 0), 0);
        assert_eq!(g.index(1, 2), 9);
        assert_eq!(g.index(5, 1), 12 + 4 + 1);
        for gi in 0..g.count {
            for k in 0..g.len {
                assert_eq!(g.group_of(g.index(gi, k)), gi);
            }
        }
    }

    #[test]
    fn token_sample_tensor_groups() {
        let s = Shape::new([2, 3, 4]);
        assert_eq!(Groups::new(Reduce::Token, &s).count, 6);
        assert_eq!(Groups::new(Reduce::Sample, &s).len, 12);
        assert_eq!(Groups::new(Reduce::Tensor, &s).len, 24);
    }

    #[test]
    fn dot_matches_exact_small_sums() {
        let v: Vec<f32> = (0..20000).map(|i| (i % 7) as f32).collect();
        let exact: f64 = v.iter().map(|&x| (x * x) as f64).sum();
        assert_eq!(dot_f32(v.len(), |k| (v[k], v[k])), exact);
    }
}
