//! The analytic model (`docs/architecture.md`, section 7): data from a class-conditional Gaussian
//! mixture, so the optimal denoiser is closed-form and samples can be checked
//! against the true distribution.
//!
//! Branches map to the model as follows:
//! - prompt `Positive`: the components of the sample's class; `Negative` and
//!   `Empty`: every class (unconditional);
//! - image `Reference`: classes sharing the sample's image attribute
//!   (`class % 2`); `NegativeReference`: the other attribute; with a positive
//!   prompt this is the dual condition;
//! - modifier `SkipLayers`: component stds inflated by κ
//!   ([`model::DEFAULT_KAPPA`]); `Model(_)`: another, weaker model, stds
//!   inflated by κ and log-likelihoods tempered by κ; `SkipSelfAttention(layers)`:
//!   component means pulled towards the mixture's mean
//!   ([`model::skip_attention_pull`]); `Nag {..}`: NAG's extrapolation, L1
//!   cap and blend applied per token to the posterior means under the
//!   branch's prompt and its negative context;
//!   `IdentityAttention(layers)` (PAG): the log-likelihoods of `x_t` tempered
//!   by `1 + layers.len()` ([`model::identity_attention_evidence`]), so the
//!   responsibilities drift to the prior weights;
//!   `BlurQueries { sigma, .. }` (SEG): log weights and log-likelihoods
//!   tempered by `1 + sigma`, uniform over the allowed components for
//!   `sigma` ≥ 9999 ([`model::blur_temperature_factor`]); in both each
//!   component's own denoising stays exact;
//!   `IsolateModality`: each output's responsibilities from that output alone
//!   (no cross-modal evidence); identical to plain with one output;
//!   `DropReference(_)`: the image condition is dropped (as `Image::None`).
//!
//! Variants: [`GmmModel::planar`] (2-D, for pictures), [`GmmModel::tokens`]
//! (`[batch, tokens, dim]`, iid tokens, realistic sizes), [`GmmModel::image`]
//! (`[batch, channels, height, width]`: iid channel planes, each an image
//! drawn from a mixture over its pixels), [`GmmModel::video`]
//! (`[batch, channels, frames, height, width]`, likewise), and any of them with
//! several outputs (video + audio, video + action) sharing the component index.
//! Predictions in ε, v or x₀, as each output's policy space asks.
#![deny(missing_docs)]
#![warn(clippy::all)]

pub mod cuda;
pub mod extra_tokens;
pub mod mixture;
pub mod model;

pub use mixture::Mixture;
pub use model::GmmModel;
