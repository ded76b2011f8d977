//! The guidance language's syntax tree: a policy declares branches, scales,
//! named values and one guidance expression per output.
//!
//! These types derive `Deserialize` so that `cfg-policies` can read them from
//! RON; every struct and struct variant denies unknown fields.

use crate::branch::BranchSpec;
use crate::layout::Layout;
use crate::reduce::Reduce;
use crate::schedule::Schedule;
use crate::window::Window;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A scale or any other numeric parameter: a literal number, or the name of
/// a declared (possibly scheduled) scale, evaluated at each step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ScaleRef {
    /// A constant.
    Value(f64),
    /// A scale declared in the policy's `scales`.
    Named(String),
}

impl ScaleRef {
    /// The literal, if it is one.
    pub fn literal(&self) -> Option<f64> {
        match self {
            ScaleRef::Value(v) => Some(*v),
            ScaleRef::Named(_) => None,
        }
    }
}

impl fmt::Display for ScaleRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ScaleRef::Value(v) => write!(f, "{v}"),
            ScaleRef::Named(n) => write!(f, "\"{n}\""),
        }
    }
}

impl<'de> Deserialize<'de> for ScaleRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScaleRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or the quoted name of a declared scale")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScaleRef, E> {
                Ok(ScaleRef::Value(v))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<ScaleRef, E> {
                Ok(ScaleRef::Value(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScaleRef, E> {
                Ok(ScaleRef::Value(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScaleRef, E> {
                Ok(ScaleRef::Value(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScaleRef, E> {
                Ok(ScaleRef::Named(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The working space of an output's prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Space {
    /// Noise prediction ε.
    Eps,
    /// Velocity / flow prediction.
    V,
    /// Clean-sample prediction x₀.
    X0,
}

/// A guidance expression. Every operand position takes an expression, so
/// schemes nest (Bagel's nested guidance is `Cfg` inside `Cfg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Expr {
    /// A branch's prediction: `Ref("cond")`.
    Ref(String),
    /// A named value declared in the policy's `values`: `Use("text_guided")`.
    Use(String),
    /// The sum of several expressions.
    Sum(Vec<Expr>),
    /// `Diff(a, b)` = a − b.
    Diff(Box<Expr>, Box<Expr>),
    /// (scale + offset) · term.
    Scaled {
        /// The scale.
        scale: ScaleRef,
        /// Added to the scale (LTX-2 writes `(s − 1)·Δ`: offset −1).
        #[serde(default = "zero")]
        offset: ScaleRef,
        /// The term.
        term: Box<Expr>,
    },
    /// Classifier-free guidance: `uncond + s·(cond − uncond)`, or with
    /// `original: true`, `cond + s·(cond − uncond)`.
    Cfg {
        /// The conditional prediction.
        cond: Box<Expr>,
        /// The unconditional prediction.
        uncond: Box<Expr>,
        /// The guidance scale.
        scale: ScaleRef,
        /// diffusers' `use_original_formulation`.
        #[serde(default)]
        original: bool,
    },
    /// `term` at the steps inside `window`; elsewhere `else` (zero when absent).
    Windowed {
        /// When the term is on.
        window: Window,
        /// The term.
        term: Box<Expr>,
        /// What replaces the term where the window is off (diffusers' guiders:
        /// the cond prediction). Written `else:`.
        #[serde(default, rename = "else", skip_serializing_if = "Option::is_none")]
        otherwise: Option<Box<Expr>>,
    },
    /// `input · clamp(‖reference‖ / (‖input‖ + eps), min, max)` per reduction group.
    Renorm {
        /// The guided prediction.
        input: Box<Expr>,
        /// Whose norm to restore (usually cond).
        reference: Box<Expr>,
        /// The reduction groups of the norms.
        over: Reduce,
        /// Lower clamp of the factor (none when absent).
        #[serde(default)]
        min: Option<ScaleRef>,
        /// Upper clamp of the factor (none when absent).
        #[serde(default)]
        max: Option<ScaleRef>,
        /// Added to ‖input‖.
        #[serde(default = "zero")]
        eps: ScaleRef,
    },
    /// If ‖input‖ > ratio·‖reference‖ (whole tensor) scale input down to that norm.
    NormCap {
        /// The guided prediction.
        input: Box<Expr>,
        /// The reference (usually cond).
        reference: Box<Expr>,
        /// The largest allowed norm ratio.
        ratio: ScaleRef,
    },
    /// `phi·input·std(reference)/std(input) + (1 − phi)·input` (unbiased std).
    StdRescale {
        /// The guided prediction.
        input: Box<Expr>,
        /// The reference (cond).
        reference: Box<Expr>,
        /// Rescale strength φ.
        phi: ScaleRef,
        /// Sample (diffusers) or Tensor (LTX-2 official).
        over: Reduce,
    },
    /// CFG-Zero*: α = ⟨c,u⟩/(‖u‖²+1e-8) per sample; αu + s(c − αu); zero for the
    /// first `zero_init_steps` steps after the start of sampling.
    ZeroStar {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// Guidance scale.
        scale: ScaleRef,
        /// Steps whose output is zero.
        #[serde(default = "one_step")]
        zero_init_steps: usize,
        /// Base on cond instead of αu.
        #[serde(default)]
        original: bool,
    },
    /// Adaptive projected guidance (Sadat et al. 2024), diffusers' order:
    /// momentum, norm threshold, f64 projection on cond.
    Apg {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// Guidance scale.
        scale: ScaleRef,
        /// Momentum β: r ← Δ + β·r (0 = none).
        #[serde(default = "zero")]
        momentum: ScaleRef,
        /// Clip ‖Δ‖ to this per sample (0 = off).
        #[serde(default = "zero")]
        norm_threshold: ScaleRef,
        /// Weight of the parallel component.
        #[serde(default = "one")]
        eta: ScaleRef,
        /// Base on cond instead of uncond.
        #[serde(default)]
        original: bool,
    },
    /// APG-Mix (diffusers AdaptiveProjectedMixGuidance, HunyuanImage-2.1):
    /// CFG with `cfg_scale` at steps i ≤ `apg_start_step`, APG with `scale`
    /// after; the momentum buffer advances in both phases.
    ApgMix {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// CFG's scale (steps up to `apg_start_step`).
        cfg_scale: ScaleRef,
        /// APG's scale (steps after `apg_start_step`).
        scale: ScaleRef,
        /// The last CFG step: APG at step indices i > this.
        #[serde(default = "five_steps")]
        apg_start_step: usize,
        /// Momentum β: r ← Δ + β·r (0 = none).
        #[serde(default = "zero")]
        momentum: ScaleRef,
        /// Clip ‖Δ‖ to this per sample (0 = off).
        #[serde(default = "zero")]
        norm_threshold: ScaleRef,
        /// Weight of the parallel component.
        #[serde(default = "one")]
        eta: ScaleRef,
        /// Base on cond instead of uncond.
        #[serde(default)]
        original: bool,
    },
    /// Perp-Neg (ComfyUI `PerpNegGuider`): with P = pos − empty and
    /// N = neg − empty, N⊥ = N − (⟨N,P⟩/‖P‖²)·P per group of `over`;
    /// `empty + s·(P − neg_scale·N⊥)`.
    PerpNeg {
        /// The positive prompt's prediction.
        pos: Box<Expr>,
        /// The negative prompt's prediction.
        neg: Box<Expr>,
        /// The empty prompt's prediction.
        empty: Box<Expr>,
        /// Guidance scale.
        scale: ScaleRef,
        /// Weight of the negative's perpendicular part.
        #[serde(default = "one")]
        neg_scale: ScaleRef,
        /// Groups of the projection (ComfyUI: `Tensor`).
        #[serde(default = "per_sample")]
        over: Reduce,
    },
    /// Magnitude-aware guidance (MAMBO-G): s' = 1 + (s−1)·exp(−α‖Δ‖/‖u‖) per sample.
    MagnitudeAware {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// Guidance scale.
        scale: ScaleRef,
        /// Damping strength α.
        alpha: ScaleRef,
    },
    /// Tangential CFG (diffusers TangentialClassifierFreeGuidance): u' = the
    /// projection of u on the top right-singular vector of the stacked [c; u]
    /// per sample; `u' + s·(c − u')` (`original: true`: `c + s·(c − u')`).
    Tcfg {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// Guidance scale.
        scale: ScaleRef,
        /// Base on cond instead of u'.
        #[serde(default)]
        original: bool,
    },
    /// Frequency-decoupled guidance (diffusers FrequencyDecoupledGuidance):
    /// a Laplacian pyramid of c and u over the rows and columns of the
    /// output's declared layout; per level k (0: the highest frequencies)
    /// `u_k + s_k·Δ_k` with Δ_k's parallel part (on c_k) weighted, an
    /// optional std rescale and a window (off: c_k); reconstructed.
    Fdg {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// The pyramid's levels, highest frequencies first (1 to 8).
        levels: Vec<FdgLevel>,
        /// Base each level on c_k instead of u_k.
        #[serde(default)]
        original: bool,
    },
    /// MAGI-1's chunked guidance: per chunk of `chunk_frames` frames (along
    /// the output's `F` axis), `u + p·(prefix − u) + t·(c − prefix)` with
    /// (p, t) looked up from the chunk's own time: the last `thresholds[k]`
    /// with `thresholds[k] − 1e-7 < time` gives `prefix_scales[k]`,
    /// `text_scales[k]` (the first where none does).
    Chunked {
        /// Text and prefix (the full condition).
        cond: Box<Expr>,
        /// Prefix only (the clean earlier chunks, no text).
        prefix: Box<Expr>,
        /// Neither.
        uncond: Box<Expr>,
        /// Chunk-time thresholds, increasing (MAGI-1's `cfg_t_range`).
        thresholds: Vec<f64>,
        /// p per threshold (MAGI-1's `prev_chunk_scales`).
        prefix_scales: Vec<f64>,
        /// t per threshold (MAGI-1's `text_scales`).
        text_scales: Vec<f64>,
        /// Frames per chunk (≥ 1).
        chunk_frames: usize,
    },
    /// Adaptive guidance (Castillo et al. 2023): CFG until cos(c, u) > threshold,
    /// then cond alone (uncond leaves the plan) for the rest of sampling.
    Adaptive {
        /// Conditional prediction.
        cond: Box<Expr>,
        /// Unconditional prediction.
        uncond: Box<Expr>,
        /// Guidance scale.
        scale: ScaleRef,
        /// Cosine similarity above which guidance stops.
        threshold: ScaleRef,
    },
}

/// One level of FDG's pyramid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdgLevel {
    /// The level's guidance scale.
    pub scale: ScaleRef,
    /// Weight of the shift's part parallel to c_k (1: plain CFG shift).
    #[serde(default = "one")]
    pub parallel_weight: ScaleRef,
    /// When the level is guided; elsewhere it is c_k (always on when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Std rescale strength φ of the guided level against c_k, per sample (0: off).
    #[serde(default = "zero")]
    pub rescale: ScaleRef,
}

fn one() -> ScaleRef {
    ScaleRef::Value(1.0)
}

fn zero() -> ScaleRef {
    ScaleRef::Value(0.0)
}

fn one_step() -> usize {
    1
}

fn per_sample() -> Reduce {
    Reduce::Sample
}

fn five_steps() -> usize {
    5
}

impl Expr {
    /// The direct sub-expressions, in source order.
    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Ref(_) | Expr::Use(_) => vec![],
            Expr::Sum(terms) => terms.iter().collect(),
            Expr::Diff(a, b) => vec![a, b],
            Expr::Scaled { term, .. } => vec![term],
            Expr::PerpNeg { pos, neg, empty, .. } => vec![pos, neg, empty],
            Expr::Chunked { cond, prefix, uncond, .. } => vec![cond, prefix, uncond],
            Expr::Windowed { term, otherwise, .. } => std::iter::once(&**term).chain(otherwise.as_deref()).collect(),
            Expr::Renorm { input, reference, .. }
            | Expr::NormCap { input, reference, .. }
            | Expr::StdRescale { input, reference, .. } => vec![input, reference],
            Expr::Cfg { cond, uncond, .. }
            | Expr::ZeroStar { cond, uncond, .. }
            | Expr::Apg { cond, uncond, .. }
            | Expr::MagnitudeAware { cond, uncond, .. }
            | Expr::Tcfg { cond, uncond, .. }
            | Expr::ApgMix { cond, uncond, .. }
            | Expr::Fdg { cond, uncond, .. }
            | Expr::Adaptive { cond, uncond, .. } => vec![cond, uncond],
        }
    }

    /// The direct sub-expressions, in source order, mutably.
    pub fn children_mut(&mut self) -> Vec<&mut Expr> {
        match self {
            Expr::Ref(_) | Expr::Use(_) => vec![],
            Expr::Sum(terms) => terms.iter_mut().collect(),
            Expr::Diff(a, b) => vec![a, b],
            Expr::Scaled { term, .. } => vec![term],
            Expr::PerpNeg { pos, neg, empty, .. } => vec![pos, neg, empty],
            Expr::Chunked { cond, prefix, uncond, .. } => vec![cond, prefix, uncond],
            Expr::Windowed { term, otherwise, .. } => {
                std::iter::once(&mut **term).chain(otherwise.as_deref_mut()).collect()
            }
            Expr::Renorm { input, reference, .. }
            | Expr::NormCap { input, reference, .. }
            | Expr::StdRescale { input, reference, .. } => vec![input, reference],
            Expr::Cfg { cond, uncond, .. }
            | Expr::ZeroStar { cond, uncond, .. }
            | Expr::Apg { cond, uncond, .. }
            | Expr::MagnitudeAware { cond, uncond, .. }
            | Expr::Tcfg { cond, uncond, .. }
            | Expr::ApgMix { cond, uncond, .. }
            | Expr::Fdg { cond, uncond, .. }
            | Expr::Adaptive { cond, uncond, .. } => vec![cond, uncond],
        }
    }

    /// The scale this node uses, if any.
    pub fn scale(&self) -> Option<&ScaleRef> {
        match self {
            Expr::Scaled { scale, .. }
            | Expr::Cfg { scale, .. }
            | Expr::ZeroStar { scale, .. }
            | Expr::Apg { scale, .. }
            | Expr::MagnitudeAware { scale, .. }
            | Expr::Tcfg { scale, .. }
            | Expr::ApgMix { scale, .. }
            | Expr::PerpNeg { scale, .. }
            | Expr::Adaptive { scale, .. } => Some(scale),
            _ => None,
        }
    }

    /// The node's operator name as written in RON.
    pub fn operator(&self) -> &'static str {
        match self {
            Expr::Ref(_) => "Ref",
            Expr::Use(_) => "Use",
            Expr::Sum(_) => "Sum",
            Expr::Diff(..) => "Diff",
            Expr::Scaled { .. } => "Scaled",
            Expr::Cfg { .. } => "Cfg",
            Expr::Windowed { .. } => "Windowed",
            Expr::Renorm { .. } => "Renorm",
            Expr::NormCap { .. } => "NormCap",
            Expr::StdRescale { .. } => "StdRescale",
            Expr::ZeroStar { .. } => "ZeroStar",
            Expr::Apg { .. } => "Apg",
            Expr::MagnitudeAware { .. } => "MagnitudeAware",
            Expr::Tcfg { .. } => "Tcfg",
            Expr::ApgMix { .. } => "ApgMix",
            Expr::PerpNeg { .. } => "PerpNeg",
            Expr::Fdg { .. } => "Fdg",
            Expr::Chunked { .. } => "Chunked",
            Expr::Adaptive { .. } => "Adaptive",
        }
    }

    /// Whether the node is a non-linear operator.
    pub fn is_nonlinear(&self) -> bool {
        matches!(
            self,
            Expr::Renorm { .. }
                | Expr::NormCap { .. }
                | Expr::StdRescale { .. }
                | Expr::ZeroStar { .. }
                | Expr::Apg { .. }
                | Expr::MagnitudeAware { .. }
                | Expr::Tcfg { .. }
                | Expr::ApgMix { .. }
                | Expr::PerpNeg { .. }
                | Expr::Fdg { .. }
                | Expr::Chunked { .. }
                | Expr::Adaptive { .. }
        )
    }

    /// The first non-linear operator in this expression (following `Use`
    /// through the policy's `values`), if any: a `renoise` expression must
    /// have none. Unknown values are left to validation.
    pub fn first_nonlinear<'a>(&'a self, values: &'a Named<Expr>) -> Option<&'static str> {
        self.first_nonlinear_in(values, &mut Vec::new())
    }

    fn first_nonlinear_in<'a>(&'a self, values: &'a Named<Expr>, seen: &mut Vec<&'a str>) -> Option<&'static str> {
        if self.is_nonlinear() {
            return Some(self.operator());
        }
        if let Expr::Use(v) = self {
            if seen.contains(&v.as_str()) {
                return None;
            }
            seen.push(v);
            return values.get(v).and_then(|e| e.first_nonlinear_in(values, seen));
        }
        self.children().into_iter().find_map(|c| c.first_nonlinear_in(values, seen))
    }

    /// Every numeric parameter of this node (the scale first), with its field name.
    pub fn params(&self) -> Vec<(&'static str, &ScaleRef)> {
        let mut out: Vec<(&'static str, &ScaleRef)> = self.scale().map(|s| ("scale", s)).into_iter().collect();
        match self {
            Expr::Scaled { offset, .. } => out.push(("offset", offset)),
            Expr::Renorm { min, max, eps, .. } => {
                out.extend(min.as_ref().map(|v| ("min", v)));
                out.extend(max.as_ref().map(|v| ("max", v)));
                out.push(("eps", eps));
            }
            Expr::NormCap { ratio, .. } => out.push(("ratio", ratio)),
            Expr::StdRescale { phi, .. } => out.push(("phi", phi)),
            Expr::Apg { momentum, norm_threshold, eta, .. } => {
                out.extend([("momentum", momentum), ("norm_threshold", norm_threshold), ("eta", eta)])
            }
            Expr::ApgMix { cfg_scale, momentum, norm_threshold, eta, .. } => out.extend([
                ("cfg_scale", cfg_scale),
                ("momentum", momentum),
                ("norm_threshold", norm_threshold),
                ("eta", eta),
            ]),
            Expr::MagnitudeAware { alpha, .. } => out.push(("alpha", alpha)),
            Expr::PerpNeg { neg_scale, .. } => out.push(("neg_scale", neg_scale)),
            Expr::Adaptive { threshold, .. } => out.push(("threshold", threshold)),
            Expr::Fdg { levels, .. } => {
                for l in levels {
                    out.extend([("scale", &l.scale), ("parallel_weight", &l.parallel_weight), ("rescale", &l.rescale)]);
                }
            }
            _ => {}
        }
        out
    }

    /// The plain numbers this node holds (for finiteness checks), with their field names.
    pub fn numbers(&self) -> Vec<(&'static str, f64)> {
        let mut out: Vec<(&'static str, f64)> =
            self.params().into_iter().filter_map(|(k, v)| v.literal().map(|v| (k, v))).collect();
        if let Expr::Windowed { window, .. } = self {
            let (a, b) = window.bounds();
            out.extend([("window start", a), ("window stop", b)]);
        }
        if let Expr::Chunked { thresholds, prefix_scales, text_scales, .. } = self {
            out.extend(thresholds.iter().map(|v| ("thresholds", *v)));
            out.extend(prefix_scales.iter().map(|v| ("prefix_scales", *v)));
            out.extend(text_scales.iter().map(|v| ("text_scales", *v)));
        }
        if let Expr::Fdg { levels, .. } = self {
            for w in levels.iter().filter_map(|l| l.window.as_ref()) {
                let (a, b) = w.bounds();
                out.extend([("window start", a), ("window stop", b)]);
            }
        }
        out
    }
}

/// One output of the model and how it is guided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The space the prediction lives in.
    pub space: Space,
    /// The axes of the prediction (`[B, C, H, W]`, `[B, T, C]` with a token
    /// grid...), checked against its shape at every step; absent: `[B, ..., D]`
    /// with no spatial axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// How its branch predictions combine (a bare `Ref` passes one through unguided).
    pub guidance: Expr,
    /// CFG++ (ComfyUI's `*_cfg_pp` samplers): a second, linear expression
    /// whose prediction gives the sampler's noise direction ε̂ (the guided
    /// prediction still gives the denoised estimate x̂₀). Absent: the guided
    /// prediction gives both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renoise: Option<Expr>,
}

/// An ordered list of named entries, read from a RON map. Duplicates are kept
/// so that validation can report them with a position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<T> Named<T> {
    /// The entry with this name (the first, if duplicated).
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The names, in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// The entries, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from quoted names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Named(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A guidance policy: the whole content of one policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Short name (the library's key).
    pub name: String,
    /// One line saying what it does.
    #[serde(default)]
    pub summary: String,
    /// Where the scheme and its defaults come from.
    #[serde(default)]
    pub source: String,
    /// The number of steps the source system samples with by default.
    #[serde(default)]
    pub steps: Option<usize>,
    /// The branches: one model call each per step.
    pub branches: Named<BranchSpec>,
    /// Named scales, constant or scheduled; `cfg sample --scale NAME=V` overrides them.
    #[serde(default)]
    pub scales: Named<Schedule>,
    /// Named sub-expressions, shared by several outputs or terms.
    #[serde(default)]
    pub values: Named<Expr>,
    /// One entry per model output.
    pub outputs: Named<OutputSpec>,
}
