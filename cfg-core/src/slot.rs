//! Where a kernel writes its output elements: slots it writes once, in fresh
//! memory (a new output, never cleared first) or over the values of an output
//! the caller keeps ([`kept`]). Kernels are compiled for these slots only, not
//! a second time for initialized elements.

use crate::cpu::Element;
use crate::recycle;
use crate::simd::Vector;
use crate::zeroed::advise_huge_pages;
use std::mem::MaybeUninit;

/// One output element of type [`Slot::Elem`], written once with a value of it.
pub trait Slot: Send + Sized {
    /// The element type written.
    type Elem: Element;
    /// Writes one element.
    fn set(&mut self, v: Self::Elem);
    /// Rounds `vals` (nearest even) into `out`, as [`Element::store`] does.
    fn put_all(vals: &[f32], out: &mut [Self]);
    /// Writes eight lanes, rounded as [`Element::put8`] rounds them.
    fn put8<V: Vector>(v: V, to: &mut [Self; 8]);
    /// Writes sixteen lanes, `lo` then `hi`, rounded as [`Element::put16`] rounds them.
    fn put16<V: Vector>(lo: V, hi: V, to: &mut [Self; 16]);
    /// Writes sixteen lanes in split order, as [`Element::put16_split`] does.
    fn put16_split<V: Vector>(lo: V, hi: V, to: &mut [Self; 16]);
}

impl<O: Element> Slot for MaybeUninit<O> {
    type Elem = O;
    #[inline(always)]
    fn set(&mut self, v: O) {
        self.write(v);
    }
    #[inline(always)]
    fn put_all(vals: &[f32], out: &mut [Self]) {
        if O::DIRECT {
            for (o, v) in out.iter_mut().zip(vals) {
                o.write(O::put(*v));
            }
            return;
        }
        // Element by element it would not vectorize (f16): slices of it
        // rounded by `store` into a buffer, then copied.
        let mut buffer = [O::put(0.0); 64];
        for (vals, out) in vals.chunks(64).zip(out.chunks_mut(64)) {
            // As many as both have, as the loop above writes.
            let n = vals.len().min(out.len());
            let rounded = &mut buffer[..n];
            O::store(&vals[..n], rounded);
            // SAFETY: `n` initialized values into `n` slots.
            unsafe { std::ptr::copy_nonoverlapping(rounded.as_ptr(), out.as_mut_ptr().cast::<O>(), n) };
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
    #[inline(always)]
    fn put16<V: Vector>(lo: V, hi: V, to: &mut [Self; 16]) {
        let mut x = [O::put(0.0); 16];
        O::put16(lo, hi, &mut x);
        // SAFETY: as in `put8`, sixteen.
        unsafe { std::ptr::copy_nonoverlapping(x.as_ptr(), to.as_mut_ptr().cast::<O>(), 16) };
    }
    #[inline(always)]
    fn put16_split<V: Vector>(lo: V, hi: V, to: &mut [Self; 16]) {
        let mut x = [O::put(0.0); 16];
        O::put16_split(lo, hi, &mut x);
        // SAFETY: as in `put8`, sixteen.
        unsafe { std::ptr::copy_nonoverlapping(x.as_ptr(), to.as_mut_ptr().cast::<O>(), 16) };
    }
}

/// An output the caller keeps, as slots: the kernels overwrite its values.
pub(crate) fn kept<O: Element>(out: &mut [O]) -> &mut [MaybeUninit<O>] {
    // SAFETY: same layout; a `Slot` only ever writes an initialized `O`, so
    // the elements stay initialized (and the slice cannot leave the crate).
    unsafe { &mut *(out as *mut [O] as *mut [MaybeUninit<O>]) }
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
