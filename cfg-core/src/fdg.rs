//! Frequency-decoupled guidance (FDG): the canonical order.
//!
//! c and u are split into Laplacian pyramids over the rows and columns of
//! the output's layout (kornia's `build_laplacian_pyramid`, which diffusers
//! uses): with `blur` the 5 × 5 binomial filter ([1, 4, 6, 4, 1]/16 along
//! rows, then along columns; borders reflected without repeating the edge,
//! torch's `reflect`), `down` the 2 × 2 mean (a bilinear half-size resize)
//! and `up` a bilinear double-size resize (align_corners false) then `blur`:
//!
//! ```text
//! G₀ = x,  G_{k+1} = down(blur(G_k)),  L_k = G_k − up(G_{k+1}),  L_{L−1} = G_{L−1}
//! ```
//!
//! Each level k is guided on its own (`u_k + s_k·shift_k`, the shift's part
//! parallel to c_k weighted as APG's η, an optional std rescale against c_k
//! per sample; a level that is off is c_k), and the result is rebuilt from
//! the coarsest level: `r = g_{L−1}; r = up(r) + g_k` for k = L−2, ..., 0.
//!
//! Every stage is an element-wise formula over f32 planar images (sample,
//! plane, row, column) with explicit fma, written once here and once in
//! `cfg-runtime/kernels/fdg.cu`; per-sample statistics use the canonical
//! reductions of [`crate::reduce`]. So the CPU and CUDA agree bit for bit.

use crate::cpu::{apg_projection, rescale_factor, std_from_sums};
use crate::fused::{put_scratch, take_scratch};
use crate::layout::{Layout, Spatial};
use crate::program::FdgBand;
use crate::reduce::{dot_f32, dot_f64};
use crate::simd::{self, Task};
use crate::Shape;
use rayon::prelude::*;

/// The most levels a pyramid may have.
pub const MAX_LEVELS: usize = 8;

/// The binomial taps of the blur, along one axis (exact in f32).
pub const TAPS: [f32; 5] = [0.0625, 0.25, 0.375, 0.25, 0.0625];

/// The geometry of an FDG pyramid over a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pyramid {
    /// Where rows, columns and planes live in the prediction.
    pub spatial: Spatial,
    /// Levels (≥ 1).
    pub levels: usize,
}

impl Pyramid {
    /// The pyramid of `levels` levels over `shape` under `layout`, or why it
    /// cannot be built.
    pub fn new(layout: &Layout, shape: &Shape, levels: usize) -> Result<Pyramid, String> {
        let spatial = layout.spatial(shape)?;
        if levels == 0 || levels > MAX_LEVELS {
            return Err(format!("FDG needs 1 to {MAX_LEVELS} levels, it has {levels}"));
        }
        let (h, w) = (spatial.height, spatial.width);
        let f = 1usize << (levels - 1);
        if h % f != 0 || w % f != 0 {
            return Err(format!(
                "FDG's {levels} levels halve the rows and columns {} times: {h}×{w} must be divisible by {f}",
                levels - 1
            ));
        }
        if levels >= 2 {
            let (hk, wk) = (h >> (levels - 2), w >> (levels - 2));
            if hk < 3 || wk < 3 {
                return Err(format!(
                    "FDG's blur (5 taps, reflected borders) needs at least 3 rows and columns at level {}, \
                     which has {hk}×{wk}",
                    levels - 2
                ));
            }
        }
        Ok(Pyramid { spatial, levels })
    }

    /// Images (sample × plane).
    pub fn images(&self) -> usize {
        self.spatial.batch * self.spatial.planes
    }

    /// Rows and columns of level k.
    pub fn dims(&self, k: usize) -> (usize, usize) {
        (self.spatial.height >> k, self.spatial.width >> k)
    }

    /// Elements of one sample at level k.
    pub fn sample_len(&self, k: usize) -> usize {
        let (h, w) = self.dims(k);
        self.spatial.planes * h * w
    }
}

/// Torch's `reflect` border: index `i` of an axis of `n` (n ≥ 3, |overhang| ≤ 2).
#[inline(always)]
pub fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    (if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    }) as usize
}

/// The blur along one axis at position `i` of `n`: taps −2..=2 in order,
/// `acc = t₀·x₋₂`, then fma.
#[inline(always)]
pub fn blur5(x: impl Fn(usize) -> f32, i: usize, n: usize) -> f32 {
    let i = i as isize;
    let mut acc = TAPS[0] * x(reflect(i - 2, n));
    for (k, t) in TAPS.iter().enumerate().skip(1) {
        acc = t.mul_add(x(reflect(i + k as isize - 2, n)), acc);
    }
    acc
}

/// The 2 × 2 mean: `0.25·((a + b) + (c + d))`, (a, b) the upper pair.
#[inline(always)]
pub fn down2(a: f32, b: f32, c: f32, d: f32) -> f32 {
    0.25 * ((a + b) + (c + d))
}

/// The source indices (near, far) of output `j` of a bilinear ×2 resize of
/// an axis of `n` (align_corners false: weights 3/4 and 1/4, clamped at the borders).
#[inline(always)]
pub fn up_taps(j: usize, n: usize) -> (usize, usize) {
    let i = j / 2;
    if j.is_multiple_of(2) {
        (i, i.saturating_sub(1))
    } else {
        (i, (i + 1).min(n - 1))
    }
}

/// `0.75·near + 0.25·far` as `fma(0.75, near, 0.25·far)`.
#[inline(always)]
pub fn lerp(near: f32, far: f32) -> f32 {
    0.75f32.mul_add(near, 0.25 * far)
}

/// How the pyramid's images lie in f32 memory: `n` images of h × w pixels,
/// each pixel `lanes` consecutive values. Planar images have one lane; a
/// token grid (channels last) is one image per sample with a lane per
/// channel, so every stage reads and writes whole rows of contiguous lanes
/// and vectorizes across them, with no transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    n: usize,
    h: usize,
    w: usize,
    lanes: usize,
}

impl Grid {
    fn row(&self) -> usize {
        self.w * self.lanes
    }
    fn len(&self) -> usize {
        self.n * self.h * self.row()
    }
    fn half(&self) -> Grid {
        Grid { h: self.h / 2, w: self.w / 2, ..*self }
    }
    fn double(&self) -> Grid {
        Grid { h: self.h * 2, w: self.w * 2, ..*self }
    }
    /// Row `y` of image `i` of `data`.
    #[inline(always)]
    fn at<'a>(&self, data: &'a [f32], i: usize, y: usize) -> &'a [f32] {
        let r = self.row();
        &data[(i * self.h + y) * r..(i * self.h + y + 1) * r]
    }
}

/// The arrangement the native layout already has, if it is one of the two
/// the stages read directly (planar, or planes last); else none (gather).
fn native_grid(s: &Spatial) -> Option<Grid> {
    let (h, w, p) = (s.height, s.width, s.planes);
    let planar = s.col_stride == 1
        && s.row_stride == w
        && s.batch_stride == p * h * w
        && (0..p).all(|k| s.plane_offset(k) == k * h * w);
    if planar {
        return Some(Grid { n: s.batch * p, h, w, lanes: 1 });
    }
    let last = s.col_stride == p
        && s.row_stride == w * p
        && s.batch_stride == h * w * p
        && (0..p).all(|k| s.plane_offset(k) == k);
    last.then_some(Grid { n: s.batch, h, w, lanes: p })
}

/// Values per parallel task (whole rows; a few rows of scratch stay in L2).
const TASK: usize = 1 << 16;

/// One pass over the output rows of a pyramid level. Each is an element-wise
/// composition of the canonical stages, so the bits are those of the stages
/// run one at a time.
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// `blur` along the columns axis (within each row) of `src`, same grid.
    Hblur(&'a [f32]),
    /// `down` of the blur along the rows axis of `src` (already blurred
    /// within rows), on the grid twice the output's.
    Reduce(&'a [f32]),
    /// The blur within rows of the bilinear doubling of `src` (half grid).
    Expand(&'a [f32]),
    /// `g − colblur(ub)`: a Laplacian level from its expanded coarser level.
    Detail { ub: &'a [f32], g: &'a [f32] },
    /// `colblur(ub) + g`: one step of the rebuild.
    Rebuild { ub: &'a [f32], g: &'a [f32] },
    /// The rebuild with the level's guidance fused:
    /// `colblur(r) + guide(gc − colblur(c), gu − colblur(u))`.
    Level { c: &'a [f32], u: &'a [f32], r: &'a [f32], gc: &'a [f32], gu: &'a [f32], band: &'a FdgBand, original: bool },
}

/// Runs `pass` over every row of `out` (grid `g`), in parallel bands of rows.
fn pass(p: Pass<'_>, g: Grid, out: &mut [f32]) {
    let row = g.row();
    if row == 0 || out.is_empty() {
        return;
    }
    let per = (TASK / row).max(1);
    out.par_chunks_mut(per * row).enumerate().for_each(|(t, out)| simd::run(Band { p, g, first: t * per, out }));
}

/// A band of output rows of a [`Pass`], as a [`Task`] (its loops compiled
/// in the AVX2+FMA region where the CPU has it).
struct Band<'a> {
    p: Pass<'a>,
    g: Grid,
    first: usize,
    out: &'a mut [f32],
}

impl Task for Band<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        let Band { p, g, first, out } = self;
        let (row, l) = (g.row(), g.lanes);
        // Two rows of the grid twice as wide (`Reduce`), or three rows.
        let mut scratch = take_scratch(4 * row);
        let (s0, s1) = scratch.split_at_mut(2 * row);
        let s1 = &mut s1[..2 * row];
        for (j, o) in out.chunks_mut(row).enumerate() {
            let (i, y) = ((first + j) / g.h, (first + j) % g.h);
            match p {
                Pass::Hblur(src) => hblur_row(g.at(src, i, y), o, g.w, l),
                Pass::Reduce(src) => {
                    let sg = g.double();
                    let (v0, v1) = (&mut *s0, &mut *s1);
                    vblur_row(sg, src, i, 2 * y, v0);
                    vblur_row(sg, src, i, 2 * y + 1, v1);
                    down_row(v0, v1, o, l);
                }
                Pass::Expand(src) => {
                    let sg = g.half();
                    let (ya, yb) = up_taps(y, sg.h);
                    let (ta, tb) = s0.split_at_mut(row);
                    double_row(sg.at(src, i, ya), ta, l);
                    double_row(sg.at(src, i, yb), tb, l);
                    let up = &mut s1[..row];
                    for ((u, &a), &b) in up.iter_mut().zip(ta.iter()).zip(tb.iter()) {
                        *u = lerp(a, b);
                    }
                    hblur_row(up, o, g.w, l);
                }
                Pass::Detail { ub, g: gk } => {
                    vblur_row(g, ub, i, y, o);
                    for (o, &x) in o.iter_mut().zip(g.at(gk, i, y)) {
                        *o = x - *o;
                    }
                }
                Pass::Rebuild { ub, g: gk } => {
                    vblur_row(g, ub, i, y, o);
                    for (o, &x) in o.iter_mut().zip(g.at(gk, i, y)) {
                        *o += x;
                    }
                }
                Pass::Level { c, u, r, gc, gu, band, original } => {
                    let (tc, tu) = (&mut s0[..row], &mut s1[..row]);
                    vblur_row(g, c, i, y, tc);
                    vblur_row(g, u, i, y, tu);
                    vblur_row(g, r, i, y, o);
                    let (gc, gu) = (g.at(gc, i, y), g.at(gu, i, y));
                    let s = band.scale;
                    for k in 0..row {
                        let (lc, lu) = (gc[k] - tc[k], gu[k] - tu[k]);
                        let gk = if !band.on { lc } else { s.mul_add(lc - lu, if original { lc } else { lu }) };
                        o[k] += gk;
                    }
                }
            }
        }
        put_scratch(scratch);
    }
}

/// `acc = t₀·x₀; acc = fma(t_k, x_k, acc)` over five aligned slices.
#[inline(always)]
fn taps5(r0: &[f32], r1: &[f32], r2: &[f32], r3: &[f32], r4: &[f32], o: &mut [f32]) {
    let n = o.len();
    let (r0, r1, r2, r3, r4) = (&r0[..n], &r1[..n], &r2[..n], &r3[..n], &r4[..n]);
    for i in 0..n {
        let mut acc = TAPS[0] * r0[i];
        acc = TAPS[1].mul_add(r1[i], acc);
        acc = TAPS[2].mul_add(r2[i], acc);
        acc = TAPS[3].mul_add(r3[i], acc);
        o[i] = TAPS[4].mul_add(r4[i], acc);
    }
}

/// The blur within one row of `w` pixels of `l` lanes: the interior as five
/// shifted slices, the two pixels at each border reflected.
#[inline(always)]
fn hblur_row(s: &[f32], o: &mut [f32], w: usize, l: usize) {
    if w >= 5 {
        let n = (w - 4) * l;
        taps5(&s[..n], &s[l..], &s[2 * l..], &s[3 * l..], &s[4 * l..], &mut o[2 * l..2 * l + n]);
    }
    for x in (0..w.min(2)).chain(w.saturating_sub(2).max(2)..w) {
        let px = |k: isize| {
            let j = reflect(x as isize + k - 2, w);
            &s[j * l..(j + 1) * l]
        };
        taps5(px(0), px(1), px(2), px(3), px(4), &mut o[x * l..(x + 1) * l]);
    }
}

/// Row `y` of image `i` of `src` (grid `g`) blurred along the rows axis.
#[inline(always)]
fn vblur_row(g: Grid, src: &[f32], i: usize, y: usize, o: &mut [f32]) {
    let r = |k: isize| g.at(src, i, reflect(y as isize + k - 2, g.h));
    taps5(r(0), r(1), r(2), r(3), r(4), o);
}

/// One output row of the 2 × 2 mean from source rows `a` (upper) and `b`.
#[inline(always)]
fn down_row(a: &[f32], b: &[f32], o: &mut [f32], l: usize) {
    if l == 1 {
        for ((o, a), b) in o.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
            *o = down2(a[0], a[1], b[0], b[1]);
        }
        return;
    }
    for ((o, a), b) in o.chunks_exact_mut(l).zip(a.chunks_exact(2 * l)).zip(b.chunks_exact(2 * l)) {
        let (a0, a1) = a.split_at(l);
        let (b0, b1) = b.split_at(l);
        for k in 0..l {
            o[k] = down2(a0[k], a1[k], b0[k], b1[k]);
        }
    }
}

/// `t[x] = lerp(r[near], r[far])` for the 2·w pixels from a row of w ([`up_taps`]).
#[inline(always)]
fn double_row(r: &[f32], t: &mut [f32], l: usize) {
    let w = r.len() / l;
    if l == 1 {
        for (i, pair) in t.chunks_exact_mut(2).enumerate() {
            pair[0] = lerp(r[i], r[i.saturating_sub(1)]);
            pair[1] = lerp(r[i], r[(i + 1).min(w - 1)]);
        }
        return;
    }
    for (i, pair) in t.chunks_exact_mut(2 * l).enumerate() {
        let px = |j: usize| &r[j * l..(j + 1) * l];
        let (near, left, right) = (px(i), px(i.saturating_sub(1)), px((i + 1).min(w - 1)));
        let (p0, p1) = pair.split_at_mut(l);
        for k in 0..l {
            p0[k] = lerp(near[k], left[k]);
            p1[k] = lerp(near[k], right[k]);
        }
    }
}

/// The prediction `x` (native layout) as planar images (sample, plane, row, column).
pub fn gather(s: &Spatial, x: &[f32]) -> Vec<f32> {
    let (h, w) = (s.height, s.width);
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut((h * w).max(1)).enumerate().for_each(|(i, o)| {
        let (b, p) = (i / s.planes, i % s.planes);
        let base = b * s.batch_stride + s.plane_offset(p);
        for y in 0..h {
            for (xx, o) in o[y * w..(y + 1) * w].iter_mut().enumerate() {
                *o = x[base + y * s.row_stride + xx * s.col_stride];
            }
        }
    });
    out
}

/// Planar images back into the native layout.
pub fn scatter(s: &Spatial, planar: &[f32], out: &mut [f32]) {
    let (h, w) = (s.height, s.width);
    // Each sample of the output is written by one task.
    let per = s.batch_stride;
    out.par_chunks_mut(per.max(1)).enumerate().for_each(|(b, o)| {
        for (p, img) in planar[b * per..(b + 1) * per].chunks(h * w).enumerate() {
            let base = s.plane_offset(p);
            for y in 0..h {
                for x in 0..w {
                    o[base + y * s.row_stride + x * s.col_stride] = img[y * w + x];
                }
            }
        }
    });
}

/// The Gaussian levels G₁.. of `g0` (grid `g`): `down(blur(G_k))`.
fn gaussians(levels: usize, g: Grid, g0: &[f32]) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(levels.saturating_sub(1));
    let mut tmp = vec![0.0; g0.len()];
    let mut grid = g;
    for _ in 1..levels {
        let src = out.last().map_or(g0, Vec::as_slice);
        let tmp = &mut tmp[..grid.len()];
        pass(Pass::Hblur(src), grid, tmp);
        grid = grid.half();
        let mut next = vec![0.0; grid.len()];
        pass(Pass::Reduce(tmp), grid, &mut next);
        out.push(next);
    }
    out
}

/// Whether a band needs per-sample statistics (a parallel weight or a rescale).
fn has_stats(band: &FdgBand) -> bool {
    band.on && (band.parallel.is_some() || band.rescale > 0.0)
}

/// FDG of c and u as images on grid `g` (planar when a band takes
/// statistics) into `out` on the same grid.
fn fdg_grid(p: &Pyramid, g: Grid, c: &[f32], u: &[f32], bands: &[FdgBand], original: bool, out: &mut [f32]) {
    let levels = p.levels;
    let (gc, gu) = (gaussians(levels, g, c), gaussians(levels, g, u));
    let level = |k: usize| -> (&[f32], &[f32]) {
        if k == 0 {
            (c, u)
        } else {
            (&gc[k - 1], &gu[k - 1])
        }
    };
    let (cl, ul) = level(levels - 1);
    let mut r = guide_level(cl, ul, p.sample_len(levels - 1), &bands[levels - 1], original);
    let mut grid = g;
    for _ in 1..levels {
        grid = grid.half();
    }
    for k in (0..levels - 1).rev() {
        grid = grid.double();
        let (ck, uk) = level(k);
        let expand = |x: &[f32]| {
            let mut e = vec![0.0; grid.len()];
            pass(Pass::Expand(x), grid, &mut e);
            e
        };
        let (ec, eu, er) = (expand(level(k + 1).0), expand(level(k + 1).1), expand(&r));
        let mut next = if k == 0 { Vec::new() } else { vec![0.0; grid.len()] };
        let dst: &mut [f32] = if k == 0 { out } else { &mut next };
        if has_stats(&bands[k]) {
            let (mut lc, mut lu) = (vec![0.0; grid.len()], vec![0.0; grid.len()]);
            pass(Pass::Detail { ub: &ec, g: ck }, grid, &mut lc);
            pass(Pass::Detail { ub: &eu, g: uk }, grid, &mut lu);
            let gk = guide_level(&lc, &lu, p.sample_len(k), &bands[k], original);
            pass(Pass::Rebuild { ub: &er, g: &gk }, grid, dst);
        } else {
            let lvl = Pass::Level { c: &ec, u: &eu, r: &er, gc: ck, gu: uk, band: &bands[k], original };
            pass(lvl, grid, dst);
        }
        r = next;
    }
    if levels == 1 {
        out.copy_from_slice(&r);
    }
}
/// One guided level from c_k and u_k (planar, `len` elements per sample).
pub fn guide_level(c: &[f32], u: &[f32], len: usize, band: &FdgBand, original: bool) -> Vec<f32> {
    if !band.on {
        return c.to_vec();
    }
    let mut g = vec![0.0f32; c.len()];
    g.par_chunks_mut(len.max(1)).enumerate().for_each(|(b, g)| {
        let (c, u) = (&c[b * len..(b + 1) * len], &u[b * len..(b + 1) * len]);
        simd::run(Guide { c, u, g, band, original })
    });
    g
}

/// One sample of one guided level, as a [`Task`].
struct Guide<'a> {
    c: &'a [f32],
    u: &'a [f32],
    g: &'a mut [f32],
    band: &'a FdgBand,
    original: bool,
}

impl Task for Guide<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        let Guide { c, u, g, band, original } = self;
        let (s, len) = (band.scale, c.len());
        match band.parallel {
            None => {
                for ((g, &c), &u) in g.iter_mut().zip(c).zip(u) {
                    *g = s.mul_add(c - u, if original { c } else { u });
                }
            }
            Some(eta) => {
                let dc = dot_f64(len, |i| ((c[i] - u[i]) as f64, c[i] as f64));
                let cc = dot_f64(len, |i| (c[i] as f64, c[i] as f64));
                let coef = apg_projection(dc, cc);
                for ((g, &c), &u) in g.iter_mut().zip(c).zip(u) {
                    let par = coef * c as f64;
                    let perp = (c - u) as f64 - par;
                    *g = s.mul_add(eta.mul_add(par as f32, perp as f32), if original { c } else { u });
                }
            }
        }
        if band.rescale > 0.0 {
            let sc = std_from_sums(dot_f32(len, |i| (c[i], 1.0)), dot_f32(len, |i| (c[i], c[i])), len);
            let sg = std_from_sums(dot_f32(len, |i| (g[i], 1.0)), dot_f32(len, |i| (g[i], g[i])), len);
            let f = rescale_factor(sc, sg, band.rescale);
            for g in g.iter_mut() {
                *g *= f;
            }
        }
    }
}

/// FDG of c and u (native layout, f32) into `out`.
pub fn fdg_into(p: &Pyramid, c: &[f32], u: &[f32], bands: &[FdgBand], original: bool, out: &mut [f32]) {
    let s = &p.spatial;
    // Statistics reduce each sample in planar order: lanes would change that order.
    let native = native_grid(s).filter(|g| g.lanes == 1 || !bands.iter().any(has_stats));
    match native {
        Some(g) => fdg_grid(p, g, c, u, bands, original, out),
        None => {
            let g = Grid { n: s.batch * s.planes, h: s.height, w: s.width, lanes: 1 };
            let mut r = vec![0.0; out.len()];
            fdg_grid(p, g, &gather(s, c), &gather(s, u), bands, original, &mut r);
            scatter(s, &r, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Axis;

    fn bchw() -> Layout {
        Layout { axes: vec![Axis::B, Axis::C, Axis::H, Axis::W], grid: None }
    }

    /// Pseudo-random values from a seed (an LCG: no dependency).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_pyramid_rebuilds_its_input() {
        let shape = Shape::new([2, 3, 8, 12]);
        let p = Pyramid::new(&bchw(), &shape, 3).unwrap();
        let x = values(shape.numel(), 7);
        let band = FdgBand { on: false, scale: 1.0, parallel: None, rescale: 0.0 };
        let mut out = vec![0.0; x.len()];
        fdg_into(&p, &x, &x, &[band; 3], false, &mut out);
        for (a, b) in out.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn the_canonical_order_is_the_f64_formula_in_f32() {
        let shape = Shape::new([2, 3, 16, 8]);
        let p = Pyramid::new(&bchw(), &shape, 3).unwrap();
        let (c, u) = (values(shape.numel(), 1), values(shape.numel(), 2));
        let bands = [
            FdgBand { on: true, scale: 10.0, parallel: Some(0.3), rescale: 0.0 },
            FdgBand { on: true, scale: 5.0, parallel: None, rescale: 0.7 },
            FdgBand { on: false, scale: 2.0, parallel: None, rescale: 0.0 },
        ];
        for original in [false, true] {
            let mut out = vec![0.0; c.len()];
            fdg_into(&p, &c, &u, &bands, original, &mut out);
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let want = crate::fdg_reference::fdg_f64(&p, &f(&c), &f(&u), &bands, original);
            let err = crate::reference::relative_error(&f(&out), &want);
            assert!(err < 1e-6, "{err}");
        }
    }

    #[test]
    fn gather_and_scatter_are_inverse() {
        let l = Layout {
            axes: vec![Axis::B, Axis::T, Axis::C],
            grid: Some(crate::layout::Grid { frames: None, height: 2, width: 4 }),
        };
        let shape = Shape::new([2, 8, 3]);
        let s = l.spatial(&shape).unwrap();
        let x = values(shape.numel(), 3);
        let mut back = vec![0.0; x.len()];
        scatter(&s, &gather(&s, &x), &mut back);
        assert_eq!(back, x);
    }

    #[test]
    fn shapes_the_pyramid_cannot_halve_are_explained() {
        let e = Pyramid::new(&bchw(), &Shape::new([1, 4, 6, 8]), 3).unwrap_err();
        assert!(e.contains("divisible by 4"), "{e}");
        let e = Pyramid::new(&bchw(), &Shape::new([1, 4, 8, 8]), 4).unwrap_err();
        assert!(e.contains("at least 3 rows"), "{e}");
        assert!(Pyramid::new(&bchw(), &Shape::new([1, 4, 8, 8]), 3).is_ok());
    }

    #[test]
    fn borders_reflect_and_bilinear_taps_clamp() {
        assert_eq!([reflect(-2, 5), reflect(-1, 5), reflect(5, 5), reflect(6, 5)], [2, 1, 3, 2]);
        assert_eq!([up_taps(0, 4), up_taps(1, 4), up_taps(2, 4), up_taps(7, 4)], [(0, 0), (0, 1), (1, 0), (3, 3)]);
    }
}
