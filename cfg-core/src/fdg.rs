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

/// Runs `f(image, out_image)` over consecutive images of `len` outputs each.
fn per_image(dst: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    dst.par_chunks_mut(len.max(1)).enumerate().for_each(|(i, o)| f(i, o));
}

/// Blur along the columns axis (within each row) of images of h × w.
pub fn blur_rows(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    per_image(dst, h * w, |i, o| {
        let s = &src[i * h * w..(i + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                o[y * w + x] = blur5(|j| s[y * w + j], x, w);
            }
        }
    });
}

/// Blur along the rows axis (within each column) of images of h × w.
pub fn blur_cols(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    per_image(dst, h * w, |i, o| {
        let s = &src[i * h * w..(i + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                o[y * w + x] = blur5(|j| s[j * w + x], y, h);
            }
        }
    });
}

/// Halves images of h × w (even) by the 2 × 2 mean.
pub fn down(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    let (ho, wo) = (h / 2, w / 2);
    per_image(dst, ho * wo, |i, o| {
        let s = &src[i * h * w..(i + 1) * h * w];
        for y in 0..ho {
            for x in 0..wo {
                let (r0, r1) = (2 * y * w, (2 * y + 1) * w);
                o[y * wo + x] = down2(s[r0 + 2 * x], s[r0 + 2 * x + 1], s[r1 + 2 * x], s[r1 + 2 * x + 1]);
            }
        }
    });
}

/// Doubles images of h × w bilinearly: along the columns in the near and the
/// far source row, then between them.
pub fn upsample(src: &[f32], dst: &mut [f32], h: usize, w: usize) {
    let (ho, wo) = (2 * h, 2 * w);
    per_image(dst, ho * wo, |i, o| {
        let s = &src[i * h * w..(i + 1) * h * w];
        for y in 0..ho {
            let (ya, yb) = up_taps(y, h);
            for x in 0..wo {
                let (xa, xb) = up_taps(x, w);
                let ta = lerp(s[ya * w + xa], s[ya * w + xb]);
                let tb = lerp(s[yb * w + xa], s[yb * w + xb]);
                o[y * wo + x] = lerp(ta, tb);
            }
        }
    });
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
    per_image(&mut out, h * w, |i, o| {
        let (b, p) = (i / s.planes, i % s.planes);
        for y in 0..h {
            for xx in 0..w {
                o[y * w + xx] = x[s.index(b, p, y, xx)];
            }
        }
    });
    out
}

/// Planar images back into the native layout.
pub fn scatter(s: &Spatial, planar: &[f32], out: &mut [f32]) {
    let (h, w) = (s.height, s.width);
    for (i, img) in planar.chunks(h * w).enumerate() {
        let (b, p) = (i / s.planes, i % s.planes);
        for y in 0..h {
            for x in 0..w {
                out[s.index(b, p, y, x)] = img[y * w + x];
            }
        }
    }
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
    let s = band.scale;
    let mut g = vec![0.0f32; c.len()];
    g.par_chunks_mut(len).enumerate().for_each(|(b, g)| {
        let (c, u) = (&c[b * len..(b + 1) * len], &u[b * len..(b + 1) * len]);
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
    });
    g
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
