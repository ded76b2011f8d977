//! The exact denoiser of a Gaussian mixture under flow matching (`docs/architecture.md`, section 7).
//!
//! With `x_t = (1 − t)·x₀ + t·ε` and component `j`: `x₀ ~ N(μ_j, diag(s_j²))`,
//! `x_t | j ~ N((1 − t)μ_j, diag(v_j))`, `v_j = (1 − t)²s_j² + t²`; the
//! responsibilities `r_j ∝ π_j·N(x_t; (1 − t)μ_j, v_j)` (log-sum-exp) give
//! `x̂₀ = Σ r_j·(μ_j + (1 − t)s_j²/v_j ⊙ (x_t − (1 − t)μ_j))`, then
//! `v̂ = (x_t − x̂₀)/t` and `ε̂ = (x_t − (1 − t)x̂₀)/t`.
//!
//! Tokens are iid: each token of a sample is its own mixture draw, with the
//! sample's class. Outputs (`video`, `audio`...) of one token share its
//! component index. Every token is computed on its own, sequentially in f64,
//! so a sample's prediction never depends on what else is in the batch.

use crate::mixture::{log_sum_exp, Mixture};
use cfg_core::branch::{BranchSpec, Image, Modifier, Prompt, BLUR_UNIFORM_SIGMA};
use cfg_core::expr::Space;
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::model::{predict_on_host, Call, DeviceCall, Model, ModelError, OutputInfo};
use cfg_runtime::tensor::{DeviceTensor, Place};
use rayon::prelude::*;

/// One output: a slice of the joint dims.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) offset: usize,
    pub(crate) dim: usize,
}

/// The analytic model: a mixture, the outputs it predicts and the class of
/// each sample in the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct GmmModel {
    pub(crate) mixture: Mixture,
    part_mixtures: Vec<Mixture>,
    pub(crate) parts: Vec<Part>,
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    flat: bool,
    /// The dims each token's features are read as (the image model: rows and
    /// columns; the video model: frames, rows and columns).
    grid: Option<Vec<usize>>,
    pub(crate) labels: Vec<usize>,
    pub(crate) dtype: DType,
    kappa: f64,
    /// The mixture's mean (weights over all components), per dim: where
    /// skip-attention branches pull their component means.
    pub(crate) center: Vec<f64>,
}

/// How the branches of the model see a branch spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Condition {
    pub(crate) text: bool,
    pub(crate) image: Image,
    pub(crate) kappa: f64,
    pub(crate) isolate: bool,
    /// Multiplies each component's log-likelihood in the responsibilities
    /// (1: exact; below 1 the evidence of `x_t` is tempered; 0: ignored).
    pub(crate) evidence: f64,
    /// Multiplies each component's log weight in the responsibilities
    /// (1: exact; 0: the allowed components are equally likely a priori).
    pub(crate) prior: f64,
    /// How much of each component mean's distance from the mixture's mean
    /// is kept (1: exact; 0: every mean at the mixture's mean).
    pub(crate) pull: f64,
}

/// A NAG branch at a step where it is on: the negative context's condition
/// and the parameters of the combination of the two posterior means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NagTerms {
    pub(crate) negative: Condition,
    pub(crate) scale: f64,
    pub(crate) tau: f64,
    pub(crate) alpha: f64,
}

/// NAG's floor on both L1 norms (as ComfyUI's `clamp_min(1e-6)`).
const NAG_NORM_FLOOR: f64 = 1e-6;

impl NagTerms {
    /// The NAG factor of one token's part from the L1 norms of the positive
    /// posterior mean and of the extrapolation:
    /// `min(ratio, τ)/ratio`, `ratio = ‖g‖₁/‖z⁺‖₁` (norms floored).
    pub(crate) fn factor(&self, l1_positive: f64, l1_guided: f64) -> f64 {
        let ratio = l1_guided.max(NAG_NORM_FLOOR) / l1_positive.max(NAG_NORM_FLOOR);
        ratio.min(self.tau) / ratio
    }

    /// The extrapolation `g = s·z⁺ − (s − 1)·z⁻`.
    pub(crate) fn guided(&self, positive: f64, negative: f64) -> f64 {
        positive * self.scale - negative * (self.scale - 1.0)
    }

    /// The blend `α·(g·factor) + (1 − α)·z⁺`.
    pub(crate) fn blend(&self, guided: f64, factor: f64, positive: f64) -> f64 {
        guided * factor * self.alpha + positive * (1.0 - self.alpha)
    }
}

/// A component mean under `cond`: `center + pull·(mean − center)`, and the
/// mean itself when nothing is pulled (so plain branches keep their bits).
pub(crate) fn pulled_mean(cond: Condition, mean: f64, center: f64) -> f64 {
    if cond.pull == 1.0 {
        mean
    } else {
        center + cond.pull * (mean - center)
    }
}

/// The likelihood terms of one dim of one component under `cond` at `(a, t)`:
/// the variance and log variance the responsibilities divide and add (the
/// variance over `evidence`, the log variance times it, so that the
/// log-likelihood is `evidence` times the exact one, up to rounding), and the
/// posterior-mean coefficient. The CPU model and the device tables both
/// compute them here, so they agree bit for bit.
pub(crate) fn terms(cond: Condition, a: f64, t: f64, std: f64) -> (f64, f64, f64) {
    let s = cond.kappa * std;
    let v = a * a * s * s + t * t;
    let s2 = s.powi(2);
    let vx = a * a * s2 + t * t;
    (v / cond.evidence, cond.evidence * v.ln(), a * s2 / vx)
}

/// Std inflation of skip-layer and other-model branches.
pub const DEFAULT_KAPPA: f64 = 1.6;

/// The mean pull of a skip-attention (STG) branch with `layers` blocks
/// skipped: `1/(1 + layers)`. Without self-attention the tokens lose the
/// context that places them: each component's mean is pulled that far
/// towards the mixture's mean (structure fades), while the spread is kept.
pub fn skip_attention_pull(layers: usize) -> f64 {
    1.0 / (1.0 + layers as f64)
}

/// The evidence factor of an identity-attention (PAG) branch with `layers`
/// perturbed blocks: `1/(1 + layers)`. Each token attends only to itself, so
/// the branch loses the context that tells the components apart: the
/// log-likelihood of `x_t` under each component is tempered by `1 + layers`
/// (responsibilities drift towards the prior weights), while each
/// component's own denoising stays exact.
pub fn identity_attention_evidence(layers: usize) -> f64 {
    1.0 / (1.0 + layers as f64)
}

/// The temperature factor of a query-blur (SEG) branch: `1/(1 + sigma)`, and
/// 0 for `sigma` ≥ [`BLUR_UNIFORM_SIGMA`]. Blurred queries smooth the
/// attention energy: the whole posterior over components (log weight and
/// log-likelihood alike) is tempered by `1 + sigma`, so responsibilities
/// flatten towards uniform over the allowed components, and are uniform at
/// infinite blur; each component's own denoising stays exact.
pub fn blur_temperature_factor(sigma: f64) -> f64 {
    if sigma >= BLUR_UNIFORM_SIGMA {
        0.0
    } else {
        1.0 / (1.0 + sigma)
    }
}

impl GmmModel {
    /// One branch of every kind the model answers: cond, uncond, skip-layer,
    /// skip-attention, another model, modality-isolated, the reference-image
    /// condition, identity attention (PAG), query blur (SEG) with a finite and
    /// an infinite sigma, and NAG (off below sigma 0.1), for checks that must
    /// cover them all.
    pub fn branch_kinds() -> [BranchSpec; 11] {
        let positive = || BranchSpec::prompt(Prompt::Positive);
        let nag = Modifier::Nag {
            negative: Prompt::Empty,
            scale: 4.0,
            tau: 1.5,
            alpha: 0.5,
            sigma_end: 0.1,
            extra_cost: 1.0,
        };
        [
            positive(),
            BranchSpec::prompt(Prompt::Empty),
            BranchSpec { modify: Modifier::SkipLayers(vec![7]), ..positive() },
            BranchSpec { modify: Modifier::SkipSelfAttention(vec![7]), ..positive() },
            BranchSpec { modify: Modifier::Model("weak".into()), ..positive() },
            BranchSpec { modify: Modifier::IsolateModality, ..positive() },
            BranchSpec { image: Image::Reference, ..BranchSpec::prompt(Prompt::Empty) },
            BranchSpec { modify: Modifier::IdentityAttention(vec![13]), ..positive() },
            BranchSpec { modify: Modifier::BlurQueries { layers: vec![13], sigma: 2.0 }, ..positive() },
            BranchSpec { modify: Modifier::BlurQueries { layers: vec![13], sigma: 9999999.0 }, ..positive() },
            BranchSpec { modify: nag, ..positive() },
        ]
    }

    /// The 2-D picture model: each output is `[batch, 2]` over [`Mixture::planar`]
    /// (rotated by half a radian per further output), f32.
    pub fn planar(outputs: &[&str], batch: usize) -> GmmModel {
        let parts: Vec<Mixture> = (0..outputs.len()).map(|k| Mixture::planar(0.5 * k as f64)).collect();
        Self::build(outputs, parts, batch, 1, true, DType::F32)
    }

    /// The token model: each output is `[batch, tokens, dim]` of iid tokens
    /// over [`Mixture::random`], in `dtype`.
    pub fn tokens(outputs: &[&str], batch: usize, tokens: usize, dim: usize, dtype: DType) -> GmmModel {
        let parts: Vec<Mixture> = (0..outputs.len()).map(|k| Mixture::random(dim, 17 + k as u64)).collect();
        Self::build(outputs, parts, batch, tokens, false, dtype)
    }

    /// The image model: each output is a `[batch, channels, height, width]`
    /// latent whose channel planes are iid draws of a mixture over
    /// `height × width` pixels (the token model with one token per channel,
    /// read as images), in `dtype`. Spatial operators (FDG) see real images.
    pub fn image(
        outputs: &[&str],
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        dtype: DType,
    ) -> GmmModel {
        let mut m = Self::tokens(outputs, batch, channels, height * width, dtype);
        m.grid = Some(vec![height, width]);
        m
    }

    /// The video model: `[batch, channels, frames, height, width]` latents
    /// whose channel volumes are iid draws of a mixture over
    /// `frames × height × width` values (the image model with frames).
    pub fn video(
        outputs: &[&str],
        batch: usize,
        channels: usize,
        frames: usize,
        height: usize,
        width: usize,
        dtype: DType,
    ) -> GmmModel {
        let mut m = Self::tokens(outputs, batch, channels, frames * height * width, dtype);
        m.grid = Some(vec![frames, height, width]);
        m
    }

    fn build(
        names: &[&str],
        part_mixtures: Vec<Mixture>,
        batch: usize,
        tokens: usize,
        flat: bool,
        dtype: DType,
    ) -> GmmModel {
        let mut offset = 0;
        let parts = names
            .iter()
            .zip(&part_mixtures)
            .map(|(n, m)| {
                let p = Part { name: n.to_string(), offset, dim: m.dim };
                offset += m.dim;
                p
            })
            .collect();
        let mixture = Mixture::joint(&part_mixtures);
        let labels = (0..batch).map(|b| b % mixture.classes).collect();
        let center =
            (0..mixture.dim).map(|k| mixture.components.iter().map(|c| c.weight * c.mean[k]).sum::<f64>()).collect();
        GmmModel {
            mixture,
            part_mixtures,
            parts,
            batch,
            tokens,
            flat,
            grid: None,
            labels,
            dtype,
            kappa: DEFAULT_KAPPA,
            center,
        }
    }

    /// Replaces the class of each sample (`labels.len()` must be the batch).
    pub fn with_labels(mut self, labels: Vec<usize>) -> Self {
        assert_eq!(labels.len(), self.batch, "one label per sample");
        self.labels = labels;
        self
    }

    /// Sets the std inflation of perturbed branches.
    pub fn with_kappa(mut self, kappa: f64) -> Self {
        self.kappa = kappa;
        self
    }

    /// The requested class of each sample.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The data distribution of output `k` alone.
    pub fn mixture(&self, k: usize) -> &Mixture {
        &self.part_mixtures[k]
    }

    pub(crate) fn condition(&self, spec: &BranchSpec) -> Condition {
        let kappa = match spec.modify {
            Modifier::SkipLayers(_) | Modifier::Model(_) => self.kappa,
            _ => 1.0,
        };
        let (evidence, prior) = match &spec.modify {
            Modifier::IdentityAttention(layers) => (identity_attention_evidence(layers.len()), 1.0),
            Modifier::BlurQueries { sigma, .. } => {
                let f = blur_temperature_factor(*sigma);
                (f, f)
            }
            // The other model is also less sure which component it sees.
            Modifier::Model(_) => (1.0 / self.kappa, 1.0),
            _ => (1.0, 1.0),
        };
        let pull = match &spec.modify {
            Modifier::SkipSelfAttention(layers) => skip_attention_pull(layers.len()),
            _ => 1.0,
        };
        Condition {
            text: spec.prompt == Prompt::Positive,
            // A dropped reference input leaves no image condition.
            image: if matches!(spec.modify, Modifier::DropReference(_)) { Image::None } else { spec.image },
            kappa,
            isolate: spec.modify == Modifier::IsolateModality,
            evidence,
            prior,
            pull,
        }
    }

    /// NAG's terms for a branch at noise level `sigma`: `None` for a branch
    /// without NAG, or one at or below its `sigma_end`.
    pub(crate) fn nag(&self, spec: &BranchSpec, sigma: f64) -> Option<NagTerms> {
        let Modifier::Nag { negative, scale, tau, alpha, sigma_end, .. } = spec.modify else { return None };
        if sigma <= sigma_end {
            return None;
        }
        let plain = BranchSpec { prompt: negative, modify: Modifier::None, ..spec.clone() };
        Some(NagTerms { negative: self.condition(&plain), scale, tau, alpha })
    }

    pub(crate) fn allowed(&self, cond: Condition, label: usize) -> Vec<usize> {
        let g = self.mixture.group(label);
        (0..self.mixture.components.len())
            .filter(|&j| {
                let c = self.mixture.components[j].class;
                let text = !cond.text || c == label;
                let image = match cond.image {
                    Image::None => true,
                    Image::Reference => self.mixture.group(c) == g,
                    Image::NegativeReference => self.mixture.group(c) != g,
                };
                text && image
            })
            .collect()
    }

    /// The responsibilities of the allowed components `comps` for one token
    /// (`x`, the joint dims): one row per output, the joint row repeated
    /// unless the branch is isolated.
    fn responsibilities(&self, cond: Condition, comps: &[usize], x: &[f64], a: f64, t: f64) -> Vec<Vec<f64>> {
        // Per-part log-likelihoods of each component.
        let logs: Vec<Vec<f64>> = self
            .parts
            .iter()
            .map(|part| {
                comps
                    .iter()
                    .map(|&j| {
                        let c = &self.mixture.components[j];
                        let mut acc = 0.0;
                        for (k, &xk) in x.iter().enumerate().skip(part.offset).take(part.dim) {
                            let (v, log_v, _) = terms(cond, a, t, c.std[k]);
                            let z = xk - a * pulled_mean(cond, c.mean[k], self.center[k]);
                            acc -= 0.5 * (z * z / v + log_v);
                        }
                        acc
                    })
                    .collect()
            })
            .collect();
        let log_weight = |j: usize| cond.prior * self.mixture.components[j].weight.ln();
        if cond.isolate {
            (0..self.parts.len())
                .map(|p| softmax(comps.iter().enumerate().map(|(ci, &j)| log_weight(j) + logs[p][ci])))
                .collect()
        } else {
            let joint = softmax(
                comps
                    .iter()
                    .enumerate()
                    .map(|(ci, &j)| log_weight(j) + (0..self.parts.len()).map(|p| logs[p][ci]).sum::<f64>()),
            );
            vec![joint; self.parts.len()]
        }
    }

    /// `E[x₀ | x_t]` of joint dim `k` of the token `x` at time `t` under
    /// `cond`, from the responsibilities `r` of the allowed components `comps`.
    fn posterior_mean(&self, cond: Condition, comps: &[usize], r: &[f64], x: &[f64], k: usize, t: f64) -> f64 {
        let (a, xk) = (1.0 - t, x[k]);
        let mut x0 = 0.0;
        for (ci, &j) in comps.iter().enumerate() {
            let c = &self.mixture.components[j];
            let (_, _, coef) = terms(cond, a, t, c.std[k]);
            let mean = pulled_mean(cond, c.mean[k], self.center[k]);
            x0 += r[ci] * (mean + coef * (xk - a * mean));
        }
        x0
    }

    /// Predicts one branch for sample `b`: one vector per output.
    fn predict_sample(
        &self,
        cond: Condition,
        nag: Option<NagTerms>,
        b: usize,
        latents: &[&[f32]],
        t: f64,
        spaces: &[Space],
    ) -> Vec<Vec<f32>> {
        let comps = self.allowed(cond, self.labels[b]);
        let negative = nag.map(|n| (n, self.allowed(n.negative, self.labels[b])));
        let d = self.mixture.dim;
        let mut out: Vec<Vec<f32>> = self.parts.iter().map(|p| Vec::with_capacity(self.tokens * p.dim)).collect();
        let mut x = vec![0.0f64; d];
        let a = 1.0 - t;
        for tok in 0..self.tokens {
            for (p, part) in self.parts.iter().enumerate() {
                let base = (b * self.tokens + tok) * part.dim;
                for k in 0..part.dim {
                    x[part.offset + k] = latents[p][base + k] as f64;
                }
            }
            let resp = self.responsibilities(cond, &comps, &x, a, t);
            let resp_neg = negative.as_ref().map(|(n, nc)| self.responsibilities(n.negative, nc, &x, a, t));
            for (p, part) in self.parts.iter().enumerate() {
                let dims = part.offset..part.offset + part.dim;
                let positive = |k: usize| self.posterior_mean(cond, &comps, &resp[p], &x, k, t);
                match (&negative, &resp_neg) {
                    (Some((n, nc)), Some(rn)) => {
                        // NAG per token and output: the L1 norms first, then the blend.
                        let negative = |k: usize| self.posterior_mean(n.negative, nc, &rn[p], &x, k, t);
                        let (mut l1_positive, mut l1_guided) = (0.0, 0.0);
                        for k in dims.clone() {
                            let zp = positive(k);
                            l1_positive += zp.abs();
                            l1_guided += n.guided(zp, negative(k)).abs();
                        }
                        let factor = n.factor(l1_positive, l1_guided);
                        for k in dims {
                            let zp = positive(k);
                            let x0 = n.blend(n.guided(zp, negative(k)), factor, zp);
                            out[p].push(in_space(spaces[p], x[k], x0, a, t) as f32);
                        }
                    }
                    _ => {
                        for k in dims {
                            out[p].push(in_space(spaces[p], x[k], positive(k), a, t) as f32);
                        }
                    }
                }
            }
        }
        out
    }

    fn shape(&self, part: &Part) -> Shape {
        if self.flat {
            Shape::new(vec![self.batch, part.dim])
        } else if let Some(grid) = &self.grid {
            Shape::new([&[self.batch, self.tokens][..], grid].concat())
        } else {
            Shape::new(vec![self.batch, self.tokens, part.dim])
        }
    }
}

/// A posterior mean `x0` of the latent `x` at `t` in the output's space.
pub(crate) fn in_space(space: Space, x: f64, x0: f64, a: f64, t: f64) -> f64 {
    match space {
        Space::X0 => x0,
        Space::V => (x - x0) / t,
        Space::Eps => (x - a * x0) / t,
    }
}

fn softmax(logs: impl Iterator<Item = f64>) -> Vec<f64> {
    let v: Vec<f64> = logs.collect();
    let m = log_sum_exp(&v);
    v.iter().map(|l| cfg_core::portable_math::exp(l - m)).collect()
}

impl Model for GmmModel {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.parts
            .iter()
            .map(|p| OutputInfo { name: p.name.clone(), shape: self.shape(p), dtype: self.dtype })
            .collect()
    }

    fn predict_on(&self, place: &Place, call: &DeviceCall<'_>) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
        match place {
            Place::Cuda(dev) => self.predict_on_cuda(dev, call),
            Place::Host => predict_on_host(self, place, call),
        }
    }

    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError> {
        if call.latents.len() != self.parts.len() || call.spaces.len() != self.parts.len() {
            return Err(ModelError(format!("expected {} latents and spaces", self.parts.len())));
        }
        let t = call.info.t;
        if !(t > 0.0 && t <= 1.0) {
            return Err(ModelError(format!("flow time {t} is outside (0, 1]")));
        }
        let mut latents = Vec::with_capacity(self.parts.len());
        for (p, part) in self.parts.iter().enumerate() {
            let x = &call.latents[p];
            match &x.data {
                cfg_core::tensor::TensorData::F32(v) if x.shape == self.shape(part) => latents.push(v.as_slice()),
                _ => {
                    return Err(ModelError(format!(
                        "output `{}`: expected f32 latents of shape {}, got {} {}",
                        part.name,
                        self.shape(part),
                        x.dtype(),
                        x.shape
                    )))
                }
            }
        }
        let mut result = Vec::with_capacity(call.branches.len());
        for (name, spec) in call.branches {
            let cond = self.condition(spec);
            let nag = self.nag(spec, call.info.sigma);
            let conds = [Some(cond), nag.map(|n| n.negative)];
            if conds.iter().flatten().any(|&c| (0..self.batch).any(|b| self.allowed(c, self.labels[b]).is_empty())) {
                return Err(ModelError(format!("branch `{name}`: no mixture component satisfies its condition")));
            }
            let per_sample: Vec<Vec<Vec<f32>>> = (0..self.batch)
                .into_par_iter()
                .map(|b| self.predict_sample(cond, nag, b, &latents, t, call.spaces))
                .collect();
            let tensors = self
                .parts
                .iter()
                .enumerate()
                .map(|(p, part)| {
                    let values: Vec<f32> = per_sample.iter().flat_map(|s| s[p].iter().copied()).collect();
                    crate::extra_tokens::pad_host(spec, Tensor::from_f32(self.dtype, self.shape(part), &values))
                })
                .collect();
            result.push(tensors);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfg_core::branch::Prompt;
    use cfg_runtime::model::StepInfo;

    fn predict(m: &GmmModel, spec: BranchSpec, x: &Tensor, t: f64, space: Space) -> Vec<f32> {
        let info = StepInfo { step: 0, num_steps: 1, t, sigma: t, chunks: cfg_core::schedule::ChunkTimes::NONE };
        let branches = [("b".to_string(), spec)];
        let latents = [x.clone()];
        let call = Call { info, branches: &branches, latents: &latents, spaces: &[space] };
        m.predict(&call).unwrap().remove(0).remove(0).to_f32()
    }

    #[test]
    fn the_three_spaces_are_one_prediction() {
        let m = GmmModel::planar(&["sample"], 12);
        let values: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        let x = Tensor::from_f32(DType::F32, Shape::new(vec![12, 2]), &values);
        let t = 0.4;
        for spec in [BranchSpec::prompt(Prompt::Positive), BranchSpec::prompt(Prompt::Empty)] {
            let x0 = predict(&m, spec.clone(), &x, t, Space::X0);
            let eps = predict(&m, spec.clone(), &x, t, Space::Eps);
            let v = predict(&m, spec, &x, t, Space::V);
            for i in 0..24 {
                let back = (1.0 - t) * x0[i] as f64 + t * eps[i] as f64;
                assert!((back - values[i] as f64).abs() < 1e-5);
                assert!(((eps[i] - x0[i]) - v[i]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn every_modifier_has_its_own_effect() {
        let m = GmmModel::planar(&["sample"], 12);
        let values: Vec<f32> = (0..24).map(|i| (i as f32 * 0.61).cos() * 2.5).collect();
        let x = Tensor::from_f32(DType::F32, Shape::new(vec![12, 2]), &values);
        let positive = |modify| BranchSpec { modify, ..BranchSpec::prompt(Prompt::Positive) };
        let nag = |scale, tau, alpha| Modifier::Nag {
            negative: Prompt::Negative,
            scale,
            tau,
            alpha,
            sigma_end: 0.0,
            extra_cost: 1.0,
        };
        let specs = [
            positive(Modifier::None),
            positive(Modifier::SkipLayers(vec![7])),
            positive(Modifier::SkipSelfAttention(vec![7])),
            positive(Modifier::SkipSelfAttention(vec![7, 8])),
            positive(Modifier::Model("weak".into())),
            positive(Modifier::IdentityAttention(vec![7])),
            positive(Modifier::IdentityAttention(vec![7, 8])),
            positive(Modifier::BlurQueries { layers: vec![7], sigma: 2.0 }),
            positive(Modifier::BlurQueries { layers: vec![7], sigma: 9999999.0 }),
            positive(nag(4.0, 1.5, 0.5)),
            positive(nag(4.0, 10.0, 0.5)),
            positive(nag(4.0, 1.5, 1.0)),
        ];
        let preds: Vec<Vec<f32>> = specs.iter().map(|s| predict(&m, s.clone(), &x, 0.6, Space::X0)).collect();
        for i in 0..specs.len() {
            for j in i + 1..specs.len() {
                assert_ne!(preds[i], preds[j], "{:?} vs {:?}", specs[i].modify, specs[j].modify);
            }
        }
    }

    #[test]
    fn nag_is_its_formula_on_the_posterior_means_and_off_below_sigma_end() {
        let m = GmmModel::tokens(&["sample"], 3, 4, 8, DType::F32);
        let info = &m.outputs()[0];
        let values = cfg_runtime::philox::normal_vec(5, 0, 0, info.shape.numel());
        let x = Tensor::from_f32(DType::F32, info.shape.clone(), &values);
        let (t, scale, tau, alpha) = (0.7, 4.0, 2.5, 0.25);
        let nag = |sigma_end| BranchSpec {
            modify: Modifier::Nag { negative: Prompt::Empty, scale, tau, alpha, sigma_end, extra_cost: 1.0 },
            ..BranchSpec::prompt(Prompt::Positive)
        };
        let zp = predict(&m, BranchSpec::prompt(Prompt::Positive), &x, t, Space::X0);
        let zn = predict(&m, BranchSpec::prompt(Prompt::Empty), &x, t, Space::X0);
        let got = predict(&m, nag(0.0), &x, t, Space::X0);
        let mut capped = 0;
        // Per token (8 dims): ComfyUI's formula, in f64 from the two branches' f32 predictions.
        for tok in 0..12 {
            let r = tok * 8..tok * 8 + 8;
            let g: Vec<f64> = r.clone().map(|i| zp[i] as f64 * scale - zn[i] as f64 * (scale - 1.0)).collect();
            let l1p: f64 = r.clone().map(|i| (zp[i] as f64).abs()).sum();
            let ratio = g.iter().map(|v| v.abs()).sum::<f64>() / l1p;
            capped += usize::from(ratio > tau);
            for (gi, i) in g.iter().zip(r) {
                let want = gi * ratio.min(tau) / ratio * alpha + zp[i] as f64 * (1.0 - alpha);
                assert!((got[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "token {tok}: {} {want}", got[i]);
            }
        }
        assert!(capped > 0 && capped < 12, "the cap at tau should bind on some tokens only ({capped} of 12)");
        // At or below sigma_end NAG is off: the plain positive branch.
        assert_eq!(predict(&m, nag(t), &x, t, Space::X0), zp);
    }

    #[test]
    fn skip_attention_pulls_means_to_the_mixture_mean_and_keeps_the_spread() {
        // Near t = 0 the posterior mean is the point itself for any means, so
        // check at t = 1 (pure noise): x̂₀ = Σ r_j·μ'_j with μ' the pulled means.
        let m = GmmModel::planar(&["sample"], 6);
        let x = Tensor::from_f32(DType::F32, Shape::new(vec![6, 2]), &[0.0; 12]);
        let plain = predict(&m, BranchSpec::prompt(Prompt::Positive), &x, 1.0, Space::X0);
        let stg = BranchSpec { modify: Modifier::SkipSelfAttention(vec![3]), ..BranchSpec::prompt(Prompt::Positive) };
        let pulled = predict(&m, stg, &x, 1.0, Space::X0);
        for i in 0..12 {
            let want = m.center[i % 2] + 0.5 * (plain[i] as f64 - m.center[i % 2]);
            assert!((pulled[i] as f64 - want).abs() < 1e-6, "{i}: {} {want}", pulled[i]);
        }
    }

    #[test]
    fn infinite_blur_weighs_the_class_components_equally() {
        let m = GmmModel::planar(&["sample"], 6);
        let values: Vec<f32> = (0..12).map(|i| (i as f32 * 0.83).sin() * 2.0).collect();
        let x = Tensor::from_f32(DType::F32, Shape::new(vec![6, 2]), &values);
        let t = 0.5;
        let blur = BranchSpec {
            modify: Modifier::BlurQueries { layers: vec![1], sigma: BLUR_UNIFORM_SIGMA },
            ..BranchSpec::prompt(Prompt::Positive)
        };
        let got = predict(&m, blur, &x, t, Space::X0);
        let a = 1.0 - t;
        for b in 0..6 {
            for k in 0..2 {
                // Class b owns components 2b and 2b + 1: the mean of their posterior means.
                let xk = values[b * 2 + k] as f64;
                let want: f64 = [2 * b, 2 * b + 1]
                    .iter()
                    .map(|&j| {
                        let c = &m.mixture.components[j];
                        let s2 = c.std[k] * c.std[k];
                        0.5 * (c.mean[k] + a * s2 / (a * a * s2 + t * t) * (xk - a * c.mean[k]))
                    })
                    .sum();
                assert!((got[b * 2 + k] as f64 - want).abs() < 1e-5, "sample {b} dim {k}");
            }
        }
    }

    #[test]
    fn near_the_data_the_clean_prediction_is_the_point_itself() {
        let m = GmmModel::planar(&["sample"], 2);
        let x = Tensor::from_f32(DType::F32, Shape::new(vec![2, 2]), &[2.9, 0.4, -1.0, 2.5]);
        let x0 = predict(&m, BranchSpec::prompt(Prompt::Empty), &x, 1e-4, Space::X0);
        for (a, b) in x0.iter().zip(x.to_f32()) {
            assert!((a - b).abs() < 1e-3, "{a} {b}");
        }
    }
}
