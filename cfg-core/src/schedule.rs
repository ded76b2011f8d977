//! Scale schedules over the sampling steps.

use serde::{Deserialize, Serialize};

/// Where a step lies in the sampling run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// The step index, `0..num_steps`.
    pub step: usize,
    /// The number of steps of the run.
    pub num_steps: usize,
    /// The scheduler's sigma (noise level) at this step, when known.
    pub sigma: Option<f64>,
}

impl StepContext {
    /// A context with no sigma.
    pub fn new(step: usize, num_steps: usize) -> Self {
        StepContext { step, num_steps, sigma: None }
    }

    /// Progress through the run: 0 at the first step, 1 at the last.
    pub fn progress(&self) -> f64 {
        if self.num_steps <= 1 {
            0.0
        } else {
            self.step as f64 / (self.num_steps - 1) as f64
        }
    }
}

/// One piece of a piecewise schedule: `value` applies while progress < `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// Progress (0..1) up to which (exclusive) this value applies.
    pub until: f64,
    /// The scale.
    pub value: f64,
}

/// A guidance scale as a function of the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Schedule {
    /// The same value at every step.
    Const(f64),
    /// Linear in progress from `start` (first step) to `end` (last step).
    Linear {
        /// Value at the first step.
        start: f64,
        /// Value at the last step.
        end: f64,
    },
    /// Half-cosine in progress from `start` to `end`.
    Cosine {
        /// Value at the first step.
        start: f64,
        /// Value at the last step.
        end: f64,
    },
    /// Piecewise constant in progress; the last piece's value holds to the end.
    Piecewise(Vec<Piece>),
    /// Wan2.2's two experts: `high` while sigma ≥ `boundary`, `low` after.
    TwoExpert {
        /// The sigma boundary between the high-noise and low-noise experts.
        boundary: f64,
        /// Scale of the high-noise expert.
        high: f64,
        /// Scale of the low-noise expert.
        low: f64,
    },
    /// PAG's adaptive scale (diffusers' PAG pipelines, `pag_adaptive_scale`):
    /// `max(0, start − rate·(1000 − 1000·t))` with `t` the step's sigma read
    /// as normalized flow time and clamped to [0, 1] (`1000·t` is the
    /// timestep diffusers' flow pipelines pass). `rate` ≥ 0; needs sigma.
    TimestepDecay {
        /// The value at `t = 1` (the scale before damping).
        start: f64,
        /// The decrease per unit of timestep below 1000.
        rate: f64,
    },
}

impl Schedule {
    /// The value at a step; `None` when the schedule needs sigma and it is unknown.
    pub fn at(&self, ctx: &StepContext) -> Option<f64> {
        let p = ctx.progress();
        Some(match self {
            Schedule::Const(v) => *v,
            Schedule::Linear { start, end } => start + (end - start) * p,
            Schedule::Cosine { start, end } => start + (end - start) * 0.5 * (1.0 - (std::f64::consts::PI * p).cos()),
            Schedule::Piecewise(pieces) => {
                pieces.iter().find(|piece| p < piece.until).or(pieces.last()).map(|piece| piece.value).unwrap_or(0.0)
            }
            Schedule::TwoExpert { boundary, high, low } => {
                if ctx.sigma? >= *boundary {
                    *high
                } else {
                    *low
                }
            }
            Schedule::TimestepDecay { start, rate } => {
                let timestep = 1000.0 * ctx.sigma?.clamp(0.0, 1.0);
                (start - rate * (1000.0 - timestep)).max(0.0)
            }
        })
    }

    /// Whether evaluating it needs the step's sigma.
    pub fn needs_sigma(&self) -> bool {
        matches!(self, Schedule::TwoExpert { .. } | Schedule::TimestepDecay { .. })
    }

    /// The largest magnitude it takes at any step (for range checks).
    pub fn max_abs(&self) -> f64 {
        match self {
            Schedule::Const(v) => v.abs(),
            Schedule::Linear { start, end } | Schedule::Cosine { start, end } => start.abs().max(end.abs()),
            Schedule::Piecewise(pieces) => pieces.iter().map(|p| p.value.abs()).fold(0.0, f64::max),
            Schedule::TwoExpert { high, low, .. } => high.abs().max(low.abs()),
            // In [0, max(start, 0)] for rate ≥ 0 (validation's rule).
            Schedule::TimestepDecay { start, .. } => start.abs(),
        }
    }

    /// Every number it holds (for validation).
    pub fn numbers(&self) -> Vec<f64> {
        match self {
            Schedule::Const(v) => vec![*v],
            Schedule::Linear { start, end } | Schedule::Cosine { start, end } => vec![*start, *end],
            Schedule::Piecewise(pieces) => pieces.iter().flat_map(|p| [p.until, p.value]).collect(),
            Schedule::TwoExpert { boundary, high, low } => vec![*boundary, *high, *low],
            Schedule::TimestepDecay { start, rate } => vec![*start, *rate],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_cosine_hit_their_ends() {
        let lin = Schedule::Linear { start: 1.0, end: 5.0 };
        let cos = Schedule::Cosine { start: 1.0, end: 5.0 };
        for s in [&lin, &cos] {
            assert_eq!(s.at(&StepContext::new(0, 11)), Some(1.0));
            assert!((s.at(&StepContext::new(10, 11)).unwrap() - 5.0).abs() < 1e-12);
        }
        assert_eq!(lin.at(&StepContext::new(5, 11)), Some(3.0));
    }

    #[test]
    fn two_expert_needs_sigma() {
        let s = Schedule::TwoExpert { boundary: 0.875, high: 4.0, low: 3.0 };
        assert_eq!(s.at(&StepContext::new(0, 10)), None);
        let ctx = |sigma| StepContext { step: 0, num_steps: 10, sigma: Some(sigma) };
        assert_eq!(s.at(&ctx(0.875)), Some(4.0));
        assert_eq!(s.at(&ctx(0.5)), Some(3.0));
    }

    #[test]
    fn timestep_decay_is_pags_adaptive_scale() {
        let s = Schedule::TimestepDecay { start: 3.0, rate: 0.005 };
        assert_eq!(s.at(&StepContext::new(0, 10)), None);
        let ctx = |sigma| StepContext { step: 0, num_steps: 10, sigma: Some(sigma) };
        // max(0, 3 − 0.005·(1000 − t)) at t = 1000, 800, 400.
        assert_eq!(s.at(&ctx(1.0)), Some(3.0));
        assert!((s.at(&ctx(0.8)).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(s.at(&ctx(0.4)), Some(0.0));
        // Sigma beyond the flow range is clamped to it.
        assert_eq!(s.at(&ctx(14.0)), Some(3.0));
        assert!(s.needs_sigma());
        assert_eq!(Schedule::TimestepDecay { start: 3.0, rate: 0.0 }.at(&ctx(0.1)), Some(3.0));
    }

    #[test]
    fn piecewise_holds_last_value() {
        let s = Schedule::Piecewise(vec![Piece { until: 0.5, value: 7.0 }, Piece { until: 0.8, value: 3.0 }]);
        assert_eq!(s.at(&StepContext::new(0, 11)), Some(7.0));
        assert_eq!(s.at(&StepContext::new(6, 11)), Some(3.0));
        assert_eq!(s.at(&StepContext::new(10, 11)), Some(3.0));
    }
}
