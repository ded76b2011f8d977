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
    /// Each frame chunk's own time, for a model that denoises chunks at
    /// different noise levels (MAGI-1); empty when every chunk is at the step's.
    pub chunks: ChunkTimes,
}

/// The most frame chunks a step can carry their own times for.
pub const MAX_CHUNKS: usize = 16;

/// Per-chunk times of a step, oldest (cleanest) chunk first, inline so that a
/// [`StepContext`] stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkTimes {
    len: usize,
    times: [f64; MAX_CHUNKS],
}

impl ChunkTimes {
    /// No per-chunk times.
    pub const NONE: ChunkTimes = ChunkTimes { len: 0, times: [0.0; MAX_CHUNKS] };

    /// The times of `times.len()` chunks; `None` beyond [`MAX_CHUNKS`].
    pub fn new(times: &[f64]) -> Option<ChunkTimes> {
        if times.len() > MAX_CHUNKS {
            return None;
        }
        let mut c = ChunkTimes { len: times.len(), ..ChunkTimes::NONE };
        c.times[..times.len()].copy_from_slice(times);
        Some(c)
    }

    /// The times (empty when none were given).
    pub fn as_slice(&self) -> &[f64] {
        &self.times[..self.len]
    }
}

impl StepContext {
    /// A context with no sigma.
    pub fn new(step: usize, num_steps: usize) -> Self {
        StepContext { step, num_steps, sigma: None, chunks: ChunkTimes::NONE }
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

/// One run of a per-step list: `value` for `steps` consecutive steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// How many steps (≥ 1).
    pub steps: usize,
    /// The value during them.
    pub value: f64,
}

/// One bin of a sigma lookup: `value` applies where sigma ≥ `at_least` (and
/// no earlier bin applies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    /// The bin's lower sigma bound (inclusive).
    pub at_least: f64,
    /// The value in the bin.
    pub value: f64,
}

/// A guidance scale (or any numeric parameter) as a function of the step.
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
    /// A per-step list in runs (Ideogram-4: 7.0 for 45 steps, then 3.0 for 3);
    /// the last run's value holds past the listed steps.
    StepList(Vec<Run>),
    /// Piecewise constant in sigma (LTX-Video's `guidance_timesteps`): the
    /// value of the first bin with sigma ≥ `at_least`, the last bin's when
    /// none; `at_least` decreases strictly. Needs sigma.
    SigmaBins(Vec<Bin>),
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
            Schedule::StepList(runs) => {
                let mut left = ctx.step;
                let found = runs.iter().find(|r| {
                    let here = left < r.steps;
                    left = left.saturating_sub(r.steps);
                    here
                });
                found.or(runs.last()).map_or(0.0, |r| r.value)
            }
            Schedule::SigmaBins(bins) => {
                let sigma = ctx.sigma?;
                bins.iter().find(|b| sigma >= b.at_least).or(bins.last()).map_or(0.0, |b| b.value)
            }
        })
    }

    /// Whether evaluating it needs the step's sigma.
    pub fn needs_sigma(&self) -> bool {
        matches!(self, Schedule::TwoExpert { .. } | Schedule::TimestepDecay { .. } | Schedule::SigmaBins(_))
    }

    /// The smallest and largest values it takes at any step (for range checks).
    pub fn extent(&self) -> (f64, f64) {
        let vals: Vec<f64> = match self {
            Schedule::Const(v) => vec![*v],
            Schedule::Linear { start, end } | Schedule::Cosine { start, end } => vec![*start, *end],
            Schedule::Piecewise(pieces) => pieces.iter().map(|p| p.value).collect(),
            Schedule::TwoExpert { high, low, .. } => vec![*high, *low],
            Schedule::TimestepDecay { start, .. } => vec![0.0, start.max(0.0)],
            Schedule::StepList(runs) => runs.iter().map(|r| r.value).collect(),
            Schedule::SigmaBins(bins) => bins.iter().map(|b| b.value).collect(),
        };
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if vals.is_empty() {
            (0.0, 0.0)
        } else {
            (lo, hi)
        }
    }

    /// The largest magnitude it takes at any step (for range checks).
    pub fn max_abs(&self) -> f64 {
        match self {
            Schedule::StepList(runs) => runs.iter().map(|r| r.value.abs()).fold(0.0, f64::max),
            Schedule::SigmaBins(bins) => bins.iter().map(|b| b.value.abs()).fold(0.0, f64::max),
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
            Schedule::StepList(runs) => runs.iter().map(|r| r.value).collect(),
            Schedule::SigmaBins(bins) => bins.iter().flat_map(|b| [b.at_least, b.value]).collect(),
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
        let ctx = |sigma| StepContext { step: 0, num_steps: 10, sigma: Some(sigma), chunks: ChunkTimes::NONE };
        assert_eq!(s.at(&ctx(0.875)), Some(4.0));
        assert_eq!(s.at(&ctx(0.5)), Some(3.0));
    }

    #[test]
    fn timestep_decay_is_pags_adaptive_scale() {
        let s = Schedule::TimestepDecay { start: 3.0, rate: 0.005 };
        assert_eq!(s.at(&StepContext::new(0, 10)), None);
        let ctx = |sigma| StepContext { step: 0, num_steps: 10, sigma: Some(sigma), chunks: ChunkTimes::NONE };
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
    fn step_list_is_ideogram_4s_per_step_scale() {
        let s = Schedule::StepList(vec![Run { steps: 45, value: 7.0 }, Run { steps: 3, value: 3.0 }]);
        let at = |i| s.at(&StepContext::new(i, 48)).unwrap();
        assert_eq!((at(0), at(44), at(45), at(47)), (7.0, 7.0, 3.0, 3.0));
        // Past the list the last value holds.
        assert_eq!(s.at(&StepContext::new(60, 61)), Some(3.0));
    }

    #[test]
    fn sigma_bins_follow_ltx_videos_lookup() {
        // LTX-Video: the first guidance timestep at or below t.
        let s = Schedule::SigmaBins(vec![
            Bin { at_least: 1.0, value: 1.0 },
            Bin { at_least: 0.996, value: 6.0 },
            Bin { at_least: 0.9, value: 8.0 },
        ]);
        let at = |sigma| {
            s.at(&StepContext { step: 0, num_steps: 10, sigma: Some(sigma), chunks: ChunkTimes::NONE }).unwrap()
        };
        assert_eq!((at(1.0), at(0.998), at(0.996), at(0.95), at(0.9), at(0.1)), (1.0, 6.0, 6.0, 8.0, 8.0, 8.0));
        assert_eq!(s.at(&StepContext::new(0, 10)), None);
        assert_eq!(s.extent(), (1.0, 8.0));
    }

    #[test]
    fn piecewise_holds_last_value() {
        let s = Schedule::Piecewise(vec![Piece { until: 0.5, value: 7.0 }, Piece { until: 0.8, value: 3.0 }]);
        assert_eq!(s.at(&StepContext::new(0, 11)), Some(7.0));
        assert_eq!(s.at(&StepContext::new(6, 11)), Some(3.0));
        assert_eq!(s.at(&StepContext::new(10, 11)), Some(3.0));
    }
}
