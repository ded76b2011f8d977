//! Forms a fused pass reads in place: a bf16 input that is a form by itself
//! (`1·x`) is widened eight lanes at a time as it is read
//! ([`Element::get8`]), so that no block is written and read back for it.

use crate::cpu::Element;
use crate::fused::Terms;
use half::bf16;

/// The elements of a form that is one bf16 input of weight 1 (`1·x` is `x`
/// to every kernel), over `start..start + n`; `None` for any other form.
#[inline(always)]
pub fn plain_bf16<'s, I: Element>(terms: Terms<'s, I>, start: usize, n: usize) -> Option<&'s [bf16]> {
    match terms {
        [(x, w)] if *w == 1.0 => I::as_bf16(x).map(|x| &x[start..start + n]),
        _ => None,
    }
}
