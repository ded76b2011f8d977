//! The per-step call: one rank's share of a guided prediction.
//!
//! Each rank lowers the policy, computes the same [`StepPlan`], predicts its
//! own branches, joins the step's collective and combines. The combined
//! prediction is identical on every rank, so no broadcast is needed. This is
//! what a pipeline calls once per denoising step (the CFG-mixin way); the
//! [`crate::sample`] loop is built on it.
//!
//! Steps repeat: a step whose scales, windows and operator state read as at
//! the last lowering reuses its program, its plan and its model-call lists
//! (see [`LoweringCache`]), and the step's small lists live on the stack, so
//! a steady step allocates nothing on the host but what the model and the
//! backend return.

use crate::backend::Backend;
use crate::comm::Communicator;
use crate::error::RuntimeError;
use crate::local::panic_message;
use crate::model::{DeviceCall, Model, OutputInfo, StepInfo};
use crate::plan::{plan_step, Collective, Mode, StepPlan};
use crate::tensor::{DeviceBytes, DeviceTensor};
use cfg_core::branch::BranchSpec;
use cfg_core::expr::{Policy, Space};
use cfg_core::lower::{lower, Overrides};
use cfg_core::lower_cache::LoweringCache;
use cfg_core::program::StepProgram;
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use smallvec::SmallVec;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A short list that lives on the stack (a step's inputs, outputs, parts).
type Few<T> = SmallVec<[T; 8]>;

/// Each output's combined prediction, and its re-noising one (CFG++).
type Combined = (SmallVec<[DeviceTensor; 4]>, SmallVec<[Option<DeviceTensor>; 4]>);

/// One branch's predictions, one per output (policy order).
type PerOutput = SmallVec<[DeviceTensor; 4]>;

/// Every branch's predictions by index into the plan's `active` list;
/// `None` where this rank has not got them.
type Predictions = Vec<Option<PerOutput>>;

/// Where one step's time went on this rank.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// Model calls.
    pub model: Duration,
    /// Combining (the guidance program).
    pub combine: Duration,
    /// The collective.
    pub comm: Duration,
}

impl std::ops::AddAssign for StepTiming {
    fn add_assign(&mut self, o: StepTiming) {
        self.model += o.model;
        self.combine += o.combine;
        self.comm += o.comm;
    }
}

/// The result of one guided step.
#[derive(Debug)]
pub struct Guided {
    /// The combined prediction of each output, in the policy's output order,
    /// where the rank's tensors live.
    pub outputs: SmallVec<[DeviceTensor; 4]>,
    /// CFG++: each output's re-noising prediction (its `renoise`
    /// expression), `None` for the outputs that declare none; the sampler
    /// takes its noise direction from it.
    pub renoise: SmallVec<[Option<DeviceTensor>; 4]>,
    /// The step's plan (shared by the steps whose program repeats).
    pub plan: Arc<StepPlan>,
    /// Where the time went.
    pub timing: StepTiming,
}

/// A step's plan and this rank's model calls under it, kept while the
/// step's program repeats.
#[derive(Debug)]
struct Planned {
    plan: Arc<StepPlan>,
    /// The branches (names and specs) of each of this rank's batched calls.
    calls: Vec<Vec<(String, BranchSpec)>>,
}

/// One rank's guidance runtime.
#[derive(Debug)]
pub struct Guider<C, B> {
    policy: Policy,
    overrides: Overrides,
    outputs: Vec<OutputInfo>,
    spaces: Vec<Space>,
    /// For each model output, the index of the policy output with its name.
    model_to_policy: Vec<usize>,
    /// The working space of each model output.
    model_spaces: Vec<Space>,
    comm: C,
    backend: B,
    state: GuidanceState,
    mode: Mode,
    /// The last lowered program.
    lowering: LoweringCache,
    /// Its plan.
    planned: Option<Planned>,
    /// The step's predictions (kept between steps for their capacity).
    preds: Predictions,
}

impl<C: Communicator, B: Backend> Guider<C, B> {
    /// A guider for `policy` on `model`; the model's outputs must be the
    /// policy's outputs (by name, in any order).
    pub fn new<M: Model + ?Sized>(
        policy: Policy,
        overrides: Overrides,
        model: &M,
        comm: C,
        backend: B,
        mode: Mode,
    ) -> Result<Self, RuntimeError> {
        let (outputs, model_to_policy) = crate::model::match_outputs(model, &policy)?;
        let spaces: Vec<Space> = policy.outputs.iter().map(|(_, spec)| spec.space).collect();
        let model_spaces = model_to_policy.iter().map(|&p| spaces[p]).collect();
        if comm.world_size() == 0 || comm.rank() >= comm.world_size() {
            return Err(RuntimeError::Config(format!("rank {} of world size {}", comm.rank(), comm.world_size())));
        }
        Ok(Guider {
            policy,
            overrides,
            outputs,
            spaces,
            model_to_policy,
            model_spaces,
            comm,
            backend,
            state: GuidanceState::new(),
            mode,
            lowering: LoweringCache::new(),
            planned: None,
            preds: Vec::new(),
        })
    }

    /// Starts a sampling run: resets every stateful operator. A guider plans
    /// for one model: start a new guider for another.
    pub fn start(&mut self) {
        self.state.start();
        self.lowering.clear();
        self.planned = None;
    }

    /// How many times this guider lowered its policy (steps whose program
    /// repeated the last one reuse it).
    pub fn lowerings(&self) -> u64 {
        self.lowering.lowerings()
    }

    /// The outputs, in the policy's order.
    pub fn outputs(&self) -> &[OutputInfo] {
        &self.outputs
    }

    /// The working space of each output, in the policy's order.
    pub fn spaces(&self) -> &[Space] {
        &self.spaces
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The operators' state.
    pub fn state(&self) -> &GuidanceState {
        &self.state
    }

    /// The communicator.
    pub fn comm_mut(&mut self) -> &mut C {
        &mut self.comm
    }

    /// The backend.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Lowers and plans the step without running anything.
    pub fn plan<M: Model + ?Sized>(&self, model: &M, info: StepInfo) -> Result<(StepProgram, StepPlan), RuntimeError> {
        let ctx =
            StepContext { step: info.step, num_steps: info.num_steps, sigma: Some(info.sigma), chunks: info.chunks };
        let program = lower(&self.policy, &ctx, &self.state, &self.overrides).map_err(|source| RuntimeError::Core {
            rank: self.rank(),
            step: info.step,
            source: Box::new(source),
        })?;
        let plan = plan_step(&self.policy, &program, &self.outputs, model, self.comm.world_size(), self.mode);
        Ok((program, plan))
    }

    /// One guided step: `latents` are the current f32 latents of each output
    /// (policy order), where the rank's tensors live. Returns the combined
    /// predictions, identical on every rank. On any failure this rank aborts
    /// the group, so every rank errors.
    pub fn step<M: Model + ?Sized>(
        &mut self,
        model: &M,
        latents: &[DeviceTensor],
        info: StepInfo,
    ) -> Result<Guided, RuntimeError> {
        let result = self.step_inner(model, latents, info);
        if let Err(e) = &result {
            if !matches!(e, RuntimeError::PeerFailed { .. }) {
                self.comm.abort(info.step, &e.to_string());
            }
        }
        result
    }

    fn step_inner<M: Model + ?Sized>(
        &mut self,
        model: &M,
        latents: &[DeviceTensor],
        info: StepInfo,
    ) -> Result<Guided, RuntimeError> {
        let step = info.step;
        if latents.len() != self.outputs.len() {
            return Err(RuntimeError::Config(format!(
                "step {step}: {} latents given for {} outputs",
                latents.len(),
                self.outputs.len()
            )));
        }
        // Taken out for the step so that the program and the predictions can
        // be borrowed beside `&mut self`; put back (with their capacity) after.
        let mut lowering = std::mem::take(&mut self.lowering);
        let mut preds = std::mem::take(&mut self.preds);
        let result = self.run_step(&mut lowering, &mut preds, model, latents, info);
        preds.clear();
        (self.lowering, self.preds) = (lowering, preds);
        result
    }

    fn run_step<M: Model + ?Sized>(
        &mut self,
        lowering: &mut LoweringCache,
        preds: &mut Predictions,
        model: &M,
        latents: &[DeviceTensor],
        info: StepInfo,
    ) -> Result<Guided, RuntimeError> {
        let (rank, step) = (self.rank(), info.step);
        let ctx = StepContext { step, num_steps: info.num_steps, sigma: Some(info.sigma), chunks: info.chunks };
        let (program, fresh) = lowering
            .lower(&self.policy, &ctx, &self.state, &self.overrides)
            .map_err(|source| RuntimeError::Core { rank, step, source: Box::new(source) })?;
        if fresh || self.planned.is_none() {
            let plan = plan_step(&self.policy, program, &self.outputs, model, self.comm.world_size(), self.mode);
            let calls = plan.groups[rank]
                .iter()
                .map(|group| {
                    group
                        .iter()
                        .map(|&i| {
                            let name = plan.active[i].clone();
                            let spec = self.policy.branches.get(&name).cloned().expect("active branches are declared");
                            (name, spec)
                        })
                        .collect()
                })
                .collect();
            self.planned = Some(Planned { plan: Arc::new(plan), calls });
        }
        let plan = self.planned.as_ref().expect("planned above").plan.clone();
        let mut timing = StepTiming::default();

        let t0 = Instant::now();
        preds.resize_with(plan.active.len(), || None);
        for (g, group) in plan.groups[rank].iter().enumerate() {
            for (i, p) in group.iter().zip(self.call(model, latents, info, g)?) {
                preds[*i] = Some(PerOutput::from_vec(p));
            }
        }
        timing.model = t0.elapsed();

        let (outputs, renoise) = match plan.collective {
            Collective::AllReduce => self.reduce_and_combine(program, &plan, preds, &mut timing, step)?,
            Collective::None | Collective::Gather => {
                if plan.collective == Collective::Gather {
                    let t = Instant::now();
                    self.gather(program, &plan, preds, step)?;
                    timing.comm = t.elapsed();
                }
                let t = Instant::now();
                let out = self.combine(program, &plan, preds, step)?;
                timing.combine = t.elapsed();
                out
            }
        };
        Ok(Guided { outputs, renoise, plan, timing })
    }

    /// Calls the model on this rank's batched group `g`, checks what comes
    /// back and cuts the predictions of branches with a `slice` to their
    /// outputs' shapes; returns the predictions in the policy's output order.
    fn call<M: Model + ?Sized>(
        &mut self,
        model: &M,
        latents: &[DeviceTensor],
        info: StepInfo,
        g: usize,
    ) -> Result<Vec<Vec<DeviceTensor>>, RuntimeError> {
        let rank = self.rank();
        let branches = &self.planned.as_ref().expect("the step is planned").calls[g];
        let model_latents: Few<&DeviceTensor> = self.model_to_policy.iter().map(|&p| &latents[p]).collect();
        let call = DeviceCall { info, branches, latents: &model_latents, spaces: &self.model_spaces };
        let names = || branches.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        let place = self.backend.place();
        let mut got = match catch_unwind(AssertUnwindSafe(|| model.predict_on(&place, &call))) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(RuntimeError::Model { rank, step: info.step, branches: names(), message: e.0 }),
            Err(panic) => {
                let message = format!("panicked: {}", panic_message(panic.as_ref()));
                return Err(RuntimeError::Model { rank, step: info.step, branches: names(), message });
            }
        };
        if got.len() != branches.len() {
            return Err(RuntimeError::BadPrediction {
                rank,
                step: info.step,
                branch: names(),
                output: "*".into(),
                expected: format!("{} branch predictions", branches.len()),
                got: format!("{}", got.len()),
            });
        }
        for ((name, spec), per_output) in branches.iter().zip(&mut got) {
            if per_output.len() != self.outputs.len() {
                return Err(RuntimeError::BadPrediction {
                    rank,
                    step: info.step,
                    branch: name.clone(),
                    output: "*".into(),
                    expected: format!("{} outputs", self.outputs.len()),
                    got: format!("{}", per_output.len()),
                });
            }
            for (m, t) in per_output.iter_mut().enumerate() {
                let o = &self.outputs[self.model_to_policy[m]];
                let bad = |expected: String| RuntimeError::BadPrediction {
                    rank,
                    step: info.step,
                    branch: name.clone(),
                    output: o.name.clone(),
                    expected,
                    got: format!("{} {}", t.shape(), t.dtype()),
                };
                if t.dtype() != o.dtype || t.len() != t.shape().numel() {
                    return Err(bad(format!("{} {}", o.shape, o.dtype)));
                }
                match &spec.slice {
                    None if t.shape() != &o.shape => return Err(bad(format!("{} {}", o.shape, o.dtype))),
                    None => {}
                    Some(slice) => {
                        let rows = crate::slice::rows(slice, t.shape(), &o.shape)
                            .map_err(|why| bad(format!("{} {why}", o.dtype)))?;
                        let cut = self.backend.narrow(t, &rows, &o.shape).map_err(|e| RuntimeError::Backend {
                            rank,
                            step: info.step,
                            output: o.name.clone(),
                            message: format!("slicing branch `{name}`: {}", e.0),
                        })?;
                        *t = cut;
                    }
                }
            }
            // Model output order → policy order, in place.
            let mut slots: Few<Option<DeviceTensor>> = per_output.drain(..).map(Some).collect();
            per_output.extend((0..self.outputs.len()).map(|p| {
                let m = self.model_to_policy.iter().position(|&q| q == p).expect("a permutation");
                slots[m].take().expect("each output taken once")
            }));
        }
        Ok(got)
    }

    /// Deterministic path: every rank receives every needed prediction in its
    /// own dtype. Payload of a rank: its branches in `active` order, and for
    /// each, the outputs whose program reads it, in output order.
    fn gather(
        &mut self,
        program: &StepProgram,
        plan: &StepPlan,
        preds: &mut Predictions,
        step: usize,
    ) -> Result<(), RuntimeError> {
        let rank = self.rank();
        let reads = |i: usize, p: usize| program.outputs[p].branches.iter().any(|b| *b == plan.active[i]);
        let backend =
            |e: crate::backend::BackendError| RuntimeError::Backend { rank, step, output: "*".into(), message: e.0 };
        let payload = {
            let mut parts: Few<&DeviceTensor> = Few::new();
            for i in plan.local(rank) {
                let pred = preds[i].as_ref().expect("local branches were predicted");
                for p in (0..self.outputs.len()).filter(|&p| reads(i, p)) {
                    parts.push(&pred[p]);
                }
            }
            self.backend.pack(&parts).map_err(backend)?
        };
        if payload.len() != plan.gather_sizes[rank] {
            let detail =
                format!("rank {rank} packed {} bytes, the plan says {}", payload.len(), plan.gather_sizes[rank]);
            return Err(RuntimeError::Collective { rank, step, detail });
        }
        let all: DeviceBytes = self.comm.all_gather_bytes(step, &payload, &plan.gather_sizes)?;
        let mut at = 0;
        for r in 0..self.comm.world_size() {
            if r == rank {
                at += plan.gather_sizes[r];
                continue;
            }
            let end = at + plan.gather_sizes[r];
            for i in plan.local(r) {
                let mut per_output = PerOutput::new();
                for (p, o) in self.outputs.iter().enumerate() {
                    if !reads(i, p) {
                        // Not needed by any program; never read.
                        per_output
                            .push(DeviceTensor::Host(cfg_core::Tensor::zeros(o.dtype, cfg_core::Shape::new(vec![0]))));
                        continue;
                    }
                    if at + o.bytes() > end {
                        let detail = format!("rank {r} sent too few bytes for branch `{}`", plan.active[i]);
                        return Err(RuntimeError::Collective { rank, step, detail });
                    }
                    per_output.push(self.backend.unpack(&all, at, o.dtype, &o.shape).map_err(backend)?);
                    at += o.bytes();
                }
                preds[i] = Some(per_output);
            }
            at = end;
        }
        Ok(())
    }

    /// Runs every output's program (and its `renoise` program) on the
    /// (gathered) predictions.
    fn combine(
        &mut self,
        program: &StepProgram,
        plan: &StepPlan,
        preds: &Predictions,
        step: usize,
    ) -> Result<Combined, RuntimeError> {
        let rank = self.rank();
        let (mut out, mut renoise) = (SmallVec::new(), SmallVec::new());
        for (p, (prog, o)) in program.outputs.iter().zip(&self.outputs).enumerate() {
            let mut inputs: Few<&DeviceTensor> = Few::new();
            for b in &prog.branches {
                let i = plan.active.binary_search(b).expect("program branches are active");
                inputs.push(&preds[i].as_ref().expect("gathered above")[p]);
            }
            let backend = |e: crate::backend::BackendError| RuntimeError::Backend {
                rank,
                step,
                output: o.name.clone(),
                message: e.0,
            };
            let t = self.backend.evaluate(prog, &inputs, o.dtype, &o.shape, &mut self.state).map_err(backend)?;
            out.push(t);
            let r = match &program.renoise[p] {
                Some(rp) => {
                    Some(self.backend.evaluate(rp, &inputs, o.dtype, &o.shape, &mut self.state).map_err(backend)?)
                }
                None => None,
            };
            renoise.push(r);
        }
        Ok((out, renoise))
    }

    /// Fast path: f32 partial forms, an all-reduce per output (idle ranks
    /// and ranks without a form's branches send zeros), then the non-linear ops.
    fn reduce_and_combine(
        &mut self,
        program: &StepProgram,
        plan: &StepPlan,
        preds: &Predictions,
        timing: &mut StepTiming,
        step: usize,
    ) -> Result<Combined, RuntimeError> {
        let rank = self.rank();
        let (mut out, mut renoise) = (SmallVec::new(), SmallVec::new());
        for (p, (prog, o)) in program.outputs.iter().zip(&self.outputs).enumerate() {
            let backend = |e: crate::backend::BackendError| RuntimeError::Backend {
                rank,
                step,
                output: o.name.clone(),
                message: e.0,
            };
            let t = Instant::now();
            let local: Few<Option<&DeviceTensor>> = prog
                .branches
                .iter()
                .map(|b| {
                    let i = plan.active.binary_search(b).expect("program branches are active");
                    preds[i].as_ref().map(|v| &v[p])
                })
                .collect();
            let mut forms = self.backend.partial_forms(prog, &local, &o.shape).map_err(backend)?;
            timing.combine += t.elapsed();
            let t = Instant::now();
            self.comm.all_reduce_sum_tensor(step, &mut forms)?;
            timing.comm += t.elapsed();
            let t = Instant::now();
            let r = self.backend.evaluate_forms(prog, &forms, o.dtype, &o.shape, &mut self.state).map_err(backend)?;
            out.push(r);
            // CFG++: the re-noising prediction is one of the same reduced forms.
            let r = match &program.renoise[p] {
                Some(rp) => {
                    Some(self.backend.evaluate_forms(rp, &forms, o.dtype, &o.shape, &mut self.state).map_err(backend)?)
                }
                None => None,
            };
            renoise.push(r);
            timing.combine += t.elapsed();
        }
        Ok((out, renoise))
    }
}
