//! The two values a fused pass reads per element, a block at a time: each
//! form is read in place when it is one input of weight 1 (`1·x` is `x` to
//! every kernel; a bf16 input is widened eight lanes at a time as it is read,
//! see [`Element::get8`]), else computed into its block.

use crate::cpu::Element;
use crate::fused::{form_ref, Terms};
use half::bf16;

/// Work on one block of the two values, whatever their element types.
pub trait OnValues {
    /// Runs on `a` and `b` (of equal length).
    fn run<A: Element, B: Element>(self, a: &[A], b: &[B]);
}

/// Runs `job` on the values of the forms `(x, z)` over `start..start + n`
/// (`n` the blocks' length). When `reads_b` is false the job ignores its
/// second value: `a` stands in for it and `z` is not computed.
#[inline(always)]
pub fn with_values<I: Element, J: OnValues>(
    job: J,
    (x, z): (Terms<I>, Terms<I>),
    start: usize,
    (a, b): (&mut [f32], &mut [f32]),
    reads_b: bool,
) {
    let n = a.len();
    // Only bf16 inputs instantiate the in-place arms: the condition is a constant.
    if I::BF16 {
        match (plain_bf16(x, start, n), plain_bf16(z, start, n)) {
            (Some(a), _) if !reads_b => return job.run(a, a),
            (Some(a), Some(b)) => return job.run(a, b),
            (Some(a), None) => return job.run(a, form_ref(z, start, b)),
            (None, Some(b)) if reads_b => return job.run(form_ref(x, start, a), b),
            _ => {}
        }
    }
    let a = form_ref(x, start, a);
    if reads_b {
        job.run(a, form_ref(z, start, b))
    } else {
        job.run(a, a)
    }
}

/// The elements of a form that is one bf16 input of weight 1, over
/// `start..start + n`; `None` for any other form.
#[inline(always)]
fn plain_bf16<'s, I: Element>(terms: Terms<'s, I>, start: usize, n: usize) -> Option<&'s [bf16]> {
    match terms {
        [(x, w)] if *w == 1.0 => I::as_bf16(x).map(|x| &x[start..start + n]),
        _ => None,
    }
}
