//! Lowering once per distinct step: a policy whose scales, windows and
//! operator state give the same answers as at the last lowering gives the
//! same program, so the runtime reuses it instead of lowering (and
//! allocating) every step.
//!
//! The check is exact, not a guess: lowering is a pure function of the
//! policy, the overrides and what it reads from the step and the state, and
//! it records each of those reads ([`Read`]). Asking them again costs a few
//! comparisons and allocates nothing.

use crate::error::CoreError;
use crate::expr::{Policy, ScaleRef};
use crate::lower::{chunk_times, lower_recording, scale_at, Overrides};
use crate::program::StepProgram;
use crate::schedule::{ChunkTimes, StepContext};
use crate::state::GuidanceState;
use crate::window::Window;

/// One thing a lowering read, with the answer it got.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Read {
    /// A scale's value (`None`: it needed a sigma).
    Scale { scale: ScaleRef, value: Option<f64> },
    /// Whether the step is inside a window (`None`: it needed a sigma).
    Window { window: Window, inside: Option<bool> },
    /// Whether a zero-init operator still zeroes (`seen < steps`).
    ZeroInit { slot: String, steps: usize, zeroed: bool },
    /// Whether an adaptive operator has latched.
    Latched { slot: String, latched: bool },
    /// Whether the step comes after a given step (APG-Mix's switch).
    After { step: usize, after: bool },
    /// Each frame chunk's time (MAGI-1's chunked guidance), and whether the
    /// step gave them (one linear form when it did not).
    Chunks { times: Option<ChunkTimes>, given: bool },
}

impl Read {
    /// Whether asking again at `ctx` gives the recorded answer.
    fn holds(&self, policy: &Policy, overrides: &Overrides, ctx: &StepContext, state: &GuidanceState) -> bool {
        match self {
            Read::Scale { scale, value } => match scale_at(policy, overrides, ctx, scale) {
                Ok(now) => now.map(f64::to_bits) == value.map(f64::to_bits),
                Err(_) => false,
            },
            Read::Window { window, inside } => window.contains(ctx) == *inside,
            Read::ZeroInit { slot, steps, zeroed } => (state.count(slot) < *steps) == *zeroed,
            Read::Latched { slot, latched } => state.latched(slot) == *latched,
            Read::After { step, after } => (ctx.step > *step) == *after,
            Read::Chunks { times, given } => chunk_times(ctx) == *times && ctx.chunks.as_slice().is_empty() != *given,
        }
    }
}

/// The last lowered program of one policy (with one set of overrides) and
/// what its lowering read.
#[derive(Debug, Default)]
pub struct LoweringCache {
    program: Option<StepProgram>,
    reads: Vec<Read>,
    lowerings: u64,
}

impl LoweringCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The program of `policy` at `ctx`: the cached one when every read of
    /// the last lowering gives the same answer now, else a new lowering.
    /// Returns it and whether it was lowered anew. The cache must only ever
    /// see one policy and one set of overrides.
    pub fn lower(
        &mut self,
        policy: &Policy,
        ctx: &StepContext,
        state: &GuidanceState,
        overrides: &Overrides,
    ) -> Result<(&StepProgram, bool), CoreError> {
        let fresh = match &self.program {
            Some(_) => !self.reads.iter().all(|r| r.holds(policy, overrides, ctx, state)),
            None => true,
        };
        if fresh {
            self.program = None;
            self.reads.clear();
            self.lowerings += 1;
            self.program = Some(lower_recording(policy, ctx, state, overrides, &mut self.reads)?);
        }
        Ok((self.program.as_ref().expect("lowered above"), fresh))
    }

    /// Forgets the cached program (a new run starts with a new lowering).
    pub fn clear(&mut self) {
        self.program = None;
        self.reads.clear();
    }

    /// How many times the cache lowered (misses).
    pub fn lowerings(&self) -> u64 {
        self.lowerings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::branch::{BranchSpec, Prompt};
    use crate::expr::{Expr, Named, OutputSpec, Space};
    use crate::lower::lower;
    use crate::schedule::Schedule;

    /// CFG with scale `s`, optionally inside a progress window.
    fn policy(s: Schedule, window: Option<(f64, f64)>) -> Policy {
        let r = |n: &str| Box::new(Expr::Ref(n.into()));
        let cfg =
            Expr::Cfg { cond: r("cond"), uncond: r("uncond"), scale: ScaleRef::Named("s".into()), original: false };
        let guidance = match window {
            Some((start, stop)) => Expr::Windowed {
                window: Window::Progress { start, stop, rule: Default::default() },
                term: Box::new(cfg),
                otherwise: None,
            },
            None => cfg,
        };
        Policy {
            name: "t".into(),
            summary: String::new(),
            source: String::new(),
            steps: None,
            branches: Named(vec![
                ("cond".into(), BranchSpec::prompt(Prompt::Positive)),
                ("uncond".into(), BranchSpec::prompt(Prompt::Negative)),
            ]),
            scales: Named(vec![("s".into(), s)]),
            values: Named::default(),
            outputs: Named(vec![("x".into(), OutputSpec { space: Space::Eps, layout: None, guidance, renoise: None })]),
        }
    }

    /// Over a run the cache gives exactly what lowering every step gives, and
    /// lowers again only where an answer changed.
    #[test]
    fn cached_programs_equal_fresh_lowerings() {
        let p = policy(Schedule::Const(7.0), Some((0.2, 0.6)));
        let (state, overrides) = (GuidanceState::new(), Overrides::none());
        let mut cache = LoweringCache::new();
        let n = 20;
        for step in 0..n {
            let ctx = StepContext::new(step, n);
            let (cached, _) = cache.lower(&p, &ctx, &state, &overrides).expect("lowers");
            assert_eq!(*cached, lower(&p, &ctx, &state, &overrides).expect("lowers"), "step {step}");
        }
        // Before, inside, after the window: three lowerings.
        assert_eq!(cache.lowerings(), 3);
    }

    #[test]
    fn a_moving_scale_lowers_every_step() {
        let p = policy(Schedule::Linear { start: 7.0, end: 1.0 }, None);
        let (state, overrides) = (GuidanceState::new(), Overrides::none());
        let mut cache = LoweringCache::new();
        for step in 0..5 {
            let ctx = StepContext::new(step, 5);
            let (cached, fresh) = cache.lower(&p, &ctx, &state, &overrides).expect("lowers");
            assert!(fresh, "step {step}: the scale moved");
            assert_eq!(*cached, lower(&p, &ctx, &state, &overrides).expect("lowers"));
        }
    }

    #[test]
    fn an_override_is_read_like_a_scale() {
        let p = policy(Schedule::Const(7.0), None);
        let state = GuidanceState::new();
        let mut cache = LoweringCache::new();
        let overrides = Overrides::none().with("s", 2.0);
        let ctx = StepContext::new(0, 4);
        let (cached, _) = cache.lower(&p, &ctx, &state, &overrides).expect("lowers");
        assert_eq!(*cached, lower(&p, &ctx, &state, &overrides).expect("lowers"));
        assert!(!cache.lower(&p, &StepContext::new(1, 4), &state, &overrides).expect("lowers").1);
    }

    /// The same chunk times given by the step or implied by its sigma lower
    /// differently (an op, or one form): the cache tells them apart.
    #[test]
    fn chunk_times_given_or_implied_are_different_reads() {
        let mut p = policy(Schedule::Const(7.0), None);
        let r = |n: &str| Box::new(Expr::Ref(n.into()));
        p.outputs.0[0].1.layout = Some(crate::layout::Layout {
            axes: vec![crate::layout::Axis::B, crate::layout::Axis::F, crate::layout::Axis::C],
            grid: None,
        });
        p.outputs.0[0].1.guidance = Expr::Chunked {
            cond: r("cond"),
            prefix: r("uncond"),
            uncond: r("uncond"),
            thresholds: vec![0.0, 0.5],
            prefix_scales: vec![1.5, 1.0],
            text_scales: vec![7.5, 0.0],
            chunk_frames: 2,
        };
        let (state, overrides) = (GuidanceState::new(), Overrides::none());
        let mut cache = LoweringCache::new();
        let implied = StepContext { sigma: Some(0.75), ..StepContext::new(0, 4) };
        let given = StepContext { chunks: ChunkTimes::new(&[0.25]).expect("one chunk"), ..implied };
        for ctx in [implied, given, implied] {
            let (cached, _) = cache.lower(&p, &ctx, &state, &overrides).expect("lowers");
            assert_eq!(*cached, lower(&p, &ctx, &state, &overrides).expect("lowers"));
        }
        assert_eq!(cache.lowerings(), 3);
    }

    #[test]
    fn apg_mix_lowers_again_at_its_switch_step() {
        let mut p = policy(Schedule::Const(7.0), None);
        let r = |n: &str| Box::new(Expr::Ref(n.into()));
        p.outputs.0[0].1.guidance = Expr::ApgMix {
            cond: r("cond"),
            uncond: r("uncond"),
            cfg_scale: ScaleRef::Value(3.5),
            scale: ScaleRef::Named("s".into()),
            apg_start_step: 5,
            momentum: ScaleRef::Value(-0.5),
            norm_threshold: ScaleRef::Value(10.0),
            eta: ScaleRef::Value(0.0),
            original: false,
        };
        let (state, overrides) = (GuidanceState::new(), Overrides::none());
        let mut cache = LoweringCache::new();
        for step in 0..10 {
            let ctx = StepContext::new(step, 10);
            let (cached, _) = cache.lower(&p, &ctx, &state, &overrides).expect("lowers");
            assert_eq!(*cached, lower(&p, &ctx, &state, &overrides).expect("lowers"), "step {step}");
        }
        // The CFG phase, then the APG phase.
        assert_eq!(cache.lowerings(), 2);
    }
}
