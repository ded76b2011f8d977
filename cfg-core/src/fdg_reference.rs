//! FDG in f64, stated directly as kornia and diffusers compute it (no shared
//! code with the canonical order of [`crate::fdg`]): a 5 × 5 binomial filter
//! with reflected borders, bilinear resizes by torch's `align_corners=False`
//! source coordinate, the projection and the std in f64.

use crate::fdg::Pyramid;
use crate::program::FdgBand;

/// One image of h × w, row-major.
type Image = Vec<f64>;

const KERNEL: [f64; 5] = [1.0, 4.0, 6.0, 4.0, 1.0];

fn blur(x: &Image, h: usize, w: usize) -> Image {
    let r = |i: isize, n: usize| -> usize {
        let n = n as isize;
        (if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        }) as usize
    };
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for xx in 0..w {
            let mut acc = 0.0;
            for (dy, ky) in KERNEL.iter().enumerate() {
                for (dx, kx) in KERNEL.iter().enumerate() {
                    let (sy, sx) = (r(y as isize + dy as isize - 2, h), r(xx as isize + dx as isize - 2, w));
                    acc += ky * kx / 256.0 * x[sy * w + sx];
                }
            }
            out[y * w + xx] = acc;
        }
    }
    out
}

/// torch's bilinear resize (align_corners false) from h × w to ho × wo.
fn resize(x: &Image, h: usize, w: usize, ho: usize, wo: usize) -> Image {
    let src = |d: usize, n_in: usize, n_out: usize| -> (usize, usize, f64) {
        let s = ((d as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, s - i0 as f64)
    };
    let mut out = vec![0.0; ho * wo];
    for y in 0..ho {
        let (y0, y1, ly) = src(y, h, ho);
        for xx in 0..wo {
            let (x0, x1, lx) = src(xx, w, wo);
            let top = (1.0 - lx) * x[y0 * w + x0] + lx * x[y0 * w + x1];
            let bottom = (1.0 - lx) * x[y1 * w + x0] + lx * x[y1 * w + x1];
            out[y * wo + xx] = (1.0 - ly) * top + ly * bottom;
        }
    }
    out
}

fn up(x: &Image, h: usize, w: usize) -> Image {
    blur(&resize(x, h, w, 2 * h, 2 * w), 2 * h, 2 * w)
}

/// The Laplacian pyramid of one image (kornia's `build_laplacian_pyramid`).
fn pyramid(x: Image, p: &Pyramid) -> Vec<Image> {
    let mut gauss = vec![x];
    for k in 0..p.levels - 1 {
        let (h, w) = p.dims(k);
        gauss.push(resize(&blur(&gauss[k], h, w), h, w, h / 2, w / 2));
    }
    let mut out: Vec<Image> = (0..p.levels - 1)
        .map(|k| {
            let (h, w) = p.dims(k + 1);
            gauss[k].iter().zip(up(&gauss[k + 1], h, w)).map(|(g, u)| g - u).collect()
        })
        .collect();
    out.push(gauss.pop().unwrap_or_default());
    out
}

fn std(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// FDG of c and u (native layout) in f64.
pub fn fdg_f64(p: &Pyramid, c: &[f64], u: &[f64], bands: &[FdgBand], original: bool) -> Vec<f64> {
    let s = &p.spatial;
    let (h, w) = (s.height, s.width);
    // Per sample: the pyramids of each plane.
    let image =
        |x: &[f64], b: usize, q: usize| -> Image { (0..h * w).map(|i| x[s.index(b, q, i / w, i % w)]).collect() };
    let mut out = vec![0.0; c.len()];
    for b in 0..s.batch {
        let pc: Vec<Vec<Image>> = (0..s.planes).map(|q| pyramid(image(c, b, q), p)).collect();
        let pu: Vec<Vec<Image>> = (0..s.planes).map(|q| pyramid(image(u, b, q), p)).collect();
        // Guided levels, each over the whole sample (all planes).
        let mut guided: Vec<Vec<Image>> = vec![Vec::new(); s.planes];
        for (k, band) in bands.iter().enumerate() {
            let flat = |pyr: &Vec<Vec<Image>>| -> Vec<f64> { pyr.iter().flat_map(|l| l[k].iter().copied()).collect() };
            let (ck, uk) = (flat(&pc), flat(&pu));
            let g: Vec<f64> = if !band.on {
                ck.clone()
            } else {
                let shift: Vec<f64> = ck.iter().zip(&uk).map(|(c, u)| c - u).collect();
                let shift = match band.parallel {
                    None => shift,
                    Some(eta) => {
                        let nc = ck.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                        let coef = shift.iter().zip(&ck).map(|(d, c)| d * c).sum::<f64>() / (nc * nc);
                        shift.iter().zip(&ck).map(|(d, c)| eta as f64 * coef * c + (d - coef * c)).collect()
                    }
                };
                let base = if original { &ck } else { &uk };
                let g: Vec<f64> = base.iter().zip(&shift).map(|(b, d)| b + band.scale as f64 * d).collect();
                if band.rescale > 0.0 && std(&g) != 0.0 {
                    let f = band.rescale * std(&ck) / std(&g) + (1.0 - band.rescale);
                    g.iter().map(|x| x * f).collect()
                } else {
                    g
                }
            };
            let len = g.len() / s.planes;
            for (q, plane) in guided.iter_mut().enumerate() {
                plane.push(g[q * len..(q + 1) * len].to_vec());
            }
        }
        for (q, levels) in guided.into_iter().enumerate() {
            let mut r = levels[p.levels - 1].clone();
            for k in (0..p.levels - 1).rev() {
                let (hk, wk) = p.dims(k + 1);
                r = up(&r, hk, wk).iter().zip(&levels[k]).map(|(a, g)| a + g).collect();
            }
            for (i, v) in r.into_iter().enumerate() {
                out[s.index(b, q, i / w, i % w)] = v;
            }
        }
    }
    out
}
