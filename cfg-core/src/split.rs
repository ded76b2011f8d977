//! The apply pass of a group operator straight from bf16 inputs into a bf16
//! output: its forms computed in registers sixteen lanes at a time, in the
//! split order AVX2 widens bf16 in ([`crate::simd::SPLIT`]), rather than into
//! f32 blocks read back. On Zen 2, widening in element order (a shuffle
//! across 128-bit halves per eight lanes) and the block's store and load
//! made up about a third of such a pass.

use crate::cpu::Element;
use crate::fused::{GroupOp, Terms};
use crate::simd::Vector;
use crate::slot::Slot;
use half::bf16;

/// A form of at most two bf16 inputs over one run of elements, computed as
/// [`crate::fused::form_into`] computes it.
#[derive(Clone, Copy)]
enum Form<'a> {
    /// `x` (one input of weight 1: widened, not multiplied).
    Plain(&'a [bf16]),
    /// `w·x`.
    One(&'a [bf16], f32),
    /// `fma(w₁, x₁, w₀·x₀)`.
    Two([&'a [bf16]; 2], [f32; 2]),
}

impl<'a> Form<'a> {
    /// The form over `start..start + n`, or `None` when it is not one or two bf16 inputs.
    fn new<I: Element>(terms: Terms<'a, I>, start: usize, n: usize) -> Option<Form<'a>> {
        let run = |x: &'a [I]| I::as_bf16(x).map(|x| &x[start..start + n]);
        match terms {
            [(x, w)] if *w == 1.0 => Some(Form::Plain(run(x)?)),
            [(x, w)] => Some(Form::One(run(x)?, *w)),
            [(x0, w0), (x1, w1)] => Some(Form::Two([run(x0)?, run(x1)?], [*w0, *w1])),
            _ => None,
        }
    }

    /// Elements `16c..16c + 16` of the run, in split order.
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        match self {
            Form::Plain(x) => sixteen_of(x, c),
            Form::One(x, w) => {
                let ((lo, hi), w) = (sixteen_of::<V>(x, c), V::splat(w));
                (w * lo, w * hi)
            }
            Form::Two([x0, x1], [w0, w1]) => {
                let ((a, b), (p, q)) = (sixteen_of::<V>(x0, c), sixteen_of::<V>(x1, c));
                let (w0, w1) = (V::splat(w0), V::splat(w1));
                (w1.mul_add(p, w0 * a), w1.mul_add(q, w0 * b))
            }
        }
    }

    /// Element `i` of the run.
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        match self {
            Form::Plain(x) => x[i].get(),
            Form::One(x, w) => w * x[i].get(),
            Form::Two([x0, x1], [w0, w1]) => w1.mul_add(x1[i].get(), w0 * x0[i].get()),
        }
    }
}

/// Elements `16c..16c + 16` of `x`, in split order (a function: a closure
/// called from target-feature code may not inline).
#[inline(always)]
fn sixteen_of<V: Vector>(x: &[bf16], c: usize) -> (V, V) {
    bf16::get16_split::<V>(&x.as_chunks::<16>().0[c])
}

/// Writes `op.apply` with factor `f` over elements `start..start + out.len()`
/// into `out` when its inputs and output are bf16 and the forms it reads
/// are one or two inputs each; returns false, writing nothing, otherwise.
#[inline(always)]
pub fn apply<V: Vector, const K: usize, P: GroupOp<K>, S: Slot>(op: &P, f: f32, start: usize, out: &mut [S]) -> bool {
    if !(P::Input::BF16 && S::Elem::BF16) {
        return false;
    }
    let n = out.len();
    let (x, z) = op.forms();
    let Some(a) = Form::new(x, start, n) else { return false };
    let b = if P::APPLY_READS_B {
        let Some(b) = Form::new(z, start, n) else { return false };
        b
    } else {
        a
    };
    let (pairs, tail) = out.as_chunks_mut::<16>();
    let fv = V::splat(f);
    for (c, o) in pairs.iter_mut().enumerate() {
        let (a_lo, a_hi) = a.sixteen::<V>(c);
        let (b_lo, b_hi) = if P::APPLY_READS_B { b.sixteen::<V>(c) } else { (a_lo, a_hi) };
        S::put16_split(op.apply(a_lo, b_lo, fv), op.apply(a_hi, b_hi, fv), o);
    }
    for (i, o) in (16 * pairs.len()..).zip(tail) {
        let av = a.one(i);
        let bv = if P::APPLY_READS_B { b.one(i) } else { av };
        o.set(S::Elem::put(op.apply(av, bv, f)));
    }
    true
}
