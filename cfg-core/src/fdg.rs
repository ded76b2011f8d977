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

/// A stage of the pyramid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BlurRows,
    BlurCols,
    Down,
    Upsample,
}

/// One stage on one image: a [`Task`], so that its loops are compiled in the
/// AVX2+FMA region where the CPU has it (`mul_add` one instruction rather
/// than a libm call; the same bits either way).
struct Stage<'a> {
    kind: Kind,
    src: &'a [f32],
    dst: &'a mut [f32],
    h: usize,
    w: usize,
}

impl Task for Stage<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        let Stage { kind, src, dst, h, w } = self;
        match kind {
            Kind::BlurRows => blur_rows_image(src, dst, w),
            Kind::BlurCols => blur_cols_image(src, dst, h, w),
            Kind::Down => down_image(src, dst, h, w),
            Kind::Upsample => upsample_image(src, dst, h, w),
        }
    }
}

/// Runs stage `kind` over consecutive images of h × w (source) into `dst`.
fn per_image(kind: Kind, src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    let images = src.len() / (h * w).max(1);
    if images == 0 {
        return;
    }
    let out_len = dst.len() / images;
    dst.par_chunks_mut(out_len.max(1))
        .enumerate()
        .for_each(|(i, dst)| simd::run(Stage { kind, src: &src[i * h * w..(i + 1) * h * w], dst, h, w }));
}

/// `acc = t₀·a; acc = fma(t_k, x_k, acc)` over five aligned slices.
#[inline(always)]
fn taps5(r: [&[f32]; 5], o: &mut [f32]) {
    let n = o.len();
    let (r0, r1, r2, r3, r4) = (&r[0][..n], &r[1][..n], &r[2][..n], &r[3][..n], &r[4][..n]);
    for i in 0..n {
        let mut acc = TAPS[0] * r0[i];
        acc = TAPS[1].mul_add(r1[i], acc);
        acc = TAPS[2].mul_add(r2[i], acc);
        acc = TAPS[3].mul_add(r3[i], acc);
        o[i] = TAPS[4].mul_add(r4[i], acc);
    }
}

#[inline(always)]
fn blur_rows_image(s: &[f32], o: &mut [f32], w: usize) {
    for (s, o) in s.chunks(w).zip(o.chunks_mut(w)) {
        if w >= 5 {
            taps5([&s[0..], &s[1..], &s[2..], &s[3..], &s[4..]], &mut o[2..w - 2]);
        }
        for x in (0..w.min(2)).chain(w.saturating_sub(2).max(2)..w) {
            o[x] = blur5(|j| s[j], x, w);
        }
    }
}

#[inline(always)]
fn blur_cols_image(s: &[f32], o: &mut [f32], h: usize, w: usize) {
    for (y, o) in o.chunks_mut(w).enumerate() {
        // The five source rows of output row y, reflected at the borders.
        let r: [&[f32]; 5] = std::array::from_fn(|k| {
            let j = reflect(y as isize + k as isize - 2, h);
            &s[j * w..(j + 1) * w]
        });
        taps5(r, o);
    }
}

#[inline(always)]
fn down_image(s: &[f32], o: &mut [f32], h: usize, w: usize) {
    let (ho, wo) = (h / 2, w / 2);
    for y in 0..ho {
        let (r0, r1) = (&s[2 * y * w..(2 * y + 1) * w], &s[(2 * y + 1) * w..(2 * y + 2) * w]);
        for (x, o) in o[y * wo..(y + 1) * wo].iter_mut().enumerate() {
            *o = down2(r0[2 * x], r0[2 * x + 1], r1[2 * x], r1[2 * x + 1]);
        }
    }
}

#[inline(always)]
fn upsample_image(s: &[f32], o: &mut [f32], h: usize, w: usize) {
    let wo = 2 * w;
    // Each source row doubled along the columns, then two of them mixed per output row.
    let mut rows = vec![0.0f32; 2 * wo];
    for (y, o) in o.chunks_mut(wo).enumerate() {
        let (ya, yb) = up_taps(y, h);
        let (ta, tb) = rows.split_at_mut(wo);
        double_row(&s[ya * w..(ya + 1) * w], ta);
        double_row(&s[yb * w..(yb + 1) * w], tb);
        for ((o, &a), &b) in o.iter_mut().zip(ta.iter()).zip(tb.iter()) {
            *o = lerp(a, b);
        }
    }
}

/// `t[x] = lerp(r[near], r[far])` for the 2·w outputs of a row of w ([`up_taps`]).
#[inline(always)]
fn double_row(r: &[f32], t: &mut [f32]) {
    let w = r.len();
    for (i, pair) in t.chunks_exact_mut(2).enumerate() {
        pair[0] = lerp(r[i], r[i.saturating_sub(1)]);
        pair[1] = lerp(r[i], r[(i + 1).min(w - 1)]);
    }
}

/// Blur along the columns axis (within each row) of images of h × w.
pub fn blur_rows(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    per_image(Kind::BlurRows, src, dst, h, w);
}

/// Blur along the rows axis (within each column) of images of h × w.
pub fn blur_cols(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    per_image(Kind::BlurCols, src, dst, h, w);
}

/// Halves images of h × w (even) by the 2 × 2 mean.
pub fn down(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    per_image(Kind::Down, src, dst, h, w);
}

/// Doubles images of h × w bilinearly: along the columns in the near and the
/// far source row, then between them.
pub fn upsample(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    per_image(Kind::Upsample, src, dst, h, w);
}

/// `up`: [`upsample`] then the blur, from images of h × w to 2h × 2w.
fn up(src: &[f32], h: usize, w: usize) -> Vec<f32> {
    let n = src.len() * 4;
    let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
    upsample(src, &mut a, h, w);
    blur_rows(&a, &mut b, 2 * h, 2 * w);
    blur_cols(&b, &mut a, 2 * h, 2 * w);
    a
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

/// The Laplacian pyramid of planar images (level 0 first).
pub fn laplacian(p: &Pyramid, x: Vec<f32>) -> Vec<Vec<f32>> {
    let mut gauss = vec![x];
    for k in 0..p.levels - 1 {
        let (h, w) = p.dims(k);
        let g = &gauss[k];
        let (mut a, mut b) = (vec![0.0; g.len()], vec![0.0; g.len()]);
        blur_rows(g, &mut a, h, w);
        blur_cols(&a, &mut b, h, w);
        let mut next = vec![0.0; g.len() / 4];
        down(&b, &mut next, h, w);
        gauss.push(next);
    }
    let mut out = Vec::with_capacity(p.levels);
    for k in 0..p.levels - 1 {
        let (h, w) = p.dims(k + 1);
        let u = up(&gauss[k + 1], h, w);
        out.push(gauss[k].iter().zip(&u).map(|(g, u)| g - u).collect());
    }
    out.push(gauss.pop().unwrap_or_default());
    out
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
    let lc = laplacian(p, gather(s, c));
    let lu = laplacian(p, gather(s, u));
    let guided: Vec<Vec<f32>> =
        (0..p.levels).map(|k| guide_level(&lc[k], &lu[k], p.sample_len(k), &bands[k], original)).collect();
    let mut r = guided[p.levels - 1].clone();
    for k in (0..p.levels - 1).rev() {
        let (h, w) = p.dims(k + 1);
        r = up(&r, h, w).iter().zip(&guided[k]).map(|(u, g)| u + g).collect();
    }
    scatter(s, &r, out);
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
