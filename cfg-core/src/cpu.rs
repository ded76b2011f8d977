//! The CPU evaluator of canonical programs (rayon, explicit fma, f32 accumulation).

use crate::error::CoreError;
use crate::program::{Form, Op, Program, Value};
use crate::reduce::{dot_f32, dot_f64, Groups, Reduce};
use crate::state::GuidanceState;
use crate::tensor::{Tensor, TensorData};
use crate::{DType, Shape};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per inner block (fits L1 with a few inputs).
const BLOCK: usize = 2048;
/// Elements per parallel task.
const TASK: usize = BLOCK * 32;

/// An element type the evaluator can load into f32 and store from f32.
pub trait Element: Copy + Send + Sync + 'static {
    /// Whether `get`/`put` are cheap enough to vectorize element by element.
    const DIRECT: bool;
    /// One element widened to f32.
    fn get(self) -> f32;
    /// One f32 rounded (nearest even) to this type.
    fn put(x: f32) -> Self;
    /// Widens `src` into `dst`.
    fn load(src: &[Self], dst: &mut [f32]);
    /// Rounds `src` (nearest even) into `dst`.
    fn store(src: &[f32], dst: &mut [Self]);
}

impl Element for f32 {
    const DIRECT: bool = true;
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
}

/// f32 → bf16 bits, round to nearest even; NaNs stay NaN (quieted).
#[inline(always)]
pub fn bf16_bits_rne(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) | 0x40) as u16;
    if bits & 0x7fff_ffff > 0x7f80_0000 {
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

/// `out = Σ w_k · x_k` in term order (`w_0·x_0` first, then fma), rounded into `out`.
pub fn combine_into<I: Element, O: Element>(terms: &[(&[I], f32)], out: &mut [O]) {
    out.par_chunks_mut(TASK).enumerate().for_each(|(task, out_task)| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the features this function was compiled for are present.
            unsafe { combine_task_avx2(terms, task * TASK, out_task) };
            return;
        }
        combine_task(terms, task * TASK, out_task)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn combine_task_avx2<I: Element, O: Element>(terms: &[(&[I], f32)], offset: usize, out: &mut [O]) {
    combine_task(terms, offset, out)
}

/// One parallel task of `out.len()` elements starting at `offset`.
#[inline(always)]
fn combine_task<I: Element, O: Element>(terms: &[(&[I], f32)], offset: usize, out: &mut [O]) {
    if I::DIRECT && O::DIRECT {
        match terms.len() {
            1 => return combine_direct::<I, O, 1>(terms, offset, out),
            2 => return combine_direct::<I, O, 2>(terms, offset, out),
            3 => return combine_direct::<I, O, 3>(terms, offset, out),
            4 => return combine_direct::<I, O, 4>(terms, offset, out),
            5 => return combine_direct::<I, O, 5>(terms, offset, out),
            6 => return combine_direct::<I, O, 6>(terms, offset, out),
            7 => return combine_direct::<I, O, 7>(terms, offset, out),
            8 => return combine_direct::<I, O, 8>(terms, offset, out),
            _ => {}
        }
    }
    combine_blocks(terms, offset, out)
}

/// N terms known at compile time: the accumulator stays in registers and the
/// element loop vectorizes. Same order as [`combine_blocks`]: `w0·x0`, then fma.
#[inline(always)]
fn combine_direct<I: Element, O: Element, const N: usize>(terms: &[(&[I], f32)], offset: usize, out: &mut [O]) {
    let n = out.len();
    let srcs: [&[I]; N] = std::array::from_fn(|k| &terms[k].0[offset..offset + n]);
    let w: [f32; N] = std::array::from_fn(|k| terms[k].1);
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = w[0] * srcs[0][i].get();
        for k in 1..N {
            acc = w[k].mul_add(srcs[k][i].get(), acc);
        }
        *o = O::put(acc);
    }
}

/// Any number of terms: blocks of [`BLOCK`] elements loaded, combined and stored.
#[inline(always)]
fn combine_blocks<I: Element, O: Element>(terms: &[(&[I], f32)], offset: usize, out: &mut [O]) {
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
        O::store(acc, out_block);
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
    check_inputs(program, inputs, dtype, shape)?;
    for op in &program.ops {
        if let Op::Apg { slot, .. } = op {
            if state.device_momentum(slot).is_some() {
                return Err(CoreError::DeviceState(slot.clone()));
            }
            // A momentum of another size belongs to another run: never restart it silently.
            if let Some(held) = state.momentum(slot).map(<[f32]>::len).filter(|&n| n != shape.numel()) {
                return Err(CoreError::StateMismatch { slot: slot.clone(), held, got: shape.numel() });
            }
        }
    }
    let out = if program.ops.is_empty() && program.latches.is_empty() {
        match program.result {
            Value::Form(i) => fused_form(&program.forms[i], inputs, dtype, shape),
            _ => Tensor::zeros(dtype, shape.clone()),
        }
    } else {
        let f32_result = Evaluation::new(program, inputs, shape).run(state)?;
        round_to(dtype, shape, &f32_result)
    };
    for slot in &program.counters {
        state.advance(slot);
    }
    Ok(out)
}

/// Checks that inputs match the program's branches, `dtype` and `shape`.
pub fn check_inputs(program: &Program, inputs: &[&Tensor], dtype: DType, shape: &Shape) -> Result<(), CoreError> {
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
    match &mut out.data {
        TensorData::F32(o) => o.copy_from_slice(values),
        TensorData::F16(o) => o.par_chunks_mut(TASK).zip(values.par_chunks(TASK)).for_each(|(o, v)| f16::store(v, o)),
        TensorData::BF16(o) => o.par_chunks_mut(TASK).zip(values.par_chunks(TASK)).for_each(|(o, v)| bf16::store(v, o)),
    }
    out
}

fn fused_form(form: &Form, inputs: &[&Tensor], dtype: DType, shape: &Shape) -> Tensor {
    let mut out = Tensor::zeros(dtype, shape.clone());
    match &mut out.data {
        TensorData::F32(o) => form_into(form, inputs, o),
        TensorData::F16(o) => form_into(form, inputs, o),
        TensorData::BF16(o) => form_into(form, inputs, o),
    }
    out
}

/// Computes a linear form over the inputs into f32.
pub fn form_f32(form: &Form, inputs: &[&Tensor], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    form_into(form, inputs, &mut out);
    out
}

/// `out = form(inputs)`, the inputs all of one dtype (checked by the caller).
fn form_into<O: Element>(form: &Form, inputs: &[&Tensor], out: &mut [O]) {
    macro_rules! go {
        ($variant:ident) => {{
            let terms: Vec<_> = form
                .terms
                .iter()
                .map(|&(b, w)| match &inputs[b].data {
                    TensorData::$variant(v) => (v.as_slice(), w),
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

struct Evaluation<'a> {
    program: &'a Program,
    inputs: &'a [&'a Tensor],
    shape: &'a Shape,
    forms: Vec<Option<Vec<f32>>>,
    ops: Vec<Option<Vec<f32>>>,
}

impl<'a> Evaluation<'a> {
    fn new(program: &'a Program, inputs: &'a [&'a Tensor], shape: &'a Shape) -> Self {
        Evaluation {
            program,
            inputs,
            shape,
            forms: vec![None; program.forms.len()],
            ops: vec![None; program.ops.len()],
        }
    }

    fn n(&self) -> usize {
        self.shape.numel()
    }

    fn value(&mut self, v: Value) -> Vec<f32> {
        match v {
            Value::Zero => vec![0.0; self.n()],
            Value::Form(i) => {
                if self.forms[i].is_none() {
                    self.forms[i] = Some(form_f32(&self.program.forms[i], self.inputs, self.n()));
                }
                self.forms[i].clone().expect("computed above")
            }
            Value::Op(i) => self.ops[i].clone().expect("ops are evaluated in order"),
        }
    }

    fn run(mut self, state: &mut GuidanceState) -> Result<Vec<f32>, CoreError> {
        for (i, op) in self.program.ops.iter().enumerate() {
            let out = self.op(op, state);
            self.ops[i] = Some(out);
        }
        for latch in &self.program.latches {
            let (a, b) = (self.value(latch.a), self.value(latch.b));
            if cosine(&a, &b) > latch.threshold {
                state.latch(&latch.slot);
            }
        }
        Ok(self.value(self.program.result))
    }

    fn op(&mut self, op: &Op, state: &mut GuidanceState) -> Vec<f32> {
        let shape = self.shape;
        match op {
            Op::Mix { terms } => {
                let vals: Vec<(Vec<f32>, f32)> = terms.iter().map(|&(v, w)| (self.value(v), w)).collect();
                let refs: Vec<(&[f32], f32)> = vals.iter().map(|(v, w)| (v.as_slice(), *w)).collect();
                let mut out = vec![0.0; self.n()];
                combine_into(&refs, &mut out);
                out
            }
            Op::Renorm { input, reference, over, eps, min, max } => {
                let (g, r) = (self.value(*input), self.value(*reference));
                let groups = Groups::new(*over, shape);
                let factors = group_stats(&groups, |k| {
                    let nr = dot_f32(groups.len, |j| sq(&r, groups.index(k, j))).sqrt();
                    let ng = dot_f32(groups.len, |j| sq(&g, groups.index(k, j))).sqrt();
                    renorm_factor(nr, ng, *eps, *min, *max)
                });
                scale_by_group(&g, &groups, &factors)
            }
            Op::NormCap { input, reference, ratio } => {
                let (g, r) = (self.value(*input), self.value(*reference));
                let nr = dot_f32(r.len(), |j| (r[j], r[j])).sqrt();
                let ng = dot_f32(g.len(), |j| (g[j], g[j])).sqrt();
                let f = norm_cap_factor(nr, ng, *ratio);
                g.par_iter().map(|&x| x * f).collect()
            }
            Op::StdRescale { input, reference, phi, over } => {
                let (g, r) = (self.value(*input), self.value(*reference));
                let groups = Groups::new(*over, shape);
                let factors = group_stats(&groups, |k| {
                    let sr = std_of(&groups, k, &r);
                    let sg = std_of(&groups, k, &g);
                    rescale_factor(sr, sg, *phi)
                });
                scale_by_group(&g, &groups, &factors)
            }
            Op::ZeroStar { cond, uncond, scale, original } => {
                let (c, u) = (self.value(*cond), self.value(*uncond));
                let groups = Groups::new(Reduce::Sample, shape);
                let alphas = group_stats(&groups, |k| {
                    let dot = dot_f32(groups.len, |j| (c[groups.index(k, j)], u[groups.index(k, j)]));
                    let nu = dot_f32(groups.len, |j| sq(&u, groups.index(k, j)));
                    zero_star_alpha(dot, nu)
                });
                let s = *scale;
                let original = *original;
                (0..self.n())
                    .into_par_iter()
                    .map(|i| {
                        let ua = alphas[groups.group_of(i)] * u[i];
                        let base = if original { c[i] } else { ua };
                        s.mul_add(c[i] - ua, base)
                    })
                    .collect()
            }
            Op::Apg { cond, uncond, scale, momentum, norm_threshold, eta, original, slot } => {
                let (c, u) = (self.value(*cond), self.value(*uncond));
                apg(&c, &u, shape, state, slot, *scale, *momentum, *norm_threshold, *eta, *original)
            }
            Op::MagnitudeAware { cond, uncond, scale, alpha } => {
                let (c, u) = (self.value(*cond), self.value(*uncond));
                let delta: Vec<f32> = c.par_iter().zip(&u).map(|(a, b)| a - b).collect();
                let groups = Groups::new(Reduce::Sample, shape);
                let scales = group_stats(&groups, |k| {
                    let nd = dot_f32(groups.len, |j| sq(&delta, groups.index(k, j))).sqrt();
                    let nu = dot_f32(groups.len, |j| sq(&u, groups.index(k, j))).sqrt();
                    magnitude_scale(*scale, *alpha, nd, nu)
                });
                (0..self.n()).into_par_iter().map(|i| scales[groups.group_of(i)].mul_add(delta[i], u[i])).collect()
            }
        }
    }
}

#[inline]
fn sq(v: &[f32], i: usize) -> (f32, f32) {
    (v[i], v[i])
}

fn group_stats(groups: &Groups, f: impl Fn(usize) -> f32 + Sync + Send) -> Vec<f32> {
    (0..groups.count).into_par_iter().map(f).collect()
}

fn scale_by_group(g: &[f32], groups: &Groups, factors: &[f32]) -> Vec<f32> {
    (0..g.len()).into_par_iter().map(|i| g[i] * factors[groups.group_of(i)]).collect()
}

/// Unbiased std of group `k` of `v` from canonical Σx and Σx².
pub fn std_of(groups: &Groups, k: usize, v: &[f32]) -> f64 {
    let s1 = dot_f32(groups.len, |j| (v[groups.index(k, j)], 1.0));
    let s2 = dot_f32(groups.len, |j| sq(v, groups.index(k, j)));
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
pub fn renorm_factor(nr: f64, ng: f64, eps: f64, min: Option<f64>, max: Option<f64>) -> f32 {
    let den = ng + eps;
    if den == 0.0 {
        return 1.0;
    }
    let mut f = nr / den;
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
    let ab = dot_f32(a.len(), |j| (a[j], b[j]));
    let aa = dot_f32(a.len(), |j| (a[j], a[j]));
    let bb = dot_f32(b.len(), |j| (b[j], b[j]));
    let den = (aa * bb).sqrt();
    if den == 0.0 {
        0.0
    } else {
        ab / den
    }
}

#[allow(clippy::too_many_arguments)]
fn apg(
    c: &[f32],
    u: &[f32],
    shape: &Shape,
    state: &mut GuidanceState,
    slot: &str,
    scale: f32,
    momentum: f32,
    threshold: f64,
    eta: f32,
    original: bool,
) -> Vec<f32> {
    let n = c.len();
    let delta: Vec<f32> = c.par_iter().zip(u).map(|(a, b)| a - b).collect();
    let running: Vec<f32> = match state.momentum(slot) {
        Some(prev) if momentum != 0.0 && prev.len() == n => {
            delta.par_iter().zip(prev).map(|(&d, &r)| momentum.mul_add(r, d)).collect()
        }
        _ => delta,
    };
    if momentum != 0.0 {
        state.set_momentum(slot, running.clone());
    }
    let groups = Groups::new(Reduce::Sample, shape);
    let clipped: Vec<f32> = if threshold > 0.0 {
        let factors = group_stats(&groups, |k| {
            let norm = dot_f32(groups.len, |j| sq(&running, groups.index(k, j))).sqrt();
            apg_clip_factor(norm, threshold)
        });
        scale_by_group(&running, &groups, &factors)
    } else {
        running
    };
    let coef: Vec<f64> = (0..groups.count)
        .into_par_iter()
        .map(|k| {
            let dc = dot_f64(groups.len, |j| (clipped[groups.index(k, j)] as f64, c[groups.index(k, j)] as f64));
            let cc = dot_f64(groups.len, |j| (c[groups.index(k, j)] as f64, c[groups.index(k, j)] as f64));
            apg_projection(dc, cc)
        })
        .collect();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let par = coef[groups.group_of(i)] * c[i] as f64;
            let perp = clipped[i] as f64 - par;
            let update = eta.mul_add(par as f32, perp as f32);
            let base = if original { c[i] } else { u[i] };
            scale.mul_add(update, base)
        })
        .collect()
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
            combine_blocks(&terms, 0, &mut blocked);
            let mut out = vec![bf16::ZERO; 5000];
            combine_into(&terms, &mut out);
            assert_eq!(out, blocked, "{n} terms");
        }
    }

    #[test]
    fn combine_is_fma_in_term_order() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [0.1f32, 0.2, 0.3];
        let mut out = [0.0f32; 3];
        combine_into(&[(&a[..], 1.5), (&b[..], -2.5)], &mut out);
        for i in 0..3 {
            assert_eq!(out[i], (-2.5f32).mul_add(b[i], 1.5 * a[i]));
        }
    }
}

#[cfg(test)]
mod device_state_tests {
    use super::*;
    use crate::expr::Space;
    use crate::program::Form;
    use std::sync::Arc;

    #[test]
    fn momentum_kept_on_a_device_is_refused_not_restarted() {
        let slot = "apg".to_string();
        let program = Program {
            output: "x".into(),
            space: Space::Eps,
            branches: vec!["c".into(), "u".into()],
            forms: vec![Form { terms: vec![(0, 1.0)] }, Form { terms: vec![(1, 1.0)] }],
            ops: vec![Op::Apg {
                cond: Value::Form(0),
                uncond: Value::Form(1),
                scale: 5.0,
                momentum: -0.5,
                norm_threshold: 0.0,
                eta: 0.0,
                original: false,
                slot: slot.clone(),
            }],
            latches: vec![],
            counters: vec![],
            result: Value::Op(0),
        };
        let shape = Shape::new([1, 4]);
        let t = Tensor::from_f32(DType::F32, shape.clone(), &[1.0, 2.0, 3.0, 4.0]);
        let mut state = GuidanceState::new();
        evaluate(&program, &[&t, &t], DType::F32, &shape, &mut state).expect("a host state evaluates");
        assert!(state.momentum(&slot).is_some());
        state.set_device_momentum(&slot, 4, Arc::new(0u8));
        let e = evaluate(&program, &[&t, &t], DType::F32, &shape, &mut state).unwrap_err();
        assert!(matches!(&e, CoreError::DeviceState(s) if *s == slot), "{e}");
        state.start();
        evaluate(&program, &[&t, &t], DType::F32, &shape, &mut state).expect("a new run starts afresh");

        // A momentum of another size is an error naming the operator, not a silent restart.
        let wide = Shape::new([2, 4]);
        let t8 = Tensor::from_f32(DType::F32, wide.clone(), &[1.0; 8]);
        let e = evaluate(&program, &[&t8, &t8], DType::F32, &wide, &mut state).unwrap_err();
        assert_eq!(e, CoreError::StateMismatch { slot: slot.clone(), held: 4, got: 8 });
        assert!(e.to_string().contains("`Apg`") && e.to_string().contains("explicit start"), "{e}");
        state.start();
        evaluate(&program, &[&t8, &t8], DType::F32, &wide, &mut state).expect("after a start, any shape");
    }
}
