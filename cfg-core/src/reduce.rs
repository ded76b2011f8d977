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
    /// Along one axis (`Axis(1)`: the channels of a [B, C, H, W] latent): one
    /// group per position of every other axis. Axis 0 (batch) is not allowed.
    Axis(usize),
}

impl Reduce {
    /// Whether every group is a run of consecutive elements.
    pub fn is_contiguous(self) -> bool {
        !matches!(self, Reduce::Channel | Reduce::Axis(_))
    }

    /// Why `shape` cannot be grouped this way, if it cannot.
    pub fn check(self, shape: &Shape) -> Result<(), String> {
        match self {
            Reduce::Axis(0) => Err("`Axis(0)` is the batch axis: reduce over another axis".into()),
            Reduce::Axis(a) if a >= shape.0.len() => {
                Err(format!("`Axis({a})` is beyond the {} axes of shape {shape}", shape.0.len()))
            }
            _ => Ok(()),
        }
    }
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
    /// Strided groups (channel, axis): the distance between a group's
    /// consecutive elements (the last dim's width for channel groups).
    pub width: usize,
    /// Strided groups: the elements of one block of groups (a sample for
    /// channel groups; the axis times its stride for axis groups).
    pub per_sample: usize,
}

impl Groups {
    /// The groups of `reduce` over `shape`.
    pub fn new(reduce: Reduce, shape: &Shape) -> Groups {
        let n = shape.numel();
        let (mut width, mut per_sample) = (shape.last().max(1), shape.per_sample().max(1));
        let (count, len) = match reduce {
            Reduce::Token => (n / width, width),
            Reduce::Channel => (shape.batch() * width, per_sample / width),
            Reduce::Sample => (shape.batch(), per_sample),
            Reduce::Tensor => (1, n),
            Reduce::Axis(a) => {
                let dims = &shape.0;
                let len = dims.get(a).copied().unwrap_or(1).max(1);
                width = dims.get(a + 1..).map_or(1, |d| d.iter().product::<usize>()).max(1);
                per_sample = len * width;
                (n / len, len)
            }
        };
        Groups { reduce, count, len, width, per_sample }
    }

    /// The flat index of element `k` of group `g`.
    #[inline]
    pub fn index(&self, g: usize, k: usize) -> usize {
        match self.reduce {
            Reduce::Channel | Reduce::Axis(_) => (g / self.width) * self.per_sample + k * self.width + g % self.width,
            _ => g * self.len + k,
        }
    }

    /// The group that flat index `i` belongs to.
    #[inline]
    pub fn group_of(&self, i: usize) -> usize {
        match self.reduce {
            Reduce::Channel | Reduce::Axis(_) => (i / self.per_sample) * self.width + i % self.width,
            _ => i / self.len.max(1),
        }
    }
}

/// An accumulator type of the canonical reduction (f32, or f64 for APG).
pub trait Lane: Copy + std::ops::AddAssign + Into<f64> {
    /// Zero.
    const ZERO: Self;
    /// `a·b + acc`, rounded once.
    fn fma(a: Self, b: Self, acc: Self) -> Self;
}

impl Lane for f32 {
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn fma(a: f32, b: f32, acc: f32) -> f32 {
        a.mul_add(b, acc)
    }
}

impl Lane for f64 {
    const ZERO: f64 = 0.0;
    #[inline(always)]
    fn fma(a: f64, b: f64, acc: f64) -> f64 {
        a.mul_add(b, acc)
    }
}

/// Folds lanes by the canonical binary tree.
#[inline]
pub fn fold_lanes<T: Lane>(lanes: &mut [T; LANES]) -> T {
    let mut s = LANES / 2;
    while s > 0 {
        for l in 0..s {
            let upper = lanes[l + s];
            lanes[l] += upper;
        }
        s /= 2;
    }
    lanes[0]
}

/// Σ a(k)·b(k) over `len` elements in the canonical order: `T` lanes, f64 segments.
#[inline]
pub fn dot<T: Lane>(len: usize, mut pair: impl FnMut(usize) -> (T, T)) -> f64 {
    let mut total = 0.0f64;
    let mut start = 0;
    while start < len {
        let end = (start + SEGMENT).min(len);
        let mut lanes = [T::ZERO; LANES];
        for k in start..end {
            let (a, b) = pair(k);
            let l = (k - start) % LANES;
            lanes[l] = T::fma(a, b, lanes[l]);
        }
        total += fold_lanes(&mut lanes).into();
        start = end;
    }
    total
}

/// [`dot`] with f32 products and lanes (every statistic but APG's projection).
#[inline]
pub fn dot_f32(len: usize, pair: impl FnMut(usize) -> (f32, f32)) -> f64 {
    dot(len, pair)
}

/// [`dot`] with f64 products and lanes (APG's projection).
#[inline]
pub fn dot_f64(len: usize, pair: impl FnMut(usize) -> (f64, f64)) -> f64 {
    dot(len, pair)
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
    fn axis_groups_are_the_channels_of_bchw() {
        // [B=2, C=3, H=2, W=2]: one group per (b, h, w), over C, stride H·W.
        let s = Shape::new([2, 3, 2, 2]);
        let g = Groups::new(Reduce::Axis(1), &s);
        assert_eq!((g.count, g.len), (8, 3));
        assert_eq!((0..3).map(|k| g.index(5, k)).collect::<Vec<_>>(), vec![13, 17, 21]);
        for gi in 0..g.count {
            for k in 0..g.len {
                assert_eq!(g.group_of(g.index(gi, k)), gi);
            }
        }
        // On [B, T, D], Axis(1) is the channel grouping.
        let s = Shape::new([2, 3, 4]);
        let (a, c) = (Groups::new(Reduce::Axis(1), &s), Groups::new(Reduce::Channel, &s));
        assert_eq!((a.count, a.len), (c.count, c.len));
        assert!((0..a.count).all(|gi| (0..a.len).all(|k| a.index(gi, k) == c.index(gi, k))));
        assert!(Reduce::Axis(0).check(&s).is_err() && Reduce::Axis(3).check(&s).is_err());
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
