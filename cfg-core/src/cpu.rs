//! The CPU evaluator of canonical programs (rayon, explicit fma, f32 accumulation).

use crate::apg_fused::{apg, momentum_cfg, Apg};
use crate::canon::dot_slices;
use crate::chunked::{chunked_direct, chunked_into, chunked_slots, Chunks};
use crate::error::CoreError;
use crate::fdg::{self, fdg_into, fdg_sources, Pyramid, Source};
use crate::fused::{self, run_groups, Finish, Mix, Part, Store, Terms};
use crate::par;
use crate::program::{Form, Op, Program, Value};
use crate::reduce::{dot_f32, Groups, Reduce};
use crate::simd::{self, from_split, to_split, Task, Vector};
use crate::slot::{kept, new_vec, Slot};
use crate::state::GuidanceState;
use crate::tcfg::tcfg_into;
use crate::tensor::{Tensor, TensorData};
use crate::view::{Elements, ElementsMut, TensorView, TensorViewMut};
use crate::{DType, Shape};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::mem::MaybeUninit;

/// Elements per inner block (fits L1 with a few inputs).
const BLOCK: usize = 2048;
/// Elements per parallel task.
const TASK: usize = BLOCK * 32;

/// An element type the evaluator can load into f32 and store from f32.
pub trait Element: Copy + Send + Sync + 'static {
    /// Whether `get`/`put` are cheap enough to vectorize element by element.
    const DIRECT: bool;
    /// Whether this is bf16 (see [`crate::simd::Task::AVX512`]).
    const BF16: bool = false;
    /// Whether this is f32.
    const F32: bool = false;
    /// One element widened to f32.
    fn get(self) -> f32;
    /// One f32 rounded (nearest even) to this type.
    fn put(x: f32) -> Self;
    /// Widens `src` into `dst`.
    fn load(src: &[Self], dst: &mut [f32]);
    /// Rounds `src` (nearest even) into `dst`.
    fn store(src: &[f32], dst: &mut [Self]);
    /// The elements as f32, when they are f32 (read in place, not widened).
    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    /// The elements as bf16, when they are bf16 (widened as they are read).
    #[inline(always)]
    fn as_bf16(_: &[Self]) -> Option<&[bf16]> {
        None
    }
    /// The elements as f32 to write, when they are f32.
    #[inline(always)]
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    /// Eight elements widened to f32 lanes.
    #[inline(always)]
    fn get8<V: Vector>(x: &[Self; 8]) -> V {
        V::load(&x.map(Self::get))
    }
    /// Writes eight lanes, rounded as [`Element::store`] rounds them.
    #[inline(always)]
    fn put8<V: Vector>(v: V, to: &mut [Self; 8]) {
        let mut x = [0.0; 8];
        v.store(&mut x);
        Self::store(&x, to);
    }
    /// Writes sixteen lanes, `lo` then `hi`, as two [`Element::put8`] would.
    #[inline(always)]
    fn put16<V: Vector>(lo: V, hi: V, to: &mut [Self; 16]) {
        let (halves, _) = to.as_chunks_mut::<8>();
        Self::put8(lo, &mut halves[0]);
        Self::put8(hi, &mut halves[1]);
    }
    /// Sixteen elements widened in [`crate::simd::SPLIT`] order (see [`Vector::from_bf16_split`]).
    #[inline(always)]
    fn get16_split<V: Vector>(x: &[Self; 16]) -> (V, V) {
        let (lo, hi) = to_split(x.map(Self::get));
        (V::load(&lo), V::load(&hi))
    }
    /// Writes sixteen lanes in [`crate::simd::SPLIT`] order, in element order, rounded as
    /// [`Element::put16`] rounds them.
    #[inline(always)]
    fn put16_split<V: Vector>(lo: V, hi: V, to: &mut [Self; 16]) {
        let (mut l, mut h) = ([0.0; 8], [0.0; 8]);
        lo.store(&mut l);
        hi.store(&mut h);
        Self::store(&from_split(l, h), to);
    }
}

impl Element for f32 {
    const DIRECT: bool = true;
    const F32: bool = true;
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[inline(always)]
    fn put(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn load(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
    #[inline(always)]
    fn get8<V: Vector>(x: &[f32; 8]) -> V {
        V::load(x)
    }
    #[inline(always)]
    fn put8<V: Vector>(v: V, to: &mut [f32; 8]) {
        v.store(to)
    }
    #[inline(always)]
    fn get16_split<V: Vector>(x: &[f32; 16]) -> (V, V) {
        V::load_split(x)
    }
}

impl Element for f16 {
    // half converts f16 slices with F16C; element by element it cannot.
    const DIRECT: bool = false;
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(x: f32) -> f16 {
        f16::from_f32(x)
    }
    fn load(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn store(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
}

// Plain loops the compiler vectorizes; bit-identical to `half` (tested below).
impl Element for bf16 {
    const DIRECT: bool = true;
    const BF16: bool = true;
    #[inline(always)]
    fn as_bf16(s: &[bf16]) -> Option<&[bf16]> {
        Some(s)
    }
    #[inline(always)]
    fn get(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn put(x: f32) -> bf16 {
        bf16::from_bits(bf16_bits_rne(x))
    }
    #[inline(always)]
    fn load(src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.get();
        }
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::put(*s);
        }
    }
    #[inline(always)]
    fn put8<V: Vector>(v: V, to: &mut [bf16; 8]) {
        *bytemuck::cast_mut::<_, [u16; 8]>(to) = v.to_bf16();
    }
    #[inline(always)]
    fn put16<V: Vector>(lo: V, hi: V, to: &mut [bf16; 16]) {
        *bytemuck::cast_mut::<_, [u16; 16]>(to) = V::to_bf16_pair(lo, hi);
    }
    #[inline(always)]
    fn get16_split<V: Vector>(x: &[bf16; 16]) -> (V, V) {
        V::from_bf16_split(bytemuck::cast_ref(x))
    }
    #[inline(always)]
    fn put16_split<V: Vector>(lo: V, hi: V, to: &mut [bf16; 16]) {
        *bytemuck::cast_mut::<_, [u16; 16]>(to) = V::to_bf16_split(lo, hi);
    }
}

/// f32 → bf16 bits, round to nearest even; NaNs stay NaN (quieted).
#[inline(always)]
pub fn bf16_bits_rne(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) | 0x40) as u16;
    // `is_nan` (exponent all ones, mantissa non-zero): one float compare per vector.
    if x.is_nan() {
        nan
    } else {
        rounded
    }
}

#[inline(always)]
fn fma_portable(acc: &mut [f32], x: &[f32], w: f32) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = w.mul_add(v, *a);
    }
}

#[inline(always)]
fn mul_portable(acc: &mut [f32], x: &[f32], w: f32) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = w * v;
    }
}

/// `out = Σ w_k · x_k` in term order (`w_0·x_0` first, then fma), rounded into
/// `out`.
pub fn combine_into<I: Element, O: Element>(terms: &[(&[I], f32)], out: &mut [O]) {
    combine_slots(terms, kept(out))
}

/// [`combine_into`] into slots (fresh memory, or kept values: see [`Slot`]).
pub(crate) fn combine_slots<I: Element, S: Slot>(terms: &[(&[I], f32)], out: &mut [S]) {
    par::for_each_chunk_mut(out, TASK, |task, out| simd::run(Combine { terms, offset: task * TASK, out }));
}

/// One parallel task of [`combine_into`].
struct Combine<'a, I, S> {
    terms: &'a [(&'a [I], f32)],
    offset: usize,
    out: &'a mut [S],
}

impl<I: Element, S: Slot> Task for Combine<'_, I, S> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        combine_task::<V, I, S>(self.terms, self.offset, self.out)
    }
}

/// `out.len()` elements of the combine, starting at `offset`.
#[inline(always)]
pub(crate) fn combine_task<V: Vector, I: Element, S: Slot>(terms: &[(&[I], f32)], offset: usize, out: &mut [S]) {
    if I::DIRECT && S::Elem::DIRECT {
        match terms.len() {
            1 => return combine_direct::<V, I, S, 1>(terms, offset, out),
            2 => return combine_direct::<V, I, S, 2>(terms, offset, out),
            3 => return combine_direct::<V, I, S, 3>(terms, offset, out),
            4 => return combine_direct::<V, I, S, 4>(terms, offset, out),
            5 => return combine_direct::<V, I, S, 5>(terms, offset, out),
            6 => return combine_direct::<V, I, S, 6>(terms, offset, out),
            7 => return combine_direct::<V, I, S, 7>(terms, offset, out),
            8 => return combine_direct::<V, I, S, 8>(terms, offset, out),
            _ => {}
        }
    }
    combine_blocks(terms, offset, out)
}

/// N terms known at compile time: sixteen lanes at a time in registers (two
/// vectors, one store), then eight, each output rounded and written once.
/// Same order as [`combine_blocks`]: `w0·x0`, then fma.
#[inline(always)]
fn combine_direct<V: Vector, I: Element, S: Slot, const N: usize>(terms: &[(&[I], f32)], offset: usize, out: &mut [S]) {
    let n = out.len();
    let srcs: [&[I]; N] = std::array::from_fn(|k| &terms[k].0[offset..offset + n]);
    let lanes: [&[[I; 8]]; N] = std::array::from_fn(|k| srcs[k].as_chunks::<8>().0);
    let w: [f32; N] = std::array::from_fn(|k| terms[k].1);
    let (pairs, rest) = out.as_chunks_mut::<16>();
    if I::BF16 && S::Elem::BF16 {
        // bf16 in and out: sixteen lanes in split order, no shuffle across halves.
        let sixteens: [&[[I; 16]]; N] = std::array::from_fn(|k| srcs[k].as_chunks::<16>().0);
        for (c, o) in pairs.iter_mut().enumerate() {
            let (lo, hi) = combine_split::<V, I, N>(&sixteens, &w, c);
            S::put16_split(lo, hi, o);
        }
    } else {
        for (c, o) in pairs.iter_mut().enumerate() {
            S::put16(combine_lanes::<V, I, N>(&lanes, &w, 2 * c), combine_lanes::<V, I, N>(&lanes, &w, 2 * c + 1), o);
        }
    }
    let (whole, tail) = rest.as_chunks_mut::<8>();
    let done = 2 * pairs.len() + whole.len();
    for (c, o) in (2 * pairs.len()..).zip(whole) {
        S::put8(combine_lanes::<V, I, N>(&lanes, &w, c), o);
    }
    for (i, o) in (8 * done..n).zip(tail) {
        let mut acc = w[0] * srcs[0][i].get();
        for k in 1..N {
            acc = w[k].mul_add(srcs[k][i].get(), acc);
        }
        o.set(S::Elem::put(acc));
    }
}

/// Eight lanes, chunk `c`, of the combine of `N` terms. A function, not a
/// closure: it must inline into the caller's target features (a closure
/// called three times was not inlined, and ran without them, 20× slower).
#[inline(always)]
fn combine_lanes<V: Vector, I: Element, const N: usize>(lanes: &[&[[I; 8]]; N], w: &[f32; N], c: usize) -> V {
    let mut acc = V::splat(w[0]) * V::load(&lanes[0][c].map(I::get));
    for (k, &wk) in w.iter().enumerate().skip(1) {
        acc = V::splat(wk).mul_add(V::load(&lanes[k][c].map(I::get)), acc);
    }
    acc
}

/// Sixteen elements, chunk `c`, of the combine of `N` terms, in
/// [`crate::simd::SPLIT`] order: the same operations as [`combine_lanes`]
/// (`w₀·x₀`, then fma), as a form of bf16 inputs computes them too.
#[inline(always)]
pub(crate) fn combine_split<V: Vector, I: Element, const N: usize>(
    sixteens: &[&[[I; 16]]; N],
    w: &[f32; N],
    c: usize,
) -> (V, V) {
    let (x, y) = I::get16_split::<V>(&sixteens[0][c]);
    let w0 = V::splat(w[0]);
    let (mut lo, mut hi) = (w0 * x, w0 * y);
    for (k, &wk) in w.iter().enumerate().skip(1) {
        let (x, y) = I::get16_split::<V>(&sixteens[k][c]);
        (lo, hi) = (V::splat(wk).mul_add(x, lo), V::splat(wk).mul_add(y, hi));
    }
    (lo, hi)
}

/// Any number of terms: blocks of [`BLOCK`] elements loaded, combined and stored.
#[inline(always)]
fn combine_blocks<I: Element, S: Slot>(terms: &[(&[I], f32)], offset: usize, out: &mut [S]) {
    let mut acc = [0.0f32; BLOCK];
    let mut x = [0.0f32; BLOCK];
    for (b, out_block) in out.chunks_mut(BLOCK).enumerate() {
        let start = offset + b * BLOCK;
        let n = out_block.len();
        let (acc, x) = (&mut acc[..n], &mut x[..n]);
        match terms.split_first() {
            None => acc.fill(0.0),
            Some(((first, w0), rest)) => {
                I::load(&first[start..start + n], x);
                mul_portable(acc, x, *w0);
                for (src, w) in rest {
                    I::load(&src[start..start + n], x);
                    fma_portable(acc, x, *w);
                }
            }
        }
        S::put_all(acc, out_block);
    }
}

/// Evaluates `program` on the CPU. `inputs` follow `program.branches`; the
/// result has `dtype` and `shape`. Stateful operators read and update `state`.
pub fn evaluate(
    program: &Program,
    inputs: &[&Tensor],
    dtype: DType,
    shape: &Shape,
    state: &mut GuidanceState,
) -> Result<Tensor, CoreError> {
    let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
    check_program(program, &views, dtype, shape, state)?;
    if let Some(kind) = written_once(program, dtype, shape)? {
        let data = match dtype {
            DType::BF16 => TensorData::BF16(new_output(program, kind, &slices(&views, as_bf16), shape, state)),
            _ => TensorData::F32(new_output(program, kind, &slices(&views, as_f32), shape, state)),
        };
        advance_counters(program, state);
        return Ok(Tensor { shape: shape.clone(), data });
    }
    let mut out = Tensor::zeros(dtype, shape.clone());
    evaluate_view(program, &views, shape, state, &mut out.view_mut())?;
    Ok(out)
}

/// [`evaluate`] into `out`, which is replaced when its dtype or shape differ:
/// a caller that keeps `out` from call to call allocates no tensor after the first.
pub fn evaluate_into(
    program: &Program,
    inputs: &[&Tensor],
    dtype: DType,
    shape: &Shape,
    state: &mut GuidanceState,
    out: &mut Tensor,
) -> Result<(), CoreError> {
    check_inputs(program, inputs, dtype, shape)?;
    if out.dtype() != dtype || out.shape != *shape || out.len() != shape.numel() {
        *out = Tensor::zeros(dtype, shape.clone());
    }
    let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
    evaluate_view(program, &views, shape, state, &mut out.view_mut())
}

/// [`evaluate`] on borrowed tensors: the inputs are read in place and the
/// result is written into `out`, whose dtype is the result's. Inputs and
/// output must all have `shape` and the output's dtype.
pub fn evaluate_view(
    program: &Program,
    inputs: &[TensorView<'_>],
    shape: &Shape,
    state: &mut GuidanceState,
    out: &mut TensorViewMut<'_>,
) -> Result<(), CoreError> {
    check_program(program, inputs, out.dtype(), shape, state)?;
    if out.shape != *shape || out.len() != shape.numel() {
        return Err(CoreError::BadShape {
            shape: out.shape.to_string(),
            why: format!("the output must have the inputs' shape {shape} ({} elements)", shape.numel()),
        });
    }
    if program.ops.is_empty() && program.latches.is_empty() {
        match program.result {
            Value::Form(i) => fused_form_into(&program.forms[i], inputs, &mut out.data),
            _ => zero(&mut out.data),
        }
    } else if let Some(op) = single_fused_op(program) {
        match &mut out.data {
            ElementsMut::F32(o) => fused_op(program, op, &slices(inputs, as_f32), shape, state, kept(o)),
            ElementsMut::F16(o) => fused_op(program, op, &slices(inputs, as_f16), shape, state, kept(o)),
            ElementsMut::BF16(o) => fused_op(program, op, &slices(inputs, as_bf16), shape, state, kept(o)),
        }
    } else if let Some((op, mix)) = op_then_mix(program) {
        match &mut out.data {
            ElementsMut::F32(o) => fused_group_op(program, op, Some(mix), &slices(inputs, as_f32), shape, kept(o)),
            ElementsMut::F16(o) => fused_group_op(program, op, Some(mix), &slices(inputs, as_f16), shape, kept(o)),
            ElementsMut::BF16(o) => fused_group_op(program, op, Some(mix), &slices(inputs, as_bf16), shape, kept(o)),
        }
    } else if let Some(op) = single_fdg(program) {
        fdg_view(program, op, inputs, shape, &mut out.data)?;
    } else if let Some((branches, weights, chunks)) = single_chunked(program, shape)? {
        let [c, p, u] = branches;
        match &mut out.data {
            ElementsMut::F32(o) => {
                let x = slices(inputs, as_f32);
                chunked_direct(&chunks, weights, [x[c], x[p], x[u]], o)
            }
            ElementsMut::F16(o) => {
                let x = slices(inputs, as_f16);
                chunked_direct(&chunks, weights, [x[c], x[p], x[u]], o)
            }
            ElementsMut::BF16(o) => {
                let x = slices(inputs, as_bf16);
                chunked_direct(&chunks, weights, [x[c], x[p], x[u]], o)
            }
        }
    } else {
        let f32_result = Evaluation::new(program, inputs, shape).run(state)?;
        round_into_view(&f32_result, &mut out.data);
    }
    advance_counters(program, state);
    Ok(())
}

/// Checks the inputs, the shape's layout and the operators' state before an evaluation.
fn check_program(
    program: &Program,
    inputs: &[TensorView<'_>],
    dtype: DType,
    shape: &Shape,
    state: &GuidanceState,
) -> Result<(), CoreError> {
    check_views(program, inputs, dtype, shape)?;
    program.check_shape(shape)?;
    for op in &program.ops {
        if let Op::Apg { slot, .. } | Op::MomentumCfg { slot, .. } = op {
            if state.device_momentum(slot).is_some() {
                return Err(CoreError::DeviceState(slot.clone()));
            }
            // A momentum of another size belongs to another run: never restart it silently.
            if let Some(held) = state.momentum(slot).map(<[f32]>::len).filter(|&n| n != shape.numel()) {
                return Err(CoreError::StateMismatch { slot: slot.clone(), held, got: shape.numel() });
            }
        }
    }
    Ok(())
}

/// Counts one more evaluated step for the program's counters.
fn advance_counters(program: &Program, state: &mut GuidanceState) {
    for slot in &program.counters {
        state.advance(slot);
    }
}

fn zero(out: &mut ElementsMut<'_>) {
    match out {
        ElementsMut::F32(o) => o.fill(0.0),
        ElementsMut::F16(o) => o.fill(f16::ZERO),
        ElementsMut::BF16(o) => o.fill(bf16::ZERO),
    }
}

fn as_f32<'a>(e: &Elements<'a>) -> Option<&'a [f32]> {
    match *e {
        Elements::F32(v) => Some(v),
        _ => None,
    }
}

fn as_f16<'a>(e: &Elements<'a>) -> Option<&'a [f16]> {
    match *e {
        Elements::F16(v) => Some(v),
        _ => None,
    }
}

fn as_bf16<'a>(e: &Elements<'a>) -> Option<&'a [bf16]> {
    match *e {
        Elements::BF16(v) => Some(v),
        _ => None,
    }
}

/// The element slices of the inputs (all of one dtype, checked by the caller).
fn slices<'a, E>(inputs: &[TensorView<'a>], get: fn(&Elements<'a>) -> Option<&'a [E]>) -> Vec<&'a [E]> {
    inputs.iter().map(|t| get(&t.data).unwrap_or(&[])).collect()
}

/// A program whose kernels write each element of a new output once.
enum WrittenOnce<'p> {
    /// A linear form.
    Form(&'p Form),
    /// One operator on forms ([`single_fused_op`]) over whole groups.
    Op(&'p Op),
    /// A group operator on forms, then a mix ([`op_then_mix`]).
    GroupMix(&'p Op, &'p [(Value, f32)]),
    /// MAGI-1's chunked guidance ([`single_chunked`]).
    Chunked([usize; 3], &'p [[f32; 3]], Chunks),
}

/// How `program` writes a new f32 or bf16 output once, if it does: then the
/// output is never cleared first. f16 outputs (converted by slices) and every
/// other program get a cleared output.
fn written_once<'p>(program: &'p Program, dtype: DType, shape: &Shape) -> Result<Option<WrittenOnce<'p>>, CoreError> {
    if dtype == DType::F16 {
        return Ok(None);
    }
    // Whole groups (true of every contiguous group; checked because a
    // partial group would leave elements unwritten).
    let whole = |r: Reduce| shape.numel().is_multiple_of(Groups::new(r, shape).len.max(1));
    let groups = |op: &Op| match op {
        Op::Tcfg { .. } | Op::Apg { .. } => Some(Reduce::Sample),
        Op::MomentumCfg { .. } => Some(Reduce::Tensor),
        _ => group_reduce(op),
    };
    Ok(if let (true, Value::Form(i)) = (program.ops.is_empty() && program.latches.is_empty(), program.result) {
        Some(WrittenOnce::Form(&program.forms[i]))
    } else if let Some(op) = single_fused_op(program).filter(|op| groups(op).is_some_and(whole)) {
        Some(WrittenOnce::Op(op))
    } else if let Some((op, mix)) = op_then_mix(program).filter(|(op, _)| group_reduce(op).is_some_and(whole)) {
        Some(WrittenOnce::GroupMix(op, mix))
    } else {
        single_chunked(program, shape)?
            .map(|(branches, weights, chunks)| WrittenOnce::Chunked(branches, weights, chunks))
    })
}

/// The new output of a [`written_once`] program, from the branch slices
/// (checked by [`check_program`]).
fn new_output<E: Element>(
    program: &Program,
    kind: WrittenOnce<'_>,
    x: &[&[E]],
    shape: &Shape,
    state: &mut GuidanceState,
) -> Vec<E> {
    let write = |out: &mut [MaybeUninit<E>]| match kind {
        WrittenOnce::Form(form) => combine_slots(&form_terms(form, x), out),
        WrittenOnce::Op(op) => fused_op(program, op, x, shape, state, out),
        WrittenOnce::GroupMix(op, mix) => fused_group_op(program, op, Some(mix), x, shape, out),
        WrittenOnce::Chunked([c, p, u], weights, chunks) => chunked_slots(&chunks, weights, [x[c], x[p], x[u]], out),
    };
    // SAFETY: each kernel writes every element of its output: the combine
    // and chunked guidance every task of it, an operator every element of its
    // whole groups (a momentum has the output's length: `check_program`).
    unsafe { new_vec(shape.numel(), write) }
}

/// The groups a one-factor group operator reduces over (the operators
/// [`group_op_into`] evaluates); None for any other op.
fn group_reduce(op: &Op) -> Option<Reduce> {
    match op {
        Op::Renorm { over, .. } | Op::Reject { over, .. } | Op::StdRescale { over, .. } => Some(*over),
        Op::NormCap { .. } => Some(Reduce::Tensor),
        Op::ZeroStar { .. } | Op::MagnitudeAware { .. } => Some(Reduce::Sample),
        _ => None,
    }
}

/// The program's only op, when it reads linear forms and has contiguous groups:
/// then it is evaluated straight from the inputs, with no intermediate tensor.
fn single_fused_op(program: &Program) -> Option<&Op> {
    let [op] = program.ops.as_slice() else { return None };
    let contiguous = !matches!(op, Op::Mix { .. } | Op::Fdg { .. } | Op::Chunked { .. })
        && op.over().is_none_or(Reduce::is_contiguous);
    let on_forms = op.inputs().iter().all(|v| matches!(v, Value::Form(_) | Value::Zero));
    (program.latches.is_empty() && program.result == Value::Op(0) && contiguous && on_forms).then_some(op)
}

/// The program's only op, when it is FDG on two linear forms.
fn single_fdg(program: &Program) -> Option<&Op> {
    let [op @ Op::Fdg { cond: Value::Form(_), uncond: Value::Form(_), .. }] = program.ops.as_slice() else {
        return None;
    };
    (program.latches.is_empty() && program.result == Value::Op(0)).then_some(op)
}

/// The program's only op, when it is MAGI-1's chunked guidance on three
/// branches as they are (`Ref`s: forms of one term of weight 1, whose value is
/// the input's exactly): `([cond, prefix, uncond] branch indices, the
/// per-chunk weights, the chunks)`. Its result is then read straight from the
/// inputs with no intermediate tensor.
#[allow(clippy::type_complexity)]
fn single_chunked<'p>(
    program: &'p Program,
    shape: &Shape,
) -> Result<Option<([usize; 3], &'p [[f32; 3]], Chunks)>, CoreError> {
    let [Op::Chunked { cond, prefix, uncond, weights, chunk_frames, layout }] = program.ops.as_slice() else {
        return Ok(None);
    };
    let branch = |v: &Value| match v {
        Value::Form(i) => match program.forms[*i].terms.as_slice() {
            [(b, w)] if *w == 1.0 => Some(*b),
            _ => None,
        },
        _ => None,
    };
    let (Some(c), Some(p), Some(u)) = (branch(cond), branch(prefix), branch(uncond)) else { return Ok(None) };
    if !program.latches.is_empty() || program.result != Value::Op(0) {
        return Ok(None);
    }
    let chunks =
        Chunks::new(layout, shape, *chunk_frames, weights.len()).map_err(|why| program.layout_error(shape, why))?;
    Ok(Some(([c, p, u], weights, chunks)))
}

/// [`single_fdg`]'s program: the forms into reused f32 buffers, the result
/// written (rounded) straight into `out` (no value computed twice, no fresh
/// pages per call).
fn fdg_view(
    program: &Program,
    op: &Op,
    inputs: &[TensorView<'_>],
    shape: &Shape,
    out: &mut ElementsMut<'_>,
) -> Result<(), CoreError> {
    let Op::Fdg { cond: Value::Form(a), uncond: Value::Form(b), bands, original, layout } = op else {
        return Ok(());
    };
    let pyramid = Pyramid::new(layout, shape, bands.len()).map_err(|why| program.layout_error(shape, why))?;
    let n = shape.numel();
    let (mut cb, mut ub) = (Vec::new(), Vec::new());
    let c = form_or_input(&program.forms[*a], inputs, n, &mut cb);
    let u = form_or_input(&program.forms[*b], inputs, n, &mut ub);
    match out {
        ElementsMut::F32(o) => fdg_sources(&pyramid, c, u, bands, *original, o),
        ElementsMut::BF16(o) => fdg_sources(&pyramid, c, u, bands, *original, o),
        ElementsMut::F16(o) => fdg_sources(&pyramid, c, u, bands, *original, o),
    }
    fdg::recycle(cb);
    fdg::recycle(ub);
    Ok(())
}

/// The form's values for FDG: an input read in place when the form is that
/// input with weight 1 (`1·x` is `x`; bf16 and f16 widened as the passes read
/// them), else computed into `buf` (a reused buffer).
fn form_or_input<'a>(form: &Form, inputs: &'a [TensorView<'_>], n: usize, buf: &'a mut Vec<f32>) -> Source<'a> {
    if let [(b, 1.0)] = form.terms.as_slice() {
        return match inputs[*b].data {
            Elements::F32(x) => Source::F32(x),
            Elements::BF16(x) => Source::BF16(x),
            Elements::F16(x) => Source::F16(x),
        };
    }
    *buf = fdg::buffer(n);
    form_into(form, inputs, buf);
    Source::F32(buf)
}

/// A one-factor group op on linear forms followed by a mix of forms and that
/// op's value (Perp-Neg: `(e + s·P) − s·s_n·N⊥`): both are evaluated in the
/// op's passes, with no intermediate tensor.
fn op_then_mix(program: &Program) -> Option<(&Op, &[(Value, f32)])> {
    let [op, Op::Mix { terms }] = program.ops.as_slice() else { return None };
    let group_op = group_reduce(op).is_some();
    let contiguous = op.over().is_none_or(Reduce::is_contiguous);
    let on_forms = op.inputs().iter().all(|v| matches!(v, Value::Form(_) | Value::Zero));
    let mix_on_forms = terms.iter().all(|(v, _)| matches!(v, Value::Form(_) | Value::Zero | Value::Op(0)));
    let plain = program.latches.is_empty() && program.result == Value::Op(1);
    (plain && group_op && contiguous && on_forms && mix_on_forms).then_some((op, terms.as_slice()))
}

/// The terms of form `form` over the branch slices.
fn form_terms<'a, E>(form: &Form, branches: &[&'a [E]]) -> Vec<(&'a [E], f32)> {
    form.terms.iter().map(|&(b, w)| (branches[b], w)).collect()
}

/// The terms of an op's input `v` (none for zero).
fn value_terms<'a, E>(program: &Program, v: Value, branches: &[&'a [E]]) -> Vec<(&'a [E], f32)> {
    match v {
        Value::Form(i) => form_terms(&program.forms[i], branches),
        _ => Vec::new(),
    }
}

/// Evaluates a group operator on forms ([`group_reduce`]) from the branch
/// slices into `out`, then [`op_then_mix`]'s mix when there is one.
fn fused_group_op<E: Element, S: Slot<Elem = E>>(
    program: &Program,
    op: &Op,
    mix: Option<&[(Value, f32)]>,
    branches: &[&[E]],
    shape: &Shape,
    out: &mut [S],
) {
    let terms = |v: Value| value_terms(program, v, branches);
    let vals = op.inputs();
    let (a, b) = (terms(vals[0]), terms(vals[1]));
    let len = |over| Groups::new(over, shape).len;
    let Some(mix) = mix else {
        group_op_into(op, &a, &b, &len, &Store, out);
        return;
    };
    let forms: Vec<Vec<(&[E], f32)>> = mix.iter().map(|&(v, _)| terms(v)).collect();
    let parts: Vec<(Part<'_, E>, f32)> = mix
        .iter()
        .zip(&forms)
        .map(|(&(v, w), f)| {
            let part = match v {
                Value::Form(_) => Part::Form(f),
                Value::Op(_) => Part::Op,
                Value::Zero => Part::Zero,
            };
            (part, w)
        })
        .collect();
    group_op_into(op, &a, &b, &len, &Mix { terms: &parts }, out);
}

/// Evaluates the single `op` of `program` from the branch slices into `out`.
fn fused_op<E: Element, S: Slot<Elem = E>>(
    program: &Program,
    op: &Op,
    branches: &[&[E]],
    shape: &Shape,
    state: &mut GuidanceState,
    out: &mut [S],
) {
    let terms = |v: Value| value_terms(program, v, branches);
    let vals = op.inputs();
    let (a, b) = (terms(vals[0]), terms(vals[1]));
    op_into(op, &a, &b, &|over| Groups::new(over, shape).len, state, out);
}

/// Evaluates `op` over contiguous groups when it is a one-factor group
/// operator, its values passed through `fin`; false for any other op.
fn group_op_into<I: Element, F: Finish, S: Slot>(
    op: &Op,
    a: Terms<I>,
    b: Terms<I>,
    len: &dyn Fn(Reduce) -> usize,
    fin: &F,
    out: &mut [S],
) -> bool {
    match op {
        Op::Renorm { over, eps, min, max, .. } => {
            let op = fused::Renorm { input: a, reference: b, eps: *eps, min: *min, max: *max };
            run_groups(&op, fin, len(*over), out)
        }
        Op::Reject { over, .. } => run_groups(&fused::Reject { input: a, direction: b }, fin, len(*over), out),
        Op::NormCap { ratio, .. } => {
            run_groups(&fused::NormCap { input: a, reference: b, ratio: *ratio }, fin, len(Reduce::Tensor), out)
        }
        Op::StdRescale { phi, over, .. } => {
            run_groups(&fused::StdRescale { input: a, reference: b, phi: *phi }, fin, len(*over), out)
        }
        Op::ZeroStar { scale, original, .. } => {
            let op = fused::ZeroStar { cond: a, uncond: b, scale: *scale, original: *original };
            run_groups(&op, fin, len(Reduce::Sample), out)
        }
        Op::MagnitudeAware { scale, alpha, .. } => {
            let op = fused::MagnitudeAware { cond: a, uncond: b, scale: *scale, alpha: *alpha };
            run_groups(&op, fin, len(Reduce::Sample), out)
        }
        _ => return false,
    }
    true
}

/// Evaluates a two-input `op` (every op but `Mix`) over contiguous groups.
fn op_into<I: Element, S: Slot>(
    op: &Op,
    a: Terms<I>,
    b: Terms<I>,
    len: &dyn Fn(Reduce) -> usize,
    state: &mut GuidanceState,
    out: &mut [S],
) {
    if group_op_into(op, a, b, len, &Store, out) {
        return;
    }
    match op {
        // Evaluated on dense values by `Evaluation`, or by `group_op_into` above.
        Op::Mix { .. }
        | Op::Fdg { .. }
        | Op::Chunked { .. }
        | Op::Renorm { .. }
        | Op::Reject { .. }
        | Op::NormCap { .. }
        | Op::StdRescale { .. }
        | Op::ZeroStar { .. }
        | Op::MagnitudeAware { .. } => {}
        Op::Tcfg { scale, original, .. } => tcfg_into(a, b, len(Reduce::Sample), *scale, *original, out),
        Op::MomentumCfg { scale, momentum, original, slot, .. } => {
            let has_prev = state.momentum(slot).is_some();
            if !has_prev {
                state.set_momentum(slot, vec![0.0; out.len()]);
            }
            let buffer = state.momentum_mut(slot).unwrap_or_default();
            momentum_cfg(a, b, *scale, *momentum, *original, buffer, has_prev, out)
        }
        Op::Apg { scale, momentum, norm_threshold, eta, original, slot, .. } => {
            let p = Apg {
                cond: a,
                uncond: b,
                scale: *scale,
                momentum: *momentum,
                threshold: *norm_threshold,
                eta: *eta,
                original: *original,
            };
            let len = len(Reduce::Sample);
            if *momentum == 0.0 {
                return apg(&p, len, None, false, out);
            }
            let has_prev = state.momentum(slot).is_some();
            if !has_prev {
                state.set_momentum(slot, vec![0.0; out.len()]);
            }
            apg(&p, len, state.momentum_mut(slot), has_prev, out)
        }
    }
}

/// Checks that inputs match the program's branches, `dtype` and `shape`.
pub fn check_inputs(program: &Program, inputs: &[&Tensor], dtype: DType, shape: &Shape) -> Result<(), CoreError> {
    let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
    check_views(program, &views, dtype, shape)
}

/// [`check_inputs`] on borrowed tensors.
pub fn check_views(program: &Program, inputs: &[TensorView<'_>], dtype: DType, shape: &Shape) -> Result<(), CoreError> {
    if inputs.len() != program.branches.len() {
        let missing = program.branches.get(inputs.len()).cloned().unwrap_or_default();
        return Err(CoreError::MissingBranch(missing));
    }
    for (name, t) in program.branches.iter().zip(inputs) {
        if t.shape != *shape || t.dtype() != dtype || t.len() != shape.numel() {
            return Err(CoreError::Mismatch {
                branch: name.clone(),
                expected: shape.to_string(),
                expected_dtype: dtype.to_string(),
                got: t.shape.to_string(),
                got_dtype: t.dtype().to_string(),
            });
        }
    }
    Ok(())
}

/// Rounds f32 values into a tensor of `dtype` (nearest even).
pub fn round_to(dtype: DType, shape: &Shape, values: &[f32]) -> Tensor {
    let mut out = Tensor::zeros(dtype, shape.clone());
    round_into(values, &mut out);
    out
}

/// Rounds f32 values (nearest even) into `out`, of as many elements.
pub fn round_into(values: &[f32], out: &mut Tensor) {
    round_into_view(values, &mut out.view_mut().data)
}

/// [`round_into`] borrowed elements.
pub fn round_into_view(values: &[f32], out: &mut ElementsMut<'_>) {
    match out {
        ElementsMut::F32(o) => round_into_slice(values, o),
        ElementsMut::F16(o) => round_into_slice(values, o),
        ElementsMut::BF16(o) => round_into_slice(values, o),
    }
}

/// f32 values into `out`: copied, or rounded (nearest even) in parallel.
pub(crate) fn round_into_slice<O: Element>(values: &[f32], out: &mut [O]) {
    match O::as_f32_mut(out) {
        Some(o) => o.copy_from_slice(values),
        None => par::for_each(out.chunks_mut(TASK).zip(values.chunks(TASK)), |(o, v)| O::store(v, o)),
    }
}

fn fused_form_into(form: &Form, inputs: &[TensorView<'_>], out: &mut ElementsMut<'_>) {
    match out {
        ElementsMut::F32(o) => form_into(form, inputs, o),
        ElementsMut::F16(o) => form_into(form, inputs, o),
        ElementsMut::BF16(o) => form_into(form, inputs, o),
    }
}

/// Computes a linear form over the inputs into f32.
pub fn form_f32(form: &Form, inputs: &[&Tensor], n: usize) -> Vec<f32> {
    let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
    form_f32_view(form, &views, n)
}

fn form_f32_view(form: &Form, inputs: &[TensorView<'_>], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    form_into(form, inputs, &mut out);
    out
}

/// `out = form(inputs)`, the inputs all of one dtype (checked by the caller).
fn form_into<O: Element>(form: &Form, inputs: &[TensorView<'_>], out: &mut [O]) {
    macro_rules! go {
        ($variant:ident) => {{
            let terms: Vec<_> = form
                .terms
                .iter()
                .map(|&(b, w)| match inputs[b].data {
                    Elements::$variant(v) => (v, w),
                    _ => unreachable!("dtypes checked"),
                })
                .collect();
            combine_into(&terms, out);
        }};
    }
    match inputs.first().map(|t| t.dtype()) {
        Some(DType::F16) => go!(F16),
        Some(DType::BF16) => go!(BF16),
        _ => go!(F32),
    }
}

/// The general path (several ops, latches, channel groups): every value is
/// computed into an f32 buffer once and read by reference.
struct Evaluation<'a> {
    program: &'a Program,
    inputs: &'a [TensorView<'a>],
    shape: &'a Shape,
    forms: Vec<Option<Vec<f32>>>,
    ops: Vec<Vec<f32>>,
}

impl<'a> Evaluation<'a> {
    fn new(program: &'a Program, inputs: &'a [TensorView<'a>], shape: &'a Shape) -> Self {
        Evaluation { program, inputs, shape, forms: vec![None; program.forms.len()], ops: Vec::new() }
    }

    fn n(&self) -> usize {
        self.shape.numel()
    }

    /// Computes `v` if it is a form not computed yet.
    fn ensure(&mut self, v: Value) {
        if let Value::Form(i) = v {
            if self.forms[i].is_none() {
                self.forms[i] = Some(form_f32_view(&self.program.forms[i], self.inputs, self.n()));
            }
        }
    }

    /// The values of `v` (empty for zero).
    fn value(&self, v: Value) -> &[f32] {
        match v {
            Value::Zero => &[],
            Value::Form(i) => self.forms[i].as_deref().unwrap_or(&[]),
            Value::Op(i) => self.ops.get(i).map_or(&[], Vec::as_slice),
        }
    }

    /// `v` as a one-term form (`1·x` is `x`); zero is the empty form.
    fn terms(&self, v: Value) -> Vec<(&[f32], f32)> {
        match v {
            Value::Zero => Vec::new(),
            _ => vec![(self.value(v), 1.0)],
        }
    }

    fn run(mut self, state: &mut GuidanceState) -> Result<Vec<f32>, CoreError> {
        for op in &self.program.ops {
            for v in op.inputs() {
                self.ensure(v);
            }
            let out = match op {
                Op::Fdg { .. } => self.fdg(op)?,
                Op::Chunked { .. } => self.chunked(op)?,
                _ => self.op(op, state),
            };
            self.ops.push(out);
        }
        for latch in &self.program.latches {
            self.ensure(latch.a);
            self.ensure(latch.b);
            if cosine(&self.dense(latch.a), &self.dense(latch.b)) > latch.threshold {
                state.latch(&latch.slot);
            }
        }
        self.ensure(self.program.result);
        Ok(self.dense(self.program.result).into_owned())
    }

    /// The values of `v`, zeros spelled out.
    fn dense(&self, v: Value) -> std::borrow::Cow<'_, [f32]> {
        match v {
            Value::Zero => vec![0.0; self.n()].into(),
            _ => self.value(v).into(),
        }
    }

    /// MAGI-1's chunked combination on the dense values of its operands.
    fn chunked(&self, op: &Op) -> Result<Vec<f32>, CoreError> {
        let Op::Chunked { cond, prefix, uncond, weights, chunk_frames, layout } = op else { return Ok(Vec::new()) };
        let chunks = Chunks::new(layout, self.shape, *chunk_frames, weights.len())
            .map_err(|why| self.program.layout_error(self.shape, why))?;
        let mut out = vec![0.0; self.n()];
        let (c, p, u) = (self.dense(*cond), self.dense(*prefix), self.dense(*uncond));
        chunked_into(&chunks, weights, &c, &p, &u, &mut out);
        Ok(out)
    }

    /// FDG on the dense values of its operands.
    fn fdg(&self, op: &Op) -> Result<Vec<f32>, CoreError> {
        let Op::Fdg { cond, uncond, bands, original, layout } = op else { return Ok(Vec::new()) };
        let pyramid =
            Pyramid::new(layout, self.shape, bands.len()).map_err(|why| self.program.layout_error(self.shape, why))?;
        let mut out = vec![0.0; self.n()];
        fdg_into(&pyramid, &self.dense(*cond), &self.dense(*uncond), bands, *original, &mut out);
        Ok(out)
    }

    fn op(&self, op: &Op, state: &mut GuidanceState) -> Vec<f32> {
        let mut out = vec![0.0; self.n()];
        if let Op::Mix { terms } = op {
            let dense: Vec<(std::borrow::Cow<'_, [f32]>, f32)> =
                terms.iter().map(|&(v, w)| (self.dense(v), w)).collect();
            let refs: Vec<(&[f32], f32)> = dense.iter().map(|(v, w)| (&v[..], *w)).collect();
            combine_into(&refs, &mut out);
            return out;
        }
        let vals = op.inputs();
        let (a, b) = (self.terms(vals[0]), self.terms(vals[1]));
        let strided = op.over().filter(|o| !o.is_contiguous());
        let Some(over) = strided else {
            op_into(op, &a, &b, &|over| Groups::new(over, self.shape).len, state, kept(&mut out));
            return out;
        };
        // Strided groups made contiguous: each block [len, width] -> [width, len] and back
        // (channel groups: [batch, tokens, width] -> [batch, width, tokens]).
        let groups = Groups::new(over, self.shape);
        let (width, per_sample) = (groups.width, groups.per_sample);
        let t = |x: &[(&[f32], f32)]| -> Vec<f32> {
            x.first().map_or_else(|| vec![0.0; self.n()], |(v, _)| transpose(v, per_sample, width))
        };
        let (ta, tb) = (t(&a), t(&b));
        let (ta, tb) = ([(ta.as_slice(), 1.0)], [(tb.as_slice(), 1.0)]);
        let (ta, tb): (Terms<f32>, Terms<f32>) =
            (if a.is_empty() { &[] } else { &ta }, if b.is_empty() { &[] } else { &tb });
        let mut tout = vec![0.0; self.n()];
        op_into(op, ta, tb, &|_| groups.len, state, kept(&mut tout));
        transpose_back(&tout, &mut out, per_sample, width);
        out
    }
}

/// Each sample's `[tokens, width]` block transposed to `[width, tokens]`.
fn transpose(v: &[f32], per_sample: usize, width: usize) -> Vec<f32> {
    let tokens = per_sample / width;
    let mut out = vec![0.0; v.len()];
    for (o, s) in out.chunks_mut(per_sample).zip(v.chunks(per_sample)) {
        for t in 0..tokens {
            for c in 0..width {
                o[c * tokens + t] = s[t * width + c];
            }
        }
    }
    out
}

/// The inverse of [`transpose`].
fn transpose_back(v: &[f32], out: &mut [f32], per_sample: usize, width: usize) {
    let tokens = per_sample / width;
    for (o, s) in out.chunks_mut(per_sample).zip(v.chunks(per_sample)) {
        for t in 0..tokens {
            for c in 0..width {
                o[t * width + c] = s[c * tokens + t];
            }
        }
    }
}

/// Unbiased std of group `k` of `v` from canonical Σx and Σx².
pub fn std_of(groups: &Groups, k: usize, v: &[f32]) -> f64 {
    let s1 = dot_f32(groups.len, |j| (v[groups.index(k, j)], 1.0));
    let s2 = dot_f32(groups.len, |j| (v[groups.index(k, j)], v[groups.index(k, j)]));
    std_from_sums(s1, s2, groups.len)
}

/// Unbiased std from Σx, Σx² and the count (0 when n < 2).
pub fn std_from_sums(s1: f64, s2: f64, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let n = n as f64;
    ((s2 - s1 * s1 / n) / (n - 1.0)).max(0.0).sqrt()
}

/// The renorm factor from the norms; 1 when the input norm is zero.
#[inline(always)]
pub fn renorm_factor(nr: f64, ng: f64, eps: f64, min: Option<f64>, max: Option<f64>) -> f32 {
    let den = ng + eps;
    renorm_clamp(nr / den, den, min, max)
}

/// [`renorm_factor`] from its quotient `nr / den` and `den`.
#[inline(always)]
pub fn renorm_clamp(mut f: f64, den: f64, min: Option<f64>, max: Option<f64>) -> f32 {
    if den == 0.0 {
        return 1.0;
    }
    if let Some(lo) = min {
        f = f.max(lo);
    }
    if let Some(hi) = max {
        f = f.min(hi);
    }
    f as f32
}

/// The norm-cap factor: `ratio·nr/ng` when `ng > ratio·nr`, else 1.
pub fn norm_cap_factor(nr: f64, ng: f64, ratio: f64) -> f32 {
    if ng > ratio * nr {
        (ratio * nr / ng) as f32
    } else {
        1.0
    }
}

/// The std-rescale factor `phi·sr/sg + 1 − phi`; 1 when `sg` is zero.
pub fn rescale_factor(sr: f64, sg: f64, phi: f64) -> f32 {
    if sg == 0.0 {
        return 1.0;
    }
    (phi * sr / sg + (1.0 - phi)) as f32
}

/// CFG-Zero*'s α = ⟨c,u⟩/(‖u‖² + 1e-8).
pub fn zero_star_alpha(dot: f64, nu2: f64) -> f32 {
    (dot / (nu2 + 1e-8)) as f32
}

/// MAMBO-G's per-sample scale `1 + (s−1)·exp(−α‖Δ‖/‖u‖)`.
pub fn magnitude_scale(s: f64, alpha: f64, nd: f64, nu: f64) -> f32 {
    let ratio = if nu > 0.0 { nd / nu } else { f64::INFINITY };
    magnitude_scale_of_ratio(s, alpha, ratio)
}

/// [`magnitude_scale`] from the ratio `‖Δ‖/‖u‖` (the GPU computes the ratio,
/// the host the exp, so both backends use this one exp).
pub fn magnitude_scale_of_ratio(s: f64, alpha: f64, ratio: f64) -> f32 {
    (1.0 + (s - 1.0) * (-alpha * ratio).exp()) as f32
}

/// Whole-tensor cosine similarity in the canonical order.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let ab = dot_slices(a, b);
    let aa = dot_slices(a, a);
    let bb = dot_slices(b, b);
    let den = (aa * bb).sqrt();
    if den == 0.0 {
        0.0
    } else {
        ab / den
    }
}

/// Perp-Neg's rejection coefficient ⟨x, d⟩/‖d‖², rounded to f32; 0 where ‖d‖ = 0.
pub fn reject_coefficient(xd: f64, dd: f64) -> f32 {
    if dd == 0.0 {
        0.0
    } else {
        (xd / dd) as f32
    }
}

/// APG's norm clip `min(1, threshold/‖Δ‖)`.
pub fn apg_clip_factor(norm: f64, threshold: f64) -> f32 {
    if norm == 0.0 {
        1.0
    } else {
        (threshold / norm).min(1.0) as f32
    }
}

/// APG's projection coefficient ⟨Δ,c⟩/max(‖c‖,1e-12)² (f64, as torch's normalize).
pub fn apg_projection(dc: f64, cc: f64) -> f64 {
    let n = cc.sqrt().max(1e-12);
    dc / (n * n)
}

// Tests that call `evaluate*` live in tests/evaluator.rs: from here they would
// make the unit-test build compile every kernel a second time (minutes on CI).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half_on_every_class_of_input() {
        let mut bits: Vec<u32> = (0..200_000u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        bits.extend([0, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0x3f80_8000, 0x3f81_8000]);
        for b in bits {
            let x = f32::from_bits(b);
            let ours = bf16_bits_rne(x);
            let theirs = bf16::from_f32(x).to_bits();
            if x.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{b:#x}");
            }
        }
    }

    #[test]
    fn direct_and_blocked_paths_agree_bit_for_bit() {
        let xs: Vec<Vec<bf16>> = (0..9)
            .map(|k| (0..5000).map(|i| bf16::from_f32(((i * 37 + k * 11) % 97) as f32 / 13.0 - 3.0)).collect())
            .collect();
        for n in 1..=9 {
            let terms: Vec<(&[bf16], f32)> =
                xs[..n].iter().enumerate().map(|(k, x)| (x.as_slice(), 1.7 - k as f32 * 0.9)).collect();
            let mut blocked = vec![bf16::ZERO; 5000];
            combine_blocks(&terms, 0, kept(&mut blocked));
            let mut out = vec![bf16::ZERO; 5000];
            combine_into(&terms, &mut out);
            assert_eq!(out, blocked, "{n} terms");
        }
    }
}
