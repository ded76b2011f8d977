//! Windows: the steps at which a term is on.

use crate::schedule::StepContext;
use serde::{Deserialize, Serialize};

/// How a progress window's bounds map to step indices, for `N` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WindowRule {
    /// `start <= i/N < stop` (exact, in f64).
    #[default]
    HalfOpen,
    /// diffusers' guiders: `int(start*N) <= i < int(stop*N)`.
    Diffusers,
    /// diffusers' skip-layer guiders: `int(start*N) < i < int(stop*N)`.
    DiffusersStrict,
}

/// The steps at which a term is on. Outside its window a term contributes zero
/// and its branches drop out of the step's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Window {
    /// Step indices `start <= i < stop`.
    Steps {
        /// First step on.
        start: usize,
        /// First step off.
        stop: usize,
    },
    /// Fractions of the run (`i/N`), with the rule that maps them to steps.
    Progress {
        /// Start fraction.
        start: f64,
        /// Stop fraction.
        stop: f64,
        /// Boundary semantics.
        #[serde(default)]
        rule: WindowRule,
    },
    /// Noise levels `low < sigma <= high` (the guidance interval).
    Sigma {
        /// Exclusive lower bound.
        low: f64,
        /// Inclusive upper bound.
        high: f64,
    },
}

impl Window {
    /// Whether the window holds this step; `None` when it needs sigma and none is known.
    pub fn contains(&self, ctx: &StepContext) -> Option<bool> {
        let i = ctx.step as i64;
        let n = ctx.num_steps as f64;
        Some(match *self {
            Window::Steps { start, stop } => start <= ctx.step && ctx.step < stop,
            Window::Progress { start, stop, rule } => match rule {
                WindowRule::HalfOpen => {
                    let t = ctx.step as f64 / n;
                    start <= t && t < stop
                }
                WindowRule::Diffusers => (start * n) as i64 <= i && i < (stop * n) as i64,
                WindowRule::DiffusersStrict => ((start * n) as i64) < i && i < (stop * n) as i64,
            },
            Window::Sigma { low, high } => {
                let s = ctx.sigma?;
                low < s && s <= high
            }
        })
    }

    /// Whether it needs the step's sigma.
    pub fn needs_sigma(&self) -> bool {
        matches!(self, Window::Sigma { .. })
    }

    /// The bounds as (lower, upper), for validation.
    pub fn bounds(&self) -> (f64, f64) {
        match *self {
            Window::Steps { start, stop } => (start as f64, stop as f64),
            Window::Progress { start, stop, .. } => (start, stop),
            Window::Sigma { low, high } => (low, high),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(w: &Window, n: usize) -> Vec<usize> {
        (0..n).filter(|&i| w.contains(&StepContext::new(i, n)).unwrap()).collect()
    }

    #[test]
    fn diffusers_rule_truncates_both_bounds() {
        let w = Window::Progress { start: 0.01, stop: 0.2, rule: WindowRule::Diffusers };
        // int(0.01*50) = 0, int(0.2*50) = 10
        assert_eq!(on(&w, 50), (0..10).collect::<Vec<_>>());
        // int(0.01*28) = 0, int(0.2*28) = 5
        assert_eq!(on(&w, 28), (0..5).collect::<Vec<_>>());
    }

    #[test]
    fn strict_rule_excludes_the_start_step() {
        let w = Window::Progress { start: 0.01, stop: 0.2, rule: WindowRule::DiffusersStrict };
        assert_eq!(on(&w, 50), (1..10).collect::<Vec<_>>());
        let w = Window::Progress { start: 0.1, stop: 0.3, rule: WindowRule::DiffusersStrict };
        assert_eq!(on(&w, 20), (3..6).collect::<Vec<_>>());
    }

    #[test]
    fn sigma_window_is_open_below_closed_above() {
        let w = Window::Sigma { low: 0.2, high: 0.8 };
        let at = |s| {
            w.contains(&StepContext {
                step: 0,
                num_steps: 1,
                sigma: Some(s),
                chunks: crate::schedule::ChunkTimes::NONE,
            })
            .unwrap()
        };
        assert!(!at(0.2));
        assert!(at(0.2000001));
        assert!(at(0.8));
        assert!(!at(0.80001));
        assert_eq!(w.contains(&StepContext::new(0, 1)), None);
    }
}
