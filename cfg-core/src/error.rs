//! Errors of the core arithmetic.

use thiserror::Error;

/// What can go wrong while lowering or evaluating a guidance program.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A branch that the program needs was not provided.
    #[error("branch `{0}` is needed by the program but no prediction was given for it")]
    MissingBranch(String),
    /// Two inputs disagree on shape or dtype.
    #[error("branch `{branch}`: expected shape {expected} {expected_dtype}, got {got} {got_dtype}")]
    Mismatch {
        /// The offending branch.
        branch: String,
        /// The shape every input must share.
        expected: String,
        /// The dtype every input must share.
        expected_dtype: String,
        /// What was given.
        got: String,
        /// The dtype that was given.
        got_dtype: String,
    },
    /// A shape that the operation cannot use.
    #[error("bad shape {shape}: {why}")]
    BadShape {
        /// The shape.
        shape: String,
        /// What was expected.
        why: String,
    },
    /// A prediction whose shape does not fit its output's declared layout
    /// (or an operator's needs on it).
    #[error("output `{output}`: shape {shape} does not fit: {why}")]
    Layout {
        /// The output.
        output: String,
        /// The prediction's shape.
        shape: String,
        /// Why.
        why: String,
    },
    /// An operator that needs the output's declared layout, in an output without one.
    #[error(
        "output `{output}`: `{operator}` needs the output's layout with image rows and columns, \
         for example `layout: (axes: [B, C, H, W])`"
    )]
    NeedsLayout {
        /// The output.
        output: String,
        /// The operator.
        operator: &'static str,
    },
    /// A scale, window or schedule needs the step's sigma, which was not given.
    #[error("step {step}: the policy needs the scheduler's sigma (a sigma window or a sigma-keyed schedule) but none was given")]
    SigmaRequired {
        /// The step.
        step: usize,
    },
    /// A scale evaluated to NaN or infinity.
    #[error("scale `{name}` is not finite at step {step}")]
    NonFiniteScale {
        /// The scale's name.
        name: String,
        /// The step.
        step: usize,
    },
    /// A scale, or a weight folded from several, does not fit in f32.
    #[error(
        "step {step}, output `{output}`: the folded weight of {what} is {value:e}, beyond the f32 range \
         (±3.4e38): lower the scales that multiply it"
    )]
    WeightOutOfRange {
        /// The output being lowered.
        output: String,
        /// Which weight: `branch \`cond\``, or `scale \`s\``.
        what: String,
        /// The value in f64.
        value: f64,
        /// The step.
        step: usize,
    },
    /// Operator state saved for one tensor size, met with another.
    #[error(
        "the `Apg` operator at `{slot}` holds momentum for {held} elements but this step's prediction \
         has {got}: operator state carries over until an explicit start of sampling, so every step of \
         a run must have the same shape"
    )]
    StateMismatch {
        /// The operator's state slot (output and position in the policy).
        slot: String,
        /// Elements of the state.
        held: usize,
        /// Elements of this step's prediction.
        got: usize,
    },
    /// An expression referred to a name that does not exist.
    #[error("unknown {kind} `{name}`")]
    Unknown {
        /// Branch, scale or value.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// An output's `renoise` expression contains a non-linear operator.
    #[error(
        "output `{output}`: `renoise` must be a linear expression of branches (Ref, Sum, Diff, Scaled, Cfg, \
         Windowed, Use of linear values), found `{operator}`"
    )]
    NonLinearRenoise {
        /// The output.
        output: String,
        /// The operator found.
        operator: &'static str,
    },
    /// A named value refers to itself, directly or through others.
    #[error("named value `{0}` refers to itself")]
    Cycle(String),
    /// Operator state kept in a device's memory, given to the CPU evaluator.
    #[error(
        "operator `{0}` keeps its state on a device: evaluate it with the backend that made it, or start a new run"
    )]
    DeviceState(String),
}
