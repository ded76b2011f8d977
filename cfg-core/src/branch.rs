//! Branch specs: what a model call conditions on and how the model is modified.

use serde::{Deserialize, Serialize};

/// The text condition of a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Prompt {
    /// The user's prompt (or class).
    Positive,
    /// The negative prompt.
    Negative,
    /// No text condition (the empty prompt).
    Empty,
}

/// The image (or second) condition of a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Image {
    /// No image condition.
    #[default]
    None,
    /// The reference image (pix2pix source, identity reference).
    Reference,
    /// A negative reference (DreamID's negative identity).
    NegativeReference,
}

/// Query-blur sigmas at or above this mean "infinite blur": every query is
/// replaced by the mean over the token grid (diffusers'
/// `seg_blur_threshold_inf = 9999.0`).
pub const BLUR_UNIFORM_SIGMA: f64 = 9999.0;

/// How the model is modified for this branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Modifier {
    /// The model as it is.
    #[default]
    None,
    /// Skip these transformer blocks (skip-layer guidance).
    SkipLayers(Vec<u32>),
    /// Skip self-attention in these blocks (STG, LTX-2 perturbed branch).
    SkipSelfAttention(Vec<u32>),
    /// Self-attention scores replaced by the identity in these blocks
    /// (perturbed-attention guidance, PAG): each token attends only to itself.
    IdentityAttention(Vec<u32>),
    /// Self-attention queries blurred by a Gaussian of `sigma` (in tokens)
    /// over the 2-D token grid in these blocks (smoothed energy guidance,
    /// SEG); `sigma` ≥ [`BLUR_UNIFORM_SIGMA`] replaces every query by the
    /// grid's mean.
    BlurQueries {
        /// The blocks whose queries are blurred.
        layers: Vec<u32>,
        /// The blur's standard deviation in tokens, > 0.
        sigma: f64,
    },
    /// Each modality attends only to itself (LTX-2 modality isolation).
    IsolateModality,
    /// Another, weaker model (autoguidance); the string names it.
    Model(String),
    /// This reference input is zeroed (DreamID-Omni's reference-negative
    /// branches); the string names it (`"image"`, `"audio"`).
    DropReference(String),
    /// Normalized attention guidance (NAG): the branch's attention also runs
    /// on a negative context, and per token its output becomes
    /// `α·norm(s·z⁺ − (s − 1)·z⁻) + (1 − α)·z⁺`, where `norm` scales the
    /// extrapolation down to at most `tau` times `z⁺`'s L1 norm. Guidance
    /// inside the model: the policy's combine sees one branch.
    Nag {
        /// The negative context's prompt (`Negative` or `Empty`).
        #[serde(default = "negative")]
        negative: Prompt,
        /// The extrapolation scale `s` (1: no guidance).
        #[serde(default = "nag_scale")]
        scale: f64,
        /// The L1-norm ratio cap `τ` (≥ 1).
        #[serde(default = "nag_tau")]
        tau: f64,
        /// The blend `α` of the normalized features, in [0, 1].
        #[serde(default = "nag_alpha")]
        alpha: f64,
        /// NAG is applied while sigma is above this (0: at every step).
        #[serde(default)]
        sigma_end: f64,
        /// The negative context's cost, as a share of one forward, added to
        /// the branch's: 1 where it runs through every block (joint
        /// attention: Flux, SD3, ComfyUI's batched NAG); less where only
        /// cross-attention runs twice (Wan).
        #[serde(default = "one")]
        extra_cost: f64,
    },
}

fn negative() -> Prompt {
    Prompt::Negative
}

fn nag_scale() -> f64 {
    5.0
}

fn nag_tau() -> f64 {
    1.5
}

fn nag_alpha() -> f64 {
    0.5
}

impl Modifier {
    /// The block list of a modifier that names blocks, with the variant's name.
    pub fn layers(&self) -> Option<(&'static str, &[u32])> {
        match self {
            Modifier::SkipLayers(l) => Some(("SkipLayers", l)),
            Modifier::SkipSelfAttention(l) => Some(("SkipSelfAttention", l)),
            Modifier::IdentityAttention(l) => Some(("IdentityAttention", l)),
            Modifier::BlurQueries { layers, .. } => Some(("BlurQueries", layers)),
            Modifier::None
            | Modifier::IsolateModality
            | Modifier::Model(_)
            | Modifier::DropReference(_)
            | Modifier::Nag { .. } => None,
        }
    }

    /// The factor a forward of a branch with this modifier costs over a
    /// plain one (NAG's negative context: `1 + extra_cost`).
    pub fn cost_factor(&self) -> f64 {
        match self {
            Modifier::Nag { extra_cost, .. } => 1.0 + extra_cost,
            _ => 1.0,
        }
    }
}

/// One branch: a model call with a given condition and modification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    /// The text condition.
    pub prompt: Prompt,
    /// The image condition.
    #[serde(default)]
    pub image: Image,
    /// The model modification.
    #[serde(default)]
    pub modify: Modifier,
    /// Relative cost of this branch's forward (1.0 = a plain forward).
    #[serde(default = "one")]
    pub cost: f64,
    /// The model's output for this branch carries extra tokens (vllm-omni's
    /// `output_slice`, Ideogram-4's text tokens): each output's prediction is
    /// sliced to the output's shape along an axis before the combine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<OutputSlice>,
}

/// Which part of a longer prediction a branch keeps, along one axis: the
/// output's own extent `n` along `axis`, starting `offset` elements after
/// the start, or (`from_end: true`) ending `offset` elements before the end.
/// Written `slice: (axis: 1, from_end: true)` ("the last n tokens").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    /// The axis (≥ 1: axis 0 is the batch).
    pub axis: usize,
    /// Elements skipped before the kept part (after it with `from_end`).
    #[serde(default)]
    pub offset: usize,
    /// Count `offset` from the end of the axis.
    #[serde(default)]
    pub from_end: bool,
}

impl OutputSlice {
    /// The first kept index along the axis, for a prediction of extent `got`
    /// there and an output of extent `want`; `None` when it does not fit.
    pub fn start(&self, got: usize, want: usize) -> Option<usize> {
        let end = got.checked_sub(self.offset)?;
        if self.from_end {
            end.checked_sub(want)
        } else {
            (self.offset + want <= got).then_some(self.offset)
        }
    }

    /// The expected extent along the axis, for an output of extent `want`
    /// (`from_end`: at least that; the part before it is dropped).
    pub fn describe(&self, want: usize) -> String {
        let side = if self.from_end { "the last" } else { "the first" };
        let skip = if self.offset > 0 { format!(" after skipping {}", self.offset) } else { String::new() };
        format!("at least {} along axis {} (keeping {side} {want}{skip})", want + self.offset, self.axis)
    }
}

fn one() -> f64 {
    1.0
}

impl BranchSpec {
    /// A plain branch with this prompt.
    pub fn prompt(prompt: Prompt) -> Self {
        BranchSpec { prompt, image: Image::None, modify: Modifier::None, cost: 1.0, slice: None }
    }

    /// The relative cost of one forward: the declared `cost` times the
    /// modifier's extra work (the planner balances ranks by it).
    pub fn forward_cost(&self) -> f64 {
        self.cost * self.modify.cost_factor()
    }
}
