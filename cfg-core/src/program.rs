//! The canonical program: what every backend executes for one output at one step.
//!
//! A program is a list of linear forms over branch predictions (f32 weights, in
//! branch-name order) followed by non-linear ops that read forms or earlier ops.
//! Terms with weight zero are never present, so a zero-weight branch changes no bit.

use crate::expr::Space;
use crate::layout::Layout;
use crate::reduce::Reduce;

/// A value the program computes: zero, a linear form or an op's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// All zeros.
    Zero,
    /// `forms[i]`.
    Form(usize),
    /// `ops[i]`.
    Op(usize),
}

/// A weighted sum of branch predictions: `Σ w_k · x_{b_k}`, evaluated as
/// `acc = w_0·x_0; acc = fma(w_k, x_k, acc)` in term order.
#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    /// (index into `Program::branches`, weight), sorted by branch index.
    pub terms: Vec<(usize, f32)>,
}

/// A non-linear (or post-op linear) step of the program.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `Σ w_k · v_k` over values, same evaluation order as a form.
    Mix {
        /// (value, weight) in order.
        terms: Vec<(Value, f32)>,
    },
    /// `input · clamp(‖reference‖/(‖input‖+eps), min, max)` per group.
    Renorm {
        /// Guided prediction.
        input: Value,
        /// Reference.
        reference: Value,
        /// Groups.
        over: Reduce,
        /// Added to ‖input‖.
        eps: f64,
        /// Lower clamp.
        min: Option<f64>,
        /// Upper clamp.
        max: Option<f64>,
    },
    /// Whole-tensor norm cap.
    NormCap {
        /// Guided prediction.
        input: Value,
        /// Reference.
        reference: Value,
        /// Largest norm ratio.
        ratio: f64,
    },
    /// `input · (phi·std(ref)/std(input) + 1 − phi)` per group, unbiased std.
    StdRescale {
        /// Guided prediction.
        input: Value,
        /// Reference.
        reference: Value,
        /// φ.
        phi: f64,
        /// Groups.
        over: Reduce,
    },
    /// CFG-Zero* after its zero-init steps.
    ZeroStar {
        /// Cond.
        cond: Value,
        /// Uncond.
        uncond: Value,
        /// Scale.
        scale: f32,
        /// Base on cond.
        original: bool,
    },
    /// Adaptive projected guidance; momentum lives in the state under `slot`.
    Apg {
        /// Cond.
        cond: Value,
        /// Uncond.
        uncond: Value,
        /// Scale.
        scale: f32,
        /// β.
        momentum: f32,
        /// Norm threshold (0 = off).
        norm_threshold: f64,
        /// η.
        eta: f32,
        /// Base on cond.
        original: bool,
        /// State key of the momentum buffer.
        slot: String,
    },
    /// CFG whose Δ = c − u also advances an APG momentum buffer (APG-Mix's
    /// CFG phase): `r ← Δ + β·r` into the state under `slot`; the result is
    /// `fma(s, Δ, u)` (`original`: base c).
    MomentumCfg {
        /// Cond.
        cond: Value,
        /// Uncond.
        uncond: Value,
        /// CFG's scale.
        scale: f32,
        /// β (not 0).
        momentum: f32,
        /// Base on cond.
        original: bool,
        /// State key of the momentum buffer (shared with the APG phase).
        slot: String,
    },
    /// `input − (⟨input, direction⟩/‖direction‖²)·direction` per group: the
    /// part of `input` perpendicular to `direction` (Perp-Neg); `input` where
    /// ‖direction‖ = 0.
    Reject {
        /// The vector whose perpendicular part is kept.
        input: Value,
        /// The direction removed.
        direction: Value,
        /// Groups.
        over: Reduce,
    },
    /// Magnitude-aware guidance.
    MagnitudeAware {
        /// Cond.
        cond: Value,
        /// Uncond.
        uncond: Value,
        /// Scale.
        scale: f64,
        /// α.
        alpha: f64,
    },
    /// Frequency-decoupled guidance over the spatial axes of `layout`
    /// (`crate::fdg` states the canonical order).
    Fdg {
        /// Cond.
        cond: Value,
        /// Uncond.
        uncond: Value,
        /// The levels, highest frequencies first.
        bands: Vec<FdgBand>,
        /// Base each level on c_k.
        original: bool,
        /// The output's layout (rows and columns).
        layout: Layout,
    },
    /// MAGI-1's chunked guidance with chunks at different times: per chunk of
    /// `chunk_frames` frames along the layout's `F` axis, the form
    /// `w_c·c + w_p·prefix + w_u·u` of its own weights, evaluated as
    /// `acc = w_c·c; acc = fma(w_p, prefix, acc); acc = fma(w_u, u, acc)`.
    Chunked {
        /// Text and prefix.
        cond: Value,
        /// Prefix only.
        prefix: Value,
        /// Neither.
        uncond: Value,
        /// Per chunk, oldest first: [w_c, w_p, w_u].
        weights: Vec<[f32; 3]>,
        /// Frames per chunk.
        chunk_frames: usize,
        /// The output's layout (its frames).
        layout: Layout,
    },
    /// Tangential CFG: `u' = α·c + β·u` with (α, β) per sample from the
    /// Gram matrix of (c, u); `u' + s·(c − u')`.
    Tcfg {
        /// Cond.
        cond: Value,
        /// Uncond.
        uncond: Value,
        /// Scale.
        scale: f32,
        /// Base on cond.
        original: bool,
    },
}

impl Op {
    /// The values it reads.
    pub fn inputs(&self) -> Vec<Value> {
        match self {
            Op::Mix { terms } => terms.iter().map(|(v, _)| *v).collect(),
            Op::Reject { input, direction: reference, .. }
            | Op::Renorm { input, reference, .. }
            | Op::NormCap { input, reference, .. }
            | Op::StdRescale { input, reference, .. } => vec![*input, *reference],
            Op::Chunked { cond, prefix, uncond, .. } => vec![*cond, *prefix, *uncond],
            Op::ZeroStar { cond, uncond, .. }
            | Op::Apg { cond, uncond, .. }
            | Op::MagnitudeAware { cond, uncond, .. }
            | Op::Tcfg { cond, uncond, .. }
            | Op::Fdg { cond, uncond, .. }
            | Op::MomentumCfg { cond, uncond, .. } => vec![*cond, *uncond],
        }
    }

    /// The reduction groups it declares (`over:`), if any.
    pub fn over(&self) -> Option<Reduce> {
        match self {
            Op::Renorm { over, .. } | Op::StdRescale { over, .. } | Op::Reject { over, .. } => Some(*over),
            _ => None,
        }
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Mix { .. } => "mix",
            Op::Renorm { .. } => "renorm",
            Op::NormCap { .. } => "norm-cap",
            Op::StdRescale { .. } => "std-rescale",
            Op::ZeroStar { .. } => "zero-star",
            Op::Apg { .. } => "apg",
            Op::MagnitudeAware { .. } => "magnitude-aware",
            Op::Tcfg { .. } => "tcfg",
            Op::MomentumCfg { .. } => "momentum-cfg",
            Op::Reject { .. } => "reject",
            Op::Fdg { .. } => "fdg",
            Op::Chunked { .. } => "chunked",
        }
    }
}

/// One FDG level as lowered at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdgBand {
    /// Guided (else the level is c_k).
    pub on: bool,
    /// Scale.
    pub scale: f32,
    /// Weight of the shift's part parallel to c_k; `None`: plain shift (weight 1).
    pub parallel: Option<f32>,
    /// Std rescale φ against c_k per sample (0: off).
    pub rescale: f64,
}

/// The adaptive-guidance check: latch `slot` once cos(a, b) (whole tensor) > threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Latch {
    /// First value (cond).
    pub a: Value,
    /// Second value (uncond).
    pub b: Value,
    /// Cosine threshold.
    pub threshold: f64,
    /// State key.
    pub slot: String,
}

/// The program of one output at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// The output's name.
    pub output: String,
    /// Its working space.
    pub space: Space,
    /// Its declared layout, if any.
    pub layout: Option<Layout>,
    /// The branches it reads, sorted by name.
    pub branches: Vec<String>,
    /// Linear forms over `branches`.
    pub forms: Vec<Form>,
    /// Ops, in evaluation order.
    pub ops: Vec<Op>,
    /// Latches to update after evaluation.
    pub latches: Vec<Latch>,
    /// Zero-init counters to advance after evaluation.
    pub counters: Vec<String>,
    /// The result.
    pub result: Value,
    /// CFG++: the sampler's re-noising prediction, a form (or zero) over
    /// the same branches; `None` when the output declares no `renoise`.
    pub renoise: Option<Value>,
}

impl Program {
    /// Whether the result is a single linear form (one fused pass, all-reducible).
    pub fn is_linear(&self) -> bool {
        matches!(self.result, Value::Form(_) | Value::Zero) && self.ops.is_empty() && self.latches.is_empty()
    }

    /// The program that computes this output's `renoise` prediction: the
    /// same forms, no ops, the renoise form as its result (linear, so the
    /// backends' linear path evaluates it); `None` without `renoise`.
    pub fn renoise_program(&self) -> Option<Program> {
        let result = self.renoise?;
        Some(Program {
            output: self.output.clone(),
            space: self.space,
            layout: self.layout.clone(),
            branches: self.branches.clone(),
            forms: self.forms.clone(),
            ops: Vec::new(),
            latches: Vec::new(),
            counters: Vec::new(),
            result,
            renoise: None,
        })
    }

    /// The error for `shape` not fitting this program's layout, and why.
    pub fn layout_error(&self, shape: &crate::Shape, why: String) -> crate::CoreError {
        crate::CoreError::Layout { output: self.output.clone(), shape: shape.to_string(), why }
    }

    /// Whether `shape` fits the declared layout and every op's needs (reduction
    /// groups: an `Axis` beyond its rank; FDG: its pyramid's rows and columns).
    pub fn check_shape(&self, shape: &crate::Shape) -> Result<(), crate::CoreError> {
        let bad = |why: String| self.layout_error(shape, why);
        if let Some(layout) = &self.layout {
            layout.resolve(shape).map_err(bad)?;
        }
        for op in &self.ops {
            if let Op::Fdg { bands, layout, .. } = op {
                crate::fdg::Pyramid::new(layout, shape, bands.len()).map_err(bad)?;
            }
            if let Op::Chunked { weights, chunk_frames, layout, .. } = op {
                crate::chunked::Chunks::new(layout, shape, *chunk_frames, weights.len()).map_err(bad)?;
            }
        }
        for over in self.ops.iter().filter_map(Op::over) {
            over.check(shape).map_err(|why| crate::CoreError::BadShape { shape: shape.to_string(), why })?;
        }
        Ok(())
    }

    /// How many times each value is read (by ops, latches and the result).
    pub fn reads(&self, v: Value) -> usize {
        let by_ops = self.ops.iter().flat_map(|o| o.inputs()).filter(|&x| x == v).count();
        let by_latches = self.latches.iter().filter(|l| l.a == v || l.b == v).count();
        by_ops + by_latches + usize::from(self.result == v)
    }
}

/// The programs of every output of a policy at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgram {
    /// One program per output, in declaration order.
    pub outputs: Vec<Program>,
    /// Per output, its `renoise` program ([`Program::renoise_program`]),
    /// built once per lowering so that repeated steps reuse it.
    pub renoise: Vec<Option<Program>>,
}

impl StepProgram {
    /// The union of branches any output needs, sorted by name.
    pub fn branches(&self) -> Vec<String> {
        let mut all: Vec<String> = self.outputs.iter().flat_map(|p| p.branches.iter().cloned()).collect();
        all.sort();
        all.dedup();
        all
    }
}
