//! Tangential CFG (TCFG): the unconditional prediction projected on the top
//! right-singular vector of the stacked [c; u], per sample.
//!
//! No SVD is needed. With A = [c; u] (2 × N), the right-singular vectors are
//! v = Aᵀw/σ for the eigenvectors w of the 2 × 2 Gram matrix G = AAᵀ =
//! [[⟨c,c⟩, ⟨c,u⟩], [⟨c,u⟩, ⟨u,u⟩]]. For the top eigenpair (λ₁, w), ⟨u, v₁⟩ =
//! (Gw)₁/√λ₁ = √λ₁·w₁, so the projection u' = ⟨u,v₁⟩v₁ = (w₁/‖w‖²)(w₀c + w₁u):
//! u' = α·c + β·u with α = w₀w₁/‖w‖², β = w₁²/‖w‖², from three dot products.

use crate::cpu::Element;
use crate::fused::{
    apply_run, group_tasks, group_totals, put_scratch, take_scratch, Pointwise, Statistics, Terms, BLOCK, TASK,
};
use crate::par;
use crate::simd::{self, Num, Task, Vector};
use crate::slot::Slot;
use crate::split;
use crate::values::{with_values, OnValues};
use std::marker::PhantomData;

/// An eigenvector (not normalized) of the symmetric [[cc, cu], [cu, uu]] for
/// its largest eigenvalue, in closed form without cancellation: with
/// h = (cc − uu)/2 and r = √(h² + cu²), λ₁ = (cc + uu)/2 + r and
/// w = (h + r, cu) when h ≥ 0, (cu, r − h) otherwise. It is (0, 0) when
/// λ₁ = 0 (c = u = 0) and when the eigenvalue is double (c ⊥ u with equal
/// norms: every direction of the plane is top; the caller then projects on c).
/// Every step is a correctly rounded f64 operation, so the CUDA kernel
/// (factors.cu, `--fmad=false`) computes the same bits.
pub fn top_eigenvector(cc: f64, cu: f64, uu: f64) -> (f64, f64) {
    let h = 0.5 * (cc - uu);
    let r = (h * h + cu * cu).sqrt();
    if h >= 0.0 {
        (h + r, cu)
    } else {
        (cu, r - h)
    }
}

/// TCFG's (α, β), rounded to f32: u' = α·c + β·u. Zero (u' = 0) when the
/// eigenvector is zero: for c = u = 0 the projection is 0 whatever the
/// direction, and for a double eigenvalue this picks v₁ = ĉ, on which u ⊥ c
/// projects to 0.
pub fn tcfg_coefficients(cc: f64, cu: f64, uu: f64) -> (f32, f32) {
    let (w0, w1) = top_eigenvector(cc, cu, uu);
    let n2 = w0 * w0 + w1 * w1;
    if n2 == 0.0 {
        return (0.0, 0.0);
    }
    ((w0 * w1 / n2) as f32, (w1 * w1 / n2) as f32)
}

/// One element (or eight lanes): u' = fma(α, c, β·u); out = fma(s, c − u',
/// base), base = c or u'.
#[inline(always)]
pub fn tcfg_apply<T: Num>(c: T, u: T, alpha: f32, beta: f32, scale: f32, original: bool) -> T {
    let up = T::splat(alpha).mul_add(c, T::splat(beta) * u);
    let base = if original { c } else { up };
    T::splat(scale).mul_add(c - up, base)
}

/// Evaluates TCFG over consecutive groups (samples) of `len` elements into
/// `out`: per-segment statistics in parallel (the canonical reductions of
/// `crate::reduce`, summed in segment order), then the apply, which computes
/// the forms again rather than storing them.
pub fn tcfg_into<I: Element, S: Slot>(
    cond: Terms<I>,
    uncond: Terms<I>,
    len: usize,
    scale: f32,
    original: bool,
    out: &mut [S],
) {
    if out.is_empty() || len == 0 {
        return;
    }
    let coefficients: Vec<(f32, f32)> = group_totals(&Gram { cond, uncond }, len, out.len() / len)
        .into_iter()
        .map(|[cc, cu, uu]| tcfg_coefficients(cc, cu, uu))
        .collect();
    par::for_each(group_tasks(out, len), |(g, t, out)| {
        let (alpha, beta) = coefficients[g];
        let start = g * len + t * TASK;
        simd::run(Apply { cond, uncond, start, alpha, beta, scale, original, out })
    });
}

/// c and u, whose statistics are [‖c‖², ⟨c,u⟩, ‖u‖²].
struct Gram<'a, I> {
    cond: Terms<'a, I>,
    uncond: Terms<'a, I>,
}

impl<I: Element> Statistics<3> for Gram<'_, I> {
    type Input = I;
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.cond, self.uncond)
    }
    #[inline(always)]
    fn pairs<T: Num>(c: T, u: T) -> [(T, T); 3] {
        [(c, c), (c, u), (u, u)]
    }
}

/// The apply over a run of one group.
struct Apply<'a, I, S> {
    cond: Terms<'a, I>,
    uncond: Terms<'a, I>,
    start: usize,
    alpha: f32,
    beta: f32,
    scale: f32,
    original: bool,
    out: &'a mut [S],
}

impl<I: Element, S: Slot> Task for Apply<'_, I, S> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let lanes = Lanes { alpha: self.alpha, beta: self.beta, scale: self.scale, original: self.original };
        if split::apply::<V, _, _, S>(&lanes, (self.cond, self.uncond), true, self.start, self.out) {
            return;
        }
        let mut buf = take_scratch(2 * BLOCK);
        let (c, u) = buf.split_at_mut(BLOCK);
        for (k, out) in self.out.chunks_mut(BLOCK).enumerate() {
            let (m, start) = (out.len(), self.start + k * BLOCK);
            let job = ApplyBlock::<V, S> { lanes: &lanes, out, _v: PhantomData };
            with_values(job, (self.cond, self.uncond), start, (&mut c[..m], &mut u[..m]), true);
        }
        put_scratch(buf);
    }
}

/// [`tcfg_apply`] with one sample's coefficients.
struct Lanes {
    alpha: f32,
    beta: f32,
    scale: f32,
    original: bool,
}

impl Pointwise for Lanes {
    #[inline(always)]
    fn at<T: Num>(&self, c: T, u: T) -> T {
        tcfg_apply(c, u, self.alpha, self.beta, self.scale, self.original)
    }
}

/// The apply over one block of c and u.
struct ApplyBlock<'a, V, S> {
    lanes: &'a Lanes,
    out: &'a mut [S],
    _v: PhantomData<V>,
}

impl<V: Vector, S: Slot> OnValues for ApplyBlock<'_, V, S> {
    #[inline(always)]
    fn run<A: Element, B: Element>(self, c: &[A], u: &[B]) {
        apply_run::<V, _, S, A, B>(self.lanes, c, u, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top right-singular vector by power iteration on G, in f64.
    fn projection_by_iteration(c: &[f64], u: &[f64]) -> Vec<f64> {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let g = [[dot(c, c), dot(c, u)], [dot(c, u), dot(u, u)]];
        let mut w = [1.0, 0.3];
        for _ in 0..200 {
            let next = [g[0][0] * w[0] + g[0][1] * w[1], g[1][0] * w[0] + g[1][1] * w[1]];
            let n = (next[0] * next[0] + next[1] * next[1]).sqrt();
            w = [next[0] / n, next[1] / n];
        }
        let v: Vec<f64> = c.iter().zip(u).map(|(c, u)| w[0] * c + w[1] * u).collect();
        let nv = dot(&v, &v).sqrt();
        let v: Vec<f64> = v.iter().map(|x| x / nv).collect();
        let k = dot(u, &v);
        v.iter().map(|x| k * x).collect()
    }

    #[test]
    fn closed_form_is_the_projection_on_the_top_singular_vector() {
        let cases: [(&[f64], &[f64]); 4] = [
            (&[1.0, 2.0, 3.0], &[0.5, -1.0, 2.0]),
            (&[1.0, 0.0, 0.0], &[0.0, 3.0, 0.0]),
            (&[-2.0, 1.0, 0.5], &[-2.1, 0.9, 0.4]),
            (&[0.1, 0.2, 0.3], &[5.0, -4.0, 1.0]),
        ];
        for (c, u) in cases {
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let (a, b) = crate::reference::tcfg_f64(dot(c, c), dot(c, u), dot(u, u));
            let want = projection_by_iteration(c, u);
            for i in 0..c.len() {
                assert!((a * c[i] + b * u[i] - want[i]).abs() < 1e-12, "{c:?} {u:?}");
            }
        }
    }

    #[test]
    fn zero_and_double_eigenvalues_are_guarded() {
        assert_eq!(tcfg_coefficients(0.0, 0.0, 0.0), (0.0, 0.0));
        // c ⊥ u, equal norms: projected on ĉ, u' = 0.
        assert_eq!(tcfg_coefficients(4.0, 0.0, 4.0), (0.0, 0.0));
        // c = 0: u' = u.
        assert_eq!(tcfg_coefficients(0.0, 0.0, 9.0), (0.0, 1.0));
        // u = 0: u' = 0.
        assert_eq!(tcfg_coefficients(9.0, 0.0, 0.0), (0.0, 0.0));
    }
}
