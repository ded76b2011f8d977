//! Per-group operators evaluated straight from their linear forms.
//!
//! A group that fits in cache is done in one pass over memory: its forms are
//! computed into a small block, reduced and applied while still in cache.
//! Groups of at most [`LANES`] elements (tokens) hold one element per lane:
//! their lanes fold as vectors of eight, eight groups at a time. Larger groups
//! take two passes: per-segment statistics in parallel (summed in segment
//! order, as the canonical reduction does), then the apply, which computes the
//! forms again rather than storing them.

use crate::canon::{accumulate, fold_active, fold_to_eight, COLUMNS};
use crate::cpu::{
    magnitude_scale, norm_cap_factor, reject_coefficient, renorm_clamp, renorm_factor, rescale_factor, std_from_sums,
    zero_star_alpha, Element,
};
use crate::par;
use crate::reduce::{LANES, SEGMENT};
use crate::simd::{self, Num, Task, Vector};
use crate::slot::{kept, Slot};
use crate::split;
use crate::values::{with_values, OnValues};
use std::cell::Cell;
use std::marker::PhantomData;

/// A linear form over slices: `Σ w_k·x_k`, evaluated as `w_0·x_0`, then fma in order.
pub type Terms<'a, I> = &'a [(&'a [I], f32)];

/// Elements computed at once (a few blocks stay in L1).
pub const BLOCK: usize = 2048;
/// Elements per parallel task.
pub const TASK: usize = BLOCK * 32;
/// The largest group done in one pass (its two values stay in L2).
const ONE_PASS: usize = 2 * SEGMENT;

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// This thread's scratch, at least `n` long (grown once, then reused).
pub fn take_scratch(n: usize) -> Vec<f32> {
    let mut v = SCRATCH.with(Cell::take);
    if v.len() < n {
        v.resize(n, 0.0);
    }
    v
}

/// Returns the scratch for the next task on this thread.
pub fn put_scratch(v: Vec<f32>) {
    SCRATCH.with(|s| s.set(v));
}

/// Writes the form over elements `start..start + out.len()` into `out`.
#[inline(always)]
pub fn form_into<I: Element>(terms: Terms<I>, start: usize, out: &mut [f32]) {
    if I::DIRECT {
        let n = out.len();
        let x = |k: usize| &terms[k].0[start..start + n];
        let w = |k: usize| terms[k].1;
        match terms.len() {
            0 => return out.fill(0.0),
            // `1·x` is `x` to every kernel (as in `form_ref`): widened, not multiplied.
            1 if w(0) == 1.0 => return I::load(x(0), out),
            1 => return one_term(x(0), w(0), out),
            2 => return two_terms([x(0), x(1)], [w(0), w(1)], out),
            3 => return three_terms([x(0), x(1), x(2)], [w(0), w(1), w(2)], out),
            4 => return four_terms([x(0), x(1), x(2), x(3)], [w(0), w(1), w(2), w(3)], out),
            _ => {}
        }
    }
    by_term(terms, start, out)
}

/// The form's values over `start..start + buf.len()`: the input itself when
/// the form is one f32 input of weight 1 (`1·x` is `x`), else computed into `buf`.
#[inline(always)]
pub fn form_ref<'s, I: Element>(terms: Terms<'s, I>, start: usize, buf: &'s mut [f32]) -> &'s [f32] {
    if let [(x, w)] = terms {
        if let (true, Some(x)) = (*w == 1.0, I::as_f32(x)) {
            return &x[start..start + buf.len()];
        }
    }
    form_into(terms, start, buf);
    buf
}

/// `w·x`. Forms of up to four terms zip their slices, the sum in a register:
/// an indexed loop vectorizes too, but leaves up to 32 elements to a scalar
/// epilogue even when its length is a multiple of 32.
#[inline(always)]
fn one_term<I: Element>(x: &[I], w: f32, out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o = w * x.get();
    }
}

/// `fma(w₁, x₁, w₀·x₀)`.
#[inline(always)]
fn two_terms<I: Element>(x: [&[I]; 2], w: [f32; 2], out: &mut [f32]) {
    for ((o, x0), x1) in out.iter_mut().zip(x[0]).zip(x[1]) {
        *o = w[1].mul_add(x1.get(), w[0] * x0.get());
    }
}

/// `fma(w₂, x₂, fma(w₁, x₁, w₀·x₀))`.
#[inline(always)]
fn three_terms<I: Element>(x: [&[I]; 3], w: [f32; 3], out: &mut [f32]) {
    for (((o, x0), x1), x2) in out.iter_mut().zip(x[0]).zip(x[1]).zip(x[2]) {
        *o = w[2].mul_add(x2.get(), w[1].mul_add(x1.get(), w[0] * x0.get()));
    }
}

/// `fma(w₃, x₃, fma(w₂, x₂, fma(w₁, x₁, w₀·x₀)))`.
#[inline(always)]
fn four_terms<I: Element>(x: [&[I]; 4], w: [f32; 4], out: &mut [f32]) {
    for ((((o, x0), x1), x2), x3) in out.iter_mut().zip(x[0]).zip(x[1]).zip(x[2]).zip(x[3]) {
        *o = w[3].mul_add(x3.get(), w[2].mul_add(x2.get(), w[1].mul_add(x1.get(), w[0] * x0.get())));
    }
}

/// Any number of terms, each widened through a small buffer (f16 converts by slices).
#[inline(always)]
fn by_term<I: Element>(terms: Terms<I>, start: usize, out: &mut [f32]) {
    let Some(((x0, w0), rest)) = terms.split_first() else {
        return out.fill(0.0);
    };
    let mut tmp = [0.0f32; 256];
    for (c, o) in out.chunks_mut(256).enumerate() {
        let (s, t) = (start + c * 256, &mut tmp[..o.len()]);
        I::load(&x0[s..s + o.len()], t);
        for (a, v) in o.iter_mut().zip(t.iter()) {
            *a = w0 * v;
        }
        for (x, w) in rest {
            I::load(&x[s..s + o.len()], t);
            for (a, v) in o.iter_mut().zip(t.iter()) {
                *a = w.mul_add(*v, *a);
            }
        }
    }
}

/// Two values per element and `K` canonical statistics Σ x·y of them per
/// group (or per segment of one).
pub trait Statistics<const K: usize>: Sync {
    // K is at most 4 (see `short_stats`).
    /// The element type of the inputs.
    type Input: Element;
    /// The linear forms of its two values.
    fn forms(&self) -> (Terms<'_, Self::Input>, Terms<'_, Self::Input>);
    /// Its two values over `start..start + a.len()`, computed into `a` and
    /// `b` or read in place (see [`form_ref`]).
    #[inline(always)]
    fn load<'s>(&'s self, start: usize, a: &'s mut [f32], b: &'s mut [f32]) -> (&'s [f32], &'s [f32]) {
        let (x, y) = self.forms();
        (form_ref(x, start, a), form_ref(y, start, b))
    }
    /// The `K` pairs `(x, y)` of one element (or eight lanes) whose canonical
    /// Σ x·y are the statistics.
    fn pairs<T: Num>(a: T, b: T) -> [(T, T); K];
}

/// An operator with one f32 factor per group from its `K` statistics.
pub trait GroupOp<const K: usize>: Statistics<K> {
    /// The group's factor from its statistics.
    fn factor(&self, totals: [f64; K], len: usize) -> f32;
    /// The factors of eight groups (by default one at a time).
    #[inline(always)]
    fn factors<V: Vector>(&self, totals: &[[f64; K]; 8], len: usize) -> [f32; 8] {
        let mut f = [0.0f32; 8];
        for (f, t) in f.iter_mut().zip(totals) {
            *f = self.factor(*t, len);
        }
        f
    }
    /// Whether [`GroupOp::apply`] reads its second value: when it does not,
    /// the apply pass does not compute that form.
    const APPLY_READS_B: bool = true;
    /// One output element (or eight lanes).
    fn apply<T: Num>(&self, a: T, b: T, f: T) -> T;
}

/// What becomes of an operator's f32 values: stored, or first mixed with linear forms.
pub trait Finish: Sync {
    /// Writes the values `y` of elements `start..start + y.len()` into `out`.
    fn finish<V: Vector, S: Slot>(&self, start: usize, y: &mut [f32], out: &mut [S]);
    /// Whether the values are written straight into an output of `O`
    /// (with [`Slot::put8`]), and `finish` is not called.
    #[inline(always)]
    fn direct<O: Element>(&self) -> bool {
        false
    }
    /// Writes `l.at(a, b)`, finished, over `start..start + out.len()` (a, b
    /// the values of `forms`, `a` for both when `reads_b` is false) in split
    /// order straight from bf16 inputs, when it can (see [`split`]); returns
    /// false, writing nothing, otherwise.
    #[inline(always)]
    fn split_apply<V: Vector, J: Element, L: Pointwise, S: Slot>(
        &self,
        l: &L,
        forms: (Terms<J>, Terms<J>),
        reads_b: bool,
        start: usize,
        out: &mut [S],
    ) -> bool {
        self.direct::<S::Elem>() && split::apply::<V, J, L, S>(l, forms, reads_b, start, out)
    }
}

/// The operator's values are the output.
pub struct Store;

impl Finish for Store {
    #[inline(always)]
    fn finish<V: Vector, S: Slot>(&self, _: usize, y: &mut [f32], out: &mut [S]) {
        S::put_all(y, out)
    }
    #[inline(always)]
    fn direct<O: Element>(&self) -> bool {
        O::DIRECT
    }
}

/// One term of a [`Mix`].
pub enum Part<'a, I> {
    /// A linear form of the inputs.
    Form(Terms<'a, I>),
    /// The operator's value.
    Op,
    /// Zero.
    Zero,
}

/// `Σ w_k·v_k` over forms and the operator's value, in term order (`w_0·v_0`,
/// then fma), as the general evaluation combines a mix.
pub struct Mix<'a, I> {
    /// The terms.
    pub terms: &'a [(Part<'a, I>, f32)],
}

/// Terms of a [`Mix`] evaluated eight lanes at a time (more take [`Mix::by_term`]).
const MIX_TERMS: usize = 4;

impl<I: Element> Finish for Mix<'_, I> {
    #[inline(always)]
    fn split_apply<V: Vector, J: Element, L: Pointwise, S: Slot>(
        &self,
        l: &L,
        forms: (Terms<J>, Terms<J>),
        reads_b: bool,
        start: usize,
        out: &mut [S],
    ) -> bool {
        split::apply_mix::<V, J, I, L, S>(l, forms, reads_b, self.terms, start, out)
    }
    /// Each form into its own block, then every output eight lanes at a time,
    /// written once.
    #[inline(always)]
    fn finish<V: Vector, S: Slot>(&self, start: usize, y: &mut [f32], out: &mut [S]) {
        let terms = self.terms;
        if terms.is_empty() || terms.len() > MIX_TERMS {
            return self.by_term(start, y, out);
        }
        let w: [f32; MIX_TERMS] = std::array::from_fn(|k| terms.get(k).map_or(0.0, |t| t.1));
        let mut blocks = [[0.0f32; 256]; MIX_TERMS];
        for (c, (y, out)) in y.chunks(256).zip(out.chunks_mut(256)).enumerate() {
            let n = y.len();
            for ((part, _), block) in terms.iter().zip(&mut blocks) {
                match part {
                    Part::Form(f) => form_into(f, start + c * 256, &mut block[..n]),
                    Part::Zero => block[..n].fill(0.0),
                    Part::Op => {}
                }
            }
            let vals: [&[f32]; MIX_TERMS] = std::array::from_fn(|k| match terms.get(k) {
                Some((Part::Op, _)) => y,
                _ => &blocks[k][..n],
            });
            match terms.len() {
                1 => mix_lanes::<V, S, 1>(&w, &vals, out),
                2 => mix_lanes::<V, S, 2>(&w, &vals, out),
                3 => mix_lanes::<V, S, 3>(&w, &vals, out),
                _ => mix_lanes::<V, S, 4>(&w, &vals, out),
            }
            for (i, o) in out.iter_mut().enumerate().skip(n / 8 * 8) {
                let mut acc = terms[0].1 * vals[0][i];
                for (k, (_, w)) in terms.iter().enumerate().skip(1) {
                    acc = w.mul_add(vals[k][i], acc);
                }
                o.set(S::Elem::put(acc));
            }
        }
    }
}

/// `w_0·v_0`, then fma with each later term, over the first `T` terms and
/// the whole eight-lane chunks of `out` (`T` a constant: the terms unroll,
/// their weights splatted once); sixteen lanes per store for bf16, as
/// [`apply_run`] does.
#[inline(always)]
fn mix_lanes<V: Vector, S: Slot, const T: usize>(w: &[f32; MIX_TERMS], vals: &[&[f32]; MIX_TERMS], out: &mut [S]) {
    // A loop, not `map`: a call that is not inlined would leave the caller's target features.
    let mut ws = [V::splat(0.0); T];
    for (v, w) in ws.iter_mut().zip(w) {
        *v = V::splat(*w);
    }
    let n = out.len();
    let lanes: [&[[f32; 8]]; T] = std::array::from_fn(|k| &vals[k].as_chunks::<8>().0[..n / 8]);
    let paired = if S::Elem::BF16 { n / 16 * 16 } else { 0 };
    let (o16, rest) = out.split_at_mut(paired);
    for (c, o) in o16.as_chunks_mut::<16>().0.iter_mut().enumerate() {
        S::put16(mix8(&ws, &lanes, 2 * c), mix8(&ws, &lanes, 2 * c + 1), o);
    }
    for (c, o) in (paired / 8..).zip(rest.as_chunks_mut::<8>().0) {
        S::put8(mix8(&ws, &lanes, c), o);
    }
}

/// Lanes `8c..8c + 8` of the mix.
#[inline(always)]
fn mix8<V: Vector, const T: usize>(ws: &[V; T], lanes: &[&[[f32; 8]]; T], c: usize) -> V {
    let mut acc = ws[0] * V::load(&lanes[0][c]);
    for k in 1..T {
        acc = ws[k].mul_add(V::load(&lanes[k][c]), acc);
    }
    acc
}

impl<I: Element> Mix<'_, I> {
    /// Any number of terms, accumulated a term at a time.
    #[inline(always)]
    fn by_term<S: Slot>(&self, start: usize, y: &mut [f32], out: &mut [S]) {
        let (mut acc, mut tmp) = ([0.0f32; 256], [0.0f32; 256]);
        for (c, (y, out)) in y.chunks(256).zip(out.chunks_mut(256)).enumerate() {
            let n = y.len();
            let acc = &mut acc[..n];
            acc.fill(0.0);
            for (j, (part, w)) in self.terms.iter().enumerate() {
                let v: &[f32] = match part {
                    Part::Form(f) => {
                        form_into(f, start + c * 256, &mut tmp[..n]);
                        &tmp[..n]
                    }
                    Part::Op => y,
                    Part::Zero => {
                        tmp[..n].fill(0.0);
                        &tmp[..n]
                    }
                };
                if j == 0 {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = w * v;
                    }
                } else {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = w.mul_add(*v, *a);
                    }
                }
            }
            S::put_all(acc, out);
        }
    }
}

/// Evaluates `op` over consecutive groups of `len` elements into `out`.
pub fn run_groups<const K: usize, P: GroupOp<K>, F: Finish, S: Slot>(op: &P, fin: &F, len: usize, out: &mut [S]) {
    if out.is_empty() || len == 0 {
        return;
    }
    if len <= ONE_PASS {
        let per_task = (TASK / len).max(1) * len;
        par::for_each_chunk_mut(out, per_task, |t, out| {
            simd::run(WholeGroups::<P, F, S, K> { op, fin, start: t * per_task, len, out })
        });
        return;
    }
    let factors: Vec<f32> = group_totals(op, len, out.len() / len).into_iter().map(|t| op.factor(t, len)).collect();
    par::for_each(group_tasks(out, len), |(g, t, out)| {
        simd::run(Apply::<P, F, S, K> { op, fin, start: g * len + t * TASK, f: factors[g], out })
    });
}

/// The apply tasks of consecutive groups of `len` elements: (group, task
/// within it, its [`TASK`] elements or fewer).
pub fn group_tasks<S>(out: &mut [S], len: usize) -> impl DoubleEndedIterator<Item = (usize, usize, &mut [S])> + '_ {
    out.chunks_mut(len)
        .enumerate()
        .flat_map(|(g, group)| group.chunks_mut(TASK).enumerate().map(move |(t, c)| (g, t, c)))
}

/// Σ of per-segment statistics in segment order, from +0 (the canonical f64 sum).
pub fn in_order<const K: usize>(partials: &[[f64; K]]) -> [f64; K] {
    let mut t = [0.0f64; K];
    for p in partials {
        for k in 0..K {
            t[k] += p[k];
        }
    }
    t
}

/// Adds one run (at most [`LANES`] elements from lane 0) into every
/// statistic's lanes, a statistic at a time (a constant index, so that the
/// products vectorize; `K` at most 4).
#[inline(always)]
pub(crate) fn accumulate_all<const K: usize, P: Statistics<K>>(lanes: &mut [[f32; LANES]; K], a: &[f32], b: &[f32]) {
    accumulate(&mut lanes[0], a, b, |a, b| P::pairs(a, b)[0]);
    if K > 1 {
        accumulate(&mut lanes[1], a, b, |a, b| P::pairs(a, b)[1]);
    }
    if K > 2 {
        accumulate(&mut lanes[2], a, b, |a, b| P::pairs(a, b)[2]);
    }
    if K > 3 {
        accumulate(&mut lanes[3], a, b, |a, b| P::pairs(a, b)[3]);
    }
}

/// The statistics of one segment whose values are `a` and `b` (`a.len() <= SEGMENT`).
#[inline(always)]
fn segment_stats<V: Vector, const K: usize, P: Statistics<K>>(a: &[f32], b: &[f32]) -> [f64; K] {
    let mut lanes = [[0.0f32; LANES]; K];
    add_values::<V, K, P, _, _>(&mut lanes, a, b, a.len());
    fold_all(&mut lanes, a.len())
}

/// Each statistic's lanes folded (plain loops: `std::array::from_fn` is not
/// inlined, and would run outside the caller's target features).
#[inline(always)]
pub(crate) fn fold_all<const K: usize>(lanes: &mut [[f32; LANES]; K], n: usize) -> [f64; K] {
    let mut t = [0.0f64; K];
    for (t, lanes) in t.iter_mut().zip(lanes.iter_mut()) {
        *t = fold_active(lanes, n) as f64;
    }
    t
}

/// Whole groups that fit in cache, a block at a time: their values computed
/// into blocks, reduced and applied while the blocks are in cache. Short
/// bf16 groups whose forms are one or two inputs skip the blocks: see
/// [`split::short_groups`].
///
/// Other forms go through f32 blocks even when one is a plain bf16 input:
/// reading it in place (as [`with_values`] does for the two-pass operators)
/// took every short-group kernel once per pair of element types, which made
/// this crate's build four times longer for 7-9% on the bf16 per-token renorm.
struct WholeGroups<'a, P, F, S, const K: usize> {
    op: &'a P,
    fin: &'a F,
    start: usize,
    len: usize,
    out: &'a mut [S],
}

impl<const K: usize, P: GroupOp<K>, F: Finish, S: Slot> Task for WholeGroups<'_, P, F, S, K> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let WholeGroups { op, fin, start: first, len, out: all } = self;
        if fin.direct::<S::Elem>() && split::short_groups::<V, K, P, S>(op, len, first, all) {
            return;
        }
        let per_block = (BLOCK / len).max(1) * len;
        let mut buf = take_scratch(3 * per_block);
        let (a, rest) = buf.split_at_mut(per_block);
        let (b, y) = rest.split_at_mut(per_block);
        // A padded short group is copied before these zeros (zeroed once per task).
        let mut pad = [[0.0f32; LANES]; 2];
        let (x, z) = op.forms();
        for (k, out) in all.chunks_mut(per_block).enumerate() {
            let (m, start) = (out.len(), first + k * per_block);
            let (a, b) = (form_ref(x, start, &mut a[..m]), form_ref(z, start, &mut b[..m]));
            if fin.direct::<S::Elem>() {
                groups_block::<V, K, P, S>(op, len, a, b, &mut pad, out);
            } else {
                let y = &mut y[..m];
                groups_block::<V, K, P, _>(op, len, a, b, &mut pad, kept(y));
                fin.finish::<V, S>(start, y, out);
            }
        }
        put_scratch(buf);
    }
}

/// Whole groups of one block: short ones (at most [`LANES`] elements)
/// eight at a time, longer ones one by one.
#[inline(always)]
fn groups_block<V: Vector, const K: usize, P: GroupOp<K>, S: Slot>(
    op: &P,
    len: usize,
    a: &[f32],
    b: &[f32],
    pad: &mut [[f32; LANES]; 2],
    y: &mut [S],
) {
    if len <= LANES {
        short_block::<V, K, P, S>(op, len, a, b, pad, y)
    } else {
        one_pass_block::<V, K, P, S>(op, len, a, b, y)
    }
}

/// Statistic `S` of one group padded to `8·N` elements, `N` vectors (`S` a
/// constant: each statistic is its own loop, its vectors in registers),
/// folded down to eight lanes.
#[inline(always)]
fn short_stat<V: Vector, const K: usize, const N: usize, const S: usize, P: Statistics<K>>(a: &[f32], b: &[f32]) -> V {
    let (a, _) = a[..8 * N].as_chunks::<8>();
    let (b, _) = b[..8 * N].as_chunks::<8>();
    let zero = V::splat(0.0);
    let mut v = [zero; N];
    for ((v, a), b) in v.iter_mut().zip(a).zip(b) {
        let (x, y) = P::pairs(V::load(a), V::load(b))[S];
        *v = x.mul_add(y, zero);
    }
    fold_to_eight(&mut v)
}

/// The statistics of one group padded to `8·N` elements, each folded down
/// to eight lanes (`K` at most 4).
#[inline(always)]
fn short_stats<V: Vector, const K: usize, const N: usize, P: Statistics<K>>(a: &[f32], b: &[f32]) -> [V; K] {
    let mut t = [V::splat(0.0); K];
    t[0] = short_stat::<V, K, N, 0, P>(a, b);
    if K > 1 {
        t[1] = short_stat::<V, K, N, 1, P>(a, b);
    }
    if K > 2 {
        t[2] = short_stat::<V, K, N, 2, P>(a, b);
    }
    if K > 3 {
        t[3] = short_stat::<V, K, N, 3, P>(a, b);
    }
    t
}

/// The statistics of one group padded to `8·vectors` elements, each folded
/// down to eight lanes. A match, not a closure or fn pointer: the callee
/// must inline into the caller's features.
#[inline(always)]
fn group_stats<V: Vector, const K: usize, P: Statistics<K>>(vectors: usize, a: &[f32], b: &[f32]) -> [V; K] {
    match vectors {
        1 => short_stats::<V, K, 1, P>(a, b),
        2 => short_stats::<V, K, 2, P>(a, b),
        4 => short_stats::<V, K, 4, P>(a, b),
        8 => short_stats::<V, K, 8, P>(a, b),
        16 => short_stats::<V, K, 16, P>(a, b),
        _ => short_stats::<V, K, 32, P>(a, b),
    }
}

/// The groups of one block: eight groups' statistics (their last eight
/// lanes folded together, see [`Vector::fold8`]), then their factors
/// (independent square roots and divisions, as vectors), then their apply.
/// A group of at most [`LANES`] elements puts each element in its own lane
/// (`fma(x, y, +0)`) and the lanes past it are zero, so its fold runs over a
/// power of two of 8-lane vectors held in registers (the first level is the
/// same as over the group's lanes: see [`fold_to_eight`]).
#[inline(always)]
fn short_block<V: Vector, const K: usize, P: GroupOp<K>, S: Slot>(
    op: &P,
    len: usize,
    a: &[f32],
    b: &[f32],
    pad: &mut [[f32; LANES]; 2],
    y: &mut [S],
) {
    let vectors = len.div_ceil(8).next_power_of_two();
    let padded = 8 * vectors != len;
    // A padded group is copied into `pad` (zero past the group); an exact one is read in place.
    let [pa, pb] = pad;
    let groups = y.len() / len;
    for first in (0..groups).step_by(8) {
        let batch = 8.min(groups - first);
        // Statistic by statistic, the eight groups' last eight lanes (zero past the batch).
        let mut eights = [[V::splat(0.0); 8]; K];
        for t in 0..batch {
            let (ga, gb) = (&a[(first + t) * len..][..len], &b[(first + t) * len..][..len]);
            let stats = if padded {
                pa[..len].copy_from_slice(ga);
                pb[..len].copy_from_slice(gb);
                group_stats::<V, K, P>(vectors, pa, pb)
            } else {
                group_stats::<V, K, P>(vectors, ga, gb)
            };
            for (eight, s) in eights.iter_mut().zip(stats) {
                eight[t] = s;
            }
        }
        let mut totals = [[0.0f64; K]; 8];
        for (k, eight) in eights.into_iter().enumerate() {
            for (total, sum) in totals.iter_mut().zip(V::fold8(eight)) {
                total[k] = 0.0 + sum as f64;
            }
        }
        // All eight, past the batch too (their totals are zeros).
        let f = op.factors::<V>(&totals, len);
        for (t, f) in f.iter().enumerate().take(batch) {
            let g = (first + t) * len..(first + t + 1) * len;
            apply_run::<V, _, S, f32, f32>(&Factor::<P, K> { op, f: *f }, &a[g.clone()], &b[g.clone()], &mut y[g]);
        }
    }
}

/// Whole groups of one block, each reduced then applied.
#[inline(always)]
fn one_pass_block<V: Vector, const K: usize, P: GroupOp<K>, S: Slot>(
    op: &P,
    len: usize,
    a: &[f32],
    b: &[f32],
    y: &mut [S],
) {
    for ((a, b), y) in a.chunks(len).zip(b.chunks(len)).zip(y.chunks_mut(len)) {
        let mut t = [0.0f64; K];
        for (sa, sb) in a.chunks(SEGMENT).zip(b.chunks(SEGMENT)) {
            let p = segment_stats::<V, K, P>(sa, sb);
            for i in 0..K {
                t[i] += p[i];
            }
        }
        apply_run::<V, _, S, f32, f32>(&Factor::<P, K> { op, f: op.factor(t, len) }, a, b, y);
    }
}

/// Rows of [`LANES`] elements loaded at once by the statistics pass: two
/// 4 KB blocks of f32 values, which stay in L1 beside the streamed inputs
/// (8 rows ran the columns faster in cache, but slower from DRAM at 4.8M).
pub(crate) const STAT_ROWS: usize = 4;

/// The `K` statistics of each of `count` consecutive groups of `len`
/// elements: per segment in parallel, then summed in segment order.
pub fn group_totals<const K: usize, P: Statistics<K>>(op: &P, len: usize, count: usize) -> Vec<[f64; K]> {
    let partials = per_segment(count, len, |start, n| simd::run(Stats::<P, K> { op, start, n }));
    partials.chunks(len.div_ceil(SEGMENT)).map(in_order).collect()
}

/// `f(start, n)` for each segment of `count` consecutive groups of `len`
/// elements, in parallel ([`for_segments`]), the results group by group.
pub fn per_segment<const K: usize>(
    count: usize,
    len: usize,
    f: impl Fn(usize, usize) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let mut results = vec![[0.0; K]; count * len.div_ceil(SEGMENT)];
    for_segments(&mut results, len, |(start, n), r| *r = f(start, n));
    results
}

/// `f((start, n), result)` for each segment of consecutive groups of `len`
/// elements, its result in `results` (one per segment, group by group), in
/// parallel. A task takes up to eight consecutive segments, so that a thread
/// reads one longer stream of memory (the prefetchers lose a few misses at
/// every jump), fewer where that would leave a thread without work.
pub fn for_segments<R: Send>(results: &mut [R], len: usize, f: impl Fn((usize, usize), &mut R) + Sync) {
    let per_task = (results.len() / (4 * par::threads())).clamp(1, 8);
    par::for_each_chunk_mut(results, per_task, |t, results| {
        for (i, r) in results.iter_mut().enumerate() {
            f(segment(len, t * per_task + i), r);
        }
    });
}

/// `(start, n)` of segment `s` of consecutive groups of `len` elements
/// (group by group, [`SEGMENT`] elements each, the last of a group shorter).
#[inline(always)]
fn segment(len: usize, s: usize) -> (usize, usize) {
    let segs = len.div_ceil(SEGMENT);
    let lo = (s % segs) * SEGMENT;
    ((s / segs) * len + lo, SEGMENT.min(len - lo))
}

/// The statistics of one segment, its values computed a block of rows at a time.
struct Stats<'a, P, const K: usize> {
    op: &'a P,
    start: usize,
    n: usize,
}

impl<const K: usize, P: Statistics<K>> Task for Stats<'_, P, K> {
    type Out = [f64; K];
    #[inline(always)]
    fn run<V: Vector>(self) -> [f64; K] {
        if let Some(totals) = split::stats::<V, K, P>(self.op, self.start, self.n) {
            return totals;
        }
        let mut lanes = [[0.0f32; LANES]; K];
        let (mut a, mut b) = ([0.0f32; STAT_ROWS * LANES], [0.0f32; STAT_ROWS * LANES]);
        let forms = self.op.forms();
        let mut c = 0;
        while c < self.n {
            let m = (STAT_ROWS * LANES).min(self.n - c);
            let job = AddValues::<V, P, K> { lanes: &mut lanes, _op: PhantomData };
            with_values(job, forms, self.start + c, (&mut a[..m], &mut b[..m]), true);
            c += m;
        }
        fold_all(&mut lanes, self.n)
    }
}

/// [`add_values`] as an [`OnValues`] job.
struct AddValues<'a, V, P, const K: usize> {
    lanes: &'a mut [[f32; LANES]; K],
    _op: PhantomData<(V, P)>,
}

impl<V: Vector, const K: usize, P: Statistics<K>> OnValues for AddValues<'_, V, P, K> {
    #[inline(always)]
    fn run<A: Element, B: Element>(self, a: &[A], b: &[B]) {
        add_values::<V, K, P, A, B>(self.lanes, a, b, a.len())
    }
}

/// Adds `n` consecutive values, starting on lane 0, into `lanes`: the whole
/// rows a column at a time, then the last partial row.
#[inline(always)]
fn add_values<V: Vector, const K: usize, P: Statistics<K>, A: Element, B: Element>(
    lanes: &mut [[f32; LANES]; K],
    a: &[A],
    b: &[B],
    n: usize,
) {
    let whole = columns::<V, K, P, A, B>(lanes, a, b, n);
    if n > whole {
        let (mut ta, mut tb) = ([0.0f32; LANES], [0.0f32; LANES]);
        for (i, (ta, tb)) in (whole..n).zip(ta.iter_mut().zip(&mut tb)) {
            (*ta, *tb) = (a[i].get(), b[i].get());
        }
        accumulate_all::<K, P>(lanes, &ta[..n - whole], &tb[..n - whole]);
    }
}

/// Adds the whole rows of [`LANES`] values at the start of `a` and `b` (`n`
/// values) into `lanes`, in row order ([`STAT_ROWS`] rows at once while there
/// are that many); returns how many values that was.
#[inline(always)]
fn columns<V: Vector, const K: usize, P: Statistics<K>, A: Element, B: Element>(
    lanes: &mut [[f32; LANES]; K],
    a: &[A],
    b: &[B],
    n: usize,
) -> usize {
    let rows = n / LANES;
    let blocks = rows / STAT_ROWS;
    let block = STAT_ROWS * LANES;
    for k in 0..blocks {
        let (a, b) = (&a[k * block..(k + 1) * block], &b[k * block..(k + 1) * block]);
        column_rows::<V, K, STAT_ROWS, P, A, B>(lanes, a, b);
    }
    for r in blocks * STAT_ROWS..rows {
        column_rows::<V, K, 1, P, A, B>(lanes, &a[r * LANES..(r + 1) * LANES], &b[r * LANES..(r + 1) * LANES]);
    }
    rows * LANES
}

/// Adds `R` rows (`a` and `b` hold exactly those) into `lanes` an 8-lane
/// column at a time: the column's sums stay in registers down the rows
/// (each lane still adds its elements in row order, the canonical order),
/// and every statistic reads the same loaded values.
#[inline(always)]
fn column_rows<V: Vector, const K: usize, const R: usize, P: Statistics<K>, A: Element, B: Element>(
    lanes: &mut [[f32; LANES]; K],
    a: &[A],
    b: &[B],
) {
    let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
    for col in 0..COLUMNS {
        let mut acc = [V::splat(0.0); K];
        for (acc, lanes) in acc.iter_mut().zip(lanes.iter()) {
            *acc = V::load(&lanes.as_chunks::<8>().0[col]);
        }
        for r in 0..R {
            let p = P::pairs(A::get8::<V>(&a[r * COLUMNS + col]), B::get8::<V>(&b[r * COLUMNS + col]));
            for (acc, (x, y)) in acc.iter_mut().zip(p) {
                *acc = x.mul_add(y, *acc);
            }
        }
        for (acc, lanes) in acc.iter().zip(lanes.iter_mut()) {
            acc.store(&mut lanes.as_chunks_mut::<8>().0[col]);
        }
    }
}

/// A function of an element's two values (or of eight lanes of each).
pub trait Pointwise {
    /// The output value.
    fn at<T: Num>(&self, a: T, b: T) -> T;
}

/// A group operator's [`GroupOp::apply`] with its group's factor.
pub(crate) struct Factor<'a, P, const K: usize> {
    pub(crate) op: &'a P,
    pub(crate) f: f32,
}

impl<const K: usize, P: GroupOp<K>> Pointwise for Factor<'_, P, K> {
    #[inline(always)]
    fn at<T: Num>(&self, a: T, b: T) -> T {
        self.op.apply(a, b, T::splat(self.f))
    }
}

/// `y = at(a, b)` over a run, sixteen lanes at a time (two vectors, one
/// store), then eight, then the rest one by one, each rounded to the slot's
/// type. Zipped chunks, not indices: the loops carry no bounds checks.
#[inline(always)]
pub fn apply_run<V: Vector, L: Pointwise, S: Slot, A: Element, B: Element>(l: &L, a: &[A], b: &[B], y: &mut [S]) {
    let n = y.len();
    // Sixteen lanes only where they make one store of two vectors (bf16).
    let paired = if S::Elem::BF16 { n / 16 * 16 } else { 0 };
    let (a16, b16, y16) = (&a[..paired], &b[..paired], &mut y[..paired]);
    for ((a, b), y) in a16.as_chunks::<16>().0.iter().zip(b16.as_chunks::<16>().0).zip(y16.as_chunks_mut::<16>().0) {
        let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
        let lo = l.at(A::get8::<V>(&a[0]), B::get8::<V>(&b[0]));
        let hi = l.at(A::get8::<V>(&a[1]), B::get8::<V>(&b[1]));
        S::put16(lo, hi, y);
    }
    let (a, b, y) = (&a[paired..n], &b[paired..n], &mut y[paired..]);
    let ((av, at), (bv, bt), (yv, yt)) = (a.as_chunks::<8>(), b.as_chunks::<8>(), y.as_chunks_mut::<8>());
    for ((a, b), y) in av.iter().zip(bv).zip(yv) {
        S::put8(l.at(A::get8::<V>(a), B::get8::<V>(b)), y);
    }
    for ((a, b), y) in at.iter().zip(bt).zip(yt) {
        y.set(S::Elem::put(l.at(a.get(), b.get())));
    }
}

/// Applies a known factor to a run of one group.
struct Apply<'a, P, F, S, const K: usize> {
    op: &'a P,
    fin: &'a F,
    start: usize,
    f: f32,
    out: &'a mut [S],
}

impl<const K: usize, P: GroupOp<K>, F: Finish, S: Slot> Task for Apply<'_, P, F, S, K> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let Apply { op, fin, start: first, f, out: all } = self;
        let forms = op.forms();
        let factor = Factor::<P, K> { op, f };
        if fin.split_apply::<V, _, _, S>(&factor, forms, P::APPLY_READS_B, first, all) {
            return;
        }
        // The thread's scratch, not arrays on the stack: those are cleared per task.
        let mut buf = take_scratch(3 * APPLY);
        let (a, rest) = buf.split_at_mut(APPLY);
        let (b, y) = rest.split_at_mut(APPLY);
        for (k, out) in all.chunks_mut(APPLY).enumerate() {
            let (m, start) = (out.len(), first + k * APPLY);
            let job = ApplyBlock::<V, P, F, S, K> { op, fin, f, start, y: &mut y[..m], out, _v: PhantomData };
            with_values(job, forms, start, (&mut a[..m], &mut b[..m]), P::APPLY_READS_B);
        }
        put_scratch(buf);
    }
}

/// One block of the apply pass: straight into `out`, or into `y` and then finished.
struct ApplyBlock<'a, V, P, F, S, const K: usize> {
    op: &'a P,
    fin: &'a F,
    f: f32,
    start: usize,
    y: &'a mut [f32],
    out: &'a mut [S],
    _v: PhantomData<V>,
}

impl<V: Vector, const K: usize, P: GroupOp<K>, F: Finish, S: Slot> OnValues for ApplyBlock<'_, V, P, F, S, K> {
    #[inline(always)]
    fn run<A: Element, B: Element>(self, a: &[A], b: &[B]) {
        let factor = Factor::<P, K> { op: self.op, f: self.f };
        if self.fin.direct::<S::Elem>() {
            apply_run::<V, _, S, A, B>(&factor, a, b, self.out);
        } else {
            apply_run::<V, _, _, A, B>(&factor, a, b, kept(self.y));
            self.fin.finish::<V, S>(self.start, self.y, self.out);
        }
    }
}

/// Elements per block of the apply pass (three blocks stay in L1).
const APPLY: usize = 2048;

/// `input · clamp(‖reference‖/(‖input‖+eps), min, max)` per group.
pub struct Renorm<'a, I> {
    /// The guided prediction.
    pub input: Terms<'a, I>,
    /// The reference.
    pub reference: Terms<'a, I>,
    /// Added to ‖input‖.
    pub eps: f64,
    /// Lower clamp.
    pub min: Option<f64>,
    /// Upper clamp.
    pub max: Option<f64>,
}

impl<I: Element> Statistics<2> for Renorm<'_, I> {
    type Input = I;
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.input, self.reference)
    }
    #[inline(always)]
    fn pairs<T: Num>(a: T, b: T) -> [(T, T); 2] {
        [(a, a), (b, b)]
    }
}

impl<I: Element> GroupOp<2> for Renorm<'_, I> {
    #[inline(always)]
    fn factor(&self, t: [f64; 2], _: usize) -> f32 {
        renorm_factor(t[1].sqrt(), t[0].sqrt(), self.eps, self.min, self.max)
    }
    #[inline(always)]
    fn factors<V: Vector>(&self, totals: &[[f64; 2]; 8], _: usize) -> [f32; 8] {
        // The square roots and divisions of eight groups as vectors (the
        // same bits as one at a time: both are correctly rounded).
        // Index loops: iterator adapters may be left as calls in a large task.
        let (mut input, mut reference) = ([0.0; 8], [0.0; 8]);
        for g in 0..8 {
            (input[g], reference[g]) = (totals[g][0], totals[g][1]);
        }
        let ng = V::sqrt_f64(input);
        let nr = V::sqrt_f64(reference);
        let mut den = ng;
        for d in &mut den {
            *d += self.eps;
        }
        let q = V::div_f64(nr, den);
        let mut f = [0.0f32; 8];
        for g in 0..8 {
            f[g] = renorm_clamp(q[g], den[g], self.min, self.max);
        }
        f
    }
    const APPLY_READS_B: bool = false;
    #[inline(always)]
    fn apply<T: Num>(&self, a: T, _: T, f: T) -> T {
        a * f
    }
}

/// The whole-tensor norm cap.
pub struct NormCap<'a, I> {
    /// The guided prediction.
    pub input: Terms<'a, I>,
    /// The reference.
    pub reference: Terms<'a, I>,
    /// The largest norm ratio.
    pub ratio: f64,
}

impl<I: Element> Statistics<2> for NormCap<'_, I> {
    type Input = I;
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.input, self.reference)
    }
    #[inline(always)]
    fn pairs<T: Num>(a: T, b: T) -> [(T, T); 2] {
        [(a, a), (b, b)]
    }
}

impl<I: Element> GroupOp<2> for NormCap<'_, I> {
    #[inline(always)]
    fn factor(&self, t: [f64; 2], _: usize) -> f32 {
        norm_cap_factor(t[1].sqrt(), t[0].sqrt(), self.ratio)
    }
    const APPLY_READS_B: bool = false;
    #[inline(always)]
    fn apply<T: Num>(&self, a: T, _: T, f: T) -> T {
        a * f
    }
}

/// `input · (phi·std(reference)/std(input) + 1 − phi)` per group.
pub struct StdRescale<'a, I> {
    /// The guided prediction.
    pub input: Terms<'a, I>,
    /// The reference.
    pub reference: Terms<'a, I>,
    /// φ.
    pub phi: f64,
}

impl<I: Element> Statistics<4> for StdRescale<'_, I> {
    type Input = I;
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.input, self.reference)
    }
    #[inline(always)]
    fn pairs<T: Num>(a: T, b: T) -> [(T, T); 4] {
        let one = T::splat(1.0);
        [(b, one), (b, b), (a, one), (a, a)]
    }
}

impl<I: Element> GroupOp<4> for StdRescale<'_, I> {
    #[inline(always)]
    fn factor(&self, t: [f64; 4], len: usize) -> f32 {
        rescale_factor(std_from_sums(t[0], t[1], len), std_from_sums(t[2], t[3], len), self.phi)
    }
    const APPLY_READS_B: bool = false;
    #[inline(always)]
    fn apply<T: Num>(&self, a: T, _: T, f: T) -> T {
        a * f
    }
}

/// CFG-Zero*: `α·u + s·(c − α·u)` (or based on `c`), α per sample.
pub struct ZeroStar<'a, I> {
    /// Cond.
    pub cond: Terms<'a, I>,
    /// Uncond.
    pub uncond: Terms<'a, I>,
    /// The scale.
    pub scale: f32,
    /// Base on cond.
    pub original: bool,
}

impl<I: Element> Statistics<2> for ZeroStar<'_, I> {
    type Input = I;
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.cond, self.uncond)
    }
    #[inline(always)]
    fn pairs<T: Num>(a: T, b: T) -> [(T, T); 2] {
        [(a, b), (b, b)]
    }
}

impl<I: Element> GroupOp<2> for ZeroStar<'_, I> {
    #[inline(always)]
    fn factor(&self, t: [f64; 2], _: usize) -> f32 {
        zero_star_alpha(t[0], t[1])
    }
    #[inline(always)]
    fn apply<T: Num>(&self, c: T, u: T, alpha: T) -> T {
        let ua = alpha * u;
        let base = if self.original { c } else { ua };
        T::splat(self.scale).mul_add(c - ua, base)
    }
}

/// Magnitude-aware guidance: `u + s(‖Δ‖/‖u‖)·Δ`, Δ = c − u, per sample.
pub struct MagnitudeAware<'a, I> {
    /// Cond.
    pub cond: Terms<'a, I>,
    /// Uncond.
    pub uncond: Terms<'a, I>,
    /// The scale.
    pub scale: f64,
    /// α.
    pub alpha: f64,
}

impl<I: Element> Statistics<2> for MagnitudeAware<'_, I> {
    type Input = I;
    /// `a` holds c, `b` holds u; Δ = c − u is formed in registers.
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.cond, self.uncond)
    }
    #[inline(always)]
    fn pairs<T: Num>(c: T, u: T) -> [(T, T); 2] {
        let d = c - u;
        [(d, d), (u, u)]
    }
}

impl<I: Element> GroupOp<2> for MagnitudeAware<'_, I> {
    #[inline(always)]
    fn factor(&self, t: [f64; 2], _: usize) -> f32 {
        magnitude_scale(self.scale, self.alpha, t[0].sqrt(), t[1].sqrt())
    }
    #[inline(always)]
    fn apply<T: Num>(&self, c: T, u: T, s: T) -> T {
        s.mul_add(c - u, u)
    }
}

/// Perp-Neg's rejection: `x − k·d`, k = ⟨x, d⟩/‖d‖² per group.
pub struct Reject<'a, I> {
    /// The vector whose perpendicular part is kept.
    pub input: Terms<'a, I>,
    /// The direction removed.
    pub direction: Terms<'a, I>,
}

impl<I: Element> Statistics<2> for Reject<'_, I> {
    type Input = I;
    #[inline(always)]
    fn forms(&self) -> (Terms<'_, I>, Terms<'_, I>) {
        (self.input, self.direction)
    }
    #[inline(always)]
    fn pairs<T: Num>(a: T, b: T) -> [(T, T); 2] {
        [(a, b), (b, b)]
    }
}

impl<I: Element> GroupOp<2> for Reject<'_, I> {
    #[inline(always)]
    fn factor(&self, t: [f64; 2], _: usize) -> f32 {
        reject_coefficient(t[0], t[1])
    }
    #[inline(always)]
    fn apply<T: Num>(&self, x: T, d: T, k: T) -> T {
        (-k).mul_add(d, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segment_is_visited_once_in_order() {
        // Enough segments for tasks of one, several and eight segments.
        for (len, count) in
            [(1, 1), (SEGMENT, 1), (SEGMENT + 1, 3), (3 * SEGMENT - 5, 7), (2 * SEGMENT, 40), (100, 500)]
        {
            let mut want = Vec::new();
            for g in 0..count {
                for lo in (0..len).step_by(SEGMENT) {
                    want.push((g * len + lo, SEGMENT.min(len - lo)));
                }
            }
            let mut got = vec![(usize::MAX, 0); want.len()];
            for_segments(&mut got, len, |seg, r| *r = seg);
            assert_eq!(got, want, "{len} × {count}");
        }
    }
}
