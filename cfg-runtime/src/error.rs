//! The runtime's error: every variant says where (rank, step, branch) and what.

use thiserror::Error;

/// What can go wrong while planning, dispatching or sampling.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RuntimeError {
    /// Lowering or evaluating the guidance program failed.
    #[error("rank {rank}, step {step}: {source}")]
    Core {
        /// The rank that saw it.
        rank: usize,
        /// The step.
        step: usize,
        /// The core error.
        #[source]
        source: Box<cfg_core::CoreError>,
    },
    /// The backend failed to evaluate the program.
    #[error("rank {rank}, step {step}, output `{output}`: backend failed: {message}")]
    Backend {
        /// The rank.
        rank: usize,
        /// The step.
        step: usize,
        /// The output being combined.
        output: String,
        /// What the backend said.
        message: String,
    },
    /// The model returned an error (or panicked) while predicting.
    #[error("rank {rank}, step {step}: the model failed on branches [{branches}]: {message}")]
    Model {
        /// The rank whose model failed.
        rank: usize,
        /// The step.
        step: usize,
        /// The branches of the failed call, comma-separated.
        branches: String,
        /// What the model said.
        message: String,
    },
    /// The model returned predictions of the wrong count, shape or dtype.
    #[error("rank {rank}, step {step}, branch `{branch}`, output `{output}`: expected {expected}, got {got}")]
    BadPrediction {
        /// The rank.
        rank: usize,
        /// The step.
        step: usize,
        /// The branch.
        branch: String,
        /// The output.
        output: String,
        /// What was expected.
        expected: String,
        /// What came back.
        got: String,
    },
    /// Another rank failed; this rank stopped at its next collective.
    #[error("rank {rank} failed at step {step}: {reason} (seen by rank {seen_by})")]
    PeerFailed {
        /// The rank that failed.
        rank: usize,
        /// The step at which it failed.
        step: usize,
        /// Its error, as text.
        reason: String,
        /// The rank reporting it.
        seen_by: usize,
    },
    /// A collective waited longer than the communicator's timeout.
    #[error("rank {rank}, step {step}: {what} timed out after {seconds} s waiting for ranks {missing:?}")]
    Timeout {
        /// The waiting rank.
        rank: usize,
        /// The step.
        step: usize,
        /// The collective.
        what: &'static str,
        /// The timeout.
        seconds: f64,
        /// The ranks that had not arrived.
        missing: Vec<usize>,
    },
    /// Ranks called collectives in a different order or with different sizes.
    #[error("rank {rank}, step {step}: collective mismatch: {detail}")]
    Collective {
        /// The rank.
        rank: usize,
        /// The step.
        step: usize,
        /// What disagreed.
        detail: String,
    },
    /// The cross-rank fingerprint check found ranks holding different latents.
    #[error("step {step}: ranks diverged: latents fingerprints differ between rank 0 and rank {rank}")]
    Divergence {
        /// The step after which the check ran.
        step: usize,
        /// The first rank whose fingerprint differs from rank 0's.
        rank: usize,
    },
    /// The configuration cannot run (world size 0, model and policy disagree...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A rank thread panicked outside the model call.
    #[error("rank {rank} panicked near step {step}: {message}")]
    Panic {
        /// The rank.
        rank: usize,
        /// The last step it reached.
        step: usize,
        /// The panic message.
        message: String,
    },
}

impl RuntimeError {
    /// The rank where the failure originated, when known.
    pub fn origin_rank(&self) -> Option<usize> {
        match self {
            RuntimeError::Core { rank, .. }
            | RuntimeError::Backend { rank, .. }
            | RuntimeError::Model { rank, .. }
            | RuntimeError::BadPrediction { rank, .. }
            | RuntimeError::PeerFailed { rank, .. }
            | RuntimeError::Collective { rank, .. }
            | RuntimeError::Panic { rank, .. } => Some(*rank),
            RuntimeError::Divergence { rank, .. } => Some(*rank),
            RuntimeError::Timeout { .. } | RuntimeError::Config(_) => None,
        }
    }

    /// The step where the failure originated, when known.
    pub fn step(&self) -> Option<usize> {
        match self {
            RuntimeError::Core { step, .. }
            | RuntimeError::Backend { step, .. }
            | RuntimeError::Model { step, .. }
            | RuntimeError::BadPrediction { step, .. }
            | RuntimeError::PeerFailed { step, .. }
            | RuntimeError::Timeout { step, .. }
            | RuntimeError::Collective { step, .. }
            | RuntimeError::Divergence { step, .. }
            | RuntimeError::Panic { step, .. } => Some(*step),
            RuntimeError::Config(_) => None,
        }
    }
}
