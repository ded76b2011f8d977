//! The two passes of a group operator (and TCFG's apply) straight from bf16
//! inputs: its forms computed in registers sixteen lanes at a time, in the
//! split order AVX2 widens bf16 in ([`crate::simd::SPLIT`]), rather than into
//! f32 blocks read back. On Zen 2, widening in element order (a shuffle
//! across 128-bit halves per eight lanes) and the block's store and load
//! made up about a third of such a pass. The statistics keep their lanes in
//! split order while they add whole rows, and put them back in order before
//! the last partial row and the fold, so each lane still adds its elements
//! in the canonical order.

use crate::cpu::{combine_split, Element};
use crate::fused::{accumulate_all, fold_all, Pointwise, Statistics, Terms, STAT_ROWS};
use crate::reduce::LANES;
use crate::simd::{from_split, Vector};
use crate::slot::Slot;
use half::bf16;
use std::marker::PhantomData;

/// A form of one or two bf16 inputs over one run of elements, computed as
/// [`crate::fused::form_into`] computes it.
#[derive(Clone, Copy)]
enum Form<'a> {
    /// `x` (one input of weight 1: widened, not multiplied).
    Plain(Plain<'a>),
    /// `w·x`.
    One(One<'a>),
    /// `fma(w₁, x₁, w₀·x₀)`.
    Two(Two<'a>),
}

impl<'a> Form<'a> {
    /// The form over `start..start + n`, or `None` when it is not one or two bf16 inputs.
    fn new<I: Element>(terms: Terms<'a, I>, start: usize, n: usize) -> Option<Form<'a>> {
        let run = |x: &'a [I]| I::as_bf16(x).map(|x| &x[start..start + n]);
        match terms {
            [(x, w)] if *w == 1.0 => Some(Form::Plain(Plain(run(x)?))),
            [(x, w)] => Some(Form::One(One(run(x)?, *w))),
            [(x0, w0), (x1, w1)] => Some(Form::Two(Two([run(x0)?, run(x1)?], [*w0, *w1]))),
            _ => None,
        }
    }
}

/// A form's values sixteen at a time in split order, or one at a time.
/// Each kind of form is its own type, so that a loop over a run compiles
/// once per kind with no branch inside.
trait Sixteen: Copy {
    /// Elements `16c..16c + 16` of the run, in split order.
    fn sixteen<V: Vector>(self, c: usize) -> (V, V);
    /// Element `i` of the run.
    fn one(self, i: usize) -> f32;
}

/// `x`.
#[derive(Clone, Copy)]
struct Plain<'a>(&'a [bf16]);
/// `w·x`.
#[derive(Clone, Copy)]
struct One<'a>(&'a [bf16], f32);
/// `fma(w₁, x₁, w₀·x₀)`.
#[derive(Clone, Copy)]
struct Two<'a>([&'a [bf16]; 2], [f32; 2]);

impl Sixteen for Plain<'_> {
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        sixteen_of(self.0, c)
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        self.0[i].get()
    }
}

impl Sixteen for One<'_> {
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        combine_split::<V, bf16, 1>(&[self.0.as_chunks().0], &[self.1], c)
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        self.1 * self.0[i].get()
    }
}

impl Sixteen for Two<'_> {
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        let Two([x0, x1], w) = self;
        combine_split::<V, bf16, 2>(&[x0.as_chunks().0, x1.as_chunks().0], &w, c)
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        let Two([x0, x1], [w0, w1]) = self;
        w1.mul_add(x1[i].get(), w0 * x0[i].get())
    }
}

/// Elements `16c..16c + 16` of `x`, in split order (a function: a closure
/// called from target-feature code may not inline).
#[inline(always)]
fn sixteen_of<V: Vector>(x: &[bf16], c: usize) -> (V, V) {
    bf16::get16_split::<V>(&x.as_chunks::<16>().0[c])
}

/// Work on two forms (or one), each of its own [`Sixteen`] type.
trait OnForms {
    /// The result.
    type Out;
    /// Runs on `a` and `b` (`None`: `a` alone).
    fn run<A: Sixteen, B: Sixteen>(self, a: A, b: Option<B>) -> Self::Out;
}

/// `job` on `a` and `b` as their own types (twelve instances of it: a
/// branch per element, even one always taken the same way, made an apply
/// loop 2.5× slower on Zen 2 once the compiler stopped unswitching it).
#[inline(always)]
fn on_forms<J: OnForms>(a: Form, b: Option<Form>, job: J) -> J::Out {
    match a {
        Form::Plain(a) => on_second(a, b, job),
        Form::One(a) => on_second(a, b, job),
        Form::Two(a) => on_second(a, b, job),
    }
}

#[inline(always)]
fn on_second<A: Sixteen, J: OnForms>(a: A, b: Option<Form>, job: J) -> J::Out {
    match b {
        None => job.run::<A, A>(a, None),
        Some(Form::Plain(b)) => job.run(a, Some(b)),
        Some(Form::One(b)) => job.run(a, Some(b)),
        Some(Form::Two(b)) => job.run(a, Some(b)),
    }
}

/// Writes `l.at(a, b)` over elements `start..start + out.len()` into `out`,
/// (a, b) the values of `forms` (`a` for both when `reads_b` is false), when
/// the inputs and output are bf16 and each form read is one or two inputs;
/// returns false, writing nothing, otherwise.
#[inline(always)]
pub fn apply<V: Vector, I: Element, L: Pointwise, S: Slot>(
    l: &L,
    (x, z): (Terms<I>, Terms<I>),
    reads_b: bool,
    start: usize,
    out: &mut [S],
) -> bool {
    if !(I::BF16 && S::Elem::BF16) {
        return false;
    }
    let n = out.len();
    let Some(a) = Form::new(x, start, n) else { return false };
    let job = ApplyRun::<V, L, S> { l, out, _v: PhantomData };
    if !reads_b {
        on_forms(a, None, job);
        return true;
    }
    let Some(b) = Form::new(z, start, n) else { return false };
    on_forms(a, Some(b), job);
    true
}

/// [`apply`] on forms of known kinds.
struct ApplyRun<'a, V, L, S> {
    l: &'a L,
    out: &'a mut [S],
    _v: PhantomData<V>,
}

impl<V: Vector, L: Pointwise, S: Slot> OnForms for ApplyRun<'_, V, L, S> {
    type Out = ();
    #[inline(always)]
    fn run<A: Sixteen, B: Sixteen>(self, a: A, b: Option<B>) {
        let (pairs, tail) = self.out.as_chunks_mut::<16>();
        let l = self.l;
        for (c, o) in pairs.iter_mut().enumerate() {
            let (a_lo, a_hi) = a.sixteen::<V>(c);
            let (b_lo, b_hi) = match b {
                Some(b) => b.sixteen::<V>(c),
                None => (a_lo, a_hi),
            };
            S::put16_split(l.at(a_lo, b_lo), l.at(a_hi, b_hi), o);
        }
        for (i, o) in (16 * pairs.len()..).zip(tail) {
            let av = a.one(i);
            let bv = b.map_or(av, |b| b.one(i));
            o.set(S::Elem::put(l.at(av, bv)));
        }
    }
}

/// The `K` statistics of the segment `start..start + n` when its forms are
/// one or two bf16 inputs each; `None` otherwise.
#[inline(always)]
pub fn stats<V: Vector, const K: usize, P: Statistics<K>>(op: &P, start: usize, n: usize) -> Option<[f64; K]> {
    if !P::Input::BF16 {
        return None;
    }
    let (x, z) = op.forms();
    let (a, b) = (Form::new(x, start, n)?, Form::new(z, start, n)?);
    Some(on_forms(a, Some(b), SegmentStats::<V, P, K> { n, _p: PhantomData }))
}

/// [`stats`] on forms of known kinds.
struct SegmentStats<V, P, const K: usize> {
    n: usize,
    _p: PhantomData<(V, P)>,
}

impl<V: Vector, const K: usize, P: Statistics<K>> OnForms for SegmentStats<V, P, K> {
    type Out = [f64; K];
    #[inline(always)]
    fn run<A: Sixteen, B: Sixteen>(self, a: A, b: Option<B>) -> [f64; K] {
        match b {
            Some(b) => self.segment(a, b),
            None => self.segment(a, a),
        }
    }
}

impl<V: Vector, const K: usize, P: Statistics<K>> SegmentStats<V, P, K> {
    /// The statistics of the forms `a` and `b` over the segment.
    #[inline(always)]
    fn segment<A: Sixteen, B: Sixteen>(self, a: A, b: B) -> [f64; K] {
        let n = self.n;
        let mut lanes = [[0.0f32; LANES]; K];
        let rows = n / LANES;
        let mut row = 0;
        while row < rows {
            let block = STAT_ROWS.min(rows - row);
            for pair in 0..LANES / 16 {
                add_rows::<V, K, P, A, B>(&mut lanes, a, b, row..row + block, pair);
            }
            row += block;
        }
        for lanes in &mut lanes {
            for chunk in lanes.as_chunks_mut::<16>().0 {
                let halves = chunk.as_chunks::<8>().0;
                let (lo, hi) = (halves[0], halves[1]);
                *chunk = from_split(lo, hi);
            }
        }
        let tail = n - rows * LANES;
        if tail > 0 {
            let (mut ta, mut tb) = ([0.0f32; LANES], [0.0f32; LANES]);
            for (i, (ta, tb)) in (rows * LANES..n).zip(ta.iter_mut().zip(&mut tb)) {
                (*ta, *tb) = (a.one(i), b.one(i));
            }
            accumulate_all::<K, P>(&mut lanes, &ta[..tail], &tb[..tail]);
        }
        fold_all(&mut lanes, n)
    }
}

/// Adds `rows` of lanes `16·pair..16·pair + 16` (in split order) into
/// `lanes`, their sums in registers down the rows.
#[inline(always)]
fn add_rows<V: Vector, const K: usize, P: Statistics<K>, A: Sixteen, B: Sixteen>(
    lanes: &mut [[f32; LANES]; K],
    a: A,
    b: B,
    rows: std::ops::Range<usize>,
    pair: usize,
) {
    let mut lo = [V::splat(0.0); K];
    let mut hi = [V::splat(0.0); K];
    for k in 0..K {
        let eights = lanes[k].as_chunks::<8>().0;
        (lo[k], hi[k]) = (V::load(&eights[2 * pair]), V::load(&eights[2 * pair + 1]));
    }
    for r in rows {
        let c = r * (LANES / 16) + pair;
        let ((a_lo, a_hi), (b_lo, b_hi)) = (a.sixteen::<V>(c), b.sixteen::<V>(c));
        let (pl, ph) = (P::pairs(a_lo, b_lo), P::pairs(a_hi, b_hi));
        for k in 0..K {
            lo[k] = pl[k].0.mul_add(pl[k].1, lo[k]);
            hi[k] = ph[k].0.mul_add(ph[k].1, hi[k]);
        }
    }
    for k in 0..K {
        let eights = lanes[k].as_chunks_mut::<8>().0;
        lo[k].store(&mut eights[2 * pair]);
        hi[k].store(&mut eights[2 * pair + 1]);
    }
}
