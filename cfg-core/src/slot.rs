//! Where a kernel writes its output elements: over initialized values (an
//! output the caller keeps), or into fresh memory (a new output, which is
//! then written once and never cleared first).

use crate::cpu::Element;
use crate::recycle;
use crate::simd::Vector;
use crate::zeroed::advise_huge_pages;
use std::mem::MaybeUninit;

/// One output element of type [`Slot::Elem`].
pub trait Slot: Send + Sized {
    /// The element type written.
    type Elem: Element;
    /// Writes one element.
    fn set(&mut self, v: Self::Elem);
    /// Rounds `vals` (nearest even) into `out`, as [`Element::store`] does.
    fn put_all(vals: &[f32], out: &mut [Self]);
    /// Writes eight lanes, rounded as [`Element::put8`] rounds them.
    fn put8<V: Vector>(v: V, to: &mut [Self; 8]);
}

impl<O: Element> Slot for O {
    type Elem = O;
    #[inline(always)]
    fn set(&mut self, v: O) {
        *self = v;
    }
    #[inline(always)]
    fn put_all(vals: &[f32], out: &mut [O]) {
        O::store(vals, out);
    }
    #[inline(always)]
    fn put8<V: Vector>(v: V, to: &mut [O; 8]) {
        O::put8(v, to);
    }
}

impl<O: Element> Slot for MaybeUninit<O> {
    type Elem = O;
    #[inline(always)]
    fn set(&mut self, v: O) {
        self.write(v);
    }
    #[inline(always)]
    fn put_all(vals: &[f32], out: &mut [Self]) {
        for (o, v) in out.iter_mut().zip(vals) {
            o.write(O::put(*v));
        }
    }
    #[inline(always)]
    fn put8<V: Vector>(v: V, to: &mut [Self; 8]) {
        let mut x = [O::put(0.0); 8];
        O::put8(v, &mut x);
        // SAFETY: eight initialized values into eight slots (a plain copy:
        // a loop of `write`s may not become one vector store).
        unsafe { std::ptr::copy_nonoverlapping(x.as_ptr(), to.as_mut_ptr().cast::<O>(), 8) };
    }
}

/// A new vector of `n` elements, each written once by `write`.
///
/// # Safety
/// `write` must write every element of the slice it is given (and can read
/// none before it writes it: they are uninitialized until then).
pub(crate) unsafe fn new_vec<O: Element>(n: usize, write: impl FnOnce(&mut [MaybeUninit<O>])) -> Vec<O> {
    // A kept buffer's pages are already in; a fresh one is advised before
    // anything touches its pages.
    let mut v = recycle::take(n).unwrap_or_else(|| {
        let v = Vec::with_capacity(n);
        advise_huge_pages(v.as_ptr() as usize, n * std::mem::size_of::<O>());
        v
    });
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `write` wrote every one of the first `n` elements (the caller's promise).
    unsafe { v.set_len(n) };
    v
}
