//! The per-step plan: a pure function of the step's program, the model's
//! outputs and costs, and the world size. Every rank computes the same plan.
//!
//! 1. Active branches: those the step's programs read (windows that are off,
//!    latched adaptive guidance and zero-init steps already removed by lowering).
//! 2. Assignment: longest-processing-time first: branches by decreasing cost
//!    (then name) each go to the least-loaded rank (then the lowest rank).
//!    With equal costs, branch `i` lands on rank `i mod M`.
//! 3. Groups: a rank's branches share one batched call when the model says
//!    they can share a forward.
//! 4. Idle ranks: those with no branch; they still join every collective.
//! 5. The collective, by bytes: gather every branch prediction in its own dtype
//!    (each rank then combines locally in the canonical order), or all-reduce
//!    f32 partials of the linear forms. Deterministic mode always gathers.

use crate::model::{Model, OutputInfo};
use cfg_core::branch::BranchSpec;
use cfg_core::expr::Policy;
use cfg_core::program::StepProgram;

/// How the ranks combine branch predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Gather predictions, combine canonically: bit-identical for every M.
    #[default]
    Deterministic,
    /// All-reduce f32 partial forms wherever that moves fewer bytes.
    Fast,
}

/// The collective a step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collective {
    /// Nothing to exchange (one rank, or no active branch).
    None,
    /// All-gather the branch predictions in their own dtype.
    Gather,
    /// All-reduce the f32 partial sums of the linear forms.
    AllReduce,
}

impl Collective {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Collective::None => "none",
            Collective::Gather => "all-gather",
            Collective::AllReduce => "all-reduce",
        }
    }
}

/// The plan of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// The world size.
    pub world: usize,
    /// Active branches, sorted by name.
    pub active: Vec<String>,
    /// Declared branches that no term needs at this step: model calls saved.
    pub skipped: Vec<String>,
    /// The rank of each active branch (parallel to `active`).
    pub owner: Vec<usize>,
    /// Per rank, its batched calls: groups of indices into `active`.
    pub groups: Vec<Vec<Vec<usize>>>,
    /// Ranks with no branch.
    pub idle: Vec<usize>,
    /// Per rank, the bytes it contributes to a gather.
    pub gather_sizes: Vec<usize>,
    /// Payload of a gather: every needed prediction, in its own dtype.
    pub gather_bytes: usize,
    /// Payload of an all-reduce: every linear form, f32.
    pub reduce_bytes: usize,
    /// The chosen collective.
    pub collective: Collective,
}

impl StepPlan {
    /// Bytes the chosen collective moves (its payload).
    pub fn bytes(&self) -> usize {
        match self.collective {
            Collective::None => 0,
            Collective::Gather => self.gather_bytes,
            Collective::AllReduce => self.reduce_bytes,
        }
    }

    /// Model calls (branch forwards) this step makes.
    pub fn calls(&self) -> usize {
        self.active.len()
    }

    /// The active branches owned by `rank`, in `active` order.
    pub fn local(&self, rank: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.active.len()).filter(move |&i| self.owner[i] == rank)
    }
}

/// Plans a step's `program` (lowered from `policy`) for `world` ranks.
/// `outputs` follow the program's outputs. Pure: no model call is made, and
/// steps with equal programs get equal plans.
pub fn plan_step<M: Model + ?Sized>(
    policy: &Policy,
    program: &StepProgram,
    outputs: &[OutputInfo],
    model: &M,
    world: usize,
    mode: Mode,
) -> StepPlan {
    let world = world.max(1);
    let active = program.branches();
    let skipped: Vec<String> =
        policy.branches.names().filter(|b| !active.iter().any(|a| a == b)).map(String::from).collect();
    let specs: Vec<BranchSpec> =
        active.iter().map(|b| policy.branches.get(b).cloned().unwrap_or_else(fallback_spec)).collect();
    let owner = assign(&active, &specs, model, world);

    let mut groups = vec![Vec::<Vec<usize>>::new(); world];
    for (i, spec) in specs.iter().enumerate() {
        let rank_groups = &mut groups[owner[i]];
        match rank_groups.iter_mut().find(|g| g.iter().all(|&j| model.can_batch(&specs[j], spec))) {
            Some(g) => g.push(i),
            None => rank_groups.push(vec![i]),
        }
    }
    let idle = (0..world).filter(|&r| groups[r].is_empty()).collect();

    let mut gather_sizes = vec![0usize; world];
    let mut reduce_bytes = 0;
    for (p, out) in program.outputs.iter().zip(outputs) {
        for b in &p.branches {
            let i = active.binary_search(b).expect("program branches are active");
            gather_sizes[owner[i]] += out.bytes();
        }
        reduce_bytes += p.forms.len() * out.shape.numel() * 4;
    }
    let gather_bytes = gather_sizes.iter().sum();
    let collective = if world == 1 || active.is_empty() {
        Collective::None
    } else if mode == Mode::Fast && reduce_bytes < gather_bytes {
        Collective::AllReduce
    } else {
        Collective::Gather
    };
    StepPlan { world, active, skipped, owner, groups, idle, gather_sizes, gather_bytes, reduce_bytes, collective }
}

fn fallback_spec() -> BranchSpec {
    BranchSpec::prompt(cfg_core::branch::Prompt::Positive)
}

/// Longest processing time first, deterministic tie-breaks.
fn assign<M: Model + ?Sized>(active: &[String], specs: &[BranchSpec], model: &M, world: usize) -> Vec<usize> {
    let costs: Vec<f64> = active
        .iter()
        .zip(specs)
        .map(|(b, s)| {
            let c = model.cost(b, s);
            if c.is_finite() && c > 0.0 {
                c
            } else {
                1.0
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..active.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0.0f64; world];
    let mut owner = vec![0; active.len()];
    for i in order {
        let r = (0..world).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).expect("world >= 1");
        owner[i] = r;
        load[r] += costs[i];
    }
    owner
}

/// The plans of a whole run, without running anything: every step is lowered
/// in order, zero-init counters advance as in a real run, and adaptive
/// guidance is assumed never to latch (that depends on the predictions).
/// `times` gives `(t, sigma)` per step (see [`crate::scheduler::Sampler::times`]);
/// plan `i` is step `i`'s.
pub fn plan_run<M: Model + ?Sized>(
    policy: &Policy,
    overrides: &cfg_core::lower::Overrides,
    outputs: &[OutputInfo],
    model: &M,
    world: usize,
    mode: Mode,
    times: &[(f64, f64)],
) -> Result<Vec<StepPlan>, cfg_core::CoreError> {
    let mut state = cfg_core::state::GuidanceState::new();
    state.start();
    let steps = times.len().saturating_sub(1);
    let mut plans = Vec::with_capacity(steps);
    for (step, &(_, sigma)) in times.iter().take(steps).enumerate() {
        let ctx = cfg_core::schedule::StepContext {
            step,
            num_steps: steps,
            sigma: Some(sigma),
            chunks: cfg_core::schedule::ChunkTimes::NONE,
        };
        let program = cfg_core::lower::lower(policy, &ctx, &state, overrides)?;
        for p in &program.outputs {
            for slot in &p.counters {
                state.advance(slot);
            }
        }
        plans.push(plan_step(policy, &program, outputs, model, world, mode));
    }
    Ok(plans)
}
