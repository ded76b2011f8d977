//! Sample quality against the true distribution of the analytic model.

use cfg_gmm::Mixture;

/// How close samples are to the class-conditional distributions.
#[derive(Debug, Clone)]
pub struct Quality {
    /// Points scored (samples × tokens).
    pub points: usize,
    /// Fraction whose most likely class is the requested one.
    pub on_class: f64,
    /// Mean `log p(x | requested class)`.
    pub log_likelihood: f64,
    /// Per class: (points, ‖mean − true mean‖, ‖cov − true cov‖_F).
    pub per_class: Vec<(usize, f64, f64)>,
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
    let per_class = by_class
        .iter()
        .enumerate()
        .map(|(c, pts)| {
            let n = pts.len();
            if n < 2 {
                return (n, f64::NAN, f64::NAN);
            }
            let (mean, cov) = mix.class_moments(c);
            let m: Vec<f64> = (0..d).map(|i| pts.iter().map(|p| p[i]).sum::<f64>() / n as f64).collect();
            let mean_err = m.iter().zip(&mean).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            let mut cov_err = 0.0;
            for i in 0..d {
                for j in 0..d {
                    let s = pts.iter().map(|p| (p[i] - m[i]) * (p[j] - m[j])).sum::<f64>() / (n - 1) as f64;
                    cov_err += (s - cov[i * d + j]).powi(2);
                }
            }
            (n, mean_err, cov_err.sqrt())
        })
        .collect();
    Quality {
        points,
        on_class: hits as f64 / points.max(1) as f64,
        log_likelihood: ll / points.max(1) as f64,
        per_class,
    }
}
