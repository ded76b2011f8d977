//! Schedulers: the timesteps of a run and the update of the latents.
//!
//! Latents live in flow units, `x_t = (1 − t)·x₀ + t·ε`. A prediction in any
//! space (ε, v, x₀) is first turned into `(x̂₀, ε̂)`:
//! ε: `x̂₀ = (x − t·ε̂)/(1 − t)`; v: `x̂₀ = x − t·v̂`, `ε̂ = x + (1 − t)·v̂`;
//! x₀: `ε̂ = (x − (1 − t)·x̂₀)/t`.
//!
//! - **Euler** (flow matching): `t_i` = shift(1 − i/N) with
//!   shift(s) = `k·s/(1 + (k − 1)·s)`, capped at [`T_MAX`] (ε is singular at
//!   t = 1); `sigma = t`. Update `x ← x + (t' − t)·(ε̂ − x̂₀)`.
//! - **DDIM** (η = 0): the scaled-linear β schedule of Stable Diffusion (1000
//!   training steps, β from 0.00085 to 0.012), "trailing" timesteps
//!   `τ_i = round(1000 − 1000·i/N) − 1`, and ᾱ = 1 after the last. A VP
//!   latent `α·x₀ + σ·ε` is the flow latent at `t = σ/(α + σ)` scaled by
//!   `α + σ`, so the model sees flow time `t`; `sigma = σ/α`.
//!   Update `x ← (1 − t')·x̂₀ + t'·ε̂`.
//! - **Ancestral** (stochastic, DDPM-like with η = 1 on the Euler times):
//!   `x ← (1 − t')·x̂₀ + sqrt(t'² − c²)·ε̂ + c·z` with
//!   `c = η·t'·sqrt(1 − (t'(1 − t)/((1 − t')·t))²)` and `z` Philox normals
//!   keyed by (seed, step, output index) (see [`crate::philox`]).
//!
//! **CFG++** (an output with `renoise`, ComfyUI's `*_cfg_pp` samplers): the
//! guided prediction gives `x̂₀` and the re-noising prediction (the
//! unconditional one, typically) gives `ε̂`, each split in its space at the
//! same `x` and `t`; every sampler then moves to `(1 − t')·x̂₀ + t'·ε̂`
//! (ancestral: `(1 − t')·x̂₀ + sqrt(t'² − c²)·ε̂ + c·z`). This is ComfyUI's
//! `x ← denoised + σ'·(x − uncond_denoised)/σ` in flow units.
//!
//! The initial latents are `t_0·z` with `z` drawn at step [`crate::philox::INIT_STEP`].

use cfg_core::expr::Space;
use std::fmt;
use std::str::FromStr;

/// The largest flow time a schedule starts at.
pub const T_MAX: f64 = 0.999;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// Flow-matching Euler with shifted timesteps.
    Euler,
    /// DDIM (deterministic), on the SD scaled-linear schedule.
    Ddim,
    /// Ancestral sampling with Philox noise.
    Ancestral,
}

/// A scheduler: update rule and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// The update rule.
    pub kind: SamplerKind,
    /// Timestep shift `k` of the flow schedules (1 = none).
    pub shift: f64,
    /// Noise fraction of the ancestral sampler (1 = DDPM).
    pub eta: f64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler { kind: SamplerKind::Euler, shift: 1.0, eta: 1.0 }
    }
}

impl Sampler {
    /// A sampler of this kind with default parameters.
    pub fn new(kind: SamplerKind) -> Self {
        Sampler { kind, ..Sampler::default() }
    }

    /// `(t, sigma)` at each of the `steps` steps, plus the end point `(0, 0)`.
    pub fn times(&self, steps: usize) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = match self.kind {
            SamplerKind::Euler | SamplerKind::Ancestral => (0..steps)
                .map(|i| {
                    let s = 1.0 - i as f64 / steps as f64;
                    let t = (self.shift * s / (1.0 + (self.shift - 1.0) * s)).min(T_MAX);
                    (t, t)
                })
                .collect(),
            SamplerKind::Ddim => {
                let alphas = sd_alphas_cumprod();
                (0..steps)
                    .map(|i| {
                        let tau = ((1000.0 - 1000.0 * i as f64 / steps as f64).round() as usize).clamp(1, 1000) - 1;
                        let (a, s) = (alphas[tau].sqrt(), (1.0 - alphas[tau]).sqrt());
                        (s / (a + s), s / a)
                    })
                    .collect()
            }
        };
        out.push((0.0, 0.0));
        out
    }

    /// Whether the update draws noise.
    pub fn is_stochastic(&self) -> bool {
        self.kind == SamplerKind::Ancestral
    }

    /// Updates `x` (flow latents at time `t`) to time `t_next` from the
    /// combined prediction `pred` in `space`, and with CFG++ the re-noising
    /// prediction `renoise` (same space and length). `noise` is needed when stochastic.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        space: Space,
        x: &mut [f32],
        pred: &[f32],
        renoise: Option<&[f32]>,
        t: f64,
        t_next: f64,
        noise: Option<&[f32]>,
    ) {
        let c = if self.is_stochastic() && t_next > 0.0 {
            let r = (t_next * (1.0 - t) / ((1.0 - t_next) * t)).powi(2);
            self.eta * t_next * (1.0 - r).max(0.0).sqrt()
        } else {
            0.0
        };
        let keep = (t_next * t_next - c * c).max(0.0).sqrt();
        let kind = self.kind;
        // Elements per parallel task.
        const TASK: usize = 1 << 14;
        let step = |i: usize, xi: &mut f32| {
            let p = pred[i];
            let (x0, eps) = split(space, *xi as f64, p as f64, t);
            let z = || noise.map(|n| n[i] as f64).unwrap_or(0.0);
            let next = match renoise {
                None => match kind {
                    SamplerKind::Euler => *xi as f64 + (t_next - t) * (eps - x0),
                    SamplerKind::Ddim => (1.0 - t_next) * x0 + t_next * eps,
                    SamplerKind::Ancestral => (1.0 - t_next) * x0 + keep * eps + c * z(),
                },
                // CFG++: x̂₀ from the guided prediction, ε̂ from the re-noising one.
                Some(r) => {
                    let (_, eps) = split(space, *xi as f64, r[i] as f64, t);
                    match kind {
                        SamplerKind::Euler | SamplerKind::Ddim => (1.0 - t_next) * x0 + t_next * eps,
                        SamplerKind::Ancestral => (1.0 - t_next) * x0 + keep * eps + c * z(),
                    }
                }
            };
            *xi = next as f32;
        };
        cfg_core::par::for_each_chunk_mut(x, TASK, |k, xs| {
            xs.iter_mut().enumerate().for_each(|(j, xi)| step(k * TASK + j, xi))
        });
    }
}

/// `(x̂₀, ε̂)` from a prediction in `space` at latents `x`, time `t`.
fn split(space: Space, x: f64, p: f64, t: f64) -> (f64, f64) {
    match space {
        Space::Eps => ((x - t * p) / (1.0 - t), p),
        Space::V => (x - t * p, x + (1.0 - t) * p),
        Space::X0 => (p, (x - (1.0 - t) * p) / t),
    }
}

/// ᾱ of Stable Diffusion's scaled-linear schedule, 1000 steps.
fn sd_alphas_cumprod() -> Vec<f64> {
    let (lo, hi) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut acc = 1.0;
    (0..1000)
        .map(|k| {
            let beta = (lo + (hi - lo) * k as f64 / 999.0).powi(2);
            acc *= 1.0 - beta;
            acc
        })
        .collect()
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SamplerKind::Euler => "euler",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Ancestral => "ancestral",
        })
    }
}

impl FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "euler" | "flow-euler" => Ok(SamplerKind::Euler),
            "ddim" => Ok(SamplerKind::Ddim),
            "ancestral" | "ddpm" => Ok(SamplerKind::Ancestral),
            other => Err(format!("unknown sampler `{other}`: expected euler, ddim or ancestral")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_decrease_to_zero() {
        for kind in [SamplerKind::Euler, SamplerKind::Ddim, SamplerKind::Ancestral] {
            let ts = Sampler { kind, shift: 3.0, eta: 1.0 }.times(20);
            assert_eq!(ts.len(), 21);
            assert!(ts.windows(2).all(|w| w[0].0 > w[1].0), "{kind}: {ts:?}");
            assert!(ts[0].0 <= T_MAX && ts[20] == (0.0, 0.0));
        }
    }

    #[test]
    fn an_exact_x0_prediction_lands_on_it() {
        // From any t, a prediction of x₀ and the last step (t' = 0) give x₀.
        for kind in [SamplerKind::Euler, SamplerKind::Ddim, SamplerKind::Ancestral] {
            let s = Sampler::new(kind);
            let mut x = vec![0.7f32];
            s.update(Space::X0, &mut x, &[0.25], None, 0.3, 0.0, Some(&[5.0]));
            assert!((x[0] - 0.25).abs() < 1e-6, "{kind}: {}", x[0]);
        }
    }

    /// x̂₀ of a prediction `p` in `space` at latents `x`, time `t`, stated directly.
    fn x0_of(space: Space, x: f64, p: f64, t: f64) -> f64 {
        match space {
            Space::X0 => p,
            Space::Eps => (x - t * p) / (1.0 - t),
            Space::V => x - t * p,
        }
    }

    #[test]
    fn cfg_pp_matches_comfyuis_update() {
        // ComfyUI's `sample_euler_cfg_pp` on a flow model (alpha = 1 − σ, eta = 0):
        // x' = alpha'·x̂₀(guided) + σ'·(x − alpha·x̂₀(uncond))/σ, in f64 from
        // x̂₀ alone (no ε̂ split). Ancestral: σ' becomes sqrt(σ'² − c²), plus c·z,
        // this module's ancestral step.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        };
        for kind in [SamplerKind::Euler, SamplerKind::Ddim, SamplerKind::Ancestral] {
            for space in [Space::Eps, Space::V, Space::X0] {
                for (t, t_next) in [(0.999, 0.9), (0.6, 0.45), (0.2, 0.05), (0.3, 0.0)] {
                    let s = Sampler::new(kind);
                    let n = 64;
                    let x: Vec<f32> = (0..n).map(|_| next() as f32).collect();
                    let g: Vec<f32> = (0..n).map(|_| next() as f32).collect();
                    let u: Vec<f32> = (0..n).map(|_| next() as f32).collect();
                    let z: Vec<f32> = (0..n).map(|_| next() as f32).collect();
                    let mut got = x.clone();
                    s.update(space, &mut got, &g, Some(&u), t, t_next, Some(&z));
                    let c = if kind == SamplerKind::Ancestral && t_next > 0.0 {
                        let r = (t_next * (1.0 - t) / ((1.0 - t_next) * t)).powi(2);
                        t_next * (1.0 - r).sqrt()
                    } else {
                        0.0
                    };
                    for i in 0..n {
                        let xi = x[i] as f64;
                        let x0_g = x0_of(space, xi, g[i] as f64, t);
                        let x0_u = x0_of(space, xi, u[i] as f64, t);
                        let d = (xi - (1.0 - t) * x0_u) / t;
                        let down = (t_next * t_next - c * c).sqrt();
                        let want = (1.0 - t_next) * x0_g + down * d + c * z[i] as f64;
                        let err = (got[i] as f64 - want).abs();
                        assert!(
                            err <= 1e-6 * want.abs().max(1.0),
                            "{kind} {space:?} t {t} → {t_next}, element {i}: {} vs {want}",
                            got[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cfg_pp_with_renoise_equal_to_the_prediction_is_the_plain_sampler() {
        // DDIM's update is the CFG++ form: renoise = pred changes no bit.
        for space in [Space::Eps, Space::V, Space::X0] {
            let s = Sampler::new(SamplerKind::Ddim);
            let (mut a, mut b) = (vec![0.3f32, -1.2, 0.7], vec![0.3f32, -1.2, 0.7]);
            let p = [0.1f32, 0.5, -0.4];
            s.update(space, &mut a, &p, None, 0.7, 0.4, None);
            s.update(space, &mut b, &p, Some(&p), 0.7, 0.4, None);
            assert_eq!(a, b, "{space:?}");
        }
    }

    #[test]
    fn spaces_agree() {
        // x = (1−t)·x0 + t·eps with x0 = 2, eps = −1 at t = 0.4.
        let (x0, eps, t) = (2.0f64, -1.0f64, 0.4f64);
        let x = (1.0 - t) * x0 + t * eps;
        for (space, p) in [(Space::X0, x0), (Space::Eps, eps), (Space::V, eps - x0)] {
            let (a, b) = split(space, x, p, t);
            assert!((a - x0).abs() < 1e-12 && (b - eps).abs() < 1e-12, "{space:?}");
        }
    }
}
