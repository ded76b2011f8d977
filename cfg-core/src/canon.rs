//! The canonical reduction of [`crate::reduce`] computed on slices, fast.
//!
//! Same order as [`crate::reduce::dot`]: lane `l` of a segment accumulates
//! elements `l, l+LANES, ...` with fma, the lanes fold by the fixed tree, and
//! segments add in f64. Only lanes that hold an element are folded: adding a
//! lane that never received one adds a zero, which changes no non-zero value
//! and, since the f64 total starts at +0, not the sign of a zero total either.
//!
//! Everything here is `#[inline(always)]` so that it compiles with the
//! features of the caller (an `avx2,fma` region makes `mul_add` one instruction).

use crate::reduce::{LANES, SEGMENT};
use crate::simd::{self, Task, Vector};

/// Folds the first `m` lanes of the canonical tree (the lanes past `m`, and
/// past `lanes.len()`, are zero and never touched).
#[inline(always)]
pub fn fold_active<T: Copy + std::ops::AddAssign>(lanes: &mut [T], m: usize) -> T {
    let mut m = m.min(LANES).min(lanes.len());
    let mut s = LANES / 2;
    while s > 0 {
        if m > s {
            let (low, high) = lanes.split_at_mut(s);
            for (l, h) in low.iter_mut().zip(&high[..m - s]) {
                *l += *h;
            }
            m = s;
        }
        s /= 2;
    }
    lanes[0]
}

/// The canonical fold of lanes held eight to a vector, the lanes past the
/// group zero, down to eight lanes: the levels down to eight lanes add whole
/// vectors into `v[0]`, which is returned (its [`Vector::fold`] is the
/// total). Zero lanes past the group may be folded too, up to the next power
/// of two of its length: the first level (the largest power of two below the
/// length) is the same, and a zero added changes no non-zero value (only a
/// zero's sign, which the f64 total drops).
#[inline(always)]
pub fn fold_to_eight<V: Vector>(v: &mut [V]) -> V {
    let mut m = v.len().min(LANES / 8);
    let mut s = LANES / 16;
    while s > 0 {
        if m > s {
            for i in 0..m - s {
                v[i] = v[i] + v[i + s];
            }
            m = s;
        }
        s /= 2;
    }
    v[0]
}

/// Adds the products of a run that starts on lane 0 into `lanes`: for each
/// element `l` (at most [`LANES`]), `lanes[l] = fma(x, y, lanes[l])` with
/// `(x, y) = pair(a[l], b[l])`.
#[inline(always)]
pub fn accumulate<T: Acc>(lanes: &mut [T; LANES], a: &[f32], b: &[f32], pair: impl Fn(f32, f32) -> (f32, f32)) {
    let n = a.len().min(b.len()).min(LANES);
    let (a, b, lanes) = (&a[..n], &b[..n], &mut lanes[..n]);
    for ((l, a), b) in lanes.iter_mut().zip(a).zip(b) {
        let (x, y) = pair(*a, *b);
        *l = T::fma(x, y, *l);
    }
}

/// Columns of eight lanes in a row of [`LANES`].
pub const COLUMNS: usize = LANES / 8;

/// Canonical lanes of Σ x·y fed run by run (runs of a multiple of [`LANES`]
/// elements, the last any length), for statistics computed in L1-sized chunks.
#[derive(Debug, Clone)]
pub struct Lanes<T> {
    lanes: [T; LANES],
    n: usize,
}

impl<T: Acc> Lanes<T> {
    /// No element yet.
    #[inline(always)]
    pub fn new() -> Self {
        Lanes { lanes: [T::default(); LANES], n: 0 }
    }

    /// Adds the products `a[l]·b[l]` of the next run: its whole rows a
    /// column of eight lanes at a time (the column's sums stay in registers
    /// down the rows; each lane still adds in row order), then the partial row.
    #[inline(always)]
    pub fn add(&mut self, a: &[f32], b: &[f32]) {
        let n = a.len().min(b.len());
        let rows = n / LANES;
        let (av, _) = a[..rows * LANES].as_chunks::<8>();
        let (bv, _) = b[..rows * LANES].as_chunks::<8>();
        for (col, lanes) in self.lanes.as_chunks_mut::<8>().0.iter_mut().enumerate() {
            let mut acc = *lanes;
            for r in 0..rows {
                let (x, y) = (&av[r * COLUMNS + col], &bv[r * COLUMNS + col]);
                for l in 0..8 {
                    acc[l] = T::fma(x[l], y[l], acc[l]);
                }
            }
            *lanes = acc;
        }
        if n > rows * LANES {
            accumulate(&mut self.lanes, &a[rows * LANES..n], &b[rows * LANES..n], |x, y| (x, y));
        }
        self.n += a.len();
    }

    /// The segment's total (lanes folded, as f64).
    #[inline(always)]
    pub fn total(mut self) -> f64 {
        fold_active(&mut self.lanes, self.n).wide()
    }
}

impl<T: Acc> Default for Lanes<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// An accumulator of the canonical reduction: f32 or f64 lanes.
pub trait Acc: Copy + std::ops::AddAssign + Default {
    /// `x·y + acc`, rounded once.
    fn fma(x: f32, y: f32, acc: Self) -> Self;
    /// As f64.
    fn wide(self) -> f64;
}

impl Acc for f32 {
    #[inline(always)]
    fn fma(x: f32, y: f32, acc: f32) -> f32 {
        x.mul_add(y, acc)
    }
    #[inline(always)]
    fn wide(self) -> f64 {
        self as f64
    }
}

impl Acc for f64 {
    #[inline(always)]
    fn fma(x: f32, y: f32, acc: f64) -> f64 {
        (x as f64).mul_add(y as f64, acc)
    }
    #[inline(always)]
    fn wide(self) -> f64 {
        self
    }
}

/// One segment with `M` lanes held (`M` a power of two ≤ LANES and, when
/// below LANES, at least the segment's length: a short group touches only those).
#[inline(always)]
fn lanes_dot<T: Acc, const M: usize>(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [T::default(); M];
    let mut ac = a.chunks_exact(M);
    let mut bc = b.chunks_exact(M);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l = T::fma(*x, *y, *l);
        }
    }
    for ((l, x), y) in lanes.iter_mut().zip(ac.remainder()).zip(bc.remainder()) {
        *l = T::fma(*x, *y, *l);
    }
    fold_active(&mut lanes, a.len()).wide()
}

/// One segment (`a.len() <= SEGMENT`) of Σ a·b in `T` lanes, then the fold.
#[inline(always)]
fn segment<T: Acc>(a: &[f32], b: &[f32]) -> f64 {
    debug_assert!(a.len() <= SEGMENT && a.len() == b.len());
    match a.len() {
        0..=16 => lanes_dot::<T, 16>(a, b),
        17..=64 => lanes_dot::<T, 64>(a, b),
        _ => lanes_dot::<T, LANES>(a, b),
    }
}

/// One segment of Σ a·b: f32 lanes.
#[inline(always)]
pub fn segment_dot(a: &[f32], b: &[f32]) -> f64 {
    segment::<f32>(a, b)
}

/// One segment of Σ a·a.
#[inline(always)]
pub fn segment_sq(a: &[f32]) -> f64 {
    segment_dot(a, a)
}

/// One segment of Σ a (the canonical Σ a·1: `fma(a, 1, acc)` is `a + acc`).
#[inline(always)]
pub fn segment_sum(a: &[f32]) -> f64 {
    debug_assert!(a.len() <= SEGMENT);
    let mut lanes = [0.0f32; LANES];
    let mut ac = a.chunks_exact(LANES);
    for x in &mut ac {
        for (l, x) in lanes.iter_mut().zip(x) {
            *l += *x;
        }
    }
    for (l, x) in lanes.iter_mut().zip(ac.remainder()) {
        *l += *x;
    }
    fold_active(&mut lanes, a.len()) as f64
}

/// One segment of Σ a·b with f64 products and lanes (APG's projection).
#[inline(always)]
pub fn segment_dot_f64(a: &[f32], b: &[f32]) -> f64 {
    segment::<f64>(a, b)
}

/// Σ over a group of per-segment results, in segment order from +0.
#[inline(always)]
pub fn over_segments(len: usize, mut segment: impl FnMut(std::ops::Range<usize>) -> f64) -> f64 {
    let mut total = 0.0f64;
    let mut start = 0;
    while start < len {
        let end = (start + SEGMENT).min(len);
        total += segment(start..end);
        start = end;
    }
    total
}

/// Σ a·b over two whole slices (one group), segments in parallel.
pub fn dot_slices(a: &[f32], b: &[f32]) -> f64 {
    let parts = crate::par::map(a.chunks(SEGMENT).zip(b.chunks(SEGMENT)), |(a, b)| simd::run(SegmentDot(a, b)));
    parts.iter().fold(0.0, |total, p| total + p)
}

struct SegmentDot<'a>(&'a [f32], &'a [f32]);

impl Task for SegmentDot<'_> {
    type Out = f64;
    #[inline(always)]
    fn run<V: Vector>(self) -> f64 {
        segment_dot(self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::{dot_f32, dot_f64};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40503)) >> 9;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn segments_match_the_closure_reduction() {
        for n in [0, 1, 2, 63, 64, 65, 255, 256, 257, 1000, 8191, 8192, 8193, 20000] {
            let (a, b) = (values(n, 1), values(n, 2));
            let want = dot_f32(n, |k| (a[k], b[k]));
            assert_eq!(over_segments(n, |r| segment_dot(&a[r.clone()], &b[r])).to_bits(), want.to_bits(), "{n}");
            let want = dot_f32(n, |k| (a[k], 1.0));
            assert_eq!(over_segments(n, |r| segment_sum(&a[r])).to_bits(), want.to_bits(), "{n}");
            let want = dot_f64(n, |k| (a[k] as f64, b[k] as f64));
            assert_eq!(over_segments(n, |r| segment_dot_f64(&a[r.clone()], &b[r])).to_bits(), want.to_bits(), "{n}");
        }
    }
}
