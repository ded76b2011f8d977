//! The data distribution: a class-conditional mixture of diagonal Gaussians.

use cfg_core::portable_math;
use cfg_runtime::philox::philox4x32_10;

/// One Gaussian component: `x₀ ~ N(mean, diag(std²))`.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// The class it belongs to.
    pub class: usize,
    /// Its weight within the whole mixture (all weights sum to 1).
    pub weight: f64,
    /// The mean, one entry per dim.
    pub mean: Vec<f64>,
    /// The standard deviation, one entry per dim.
    pub std: Vec<f64>,
}

/// A class-conditional Gaussian mixture in `dim` dimensions. Class `c` has the
/// image attribute `c % 2` (its "group"), the second condition of dual-condition
/// branches.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    /// Number of classes.
    pub classes: usize,
    /// Dimensions.
    pub dim: usize,
    /// The components, grouped by class.
    pub components: Vec<Component>,
}

/// Number of classes of the built-in mixtures.
pub const CLASSES: usize = 6;

impl Mixture {
    /// The picture mixture: 6 classes on a circle of radius 2.6, each two
    /// anisotropic components; neighbouring classes overlap a little, so
    /// guidance has something to sharpen. `rotation` turns the layout (radians).
    pub fn planar(rotation: f64) -> Mixture {
        let mut components = Vec::new();
        for c in 0..CLASSES {
            let a = rotation + std::f64::consts::TAU * c as f64 / CLASSES as f64;
            let (r, (s, co)) = (2.6, a.sin_cos());
            let along = [-s * 0.55, co * 0.55];
            let centre = [r * co, r * s];
            components.push(Component {
                class: c,
                weight: 0.6 / CLASSES as f64,
                mean: vec![centre[0] + along[0], centre[1] + along[1]],
                std: vec![0.45, 0.35],
            });
            components.push(Component {
                class: c,
                weight: 0.4 / CLASSES as f64,
                mean: vec![centre[0] - along[0], centre[1] - along[1]],
                std: vec![0.3, 0.5],
            });
        }
        Mixture { classes: CLASSES, dim: 2, components }
    }

    /// A mixture in `dim` dimensions with 6 classes of two components each;
    /// means and stds drawn from Philox with `seed`.
    pub fn random(dim: usize, seed: u64) -> Mixture {
        let scale = 1.0 / (1u64 << 32) as f64;
        let mut draw = {
            let mut i = 0u32;
            move || {
                i += 1;
                let x = philox4x32_10([i, 0, 0, 0x6d6978], [seed as u32, (seed >> 32) as u32]);
                (x[0] as f64 * scale, x[1] as f64 * scale)
            }
        };
        let mut components = Vec::new();
        for c in 0..CLASSES {
            for k in 0..2 {
                let mut mean = Vec::with_capacity(dim);
                let mut std = Vec::with_capacity(dim);
                for _ in 0..dim {
                    let (u, v) = draw();
                    mean.push(3.0 * (u - 0.5));
                    std.push(0.4 + 0.4 * v);
                }
                let weight = if k == 0 { 0.6 } else { 0.4 } / CLASSES as f64;
                components.push(Component { class: c, weight, mean, std });
            }
        }
        Mixture { classes: CLASSES, dim, components }
    }

    /// Stacks mixtures of the same classes and components side by side: the
    /// joint of several outputs sharing the component index.
    pub fn joint(parts: &[Mixture]) -> Mixture {
        let first = &parts[0];
        let components = (0..first.components.len())
            .map(|j| Component {
                class: first.components[j].class,
                weight: first.components[j].weight,
                mean: parts.iter().flat_map(|m| m.components[j].mean.iter().copied()).collect(),
                std: parts.iter().flat_map(|m| m.components[j].std.iter().copied()).collect(),
            })
            .collect();
        Mixture { classes: first.classes, dim: parts.iter().map(|m| m.dim).sum(), components }
    }

    /// The image attribute of a class.
    pub fn group(&self, class: usize) -> usize {
        class % 2
    }

    /// `log p(x₀ | class)` of one point over dims `dims`.
    pub fn log_density(&self, x: &[f64], class: usize) -> f64 {
        let comps: Vec<&Component> = self.components.iter().filter(|c| c.class == class).collect();
        let total: f64 = comps.iter().map(|c| c.weight).sum();
        let logs: Vec<f64> =
            comps.iter().map(|c| (c.weight / total).ln() + log_normal(x, &c.mean, &c.std, 1.0)).collect();
        log_sum_exp(&logs)
    }

    /// The class under which `x₀` is most likely (classes are equally likely).
    pub fn most_likely_class(&self, x: &[f64]) -> usize {
        (0..self.classes).max_by(|&a, &b| self.log_density(x, a).total_cmp(&self.log_density(x, b))).unwrap_or(0)
    }

    /// Mean and covariance (row-major `dim × dim`) of the class-conditional distribution.
    pub fn class_moments(&self, class: usize) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim;
        let comps: Vec<&Component> = self.components.iter().filter(|c| c.class == class).collect();
        let total: f64 = comps.iter().map(|c| c.weight).sum();
        let mut mean = vec![0.0; d];
        let mut second = vec![0.0; d * d];
        for c in &comps {
            let w = c.weight / total;
            for i in 0..d {
                mean[i] += w * c.mean[i];
                for j in 0..d {
                    let diag = if i == j { c.std[i] * c.std[i] } else { 0.0 };
                    second[i * d + j] += w * (diag + c.mean[i] * c.mean[j]);
                }
            }
        }
        let cov = (0..d * d).map(|k| second[k] - mean[k / d] * mean[k % d]).collect();
        (mean, cov)
    }
}

/// `log N(x; mean, diag((kappa·std)²))`.
pub fn log_normal(x: &[f64], mean: &[f64], std: &[f64], kappa: f64) -> f64 {
    let mut acc = 0.0;
    for i in 0..x.len() {
        let s = kappa * std[i];
        let z = (x[i] - mean[i]) / s;
        acc -= 0.5 * z * z + s.ln() + 0.5 * (std::f64::consts::TAU).ln();
    }
    acc
}

/// `log Σ exp(v)`, stable; with the portable `exp`/`ln` the GMM kernel uses
/// too, so the model's predictions are the same bits on the CPU and the GPU.
pub fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + portable_math::ln(v.iter().map(|x| portable_math::exp(x - m)).sum::<f64>())
}
