//! Runs a canonical program on the device, in the CPU evaluator's order.
//!
//! Fast paths (one or two launches, straight from the branch predictions):
//! a linear result; renorm per token (width ≤ 8192); renorm, norm cap or std
//! rescale per sample or over the tensor. Anything else materialises its
//! forms and ops as f32 buffers and runs the generic kernels, then rounds.

use super::device::{Buffer, Device};
use super::error::CudaError;
use super::kernels;
use super::launch::{self, param};
use super::params::{kind, src, FactorArgs, Forms, Groups, RenormArgs, MAX_FORMS, MAX_TERMS};
use cfg_core::program::{Op, Program, Value};
use cfg_core::reduce::{Reduce, SEGMENT};
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;

/// Options of an evaluation.
#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    /// Use the single-pass cooperative rescale where the tensor fits on chip.
    pub cooperative: bool,
    /// Fill the output with a NaN pattern before the kernels run (selftest:
    /// an element a kernel forgets to write then shows up).
    pub poison: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions { cooperative: true, poison: false }
    }
}

fn too_many(what: &str) -> CudaError {
    CudaError::Unsupported(format!("{what}: more than {MAX_TERMS} terms in one form"))
}

/// Forms over `inputs` for the given program forms (terms sorted by branch).
fn forms_of(program: &Program, idx: &[usize], inputs: &[u64]) -> Result<Forms, CudaError> {
    if inputs.len() > MAX_TERMS {
        return Err(too_many(&program.output));
    }
    let mut f = Forms::new(inputs);
    for &i in idx {
        let terms = &program.forms[i].terms;
        if !terms.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(CudaError::Unsupported("form terms are not sorted by branch".into()));
        }
        f.push(terms);
    }
    Ok(f)
}

/// Evaluates `program` on `inputs` (device buffers of `dtype`, following
/// `program.branches`); returns the result in `dtype`. Updates `state`.
pub fn evaluate(
    dev: &Device,
    program: &Program,
    inputs: &[&Buffer],
    dtype: DType,
    shape: &Shape,
    state: &mut GuidanceState,
    opts: ExecOptions,
) -> Result<Buffer, CudaError> {
    let mut out = dev.alloc(dtype, shape.numel())?;
    evaluate_into(dev, program, inputs, shape, state, opts, &mut out)?;
    Ok(out)
}

/// As [`evaluate`], writing the result into `out` (`shape.numel()` elements
/// of the inputs' dtype, overlapping no input): memory of another framework
/// (a torch tensor) is written in place.
pub fn evaluate_into(
    dev: &Device,
    program: &Program,
    inputs: &[&Buffer],
    shape: &Shape,
    state: &mut GuidanceState,
    opts: ExecOptions,
    out: &mut Buffer,
) -> Result<(), CudaError> {
    let (n, dtype) = (shape.numel(), out.dtype);
    if out.len != n || inputs.iter().any(|b| b.dtype != dtype || b.len != n) {
        return Err(CudaError::Unsupported(format!(
            "`{}`: every prediction and the output must hold {shape} {dtype}",
            program.output
        )));
    }
    let addrs: SmallVec<[u64; MAX_TERMS]> = inputs.iter().map(|b| b.addr(dev)).collect();
    if opts.poison {
        launch::poison(dev, out, 0xffff_ffff)?;
    }
    let fast = program.branches.len() <= MAX_TERMS && program.latches.is_empty();
    let done = if program.ops.is_empty() && program.latches.is_empty() {
        match program.result {
            Value::Form(i) => {
                let f = forms_of(program, &[i], &addrs)?;
                launch::combine(dev, &f, dtype, &[out.addr(dev)], dtype, n)?;
            }
            _ => dev.memset_zeros(out)?,
        }
        true
    } else if fast && program.ops.len() == 1 && program.result == Value::Op(0) {
        fused(dev, program, &addrs, dtype, shape, out, opts)?
    } else {
        false
    };
    if !done {
        let result = Generic::new(dev, program, inputs, shape).run(state)?;
        let f = forms_of_identity(result.addr(dev));
        launch::combine(dev, &f, DType::F32, &[out.addr(dev)], dtype, n)?;
        dev.sync()?;
    }
    advance(program, state);
    Ok(())
}

fn advance(program: &Program, state: &mut GuidanceState) {
    for slot in &program.counters {
        state.advance(slot);
    }
}

/// `1·x`: exact, used to round an f32 buffer into another dtype.
fn forms_of_identity(x: u64) -> Forms {
    let mut f = Forms::new(&[x]);
    f.push(&[(0, 1.0)]);
    f
}

/// The fused single-op paths; false when the op has none.
fn fused(
    dev: &Device,
    p: &Program,
    addrs: &[u64],
    dtype: DType,
    shape: &Shape,
    out: &Buffer,
    opts: ExecOptions,
) -> Result<bool, CudaError> {
    let (input, reference) = match &p.ops[0] {
        Op::Renorm { input, reference, .. }
        | Op::NormCap { input, reference, .. }
        | Op::StdRescale { input, reference, .. } => (*input, *reference),
        _ => return Ok(false),
    };
    let (Value::Form(gi), Value::Form(ri)) = (input, reference) else { return Ok(false) };
    let forms = forms_of(p, &[gi, ri], addrs)?;
    let n = shape.numel();
    let width = shape.last().max(1);
    let per_sample = shape.per_sample().max(1);
    let opt = |o: Option<f64>| (i32::from(o.is_some()), o.unwrap_or(0.0));
    match &p.ops[0] {
        Op::Renorm { over: Reduce::Token, eps, min, max, .. } if width <= SEGMENT && n > 0 => {
            let ((has_lo, lo), (has_hi, hi)) = (opt(*min), opt(*max));
            let args = RenormArgs {
                eps: *eps,
                lo,
                hi,
                tokens: (n / width) as i64,
                width: width as i32,
                has_lo,
                has_hi,
                pad: 0,
            };
            launch::renorm_token(dev, &forms, dtype, out, &args)?;
        }
        Op::Renorm { over: over @ (Reduce::Sample | Reduce::Tensor), eps, min, max, .. } => {
            let ((has_lo, lo), (has_hi, hi)) = (opt(*min), opt(*max));
            let f = FactorArgs { p0: *eps, p1: lo, p2: hi, kind: kind::RENORM, has_lo, has_hi, ..Default::default() };
            let (groups, len) = if *over == Reduce::Sample { (shape.batch(), per_sample) } else { (1, n) };
            launch::group_rescale(dev, &forms, dtype, out, groups, len, f, opts.cooperative)?;
        }
        Op::NormCap { ratio, .. } => {
            let f = FactorArgs { p0: *ratio, kind: kind::NORM_CAP, ..Default::default() };
            launch::group_rescale(dev, &forms, dtype, out, 1, n, f, opts.cooperative)?;
        }
        Op::StdRescale { phi, over: over @ (Reduce::Sample | Reduce::Tensor), .. } => {
            let f = FactorArgs { p0: *phi, kind: kind::STD, ..Default::default() };
            let (groups, len) = if *over == Reduce::Sample { (shape.batch(), per_sample) } else { (1, n) };
            launch::group_rescale(dev, &forms, dtype, out, groups, len, f, opts.cooperative)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The generic path: every value an f32 buffer.
struct Generic<'a> {
    dev: &'a Device,
    program: &'a Program,
    inputs: &'a [&'a Buffer],
    shape: &'a Shape,
    values: HashMap<Value, Buffer>,
}

impl<'a> Generic<'a> {
    fn new(dev: &'a Device, program: &'a Program, inputs: &'a [&'a Buffer], shape: &'a Shape) -> Self {
        Generic { dev, program, inputs, shape, values: HashMap::new() }
    }

    fn n(&self) -> usize {
        self.shape.numel()
    }

    /// Computes every form the program reads, up to four per launch.
    fn forms(&mut self) -> Result<(), CudaError> {
        let addrs: Vec<u64> = self.inputs.iter().map(|b| b.addr(self.dev)).collect();
        let dtype = self.inputs.first().map_or(DType::F32, |b| b.dtype);
        let needed: Vec<usize> =
            (0..self.program.forms.len()).filter(|&i| self.program.reads(Value::Form(i)) > 0).collect();
        for chunk in needed.chunks(MAX_FORMS) {
            let f = forms_of(self.program, chunk, &addrs)?;
            let outs: Vec<Buffer> =
                chunk.iter().map(|_| self.dev.alloc(DType::F32, self.n())).collect::<Result<_, _>>()?;
            let oa: Vec<u64> = outs.iter().map(|b| b.addr(self.dev)).collect();
            launch::combine(self.dev, &f, dtype, &oa, DType::F32, self.n())?;
            for (&i, b) in chunk.iter().zip(outs) {
                self.values.insert(Value::Form(i), b);
            }
        }
        Ok(())
    }

    fn addr(&mut self, v: Value) -> Result<u64, CudaError> {
        if !self.values.contains_key(&v) {
            if v != Value::Zero {
                return Err(CudaError::Unsupported(format!("value {v:?} read before it is computed")));
            }
            let z = self.dev.zeros(DType::F32, self.n())?;
            self.values.insert(v, z);
        }
        Ok(self.values[&v].addr(self.dev))
    }

    fn run(mut self, state: &mut GuidanceState) -> Result<Buffer, CudaError> {
        if self.inputs.len() > MAX_TERMS {
            return Err(too_many(&self.program.output));
        }
        self.forms()?;
        for (i, op) in self.program.ops.iter().enumerate() {
            let out = self.op(op, state)?;
            self.values.insert(Value::Op(i), out);
        }
        for latch in &self.program.latches {
            let (a, b) = (self.addr(latch.a)?, self.addr(latch.b)?);
            let g = Groups::new(Reduce::Tensor, self.shape);
            let xy = [(src::X, src::Y), (src::X, src::X), (src::Y, src::Y)];
            let f = FactorArgs { kind: kind::COSINE, ..Default::default() };
            let cos = launch::group_factors(self.dev, a, b, &g, &xy, false, f)?;
            if self.dev.download_f64(&cos, 1)?[0] > latch.threshold {
                state.latch(&latch.slot);
            }
        }
        let r = self.program.result;
        self.addr(r)?;
        self.dev.sync()?;
        Ok(self.values.remove(&r).expect("computed above"))
    }

    fn op(&mut self, op: &Op, state: &mut GuidanceState) -> Result<Buffer, CudaError> {
        let (dev, n, shape) = (self.dev, self.n(), self.shape);
        let out = dev.alloc(DType::F32, n)?;
        let o = out.addr(dev);
        let n64 = n as i64;
        let opt = |x: Option<f64>| (i32::from(x.is_some()), x.unwrap_or(0.0));
        match op {
            Op::Mix { terms } => {
                if terms.len() > MAX_TERMS {
                    return Err(too_many("mix"));
                }
                let xs: Vec<u64> = terms.iter().map(|&(v, _)| self.addr(v)).collect::<Result<_, _>>()?;
                let mut f = Forms::new(&xs);
                let slots: Vec<(usize, f32)> = terms.iter().enumerate().map(|(k, &(_, w))| (k, w)).collect();
                f.push(&slots);
                launch::combine(dev, &f, DType::F32, &[o], DType::F32, n)?;
            }
            Op::Renorm { input, reference, over, eps, min, max } => {
                let (g, r) = (self.addr(*input)?, self.addr(*reference)?);
                let groups = Groups::new(*over, shape);
                let ((has_lo, lo), (has_hi, hi)) = (opt(*min), opt(*max));
                let f =
                    FactorArgs { p0: *eps, p1: lo, p2: hi, kind: kind::RENORM, has_lo, has_hi, ..Default::default() };
                let fac = launch::group_factors(dev, g, r, &groups, &[(src::Y, src::Y), (src::X, src::X)], false, f)?;
                launch::scale_groups(dev, g, &fac, &groups, &out)?;
            }
            Op::NormCap { input, reference, ratio } => {
                let (g, r) = (self.addr(*input)?, self.addr(*reference)?);
                let groups = Groups::new(Reduce::Tensor, shape);
                let f = FactorArgs { p0: *ratio, kind: kind::NORM_CAP, ..Default::default() };
                let fac = launch::group_factors(dev, g, r, &groups, &[(src::Y, src::Y), (src::X, src::X)], false, f)?;
                launch::scale_groups(dev, g, &fac, &groups, &out)?;
            }
            Op::StdRescale { input, reference, phi, over } => {
                let (g, r) = (self.addr(*input)?, self.addr(*reference)?);
                let groups = Groups::new(*over, shape);
                let f = FactorArgs { p0: *phi, kind: kind::STD, ..Default::default() };
                let dots = [(src::Y, src::ONE), (src::Y, src::Y), (src::X, src::ONE), (src::X, src::X)];
                let fac = launch::group_factors(dev, g, r, &groups, &dots, false, f)?;
                launch::scale_groups(dev, g, &fac, &groups, &out)?;
            }
            Op::ZeroStar { cond, uncond, scale, original } => {
                let (c, u) = (self.addr(*cond)?, self.addr(*uncond)?);
                let groups = Groups::new(Reduce::Sample, shape);
                let f = FactorArgs { kind: kind::ZERO_STAR, ..Default::default() };
                let alpha = launch::group_factors(dev, c, u, &groups, &[(src::X, src::Y), (src::Y, src::Y)], false, f)?;
                let (a, orig) = (dev.addr(&alpha), i32::from(*original));
                let k = dev.function(&kernels::GUIDANCE, "zero_star")?;
                // SAFETY: matches `zero_star(c, u, alpha, Groups, float, int, float*, i64)`.
                unsafe {
                    launch::launch(
                        dev,
                        &k,
                        dev.grid(n),
                        &mut [
                            param(&c),
                            param(&u),
                            param(&a),
                            param(&groups),
                            param(scale),
                            param(&orig),
                            param(&o),
                            param(&n64),
                        ],
                    )
                }?;
                dev.sync()?;
            }
            Op::MagnitudeAware { cond, uncond, scale, alpha } => {
                let (c, u) = (self.addr(*cond)?, self.addr(*uncond)?);
                let groups = Groups::new(Reduce::Sample, shape);
                let f = FactorArgs { p0: *scale, p1: *alpha, kind: kind::MAGNITUDE, ..Default::default() };
                let dots = [(src::X_MINUS_Y, src::X_MINUS_Y), (src::Y, src::Y)];
                let ratios = launch::group_factors(dev, c, u, &groups, &dots, false, f)?;
                let ratios = dev.download_f64(&ratios, groups.count as usize)?;
                let scales: Vec<f64> =
                    ratios.iter().map(|&r| cfg_core::cpu::magnitude_scale_of_ratio(*scale, *alpha, r) as f64).collect();
                let s = dev.upload_f64(&scales)?;
                let sa = dev.addr(&s);
                let k = dev.function(&kernels::GUIDANCE, "magnitude_aware")?;
                // SAFETY: matches `magnitude_aware(c, u, scale, Groups, float*, i64)`.
                unsafe {
                    launch::launch(
                        dev,
                        &k,
                        dev.grid(n),
                        &mut [param(&c), param(&u), param(&sa), param(&groups), param(&o), param(&n64)],
                    )
                }?;
                dev.sync()?;
            }
            Op::Reject { input, direction, over } => {
                let (x, d) = (self.addr(*input)?, self.addr(*direction)?);
                let groups = Groups::new(*over, shape);
                let f = FactorArgs { kind: kind::REJECT, ..Default::default() };
                let k = launch::group_factors(dev, x, d, &groups, &[(src::X, src::Y), (src::Y, src::Y)], false, f)?;
                let ka = dev.addr(&k);
                let kernel = dev.function(&kernels::GUIDANCE, "reject")?;
                // SAFETY: matches `reject(x, d, k, Groups, float*, i64)`; k holds one double per group.
                unsafe {
                    launch::launch(
                        dev,
                        &kernel,
                        dev.grid(n),
                        &mut [param(&x), param(&d), param(&ka), param(&groups), param(&o), param(&n64)],
                    )
                }?;
                dev.sync()?;
            }
            Op::MomentumCfg { cond, uncond, scale, momentum, original, slot } => {
                let (c, u) = (self.addr(*cond)?, self.addr(*uncond)?);
                self.running(c, u, state, slot, *momentum)?;
                launch::cfg_delta(dev, (c, u), *scale, *original, o, n)?;
                dev.sync()?;
            }
            Op::Tcfg { cond, uncond, scale, original } => {
                let (c, u) = (self.addr(*cond)?, self.addr(*uncond)?);
                let groups = Groups::new(Reduce::Sample, shape);
                let dots = [(src::X, src::X), (src::X, src::Y), (src::Y, src::Y)];
                let coefficient = |kind| {
                    let f = FactorArgs { kind, ..Default::default() };
                    launch::group_factors(dev, c, u, &groups, &dots, false, f)
                };
                let (alpha, beta) = (coefficient(kind::TCFG_ALPHA)?, coefficient(kind::TCFG_BETA)?);
                let (a, b, orig) = (dev.addr(&alpha), dev.addr(&beta), i32::from(*original));
                let k = dev.function(&kernels::GUIDANCE, "tcfg")?;
                // SAFETY: matches `tcfg(c, u, alpha, beta, Groups, float, int, float*, i64)`;
                // alpha and beta hold one double per group.
                unsafe {
                    launch::launch(
                        dev,
                        &k,
                        dev.grid(n),
                        &mut [
                            param(&c),
                            param(&u),
                            param(&a),
                            param(&b),
                            param(&groups),
                            param(scale),
                            param(&orig),
                            param(&o),
                            param(&n64),
                        ],
                    )
                }?;
                dev.sync()?;
            }
            Op::Chunked { cond, prefix, uncond, weights, chunk_frames, layout } => {
                let (c, p, u) = (self.addr(*cond)?, self.addr(*prefix)?, self.addr(*uncond)?);
                let ch = cfg_core::chunked::Chunks::new(layout, shape, *chunk_frames, weights.len())
                    .map_err(CudaError::Unsupported)?;
                let table: Vec<f32> = weights.iter().flatten().copied().collect();
                let w = dev.upload_f32(&table)?;
                let wa = w.addr(dev);
                let (frames, stride, cf) = (ch.frames as i64, ch.stride as i64, ch.chunk_frames as i64);
                let k = dev.function(&kernels::GUIDANCE, "chunked")?;
                // SAFETY: matches `chunked(c, prefix, u, weights, i64, i64, i64, float*, i64)`; the
                // table holds 3 floats per chunk and every element's chunk is below its count.
                unsafe {
                    launch::launch(
                        dev,
                        &k,
                        dev.grid(n),
                        &mut [
                            param(&c),
                            param(&p),
                            param(&u),
                            param(&wa),
                            param(&frames),
                            param(&stride),
                            param(&cf),
                            param(&o),
                            param(&n64),
                        ],
                    )
                }?;
                dev.sync()?;
            }
            Op::Fdg { cond, uncond, bands, original, layout } => {
                let (c, u) = (self.addr(*cond)?, self.addr(*uncond)?);
                let p = cfg_core::fdg::Pyramid::new(layout, shape, bands.len()).map_err(CudaError::Unsupported)?;
                super::fdg::fdg(dev, &p, c, u, bands, *original, &out)?;
            }
            Op::Apg { cond, uncond, scale, momentum, norm_threshold, eta, original, slot } => {
                let (c, u) = (self.addr(*cond)?, self.addr(*uncond)?);
                self.apg(c, u, o, state, slot, *scale, *momentum, *norm_threshold, *eta, *original)?;
            }
        }
        Ok(out)
    }

    /// APG's running average `d = c − u; r = fma(β, prev, d)` (or d) into a new
    /// buffer, which becomes the slot's device-resident momentum when β ≠ 0.
    fn running(
        &mut self,
        c: u64,
        u: u64,
        state: &mut GuidanceState,
        slot: &str,
        beta: f32,
    ) -> Result<Arc<Buffer>, CudaError> {
        let (dev, n) = (self.dev, self.n());
        let n64 = n as i64;
        // The previous momentum: kept on this device since the last step or,
        // in a state the CPU filled, uploaded once.
        let uploaded;
        let prev = match (beta != 0.0, state.device_momentum(slot), state.momentum(slot)) {
            (false, ..) => None,
            (true, Some((len, buffer)), _) => {
                let b = buffer.downcast_ref::<Buffer>().filter(|b| dev.owns(b)).ok_or_else(|| {
                    CudaError::Unsupported(format!("APG `{slot}`: its momentum lives on another device"))
                })?;
                (len == n).then(|| b.addr(dev))
            }
            (true, None, Some(p)) if p.len() == n => {
                uploaded = dev.upload_f32(p)?;
                Some(uploaded.addr(dev))
            }
            _ => None,
        };
        let use_prev = i32::from(prev.is_some());
        // 0 is never read: the kernel reads `prev` only with use_prev.
        let m = prev.unwrap_or(0);
        // The new running average is the state from here on, never written
        // again (clones of the state stay valid).
        let running = Arc::new(dev.alloc(DType::F32, n)?);
        let r = running.addr(dev);
        let k = dev.function(&kernels::GUIDANCE, "apg_running")?;
        // SAFETY: matches `apg_running(c, u, const float* prev, int, float, float*, i64)`;
        // `prev` holds n values when use_prev is set.
        unsafe {
            launch::launch(
                dev,
                &k,
                dev.grid(n),
                &mut [param(&c), param(&u), param(&m), param(&use_prev), param(&beta), param(&r), param(&n64)],
            )
        }?;
        if beta != 0.0 {
            state.set_device_momentum(slot, n, running.clone());
        }
        Ok(running)
    }

    /// APG: running average (the momentum stays in device memory between
    /// steps), optional norm clip, f64 projection on c, update.
    #[allow(clippy::too_many_arguments)]
    fn apg(
        &mut self,
        c: u64,
        u: u64,
        o: u64,
        state: &mut GuidanceState,
        slot: &str,
        scale: f32,
        beta: f32,
        threshold: f64,
        eta: f32,
        original: bool,
    ) -> Result<(), CudaError> {
        let (dev, shape) = (self.dev, self.shape);
        let running = self.running(c, u, state, slot, beta)?;
        let (n, r) = (self.n(), running.addr(dev));
        let groups = Groups::new(Reduce::Sample, shape);
        let clipped = if threshold > 0.0 {
            let f = FactorArgs { p0: threshold, kind: kind::APG_CLIP, ..Default::default() };
            let fac = launch::group_factors(dev, r, r, &groups, &[(src::X, src::X)], false, f)?;
            let out = dev.alloc(DType::F32, n)?;
            launch::scale_groups(dev, r, &fac, &groups, &out)?;
            Some(out)
        } else {
            None
        };
        let d = clipped.as_ref().map_or(r, |b| b.addr(dev));
        launch::apg_combine(dev, (c, u, d), &groups, eta, scale, original, o, n)
    }
}
