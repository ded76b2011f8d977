//! APG evaluated from its linear forms: the momentum updated in place, the
//! norm clip and the f64 projection from per-segment statistics, then the
//! apply. Passes: the running average with ‖running‖² and ‖c‖² (and
//! ⟨running, c⟩ when there is no clip), ⟨clipped, c⟩ (only with a clip), the
//! apply, which writes eight lanes at a time straight into the output.

use crate::canon::Lanes;
use crate::cpu::{apg_clip_factor, apg_projection, Element};
use crate::fused::{
    for_segments, form_ref, group_tasks, in_order, per_segment, put_scratch, take_scratch, Terms, BLOCK, TASK,
};
use crate::par;
use crate::reduce::{LANES, SEGMENT};
use crate::simd::{self, Num, Task, Vector};
use crate::slot::Slot;
use half::bf16;

/// APG's parameters and inputs.
pub struct Apg<'a, I> {
    /// Cond.
    pub cond: Terms<'a, I>,
    /// Uncond.
    pub uncond: Terms<'a, I>,
    /// Scale.
    pub scale: f32,
    /// β.
    pub momentum: f32,
    /// Norm threshold (0 = off).
    pub threshold: f64,
    /// η.
    pub eta: f32,
    /// Base on cond.
    pub original: bool,
}

/// Evaluates APG over groups of `len` elements into `out`. With a momentum,
/// `buffer` holds the previous running average when `has_prev`, and holds
/// the new one on return.
pub fn apg<I: Element, S: Slot>(p: &Apg<I>, len: usize, mut buffer: Option<&mut [f32]>, has_prev: bool, out: &mut [S]) {
    if out.is_empty() || len == 0 {
        return;
    }
    let count = out.len() / len;
    let clipping = p.threshold > 0.0;
    // Pass 1, per group, per segment: [‖running‖², ⟨running, c⟩ (without a clip), ‖c‖²].
    let segs = len.div_ceil(SEGMENT);
    let first_pass = Wanted { norm: true, rc: !clipping, cc: true };
    let first: Vec<[f64; 3]> = match buffer.as_deref_mut() {
        Some(buf) => {
            // Each segment's statistics beside its part of the buffer.
            let mut work: Vec<([f64; 3], &mut [f32])> =
                buf.chunks_mut(len).flat_map(|group| group.chunks_mut(SEGMENT)).map(|seg| ([0.0; 3], seg)).collect();
            for_segments(&mut work, len, |(start, _), (stats, seg)| {
                *stats = simd::run(Update { p, start, seg, has_prev, wanted: first_pass })
            });
            work.iter().map(|w| w.0).collect()
        }
        None => per_segment(count, len, |start, n| {
            simd::run(Stats { p, start, n, stored: None, clip: None, wanted: first_pass })
        }),
    };
    let stored = buffer.as_deref();
    let clips: Vec<Option<f32>> =
        first.chunks(segs).map(|s| clipping.then(|| apg_clip_factor(in_order(s)[0].sqrt(), p.threshold))).collect();
    // ⟨clipped, c⟩ needs the clip: a second pass.
    let second = clipping.then(|| {
        let wanted = Wanted { norm: false, rc: true, cc: false };
        per_segment(count, len, |start, n| simd::run(Stats { p, start, n, stored, clip: clips[start / len], wanted }))
    });
    let rc = second.as_ref().unwrap_or(&first);
    let coefs: Vec<f64> = rc
        .chunks(segs)
        .zip(first.chunks(segs))
        .map(|(rc, cc)| apg_projection(in_order(rc)[1], in_order(cc)[2]))
        .collect();
    par::for_each(group_tasks(out, len), |(g, t, out)| {
        let (clip, coef) = (clips[g], coefs[g]);
        simd::run(Apply { p, start: g * len + t * TASK, stored, clip, coef, out })
    });
}

/// The update over `start..start + r.len()`, times the clip when there is
/// one: the stored running average (read in place when unclipped), or
/// Δ = c − u, which `delta` writes into `r` (so u is only loaded then).
#[inline(always)]
fn update<'s>(
    stored: Option<&'s [f32]>,
    clip: Option<f32>,
    start: usize,
    r: &'s mut [f32],
    delta: impl FnOnce(&mut [f32]),
) -> &'s [f32] {
    let m = r.len();
    match (stored.map(|s| &s[start..start + m]), clip) {
        (Some(s), None) => return s,
        (Some(s), Some(f)) => {
            for (r, s) in r.iter_mut().zip(s) {
                *r = s * f;
            }
        }
        (None, clip) => {
            delta(r);
            if let Some(f) = clip {
                for x in r.iter_mut() {
                    *x *= f;
                }
            }
        }
    }
    r
}

/// `r = c − u`.
#[inline(always)]
fn difference(c: &[f32], u: &[f32], r: &mut [f32]) {
    for ((r, c), u) in r.iter_mut().zip(c).zip(u) {
        *r = c - u;
    }
}

/// Elements loaded at once by a statistics pass (three blocks stay in L1).
const CHUNK: usize = 4 * LANES;

/// Which of [‖r‖², ⟨r, c⟩, ‖c‖²] a pass computes.
#[derive(Clone, Copy)]
struct Wanted {
    norm: bool,
    rc: bool,
    cc: bool,
}

/// One segment's [‖r‖², ⟨r, c⟩, ‖c‖²] (the dots in f64), fed chunk by
/// chunk; those not wanted are 0.
struct SegmentStats {
    norm: Lanes<f32>,
    rc: Lanes<f64>,
    cc: Lanes<f64>,
    wanted: Wanted,
}

impl SegmentStats {
    #[inline(always)]
    fn new(wanted: Wanted) -> Self {
        SegmentStats { norm: Lanes::new(), rc: Lanes::new(), cc: Lanes::new(), wanted }
    }

    #[inline(always)]
    fn add(&mut self, r: &[f32], c: &[f32]) {
        if self.wanted.norm {
            self.norm.add(r, r);
        }
        if self.wanted.rc {
            self.rc.add(r, c);
        }
        if self.wanted.cc {
            self.cc.add(c, c);
        }
    }

    #[inline(always)]
    fn totals(self) -> [f64; 3] {
        let w = self.wanted;
        let pick = |on: bool, t: f64| if on { t } else { 0.0 };
        [pick(w.norm, self.norm.total()), pick(w.rc, self.rc.total()), pick(w.cc, self.cc.total())]
    }
}

/// Pass 1 with a momentum: advances one segment of the buffer in place
/// (fma(β, previous, c − u), or c − u without a previous one).
struct Update<'a, I> {
    p: &'a Apg<'a, I>,
    start: usize,
    seg: &'a mut [f32],
    has_prev: bool,
    wanted: Wanted,
}

impl<I: Element> Task for Update<'_, I> {
    type Out = [f64; 3];
    #[inline(always)]
    fn run<V: Vector>(self) -> [f64; 3] {
        // The thread's scratch, not arrays on the stack: those are cleared per task.
        let mut buf = take_scratch(2 * CHUNK);
        let (c, u) = buf.split_at_mut(CHUNK);
        let beta = self.p.momentum;
        let mut stats = SegmentStats::new(self.wanted);
        for (k, seg) in self.seg.chunks_mut(CHUNK).enumerate() {
            let (m, start) = (seg.len(), self.start + k * CHUNK);
            let c = form_ref(self.p.cond, start, &mut c[..m]);
            let u = form_ref(self.p.uncond, start, &mut u[..m]);
            if self.has_prev {
                for ((r, c), u) in seg.iter_mut().zip(c).zip(u) {
                    *r = beta.mul_add(*r, c - u);
                }
            } else {
                difference(c, u, seg);
            }
            stats.add(seg, c);
        }
        put_scratch(buf);
        stats.totals()
    }
}

/// A statistics pass over one segment, reading the stored running average or Δ.
struct Stats<'a, I> {
    p: &'a Apg<'a, I>,
    start: usize,
    n: usize,
    stored: Option<&'a [f32]>,
    clip: Option<f32>,
    wanted: Wanted,
}

impl<I: Element> Task for Stats<'_, I> {
    type Out = [f64; 3];
    #[inline(always)]
    fn run<V: Vector>(self) -> [f64; 3] {
        let mut buf = take_scratch(3 * CHUNK);
        let (c, rest) = buf.split_at_mut(CHUNK);
        let (u, r) = rest.split_at_mut(CHUNK);
        let mut stats = SegmentStats::new(self.wanted);
        let mut pos = 0;
        while pos < self.n {
            let (m, start) = (CHUNK.min(self.n - pos), self.start + pos);
            let c = form_ref(self.p.cond, start, &mut c[..m]);
            let r = update(self.stored, self.clip, start, &mut r[..m], |r| {
                difference(c, form_ref(self.p.uncond, start, &mut u[..m]), r)
            });
            stats.add(r, c);
            pos += m;
        }
        put_scratch(buf);
        stats.totals()
    }
}

/// The apply over a run of one group.
struct Apply<'a, I, S> {
    p: &'a Apg<'a, I>,
    start: usize,
    stored: Option<&'a [f32]>,
    clip: Option<f32>,
    coef: f64,
    out: &'a mut [S],
}

/// One output from c, u and the unclipped update `r` (`r·1` is `r`, so
/// without a clip the factor is 1): the f64 projection of the clipped update
/// onto c, its parts weighted, added to the base. (Eight lanes: the same
/// steps with [`Vector::project_f64`].)
#[inline(always)]
fn output<I>(p: &Apg<I>, coef: f64, clip: f32, c: f32, u: f32, r: f32) -> f32 {
    let par = coef * c as f64;
    let perp = (r * clip) as f64 - par;
    let update = p.eta.mul_add(par as f32, perp as f32);
    p.scale.mul_add(update, if p.original { c } else { u })
}

/// [`output`] over eight lanes, with [`Vector::project_f64`].
struct Eights<'a, I, V> {
    p: &'a Apg<'a, I>,
    coef: f64,
    clip: V,
}

impl<I, V: Vector> Eights<'_, I, V> {
    /// Eight outputs from eight values of c, u and r.
    #[inline(always)]
    fn output(&self, c: &[f32; 8], u: &[f32; 8], r: &[f32; 8]) -> V {
        self.lanes(V::load(c), V::load(u), V::load(r))
    }

    /// Eight outputs from c, u and r in lanes (any order of elements).
    #[inline(always)]
    fn lanes(&self, c: V, u: V, r: V) -> V {
        let p = self.p;
        let (par, perp) = c.project_f64(r * self.clip, self.coef);
        let update = V::splat(p.eta).mul_add(par, perp);
        V::splat(p.scale).mul_add(update, if p.original { c } else { u })
    }
}

/// The bf16 input of a form that is one bf16 input of weight 1.
#[inline(always)]
fn plain_bf16<'a, I: Element>(t: Terms<'a, I>) -> Option<&'a [bf16]> {
    match t {
        [(x, w)] if *w == 1.0 => I::as_bf16(x),
        _ => None,
    }
}

/// The apply straight from bf16 cond and uncond that are one input each
/// (of weight 1) into a bf16 output: sixteen elements at a time in split
/// order ([`crate::simd::SPLIT`]; the stored running average loaded in the
/// same order), no f32 blocks. False, writing nothing, for other forms.
#[inline(always)]
fn apply_split<V: Vector, I: Element, S: Slot>(
    p: &Apg<I>,
    (coef, clip): (f64, f32),
    stored: Option<&[f32]>,
    start: usize,
    out: &mut [S],
) -> bool {
    if !S::Elem::BF16 {
        return false;
    }
    let (Some(c), Some(u)) = (plain_bf16(p.cond), plain_bf16(p.uncond)) else { return false };
    let n = out.len();
    let (c, u) = (&c[start..start + n], &u[start..start + n]);
    let stored = stored.map(|s| &s[start..start + n]);
    let lanes = Eights { p, coef, clip: V::splat(clip) };
    let (ov, ot) = out.as_chunks_mut::<16>();
    let ((cv, ct), (uv, ut)) = (c.as_chunks::<16>(), u.as_chunks::<16>());
    match stored {
        Some(s) => {
            for (((o, c), u), r) in ov.iter_mut().zip(cv).zip(uv).zip(s.as_chunks::<16>().0) {
                let ((c_lo, c_hi), (u_lo, u_hi)) = (bf16::get16_split::<V>(c), bf16::get16_split::<V>(u));
                let (r_lo, r_hi) = f32::get16_split::<V>(r);
                S::put16_split(lanes.lanes(c_lo, u_lo, r_lo), lanes.lanes(c_hi, u_hi, r_hi), o);
            }
        }
        None => {
            for ((o, c), u) in ov.iter_mut().zip(cv).zip(uv) {
                let ((c_lo, c_hi), (u_lo, u_hi)) = (bf16::get16_split::<V>(c), bf16::get16_split::<V>(u));
                // Δ = c − u, as `difference` computes it.
                S::put16_split(lanes.lanes(c_lo, u_lo, c_lo - u_lo), lanes.lanes(c_hi, u_hi, c_hi - u_hi), o);
            }
        }
    }
    let done = 16 * ov.len();
    for (i, ((o, c), u)) in ot.iter_mut().zip(ct).zip(ut).enumerate() {
        let (c, u) = (c.get(), u.get());
        let r = stored.map_or(c - u, |s| s[done + i]);
        o.set(S::Elem::put(output(p, coef, clip, c, u, r)));
    }
    true
}

impl<I: Element, S: Slot> Task for Apply<'_, I, S> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let (p, coef, clip) = (self.p, self.coef, self.clip.unwrap_or(1.0));
        if apply_split::<V, I, S>(p, (coef, clip), self.stored, self.start, self.out) {
            return;
        }
        let mut buf = take_scratch(3 * BLOCK);
        let (c, rest) = buf.split_at_mut(BLOCK);
        let (u, d) = rest.split_at_mut(BLOCK);
        for (k, out) in self.out.chunks_mut(BLOCK).enumerate() {
            let (m, start) = (out.len(), self.start + k * BLOCK);
            let c = form_ref(p.cond, start, &mut c[..m]);
            let u = form_ref(p.uncond, start, &mut u[..m]);
            // The running average, or Δ = c − u without a momentum (the clip is applied below).
            let r = update(self.stored, None, start, &mut d[..m], |d| difference(c, u, d));
            // Sixteen lanes at a time into the output (one store of two
            // vectors in bf16), then the rest one by one.
            let ((cv, ct), (uv, ut), (rv, rt)) = (c.as_chunks::<16>(), u.as_chunks::<16>(), r.as_chunks::<16>());
            let (ov, ot) = out.as_chunks_mut::<16>();
            let lanes = Eights { p, coef, clip: V::splat(clip) };
            for (((o, c), u), r) in ov.iter_mut().zip(cv).zip(uv).zip(rv) {
                let (c, u, r) = (c.as_chunks::<8>().0, u.as_chunks::<8>().0, r.as_chunks::<8>().0);
                S::put16(lanes.output(&c[0], &u[0], &r[0]), lanes.output(&c[1], &u[1], &r[1]), o);
            }
            let mut y = [0.0f32; 16];
            for (((y, c), u), r) in y.iter_mut().zip(ct).zip(ut).zip(rt) {
                *y = output(p, coef, clip, *c, *u, *r);
            }
            S::put_all(&y[..ot.len()], ot);
        }
        put_scratch(buf);
    }
}

/// APG-Mix's CFG phase: Δ = c − u advances the momentum (`buffer` ←
/// fma(β, buffer, Δ), or Δ without a previous one), and `out` = fma(s, Δ, base),
/// base = u (or c with `original`). Element-wise: in blocks, or straight from
/// bf16 cond and uncond that are one input each.
#[allow(clippy::too_many_arguments)] // the op's own fields, its state and its output
pub fn momentum_cfg<I: Element, S: Slot>(
    cond: Terms<I>,
    uncond: Terms<I>,
    scale: f32,
    beta: f32,
    original: bool,
    buffer: &mut [f32],
    has_prev: bool,
    out: &mut [S],
) {
    // Every element of `out` is written (it may be fresh memory): the callers
    // check the momentum's length before they evaluate.
    assert_eq!(buffer.len(), out.len(), "the momentum has the output's length");
    par::for_each(out.chunks_mut(TASK).zip(buffer.chunks_mut(TASK)).enumerate(), |(t, (out, running))| {
        let p = MomentumCfg { cond, uncond, scale, beta, original, has_prev };
        simd::run(MomentumCfgTask { p: &p, start: t * TASK, running, out })
    });
}

/// APG-Mix's CFG phase parameters.
struct MomentumCfg<'a, I> {
    cond: Terms<'a, I>,
    uncond: Terms<'a, I>,
    scale: f32,
    beta: f32,
    original: bool,
    has_prev: bool,
}

impl<I> MomentumCfg<'_, I> {
    /// One element (or eight lanes): the advanced momentum and the output
    /// from c, u and the previous momentum.
    #[inline(always)]
    fn step<T: Num>(&self, c: T, u: T, prev: T) -> (T, T) {
        let d = c - u;
        let next = if self.has_prev { T::splat(self.beta).mul_add(prev, d) } else { d };
        (next, T::splat(self.scale).mul_add(d, if self.original { c } else { u }))
    }

    /// The run `start..start + out.len()` straight from bf16 cond and uncond
    /// (each one input of weight 1), sixteen lanes at a time: no f32 blocks,
    /// one store of sixteen outputs.
    #[inline(always)]
    fn steps_from_bf16<V: Vector, S: Slot>(
        &self,
        start: usize,
        c: &[bf16],
        u: &[bf16],
        running: &mut [f32],
        out: &mut [S],
    ) {
        let n = out.len();
        let (c, u) = (&c[start..start + n], &u[start..start + n]);
        let ((cv, ct), (uv, ut)) = (c.as_chunks::<16>(), u.as_chunks::<16>());
        let ((rv, rt), (ov, ot)) = (running.as_chunks_mut::<16>(), out.as_chunks_mut::<16>());
        for (((c, u), r), o) in cv.iter().zip(uv).zip(rv).zip(ov) {
            let (c, u, r) = (c.as_chunks::<8>().0, u.as_chunks::<8>().0, r.as_chunks_mut::<8>().0);
            let (next_lo, lo) = self.step(bf16::get8::<V>(&c[0]), bf16::get8::<V>(&u[0]), V::load(&r[0]));
            let (next_hi, hi) = self.step(bf16::get8::<V>(&c[1]), bf16::get8::<V>(&u[1]), V::load(&r[1]));
            next_lo.store(&mut r[0]);
            next_hi.store(&mut r[1]);
            S::put16(lo, hi, o);
        }
        for (((c, u), r), o) in ct.iter().zip(ut).zip(rt).zip(ot) {
            let (next, y) = self.step(c.get(), u.get(), *r);
            *r = next;
            o.set(S::Elem::put(y));
        }
    }
}

/// One parallel run of [`momentum_cfg`].
struct MomentumCfgTask<'a, I, S> {
    p: &'a MomentumCfg<'a, I>,
    start: usize,
    running: &'a mut [f32],
    out: &'a mut [S],
}

impl<I: Element, S: Slot> Task for MomentumCfgTask<'_, I, S> {
    const AVX512: bool = S::Elem::BF16;
    type Out = ();
    #[inline(always)]
    fn run<V: Vector>(self) {
        let p = self.p;
        if let (Some(c), Some(u)) = (plain_bf16(p.cond), plain_bf16(p.uncond)) {
            return p.steps_from_bf16::<V, S>(self.start, c, u, self.running, self.out);
        }
        let mut buf = take_scratch(2 * BLOCK);
        let (c, u) = buf.split_at_mut(BLOCK);
        for (k, (out, running)) in self.out.chunks_mut(BLOCK).zip(self.running.chunks_mut(BLOCK)).enumerate() {
            let (m, start) = (out.len(), self.start + k * BLOCK);
            let c = form_ref(p.cond, start, &mut c[..m]);
            let u = form_ref(p.uncond, start, &mut u[..m]);
            // Eight lanes at a time, then the rest one by one: the same formula.
            let ((cv, ct), (uv, ut)) = (c.as_chunks::<8>(), u.as_chunks::<8>());
            let ((rv, rt), (ov, ot)) = (running.as_chunks_mut::<8>(), out.as_chunks_mut::<8>());
            for (((c, u), r), o) in cv.iter().zip(uv).zip(rv).zip(ov) {
                let (next, y) = p.step(V::load(c), V::load(u), V::load(r));
                next.store(r);
                S::put8(y, o);
            }
            let mut tail = [0.0f32; 8];
            for (((c, u), r), y) in ct.iter().zip(ut).zip(rt).zip(&mut tail) {
                (*r, *y) = p.step(*c, *u, *r);
            }
            S::put_all(&tail[..ot.len()], ot);
        }
        put_scratch(buf);
    }
}
