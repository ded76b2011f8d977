//! The values a fused pass reads eight lanes at a time: f32 (a linear form
//! computed into a block, or an f32 input read in place), or the elements of
//! a bf16 input that is a form by itself (`1·x`), widened as they are read,
//! so that no block is written and read back for it.

use crate::cpu::Element;
use crate::fused::Terms;
use crate::simd::Vector;
use half::bf16;

/// A run of values, read eight lanes at a time or one by one.
pub trait Values: Copy {
    /// Values `start..start + n`.
    fn slice(self, start: usize, n: usize) -> Self;
    /// Lanes `8c..8c + 8`.
    fn eight<V: Vector>(self, c: usize) -> V;
    /// Value `i`.
    fn at(self, i: usize) -> f32;
}

impl Values for &[f32] {
    #[inline(always)]
    fn slice(self, start: usize, n: usize) -> Self {
        &self[start..start + n]
    }
    #[inline(always)]
    fn eight<V: Vector>(self, c: usize) -> V {
        V::load(&self.as_chunks::<8>().0[c])
    }
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        self[i]
    }
}

impl Values for &[bf16] {
    #[inline(always)]
    fn slice(self, start: usize, n: usize) -> Self {
        &self[start..start + n]
    }
    #[inline(always)]
    fn eight<V: Vector>(self, c: usize) -> V {
        V::load(&self.as_chunks::<8>().0[c].map(<bf16 as Element>::get))
    }
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        self[i].get()
    }
}

/// The elements of a form that is one bf16 input of weight 1 (`1·x` is `x`
/// to every kernel), over `start..start + n`; `None` for any other form.
#[inline(always)]
pub fn plain_bf16<'s, I: Element>(terms: Terms<'s, I>, start: usize, n: usize) -> Option<&'s [bf16]> {
    match terms {
        [(x, w)] if *w == 1.0 => I::as_bf16(x).map(|x| &x[start..start + n]),
        _ => None,
    }
}
