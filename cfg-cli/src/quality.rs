//! Sample quality against the true distribution of the analytic model.
//!
//! The mean log-likelihood alone rewards collapse: samples crowded on a
//! class's densest point score better than a faithful spread. The sliced
//! Wasserstein distance to exact samples of the class punishes both drift and
//! collapse, and comes with its noise floor (the same distance between two
//! exact draws of the same size), so "good" has a scale.

use cfg_gmm::Mixture;
use cfg_runtime::philox::philox4x32_10;

/// Directions of the sliced Wasserstein distance.
const DIRECTIONS: usize = 64;

/// How close the samples of one class are to its true distribution.
#[derive(Debug, Clone)]
pub struct ClassQuality {
    /// Points of this class.
    pub points: usize,
    /// ‖sample mean − true mean‖.
    pub mean_err: f64,
    /// ‖sample covariance − true covariance‖_F.
    pub cov_err: f64,
    /// Sliced Wasserstein-1 distance to as many exact samples of the class.
    pub sliced_w1: f64,
    /// The same distance between two independent exact draws of that size.
    pub floor: f64,
}

/// How close samples are to the class-conditional distributions.
#[derive(Debug, Clone)]
pub struct Quality {
    /// Points scored (samples × tokens).
    pub points: usize,
    /// Fraction whose most likely class is the requested one.
    pub on_class: f64,
    /// Mean `log p(x | requested class)`.
    pub log_likelihood: f64,
    /// Mean over classes of the sliced Wasserstein-1 distance.
    pub sliced_w1: f64,
    /// Mean over classes of its noise floor.
    pub floor: f64,
    /// Per class.
    pub per_class: Vec<ClassQuality>,
}

/// Uniforms in [0, 1) from Philox keyed by `key`, counter `i`.
fn uniforms(key: [u32; 2], i: u32) -> [f64; 4] {
    philox4x32_10([i, 0, 0, 0x5157], key).map(|x| (x as f64 + 0.5) / 4_294_967_296.0)
}

/// `n` standard normals (Box-Muller) from stream `key`.
fn normals(key: [u32; 2], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 3);
    let mut i = 0u32;
    while out.len() < n {
        let u = uniforms(key, i);
        i += 1;
        for (a, b) in [(u[0], u[1]), (u[2], u[3])] {
            let r = (-2.0 * a.ln()).sqrt();
            let (s, c) = (std::f64::consts::TAU * b).sin_cos();
            out.extend([r * c, r * s]);
        }
    }
    out.truncate(n);
    out
}

/// `n` exact draws of class `class`, keyed by `stream`.
pub fn exact_samples(mix: &Mixture, class: usize, n: usize, stream: u32) -> Vec<Vec<f64>> {
    let comps: Vec<_> = mix.components.iter().filter(|c| c.class == class).collect();
    let total: f64 = comps.iter().map(|c| c.weight).sum();
    let key = [class as u32, stream];
    let z = normals(key, n * (mix.dim + 1));
    (0..n)
        .map(|k| {
            // Component by weight: the extra normal through its CDF is a uniform.
            let u = 0.5 * (1.0 + erf(z[k * (mix.dim + 1)] / std::f64::consts::SQRT_2));
            let mut acc = 0.0;
            let comp = comps
                .iter()
                .find(|c| {
                    acc += c.weight / total;
                    u < acc
                })
                .unwrap_or(comps.last().expect("every class has components"));
            (0..mix.dim).map(|i| comp.mean[i] + comp.std[i] * z[k * (mix.dim + 1) + 1 + i]).collect()
        })
        .collect()
}

/// The error function (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7: ample for picking a component).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t + 0.254_829_592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

/// Sliced Wasserstein-1 between equal-sized point sets over `DIRECTIONS` fixed directions.
pub fn sliced_w1(a: &[Vec<f64>], b: &[Vec<f64>], dim: usize) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for k in 0..DIRECTIONS {
        let mut dir = normals([0xd1, k as u32], dim);
        let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
        dir.iter_mut().for_each(|v| *v /= norm);
        let project = |pts: &[Vec<f64>]| {
            let mut p: Vec<f64> = pts[..n].iter().map(|x| x.iter().zip(&dir).map(|(a, b)| a * b).sum()).collect();
            p.sort_by(f64::total_cmp);
            p
        };
        let (pa, pb) = (project(a), project(b));
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64;
    }
    total / DIRECTIONS as f64
}

/// Scores `x` (`[batch, tokens·dim]` f32, tokens iid) with requested `labels`.
pub fn score(mix: &Mixture, x: &[f32], labels: &[usize]) -> Quality {
    let d = mix.dim;
    let per_sample = x.len() / labels.len().max(1);
    let mut hits = 0usize;
    let mut ll = 0.0;
    let mut by_class: Vec<Vec<Vec<f64>>> = vec![Vec::new(); mix.classes];
    for (b, &class) in labels.iter().enumerate() {
        for p in x[b * per_sample..(b + 1) * per_sample].chunks_exact(d) {
            let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
            hits += usize::from(mix.most_likely_class(&p) == class);
            ll += mix.log_density(&p, class);
            by_class[class].push(p);
        }
    }
    let points = labels.len() * (per_sample / d.max(1));
    let per_class: Vec<ClassQuality> = by_class
        .iter()
        .enumerate()
        .map(|(c, pts)| {
            let n = pts.len();
            let (mut mean_err, mut cov_err) = (f64::NAN, f64::NAN);
            if n >= 2 {
                let (mean, cov) = mix.class_moments(c);
                let m: Vec<f64> = (0..d).map(|i| pts.iter().map(|p| p[i]).sum::<f64>() / n as f64).collect();
                mean_err = m.iter().zip(&mean).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
                let mut acc = 0.0;
                for i in 0..d {
                    for j in 0..d {
                        let s = pts.iter().map(|p| (p[i] - m[i]) * (p[j] - m[j])).sum::<f64>() / (n - 1) as f64;
                        acc += (s - cov[i * d + j]).powi(2);
                    }
                }
                cov_err = acc.sqrt();
            }
            let exact = exact_samples(mix, c, n, 1);
            let again = exact_samples(mix, c, n, 2);
            ClassQuality {
                points: n,
                mean_err,
                cov_err,
                sliced_w1: sliced_w1(pts, &exact, d),
                floor: sliced_w1(&again, &exact, d),
            }
        })
        .collect();
    let present: Vec<&ClassQuality> = per_class.iter().filter(|q| q.points > 0).collect();
    let mean_of = |f: fn(&ClassQuality) -> f64| present.iter().map(|q| f(q)).sum::<f64>() / present.len().max(1) as f64;
    Quality {
        points,
        on_class: hits as f64 / points.max(1) as f64,
        log_likelihood: ll / points.max(1) as f64,
        sliced_w1: mean_of(|q| q.sliced_w1),
        floor: mean_of(|q| q.floor),
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collapse onto each class's densest point scores a higher likelihood
    /// than exact samples, and a far worse sliced distance.
    #[test]
    fn collapse_is_punished_where_the_likelihood_rewards_it() {
        let mix = Mixture::planar(0.0);
        let n = 300;
        let labels: Vec<usize> = (0..mix.classes).flat_map(|c| std::iter::repeat_n(c, n)).collect();
        let faithful: Vec<f32> =
            (0..mix.classes).flat_map(|c| exact_samples(&mix, c, n, 7)).flatten().map(|v| v as f32).collect();
        let collapsed: Vec<f32> = (0..mix.classes)
            .flat_map(|c| {
                let densest =
                    mix.components.iter().filter(|k| k.class == c).max_by(|a, b| a.weight.total_cmp(&b.weight));
                let m = densest.expect("a component").mean.clone();
                std::iter::repeat_n(m, n)
            })
            .flatten()
            .map(|v| v as f32)
            .collect();
        let good = score(&mix, &faithful, &labels);
        let bad = score(&mix, &collapsed, &labels);
        assert!(bad.log_likelihood > good.log_likelihood, "{} vs {}", bad.log_likelihood, good.log_likelihood);
        assert!(bad.sliced_w1 > 3.0 * good.sliced_w1, "{} vs {}", bad.sliced_w1, good.sliced_w1);
        assert!(good.sliced_w1 < 2.0 * good.floor, "{} vs floor {}", good.sliced_w1, good.floor);
    }
}
