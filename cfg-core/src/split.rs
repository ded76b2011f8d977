//! The two passes of a group operator (with a mix after it, as Perp-Neg's, and
//! TCFG's apply), and short groups
//! reduced and applied in one pass, straight from bf16 inputs: the forms
//! computed in registers sixteen lanes at a time, in the split order AVX2
//! widens bf16 in ([`crate::simd::SPLIT`]), rather than into f32 blocks
//! read back. On Zen 2, widening in element order (a shuffle
//! across 128-bit halves per eight lanes) and the block's store and load
//! made up about a third of such a pass. The statistics keep their lanes in
//! split order while they add whole rows, and put them back in order before
//! the last partial row and the fold, so each lane still adds its elements
//! in the canonical order.
//!
//! The two passes read f32 inputs the same way, sixteen lanes in element
//! order (no shuffle to undo), into an f32 output: for them too the block's
//! store and load were the larger part of a pass from cache.

use crate::cpu::Element;
use crate::fused::{accumulate_all, fold_all, Factor, GroupOp, Part, Pointwise, Statistics, Terms, STAT_ROWS};
use crate::reduce::LANES;
use crate::simd::{from_split, Vector, SPLIT};
use crate::slot::Slot;
use half::bf16;
use std::marker::PhantomData;
use std::ops::Range;

/// An input element whose forms are computed sixteen lanes at a time: bf16
/// in split order (as AVX2 widens it), f32 in element order.
pub(crate) trait Lane: Element {
    /// Whether sixteen lanes are in [`SPLIT`] order.
    const SPLIT: bool;
    /// Sixteen elements as two vectors, in this type's order.
    fn sixteen<V: Vector>(x: &[Self; 16]) -> (V, V);
    /// The inputs as this type, when they are.
    fn inputs<I: Element>(x: &[I]) -> Option<&[Self]>;
}

impl Lane for bf16 {
    const SPLIT: bool = true;
    #[inline(always)]
    fn sixteen<V: Vector>(x: &[bf16; 16]) -> (V, V) {
        bf16::get16_split::<V>(x)
    }
    #[inline(always)]
    fn inputs<I: Element>(x: &[I]) -> Option<&[bf16]> {
        I::as_bf16(x)
    }
}

impl Lane for f32 {
    const SPLIT: bool = false;
    #[inline(always)]
    fn sixteen<V: Vector>(x: &[f32; 16]) -> (V, V) {
        let halves = x.as_chunks::<8>().0;
        (V::load(&halves[0]), V::load(&halves[1]))
    }
    #[inline(always)]
    fn inputs<I: Element>(x: &[I]) -> Option<&[f32]> {
        I::as_f32(x)
    }
}

/// A form of one or two inputs of type `E` over one run of elements,
/// computed as [`crate::fused::form_into`] computes it.
#[derive(Clone, Copy)]
enum Form<'a, E> {
    /// `x` (one input of weight 1: widened, not multiplied).
    Plain(Plain<'a, E>),
    /// `w·x`.
    One(One<'a, E>),
    /// `fma(w₁, x₁, w₀·x₀)`.
    Two(Two<'a, E>),
}

impl<'a, E: Lane> Form<'a, E> {
    /// The form over `start..start + n`, or `None` when it is not one or two inputs of type `E`.
    fn new<I: Element>(terms: Terms<'a, I>, start: usize, n: usize) -> Option<Form<'a, E>> {
        let run = |x: &'a [I]| E::inputs(x).map(|x| &x[start..start + n]);
        match terms {
            [(x, w)] if *w == 1.0 => Some(Form::Plain(Plain(run(x)?))),
            [(x, w)] => Some(Form::One(One(run(x)?, *w))),
            [(x0, w0), (x1, w1)] => Some(Form::Two(Two([run(x0)?, run(x1)?], [*w0, *w1]))),
            _ => None,
        }
    }

    /// The form over elements `r` of the run.
    #[inline(always)]
    fn sub(self, r: Range<usize>) -> Form<'a, E> {
        match self {
            Form::Plain(x) => Form::Plain(x.sub(r)),
            Form::One(x) => Form::One(x.sub(r)),
            Form::Two(x) => Form::Two(x.sub(r)),
        }
    }

    /// Element `i` of the run.
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        match self {
            Form::Plain(x) => x.one(i),
            Form::One(x) => x.one(i),
            Form::Two(x) => x.one(i),
        }
    }
}

/// A form's values sixteen at a time (in split order for bf16), or one at
/// a time. Each kind of form is its own type, so that a loop over a run
/// compiles once per kind with no branch inside.
trait Sixteen: Copy {
    /// Whether [`Sixteen::sixteen`] gives lanes in split order (else element order).
    const SPLIT: bool;
    /// Elements `16c..16c + 16` of the run, in split order or element order.
    fn sixteen<V: Vector>(self, c: usize) -> (V, V);
    /// Element `i` of the run.
    fn one(self, i: usize) -> f32;
    /// The form over elements `r` of the run (indexed from there: a loop
    /// over a group then knows its bounds once).
    fn sub(self, r: Range<usize>) -> Self;
}

/// `x`.
#[derive(Clone, Copy)]
struct Plain<'a, E>(&'a [E]);
/// `w·x`.
#[derive(Clone, Copy)]
struct One<'a, E>(&'a [E], f32);
/// `fma(w₁, x₁, w₀·x₀)`.
#[derive(Clone, Copy)]
struct Two<'a, E>([&'a [E]; 2], [f32; 2]);

impl<E: Lane> Sixteen for Plain<'_, E> {
    const SPLIT: bool = E::SPLIT;
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        sixteen_of(self.0, c)
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        self.0[i].get()
    }
    #[inline(always)]
    fn sub(self, r: Range<usize>) -> Self {
        Plain(&self.0[r])
    }
}

impl<E: Lane> Sixteen for One<'_, E> {
    const SPLIT: bool = E::SPLIT;
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        let (x, y) = sixteen_of::<V, E>(self.0, c);
        let w = V::splat(self.1);
        (w * x, w * y)
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        self.1 * self.0[i].get()
    }
    #[inline(always)]
    fn sub(self, r: Range<usize>) -> Self {
        One(&self.0[r], self.1)
    }
}

impl<E: Lane> Sixteen for Two<'_, E> {
    const SPLIT: bool = E::SPLIT;
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        let Two([x0, x1], [w0, w1]) = self;
        let ((a, b), (x, y)) = (sixteen_of::<V, E>(x0, c), sixteen_of::<V, E>(x1, c));
        let (w0, w1) = (V::splat(w0), V::splat(w1));
        (w1.mul_add(x, w0 * a), w1.mul_add(y, w0 * b))
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        let Two([x0, x1], [w0, w1]) = self;
        w1.mul_add(x1[i].get(), w0 * x0[i].get())
    }
    #[inline(always)]
    fn sub(self, r: Range<usize>) -> Self {
        let Two([x0, x1], w) = self;
        Two([&x0[r.clone()], &x1[r]], w)
    }
}

/// A form's values as an earlier loop left them: sixteen f32 per chunk, in
/// split order (lanes of `lo`, then of `hi`), read back from L1.
#[derive(Clone, Copy)]
struct Saved<'a>(&'a [[f32; 16]]);

impl Sixteen for Saved<'_> {
    const SPLIT: bool = true;
    #[inline(always)]
    fn sixteen<V: Vector>(self, c: usize) -> (V, V) {
        let halves = self.0[c].as_chunks::<8>().0;
        (V::load(&halves[0]), V::load(&halves[1]))
    }
    #[inline(always)]
    fn one(self, i: usize) -> f32 {
        // SPLIT swaps elements 4–7 with 8–11: it is its own inverse.
        self.0[i / 16][SPLIT[i % 16]]
    }
    #[inline(always)]
    fn sub(self, r: Range<usize>) -> Self {
        Saved(&self.0[r.start / 16..r.end.div_ceil(16)])
    }
}

/// Elements `16c..16c + 16` of `x`, in `E`'s order (a function: a closure
/// called from target-feature code may not inline).
#[inline(always)]
fn sixteen_of<V: Vector, E: Lane>(x: &[E], c: usize) -> (V, V) {
    E::sixteen::<V>(&x.as_chunks::<16>().0[c])
}

/// Stores sixteen lanes in the order forms of type `F` give them.
#[inline(always)]
fn store16<V: Vector, S: Slot, F: Sixteen>(lo: V, hi: V, out: &mut [S; 16]) {
    if F::SPLIT {
        S::put16_split(lo, hi, out)
    } else {
        S::put16(lo, hi, out)
    }
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
fn on_forms<E: Lane, J: OnForms>(a: Form<E>, b: Option<Form<E>>, job: J) -> J::Out {
    match (a, b) {
        // The second form is an input of the first (cond, beside guidance made
        // of cond and uncond, as a renorm or a rescale reads them): handed over
        // as the very slice the first reads, so the compiler loads it once.
        (Form::Two(a @ Two([x0, _], _)), Some(Form::Plain(Plain(y)))) if std::ptr::eq(x0, y) => {
            job.run(a, Some(Plain(x0)))
        }
        (Form::Two(a @ Two([_, x1], _)), Some(Form::Plain(Plain(y)))) if std::ptr::eq(x1, y) => {
            job.run(a, Some(Plain(x1)))
        }
        (Form::Plain(a), b) => on_second(a, b, job),
        (Form::One(a), b) => on_second(a, b, job),
        (Form::Two(a), b) => on_second(a, b, job),
    }
}

#[inline(always)]
fn on_second<E: Lane, A: Sixteen, J: OnForms>(a: A, b: Option<Form<E>>, job: J) -> J::Out {
    match b {
        None => job.run::<A, A>(a, None),
        Some(Form::Plain(b)) => job.run(a, Some(b)),
        Some(Form::One(b)) => job.run(a, Some(b)),
        Some(Form::Two(b)) => job.run(a, Some(b)),
    }
}

/// Writes `l.at(a, b)` over elements `start..start + out.len()` into `out`,
/// (a, b) the values of `forms` (`a` for both when `reads_b` is false), when
/// the inputs and output are both bf16 or both f32 and each form read is one
/// or two inputs; returns false, writing nothing, otherwise.
#[inline(always)]
pub fn apply<V: Vector, I: Element, L: Pointwise, S: Slot>(
    l: &L,
    forms: (Terms<I>, Terms<I>),
    reads_b: bool,
    start: usize,
    out: &mut [S],
) -> bool {
    if I::BF16 && S::Elem::BF16 {
        apply_on::<V, bf16, I, L, S>(l, forms, reads_b, start, out)
    } else if I::F32 && S::Elem::F32 {
        apply_on::<V, f32, I, L, S>(l, forms, reads_b, start, out)
    } else {
        false
    }
}

/// [`apply`] on inputs of type `E`.
#[inline(always)]
fn apply_on<V: Vector, E: Lane, I: Element, L: Pointwise, S: Slot>(
    l: &L,
    forms: (Terms<I>, Terms<I>),
    reads_b: bool,
    start: usize,
    out: &mut [S],
) -> bool {
    let Some((a, b)) = applied_forms::<E, I>(forms, reads_b, start, out.len()) else { return false };
    on_forms(a, b, ApplyRun::<V, L, S> { l, out, _v: PhantomData });
    true
}

/// The forms an apply over `start..start + n` reads (the second only when
/// `reads_b`), when each form read is one or two inputs of type `E`.
#[inline(always)]
fn applied_forms<'a, E: Lane, I: Element>(
    (x, z): (Terms<'a, I>, Terms<'a, I>),
    reads_b: bool,
    start: usize,
    n: usize,
) -> Option<(Form<'a, E>, Option<Form<'a, E>>)> {
    let a = Form::new(x, start, n)?;
    let b = if reads_b { Some(Form::new(z, start, n)?) } else { None };
    Some((a, b))
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
        apply_sixteens::<V, L, S, A, B>(l, a, b, pairs);
        for (i, o) in (16 * pairs.len()..).zip(tail) {
            let av = a.one(i);
            let bv = b.map_or(av, |b| b.one(i));
            o.set(S::Elem::put(l.at(av, bv)));
        }
    }
}

/// Writes `l.at(a, b)` over the first `out.len()` chunks of the forms (`a`
/// for both when `b` is `None`), sixteen elements per store.
#[inline(always)]
fn apply_sixteens<V: Vector, L: Pointwise, S: Slot, A: Sixteen, B: Sixteen>(
    l: &L,
    a: A,
    b: Option<B>,
    out: &mut [[S; 16]],
) {
    for (c, o) in out.iter_mut().enumerate() {
        let (a_lo, a_hi) = a.sixteen::<V>(c);
        let (b_lo, b_hi) = match b {
            Some(b) => b.sixteen::<V>(c),
            None => (a_lo, a_hi),
        };
        store16::<V, S, A>(l.at(a_lo, b_lo), l.at(a_hi, b_hi), o);
    }
}

/// Elements per piece of [`apply_mix`]: the operator's values of a piece
/// (2 KB) stay in L1 between its two loops.
const PIECE: usize = 512;

/// [`apply`] followed by a mix of the operator's value with one form, in
/// the mix's order (Perp-Neg: `(e + s·P) − s·s_n·N⊥`): `w₀·v₀`, then
/// `fma(w₁, v₁, ·)`, as [`crate::fused::Mix`] computes it. A piece at a
/// time: the operator's values into a small buffer (in L1), then the mix
/// with the form computed from the inputs. Returns false, writing nothing,
/// unless the inputs and output are both bf16 or both f32, each form is one
/// or two inputs and the mix is the operator's value and one form.
#[inline(always)]
pub fn apply_mix<V: Vector, I: Element, M: Element, L: Pointwise, S: Slot>(
    l: &L,
    forms: (Terms<I>, Terms<I>),
    reads_b: bool,
    mix: &[(Part<M>, f32)],
    start: usize,
    out: &mut [S],
) -> bool {
    if I::BF16 && S::Elem::BF16 {
        apply_mix_on::<V, bf16, I, M, L, S>(l, forms, reads_b, mix, start, out)
    } else if I::F32 && S::Elem::F32 {
        apply_mix_on::<V, f32, I, M, L, S>(l, forms, reads_b, mix, start, out)
    } else {
        false
    }
}

/// [`apply_mix`] on inputs of type `E`.
#[inline(always)]
fn apply_mix_on<V: Vector, E: Lane, I: Element, M: Element, L: Pointwise, S: Slot>(
    l: &L,
    forms: (Terms<I>, Terms<I>),
    reads_b: bool,
    mix: &[(Part<M>, f32)],
    start: usize,
    out: &mut [S],
) -> bool {
    let n = out.len();
    let Some((a, b)) = applied_forms::<E, I>(forms, reads_b, start, n) else { return false };
    let (terms, op_first, w) = match mix {
        [(Part::Op, w0), (Part::Form(f), w1)] => (*f, true, [*w0, *w1]),
        [(Part::Form(f), w0), (Part::Op, w1)] => (*f, false, [*w0, *w1]),
        _ => return false,
    };
    let Some(m) = Form::<E>::new(terms, start, n) else { return false };
    let (chunks, tail) = out.as_chunks_mut::<16>();
    let mut values = [(V::splat(0.0), V::splat(0.0)); PIECE / 16];
    for (p, out) in chunks.chunks_mut(PIECE / 16).enumerate() {
        let r = p * PIECE..p * PIECE + 16 * out.len();
        let y = &mut values[..out.len()];
        // A match, not `Option::map`: a closure may stay a call outside the task's features.
        #[allow(clippy::manual_map)]
        let b = match b {
            Some(b) => Some(b.sub(r.clone())),
            None => None,
        };
        on_forms(a.sub(r.clone()), b, OpValues { l, y });
        on_forms(m.sub(r), None, MixRun { w, op_first, y, out });
    }
    for (i, o) in (16 * chunks.len()..).zip(tail) {
        let av = a.one(i);
        let bv = match b {
            Some(b) => b.one(i),
            None => av,
        };
        let (y, f) = (l.at(av, bv), m.one(i));
        let (first, second) = if op_first { (y, f) } else { (f, y) };
        o.set(S::Elem::put(w[1].mul_add(second, w[0] * first)));
    }
    true
}

/// The operator's values of a piece, sixteen lanes per chunk in split order.
struct OpValues<'a, V, L> {
    l: &'a L,
    y: &'a mut [(V, V)],
}

impl<V: Vector, L: Pointwise> OnForms for OpValues<'_, V, L> {
    type Out = ();
    #[inline(always)]
    fn run<A: Sixteen, B: Sixteen>(self, a: A, b: Option<B>) {
        let OpValues { l, y } = self;
        for (c, y) in y.iter_mut().enumerate() {
            let (a_lo, a_hi) = a.sixteen::<V>(c);
            let (b_lo, b_hi) = match b {
                Some(b) => b.sixteen::<V>(c),
                None => (a_lo, a_hi),
            };
            *y = (l.at(a_lo, b_lo), l.at(a_hi, b_hi));
        }
    }
}

/// The mix of a piece's operator values `y` with a form, stored.
struct MixRun<'a, V, S> {
    w: [f32; 2],
    op_first: bool,
    y: &'a [(V, V)],
    out: &'a mut [[S; 16]],
}

impl<V: Vector, S: Slot> OnForms for MixRun<'_, V, S> {
    type Out = ();
    #[inline(always)]
    fn run<A: Sixteen, B: Sixteen>(self, form: A, _: Option<B>) {
        if self.op_first {
            mix_sixteens::<V, S, A, true>(self.w, self.y, form, self.out)
        } else {
            mix_sixteens::<V, S, A, false>(self.w, self.y, form, self.out)
        }
    }
}

/// `fma(w₁, v₁, w₀·v₀)` per lane, (v₀, v₁) = (y, form) when `OP_FIRST`,
/// else (form, y); sixteen elements per store.
#[inline(always)]
fn mix_sixteens<V: Vector, S: Slot, F: Sixteen, const OP_FIRST: bool>(
    w: [f32; 2],
    y: &[(V, V)],
    form: F,
    out: &mut [[S; 16]],
) {
    let (w0, w1) = (V::splat(w[0]), V::splat(w[1]));
    let y = &y[..out.len()];
    for c in 0..out.len() {
        let (f, v) = (form.sixteen::<V>(c), y[c]);
        let ((p_lo, p_hi), (q_lo, q_hi)) = if OP_FIRST { (v, f) } else { (f, v) };
        store16::<V, S, F>(w1.mul_add(q_lo, w0 * p_lo), w1.mul_add(q_hi, w0 * p_hi), &mut out[c]);
    }
}

/// The `K` statistics of the segment `start..start + n` when its forms are
/// one or two bf16 inputs each, or one or two f32 inputs each; `None` otherwise.
#[inline(always)]
pub fn stats<V: Vector, const K: usize, P: Statistics<K>>(op: &P, start: usize, n: usize) -> Option<[f64; K]> {
    if P::Input::BF16 {
        stats_on::<V, bf16, K, P>(op, start, n)
    } else if P::Input::F32 {
        stats_on::<V, f32, K, P>(op, start, n)
    } else {
        None
    }
}

/// [`stats`] on inputs of type `E`.
#[inline(always)]
fn stats_on<V: Vector, E: Lane, const K: usize, P: Statistics<K>>(op: &P, start: usize, n: usize) -> Option<[f64; K]> {
    let (x, z) = op.forms();
    let (a, b) = (Form::<E>::new(x, start, n)?, Form::<E>::new(z, start, n)?);
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
        // Lanes in split order go back to element order.
        if A::SPLIT {
            for lanes in &mut lanes {
                for chunk in lanes.as_chunks_mut::<16>().0 {
                    let halves = chunk.as_chunks::<8>().0;
                    let (lo, hi) = (halves[0], halves[1]);
                    *chunk = from_split(lo, hi);
                }
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

/// Adds `rows` of lanes `16·pair..16·pair + 16` (in the forms' order) into
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

/// Whole groups of `len` elements over `start..start + out.len()`, each
/// reduced and applied (the one-pass group operators on short groups, such
/// as per-token renorm), when the inputs and output are bf16, each form is
/// one or two inputs and `len` is a multiple of 16 up to [`LANES`]; returns
/// false, writing nothing, otherwise. Each group's lanes are its elements
/// (`fma(x, y, +0)`), folded as the canonical reduction folds them, in
/// registers: see [`group_sums`].
#[inline(always)]
pub fn short_groups<V: Vector, const K: usize, P: GroupOp<K>, S: Slot>(
    op: &P,
    len: usize,
    start: usize,
    out: &mut [S],
) -> bool {
    let whole_chunks = len.is_multiple_of(16) && len <= LANES && out.len().is_multiple_of(len);
    if !(P::Input::BF16 && S::Elem::BF16 && whole_chunks) {
        return false;
    }
    let (x, z) = op.forms();
    let n = out.len();
    let (Some(a), Some(b)) = (Form::<bf16>::new(x, start, n), Form::<bf16>::new(z, start, n)) else { return false };
    on_forms(a, Some(b), ShortGroups::<V, P, S, K> { op, len, out: out.as_chunks_mut().0, _v: PhantomData });
    true
}

/// [`short_groups`] on forms of known kinds.
struct ShortGroups<'a, V, P, S, const K: usize> {
    op: &'a P,
    len: usize,
    out: &'a mut [[S; 16]],
    _v: PhantomData<V>,
}

impl<V: Vector, const K: usize, P: GroupOp<K>, S: Slot> OnForms for ShortGroups<'_, V, P, S, K> {
    type Out = ();
    #[inline(always)]
    fn run<A: Sixteen, B: Sixteen>(self, a: A, b: Option<B>) {
        let Some(b) = b else { return };
        // The fold runs over a power of two of chunks (zeros past the group).
        match (self.len / 16).next_power_of_two() {
            1 => self.groups::<A, B, 1>(a, b),
            2 => self.groups::<A, B, 2>(a, b),
            4 => self.groups::<A, B, 4>(a, b),
            8 => self.groups::<A, B, 8>(a, b),
            _ => self.groups::<A, B, 16>(a, b),
        }
    }
}

impl<V: Vector, const K: usize, P: GroupOp<K>, S: Slot> ShortGroups<'_, V, P, S, K> {
    /// Eight groups at a time: their statistics, their factors (as vectors),
    /// then their apply. An apply that reads the first form alone reads the
    /// values the statistics saved (in L1); one that reads both computes
    /// them again from the inputs (in L1 too).
    #[allow(clippy::needless_range_loop)] // index loops on purpose: see below
    #[inline(always)]
    fn groups<A: Sixteen, B: Sixteen, const C: usize>(self, a: A, b: B) {
        let ShortGroups { op, len, out, .. } = self;
        let chunks = len / 16;
        let groups = out.len() / chunks;
        let mut saved = [[0.0f32; 16]; 8 * LANES / 16];
        for first in (0..groups).step_by(8) {
            let batch = 8.min(groups - first);
            // Statistic by statistic, the eight groups' last eight lanes (zero past the batch).
            let mut eights = [[V::splat(0.0); 8]; K];
            // Index loops, not iterators: in a task this large the inliner
            // may leave an iterator's methods as calls outside its features.
            for t in 0..batch {
                let g = (first + t) * len..(first + t + 1) * len;
                let keep = if P::APPLY_READS_B { None } else { Some(&mut saved[t * chunks..(t + 1) * chunks]) };
                let sums = group_sums::<V, K, P, A, B, C>(a.sub(g.clone()), b.sub(g), chunks, keep);
                for k in 0..K {
                    eights[k][t] = sums[k];
                }
            }
            let mut totals = [[0.0f64; K]; 8];
            for k in 0..K {
                let sums = V::fold8(eights[k]);
                for t in 0..8 {
                    totals[t][k] = 0.0 + sums[t] as f64;
                }
            }
            let f = op.factors::<V>(&totals, len);
            for t in 0..batch {
                let g = (first + t) * len..(first + t + 1) * len;
                let l = Factor::<P, K> { op, f: f[t] };
                let c = (first + t) * chunks;
                if P::APPLY_READS_B {
                    apply_sixteens::<V, _, S, A, B>(&l, a.sub(g.clone()), Some(b.sub(g)), &mut out[c..c + chunks]);
                } else {
                    let a = Saved(&saved[t * chunks..(t + 1) * chunks]);
                    apply_sixteens::<V, _, S, Saved, Saved>(&l, a, None, &mut out[c..c + chunks]);
                }
            }
        }
    }
}

/// The `K` statistics of a group of `chunks` chunks (the forms over it),
/// folded to eight lanes in element order. The canonical fold of its
/// 16·`C` lanes (`C` a power of two, zeros past the group) adds lanes `i`
/// and `i + s` for s = 8·`C` down to 1. In split order, the levels from
/// 8·`C` down to 16 add whole chunks, chunk `j` and `j + s/16`: the chunks
/// are visited in bit-reversed order, so that each level's sums are
/// complete when they are needed (a stack, as a binary counter carries),
/// and at most log₂`C` + 1 partial sums are live. The level s = 8 adds the
/// two halves of the last chunk ([`Vector::fold_halves`]). With `keep`, the
/// values of `a` go there as well, chunk by chunk in split order.
#[inline(always)]
fn group_sums<V: Vector, const K: usize, P: Statistics<K>, A: Sixteen, B: Sixteen, const C: usize>(
    a: A,
    b: B,
    chunks: usize,
    mut keep: Option<&mut [[f32; 16]]>,
) -> [V; K] {
    let zero = V::splat(0.0);
    let bits = C.trailing_zeros();
    let mut stack = [[(zero, zero); K]; 5];
    for idx in 0..C {
        let j = if bits == 0 { 0 } else { idx.reverse_bits() >> (usize::BITS - bits) };
        let mut x = [(zero, zero); K];
        if j < chunks {
            let ((a_lo, a_hi), (b_lo, b_hi)) = (a.sixteen::<V>(j), b.sixteen::<V>(j));
            if let Some(keep) = keep.as_deref_mut() {
                let halves = keep[j].as_chunks_mut::<8>().0;
                a_lo.store(&mut halves[0]);
                a_hi.store(&mut halves[1]);
            }
            let (pl, ph) = (P::pairs(a_lo, b_lo), P::pairs(a_hi, b_hi));
            for k in 0..K {
                x[k] = (pl[k].0.mul_add(pl[k].1, zero), ph[k].0.mul_add(ph[k].1, zero));
            }
        }
        let (mut level, mut carry) = (0, idx);
        while carry & 1 == 1 {
            for k in 0..K {
                x[k] = (stack[level][k].0 + x[k].0, stack[level][k].1 + x[k].1);
            }
            carry >>= 1;
            level += 1;
        }
        stack[level] = x;
    }
    let mut sums = [zero; K];
    for k in 0..K {
        let (lo, hi) = stack[bits as usize][k];
        sums[k] = V::fold_halves(lo, hi);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canon::fold_active;
    use crate::simd::{run, Num, Task};
    use proptest::prelude::*;

    /// Σ a·b and Σ b² of a group.
    struct DotAndSquare;

    impl Statistics<2> for DotAndSquare {
        type Input = bf16;
        fn forms(&self) -> (Terms<'_, bf16>, Terms<'_, bf16>) {
            (&[], &[])
        }
        fn pairs<T: Num>(a: T, b: T) -> [(T, T); 2] {
            [(a, b), (b, b)]
        }
    }

    /// [`group_sums`] of one group, folded to one total per statistic.
    struct Sums<'a>(&'a [bf16], &'a [bf16]);

    impl Task for Sums<'_> {
        type Out = [f32; 2];
        #[inline(always)]
        fn run<V: Vector>(self) -> [f32; 2] {
            let (a, b, chunks) = (Plain(self.0), Plain(self.1), self.0.len() / 16);
            let s = &mut [[0.0; 16]; LANES / 16][..chunks];
            let sums = match chunks.next_power_of_two() {
                1 => group_sums::<V, 2, DotAndSquare, _, _, 1>(a, b, chunks, Some(&mut *s)),
                2 => group_sums::<V, 2, DotAndSquare, _, _, 2>(a, b, chunks, Some(&mut *s)),
                4 => group_sums::<V, 2, DotAndSquare, _, _, 4>(a, b, chunks, Some(&mut *s)),
                8 => group_sums::<V, 2, DotAndSquare, _, _, 8>(a, b, chunks, Some(&mut *s)),
                _ => group_sums::<V, 2, DotAndSquare, _, _, 16>(a, b, chunks, Some(&mut *s)),
            };
            // The saved values are the first form's, element by element.
            for i in 0..16 * chunks {
                assert_eq!(Saved(s).one(i).to_bits(), a.one(i).to_bits());
            }
            sums.map(|v| {
                let mut lanes = [0.0; 8];
                v.store(&mut lanes);
                fold_active(&mut lanes, 8)
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5b17),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// The sums in registers, in split order, are the canonical fold of
        /// the group's lanes bit for bit (values whose order of addition
        /// shows, signed zeros among them).
        #[test]
        fn group_sums_are_the_canonical_fold(
            chunks in 1usize..=16,
            values in prop::collection::vec((-30i32..30, -1.0f32..1.0, 0u8..16), 512),
        ) {
            let value = |&(e, m, z): &(i32, f32, u8)| match z {
                0 => bf16::from_f32(0.0),
                1 => bf16::from_f32(-0.0),
                _ => bf16::from_f32(m * 2f32.powi(e)),
            };
            let x: Vec<bf16> = values.iter().map(value).collect();
            let (a, b) = (&x[..16 * chunks], &x[256..256 + 16 * chunks]);
            let got = run(Sums(a, b));
            for (k, got) in got.into_iter().enumerate() {
                let mut lanes = [0.0f32; LANES];
                for (i, l) in lanes.iter_mut().take(a.len()).enumerate() {
                    let (x, y) = DotAndSquare::pairs(a[i].to_f32(), b[i].to_f32())[k];
                    *l = x.mul_add(y, 0.0);
                }
                let want = fold_active(&mut lanes, a.len());
                prop_assert_eq!(got.to_bits(), want.to_bits(), "statistic {} of {} chunks", k, chunks);
            }
        }
    }
}
