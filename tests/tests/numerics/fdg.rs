//! FDG stated directly in f64 on a [B, C, H, W] tensor, as diffusers runs it:
//! kornia's Laplacian pyramid (pyrdown = 5 × 5 binomial blur with reflect
//! padding, then a bilinear resize to half size; pyrup = a bilinear resize to
//! double size, then the blur), per-level CFG with the shift's part parallel
//! to c_k weighted, an optional `rescale_noise_cfg` per level, c_k for a level
//! that is off, and `build_image_from_pyramid`.

/// One level's settings.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub on: bool,
    pub scale: f64,
    pub parallel: f64,
    pub rescale: f64,
}

/// [planes][h·w] images.
type Stack = Vec<Vec<f64>>;

fn blur(x: &[f64], h: usize, w: usize) -> Vec<f64> {
    let k = [1.0, 4.0, 6.0, 4.0, 1.0];
    let pad = |i: i64, n: usize| -> usize {
        let n = n as i64;
        (if i < 0 {
            -i
        } else if i >= n {
            2 * n - 2 - i
        } else {
            i
        }) as usize
    };
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x0 in 0..w {
            let mut acc = 0.0;
            for a in 0..5 {
                for b in 0..5 {
                    let (sy, sx) = (pad(y as i64 + a as i64 - 2, h), pad(x0 as i64 + b as i64 - 2, w));
                    acc += k[a] * k[b] * x[sy * w + sx];
                }
            }
            out[y * w + x0] = acc / 256.0;
        }
    }
    out
}

/// `F.interpolate(mode="bilinear", align_corners=False)`.
fn bilinear(x: &[f64], h: usize, w: usize, ho: usize, wo: usize) -> Vec<f64> {
    let coord = |o: usize, n_in: usize, n_out: usize| {
        let s = ((o as f64 + 0.5) * (n_in as f64 / n_out as f64) - 0.5).max(0.0);
        let i0 = (s as usize).min(n_in - 1);
        (i0, (i0 + 1).min(n_in - 1), s - i0 as f64)
    };
    let mut out = vec![0.0; ho * wo];
    for y in 0..ho {
        let (y0, y1, fy) = coord(y, h, ho);
        for x0 in 0..wo {
            let (a, b, fx) = coord(x0, w, wo);
            let row = |r: usize| x[r * w + a] * (1.0 - fx) + x[r * w + b] * fx;
            out[y * wo + x0] = row(y0) * (1.0 - fy) + row(y1) * fy;
        }
    }
    out
}

fn pyrup(x: &[f64], h: usize, w: usize) -> Vec<f64> {
    blur(&bilinear(x, h, w, 2 * h, 2 * w), 2 * h, 2 * w)
}

fn std(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// FDG of c and u, [b, ch, h, w] row-major.
pub fn fdg_direct(c: &[f64], u: &[f64], dims: [usize; 4], levels: &[Level]) -> Vec<f64> {
    let [b, ch, h, w] = dims;
    let n = levels.len();
    let size = |k: usize| (h >> k, w >> k);
    let laplacian = |img: &[f64]| -> Vec<Vec<f64>> {
        let mut g = vec![img.to_vec()];
        for k in 0..n - 1 {
            let (hk, wk) = size(k);
            g.push(bilinear(&blur(&g[k], hk, wk), hk, wk, hk / 2, wk / 2));
        }
        let mut l: Vec<Vec<f64>> = (0..n - 1)
            .map(|k| {
                let (hk, wk) = size(k + 1);
                g[k].iter().zip(pyrup(&g[k + 1], hk, wk)).map(|(a, b)| a - b).collect()
            })
            .collect();
        l.push(g[n - 1].clone());
        l
    };
    let mut out = vec![0.0; c.len()];
    let per = ch * h * w;
    for s in 0..b {
        let planes = |x: &[f64]| -> Vec<Vec<Vec<f64>>> {
            (0..ch).map(|p| laplacian(&x[s * per + p * h * w..s * per + (p + 1) * h * w])).collect()
        };
        let (pc, pu) = (planes(c), planes(u));
        // Guided level k of the whole sample (all channels), [ch][h_k·w_k].
        let mut guided: Vec<Stack> = Vec::new();
        for (k, lv) in levels.iter().enumerate() {
            let ck: Vec<f64> = pc.iter().flat_map(|p| p[k].clone()).collect();
            let uk: Vec<f64> = pu.iter().flat_map(|p| p[k].clone()).collect();
            let g: Vec<f64> = if !lv.on {
                ck.clone()
            } else {
                let shift: Vec<f64> = ck.iter().zip(&uk).map(|(a, b)| a - b).collect();
                let nc = ck.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                let along: f64 = shift.iter().zip(&ck).map(|(d, c)| d * c / nc).sum();
                let g: Vec<f64> = (0..ck.len())
                    .map(|i| {
                        let par = along * ck[i] / nc;
                        uk[i] + lv.scale * (lv.parallel * par + (shift[i] - par))
                    })
                    .collect();
                if lv.rescale > 0.0 {
                    let f = lv.rescale * std(&ck) / std(&g) + (1.0 - lv.rescale);
                    g.iter().map(|x| x * f).collect()
                } else {
                    g
                }
            };
            let len = g.len() / ch;
            guided.push((0..ch).map(|p| g[p * len..(p + 1) * len].to_vec()).collect());
        }
        for p in 0..ch {
            let mut r = guided[n - 1][p].clone();
            for k in (0..n - 1).rev() {
                let (hk, wk) = size(k + 1);
                r = pyrup(&r, hk, wk).iter().zip(&guided[k][p]).map(|(a, b)| a + b).collect();
            }
            out[s * per + p * h * w..s * per + (p + 1) * h * w].copy_from_slice(&r);
        }
    }
    out
}
