//! The per-step plan as a Python object: which rank computes which branch,
//! idle ranks, the collective and its bytes, and the gather layout.

use crate::errors::guidance;
use cfg_core::program::StepProgram;
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::model::{Call, Model, ModelError, OutputInfo};
use cfg_runtime::plan::Mode;
use pyo3::prelude::*;
use std::collections::HashMap;

/// The plan of one step over `world_size` ranks.
#[pyclass(module = "cfg_guidance._native", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct StepPlan {
    /// The step.
    pub step: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// The branches computed at this step, sorted by name.
    pub active: Vec<String>,
    /// Declared branches no term needs at this step (model calls saved).
    pub skipped: Vec<String>,
    /// Branch → the rank that computes it.
    pub owner: HashMap<String, usize>,
    /// Per rank, the branches it computes (empty for an idle rank).
    pub ranks: Vec<Vec<String>>,
    /// Per rank, its batched model calls: groups of branches that can share a forward.
    pub groups: Vec<Vec<Vec<String>>>,
    /// Ranks with nothing to compute; they still join the collective.
    pub idle: Vec<usize>,
    /// `"none"`, `"all-gather"` or `"all-reduce"`.
    pub collective: String,
    /// Bytes the chosen collective moves.
    pub bytes: usize,
    /// Payload of a gather: every needed prediction in its own dtype.
    pub gather_bytes: usize,
    /// Payload of an all-reduce: every linear form in f32.
    pub reduce_bytes: usize,
    /// Per rank, the bytes it contributes to a gather.
    pub gather_sizes: Vec<usize>,
    /// Per rank, what it contributes to a gather, in order: `(branch, output)`
    /// pairs, each a prediction in its own dtype (empty when not known).
    pub payload: Vec<Vec<(String, String)>>,
}

impl StepPlan {
    /// From the runtime's plan of `step`; `program` gives the gather layout.
    pub fn from_plan(step: usize, p: &cfg_runtime::StepPlan, program: Option<&StepProgram>) -> StepPlan {
        let name = |i: &usize| p.active[*i].clone();
        let payload = match program {
            Some(program) => (0..p.world)
                .map(|r| {
                    let mut parts = Vec::new();
                    for i in p.local(r) {
                        for out in &program.outputs {
                            if out.branches.iter().any(|b| *b == p.active[i]) {
                                parts.push((p.active[i].clone(), out.output.clone()));
                            }
                        }
                    }
                    parts
                })
                .collect(),
            None => vec![Vec::new(); p.world],
        };
        StepPlan {
            step,
            world_size: p.world,
            active: p.active.clone(),
            skipped: p.skipped.clone(),
            owner: p.active.iter().cloned().zip(p.owner.iter().copied()).collect(),
            ranks: (0..p.world).map(|r| p.local(r).map(|i| name(&i)).collect()).collect(),
            groups: p.groups.iter().map(|g| g.iter().map(|call| call.iter().map(name).collect()).collect()).collect(),
            idle: p.idle.clone(),
            collective: p.collective.name().to_string(),
            bytes: p.bytes(),
            gather_bytes: p.gather_bytes,
            reduce_bytes: p.reduce_bytes,
            gather_sizes: p.gather_sizes.clone(),
            payload,
        }
    }
}

#[pymethods]
impl StepPlan {
    /// The branches `rank` computes at this step (empty when it is idle).
    fn branches_for(&self, rank: usize) -> Vec<String> {
        self.ranks.get(rank).cloned().unwrap_or_default()
    }

    fn __repr__(&self) -> String {
        let ranks: Vec<String> = self
            .ranks
            .iter()
            .enumerate()
            .map(|(r, b)| if b.is_empty() { format!("{r}: idle") } else { format!("{r}: {}", b.join("+")) })
            .collect();
        format!("StepPlan(step {}, ranks [{}], {} {} bytes)", self.step, ranks.join(", "), self.collective, self.bytes)
    }
}

/// `"deterministic"` or `"fast"`.
pub fn mode_of(mode: &str) -> PyResult<Mode> {
    match mode {
        "deterministic" => Ok(Mode::Deterministic),
        "fast" => Ok(Mode::Fast),
        _ => Err(guidance(format!("mode `{mode}`: expected \"deterministic\" or \"fast\""))),
    }
}

/// The planner's view of a Python model: output shapes and dtypes only
/// (branch costs and batching from the policy). It is never called.
#[derive(Debug)]
pub struct OutputShapes {
    /// The outputs, in the policy's order.
    pub infos: Vec<OutputInfo>,
}

impl OutputShapes {
    /// From `(name, shape, dtype)` per output.
    pub fn new(outputs: Vec<(String, Vec<usize>, DType)>) -> Self {
        let infos = outputs
            .into_iter()
            .map(|(name, shape, dtype)| OutputInfo { name, shape: Shape::new(shape), dtype })
            .collect();
        OutputShapes { infos }
    }
}

impl Model for OutputShapes {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.infos.clone()
    }

    fn predict(&self, _call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError> {
        Err(ModelError("the planner's stand-in model makes no predictions".into()))
    }
}
