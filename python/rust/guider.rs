//! The guider: one rank's guidance state and per-step arithmetic, on
//! tensors read and written in place.
//!
//! Single process: `combine` runs the step's canonical program straight from
//! the caller's predictions into the caller's outputs. CFG-parallel (the
//! Python half runs the collective): `plan` says which rank computes which
//! branch; in a gather step every rank then calls `combine` on the gathered
//! predictions (the deterministic path); in an all-reduce step each rank
//! writes its f32 partial forms (`partial_forms`), the caller sums them
//! over ranks, and `finish` runs the non-linear ops on the sums. These are
//! the Rust runtime's two paths, with the same arithmetic.

use crate::buffers::{check_disjoint, f32_buffer, Checked, Importer, Place};
use crate::cuda;
use crate::errors::guidance;
use crate::plan::{mode_of, OutputShapes, StepPlan};
use crate::policy::Policy;
use cfg_core::cpu::{combine_into, evaluate_view, round_into_view};
use cfg_core::lower::{lower, Overrides};
use cfg_core::program::{Program, StepProgram, Value};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::view::{Elements, ElementsMut, TensorView};
use cfg_core::{CoreError, DType, Shape, Tensor};
use cfg_runtime::backend::identity_forms;
use cfg_runtime::plan::{plan_step, Mode};
use pyo3::prelude::*;

/// A prediction handed in: `(branch, output, tensor)`.
type Input<'py> = (String, String, Bound<'py, PyAny>);
/// An output to write: `(output, tensor)`.
type Output<'py> = (String, Bound<'py, PyAny>);

/// One rank's guider for one policy.
#[pyclass(module = "cfg_guidance._native")]
#[derive(Debug)]
pub struct Guider {
    policy: Policy,
    overrides: Overrides,
    state: GuidanceState,
    world: usize,
    rank: usize,
    mode: Mode,
}

/// Checked inputs: `(branch, output, tensor)`.
struct Inputs(Vec<(String, String, Checked)>);

impl Inputs {
    fn new(importer: &mut Importer, inputs: &[Input<'_>]) -> PyResult<Inputs> {
        let mut out = Vec::with_capacity(inputs.len());
        for (b, o, d) in inputs {
            if out.iter().any(|(b2, o2, _): &(String, String, Checked)| b2 == b && o2 == o) {
                return Err(guidance(format!("branch `{b}`, output `{o}`: given twice")));
            }
            out.push((b.clone(), o.clone(), importer.import(d, &format!("branch `{b}` (output `{o}`)"))?));
        }
        Ok(Inputs(out))
    }

    fn get(&self, branch: &str, output: &str) -> Option<&Checked> {
        self.0.iter().find(|(b, o, _)| b == branch && o == output).map(|(_, _, c)| c)
    }

    fn named(&self) -> Vec<(String, &Checked)> {
        self.0.iter().map(|(b, o, c)| (format!("the prediction of branch `{b}` (output `{o}`)"), c)).collect()
    }
}

impl Guider {
    fn lower(&self, step: usize, num_steps: usize, sigma: Option<f64>) -> PyResult<StepProgram> {
        if step >= num_steps {
            return Err(guidance(format!("step {step} is not below num_steps {num_steps}")));
        }
        let ctx = StepContext { step, num_steps, sigma, chunks: cfg_core::schedule::ChunkTimes::NONE };
        lower(&self.policy.loaded.policy, &ctx, &self.state, &self.overrides).map_err(|e| match e {
            // Their messages already name the step.
            CoreError::SigmaRequired { .. } | CoreError::WeightOutOfRange { .. } => guidance(e.to_string()),
            _ => guidance(format!("step {step}: {e}")),
        })
    }

    /// The outputs to write, checked, with their programs (in policy order).
    /// A subset of the outputs may be given (one diffusers guider per output).
    fn outputs_of<'p>(
        &self,
        program: &'p StepProgram,
        importer: &mut Importer,
        outputs: &[Output<'_>],
    ) -> PyResult<Vec<(&'p Program, Checked)>> {
        for (name, _) in outputs {
            if !program.outputs.iter().any(|p| p.output == *name) {
                return Err(guidance(format!(
                    "output `{name}`: policy `{}` has no such output (it has: {})",
                    self.policy.loaded.policy.name,
                    names(program)
                )));
            }
        }
        if outputs.is_empty() {
            return Err(guidance(format!("no output tensor given (policy outputs: {})", names(program))));
        }
        let mut out = Vec::new();
        for p in &program.outputs {
            if let Some((n, d)) = outputs.iter().find(|(n, _)| *n == p.output) {
                out.push((p, importer.import(d, &format!("output `{n}`"))?));
            }
        }
        Ok(out)
    }
}

/// The tensors that receive outputs' `renoise` predictions, with the
/// programs that compute them.
fn renoise_outputs<'p>(
    program: &'p StepProgram,
    importer: &mut Importer,
    renoise: &[Output<'_>],
) -> PyResult<Vec<(&'p Program, Checked)>> {
    let mut out = Vec::with_capacity(renoise.len());
    for (name, tensor) in renoise {
        let Some(i) = program.outputs.iter().position(|p| p.output == *name) else {
            return Err(guidance(format!(
                "renoise `{name}`: the policy has no such output (it has: {})",
                names(program)
            )));
        };
        if out.iter().any(|(p, _): &(&Program, Checked)| p.output == *name) {
            return Err(guidance(format!("renoise `{name}`: given twice")));
        }
        let Some(p) = &program.renoise[i] else {
            return Err(guidance(format!(
                "output `{name}` declares no `renoise` prediction (outputs that do: {})",
                with_renoise(program)
            )));
        };
        out.push((p, importer.import(tensor, &format!("renoise `{name}`"))?));
    }
    Ok(out)
}

fn with_renoise(program: &StepProgram) -> String {
    let named: Vec<&str> = program
        .outputs
        .iter()
        .zip(&program.renoise)
        .filter(|(_, r)| r.is_some())
        .map(|(p, _)| p.output.as_str())
        .collect();
    if named.is_empty() {
        "none".to_string()
    } else {
        named.join(", ")
    }
}

fn names(program: &StepProgram) -> String {
    program.outputs.iter().map(|p| p.output.as_str()).collect::<Vec<_>>().join(", ")
}

fn missing(step: usize, program: &Program, branch: &str, inputs: &Inputs) -> PyErr {
    let mut given: Vec<String> =
        inputs.0.iter().filter(|(_, o, _)| *o == program.output).map(|(b, _, _)| format!("`{b}`")).collect();
    given.sort();
    let given = if given.is_empty() { "none".to_string() } else { given.join(", ") };
    guidance(format!(
        "step {step}, output `{}`: branch `{branch}` is needed at this step but no prediction was given for it \
         (given: {given}; needed: {})",
        program.output,
        program.branches.iter().map(|b| format!("`{b}`")).collect::<Vec<_>>().join(", ")
    ))
}

#[pymethods]
impl Guider {
    /// A guider for `policy`, as rank `rank` of `world_size`, in `mode`
    /// (`"deterministic"`: gather; `"fast"`: all-reduce where it moves fewer bytes).
    #[new]
    #[pyo3(signature = (policy, world_size = 1, rank = 0, mode = "deterministic"))]
    fn new(policy: &Policy, world_size: usize, rank: usize, mode: &str) -> PyResult<Guider> {
        if world_size == 0 || rank >= world_size {
            return Err(guidance(format!("rank {rank} of world size {world_size}: expected 0 <= rank < world_size")));
        }
        let mode = mode_of(mode)?;
        let (policy, overrides, state) = (policy.clone(), Overrides::none(), GuidanceState::new());
        Ok(Guider { policy, overrides, state, world: world_size, rank, mode })
    }

    /// Starts a sampling run: resets every stateful operator (APG momentum,
    /// zero-init counters, adaptive-guidance latches).
    fn start(&mut self) {
        self.state.start();
    }

    /// The policy.
    #[getter]
    fn policy(&self) -> Policy {
        self.policy.clone()
    }

    /// This rank.
    #[getter]
    fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    #[getter]
    fn world_size(&self) -> usize {
        self.world
    }

    /// `"deterministic"` or `"fast"`.
    #[getter]
    fn mode(&self) -> &'static str {
        match self.mode {
            Mode::Deterministic => "deterministic",
            Mode::Fast => "fast",
        }
    }

    /// The operator state, `(slot, value)` pairs (for inspection).
    fn state(&self) -> Vec<(String, String)> {
        self.state.summary()
    }

    /// Per output (policy order), the branches its program reads at this step.
    #[pyo3(signature = (step, num_steps, sigma = None))]
    fn needed(&self, step: usize, num_steps: usize, sigma: Option<f64>) -> PyResult<Vec<(String, Vec<String>)>> {
        let program = self.lower(step, num_steps, sigma)?;
        Ok(program.outputs.iter().map(|p| (p.output.clone(), p.branches.clone())).collect())
    }

    /// The plan of this step: `outputs` gives `(name, shape, dtype)` of each
    /// output's predictions. Changes no state.
    #[pyo3(signature = (step, num_steps, sigma, outputs))]
    fn plan(
        &self,
        step: usize,
        num_steps: usize,
        sigma: Option<f64>,
        outputs: Vec<(String, Vec<usize>, String)>,
    ) -> PyResult<StepPlan> {
        let program = self.lower(step, num_steps, sigma)?;
        let mut infos = Vec::with_capacity(program.outputs.len());
        for p in &program.outputs {
            let Some((_, shape, dtype)) = outputs.iter().find(|(n, _, _)| *n == p.output) else {
                return Err(guidance(format!("output `{}`: no shape given to plan with", p.output)));
            };
            let dtype: DType = dtype.parse().map_err(guidance)?;
            infos.push((p.output.clone(), shape.clone(), dtype));
        }
        let model = OutputShapes::new(infos);
        let policy = &self.policy.loaded.policy;
        let plan = plan_step(policy, &program, &model.infos, &model, self.world, self.mode);
        Ok(StepPlan::from_plan(step, &plan, Some(&program)))
    }

    /// Runs the step: reads every needed `(branch, output)` prediction in
    /// place and writes each output. Operator state advances. CUDA tensors
    /// are combined on their device, ordered on `stream` (a raw CUDA stream
    /// handle; torch's current stream). `renoise` names tensors that receive
    /// the re-noising prediction of outputs that declare one (CFG++).
    #[pyo3(signature = (step, num_steps, sigma, inputs, outputs, stream = None, renoise = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn combine<'py>(
        &mut self,
        py: Python<'py>,
        step: usize,
        num_steps: usize,
        sigma: Option<f64>,
        inputs: Vec<Input<'py>>,
        outputs: Vec<Output<'py>>,
        stream: Option<usize>,
        renoise: Vec<Output<'py>>,
    ) -> PyResult<()> {
        let program = self.lower(step, num_steps, sigma)?;
        let mut importer = Importer::new(stream);
        let inputs = Inputs::new(&mut importer, &inputs)?;
        let mut outs = self.outputs_of(&program, &mut importer, &outputs)?;
        let guided = outs.len();
        outs.extend(renoise_outputs(&program, &mut importer, &renoise)?);
        let what = |i: usize| if i < guided { "output" } else { "renoise" };
        let named_outs: Vec<(String, &Checked)> =
            outs.iter().enumerate().map(|(i, (p, c))| (format!("{} `{}`", what(i), p.output), c)).collect();
        check_disjoint(&named_outs, &inputs.named())?;
        // Everything is checked before anything runs, so a refused step leaves the state as it was.
        let mut jobs = Vec::with_capacity(outs.len());
        for (p, out) in &outs {
            let mut needed = Vec::with_capacity(p.branches.len());
            for b in &p.branches {
                needed.push(inputs.get(b, &p.output).ok_or_else(|| missing(step, p, b, &inputs))?);
            }
            check_like(p, &needed, out).map_err(|e| guidance(format!("step {step}, output `{}`: {e}", p.output)))?;
            jobs.push(cuda::Job { program: p, inputs: needed, out });
        }
        let used = jobs.iter().flat_map(|j| j.inputs.iter().map(|c| ("a prediction".to_string(), *c)));
        let place = cuda::place_of(named_outs.iter().map(|(n, c)| (n.clone(), *c)).chain(used))?;
        let stream = importer.stream();
        let state = &mut self.state;
        let run = |state: &mut GuidanceState| match place {
            Place::Cpu => {
                for job in &jobs {
                    // SAFETY: host memory (checked), kept alive by the importer; outputs overlap nothing.
                    let views: Vec<TensorView<'_>> = job.inputs.iter().map(|c| unsafe { c.view() }).collect();
                    let mut view = unsafe { job.out.view_mut() };
                    evaluate_view(job.program, &views, &job.out.shape, state, &mut view)
                        .map_err(|e| format!("output `{}`: {e}", job.program.output))?;
                }
                Ok(())
            }
            Place::Cuda(ordinal) => {
                let dev = cuda::device(ordinal)?;
                cuda::combine(&dev, stream, &jobs, state)
            }
        };
        py.detach(|| run(state)).map_err(|e| guidance(format!("step {step}, {e}")))
    }

    /// f32 values in this step's reduced buffer: every linear form of every
    /// output, outputs in policy order. `shapes` gives `(name, shape)` per output.
    #[pyo3(signature = (step, num_steps, sigma, shapes))]
    fn forms_len(
        &self,
        step: usize,
        num_steps: usize,
        sigma: Option<f64>,
        shapes: Vec<(String, Vec<usize>)>,
    ) -> PyResult<usize> {
        let program = self.lower(step, num_steps, sigma)?;
        Ok(layout(&program, &shapes)?.iter().map(|(n, forms)| n * forms).sum())
    }

    /// Writes this rank's weighted f32 partial sums of every linear form
    /// (from its local predictions only; absent branches count as zero) into
    /// `forms`, which has `forms_len` float32 values. Changes no state.
    #[pyo3(signature = (step, num_steps, sigma, inputs, shapes, forms, stream = None))]
    #[allow(clippy::too_many_arguments)]
    fn partial_forms<'py>(
        &self,
        py: Python<'py>,
        step: usize,
        num_steps: usize,
        sigma: Option<f64>,
        inputs: Vec<Input<'py>>,
        shapes: Vec<(String, Vec<usize>)>,
        forms: Bound<'py, PyAny>,
        stream: Option<usize>,
    ) -> PyResult<()> {
        let program = self.lower(step, num_steps, sigma)?;
        let sizes = layout(&program, &shapes)?;
        let total = sizes.iter().map(|(n, f)| n * f).sum();
        let mut importer = Importer::new(stream);
        let inputs = Inputs::new(&mut importer, &inputs)?;
        let buf = f32_buffer(&mut importer, &forms, total, "the forms buffer")?;
        check_disjoint(&[("the forms buffer".to_string(), &buf)], &inputs.named())?;
        let mut jobs = Vec::new();
        for (p, &(n, _)) in program.outputs.iter().zip(&sizes) {
            let mut local: Vec<Option<&Checked>> = Vec::with_capacity(p.branches.len());
            let mut dtype = None;
            for b in &p.branches {
                let c = inputs.get(b, &p.output);
                if let Some(c) = c {
                    if c.shape.numel() != n || dtype.is_some_and(|d| d != c.dtype) {
                        return Err(guidance(format!(
                            "step {step}, output `{}`: branch `{b}` is {} {}, expected {n} elements in the dtype of \
                             the other local predictions",
                            p.output, c.shape, c.dtype
                        )));
                    }
                    dtype = Some(c.dtype);
                }
                local.push(c);
            }
            jobs.push((p, n, local));
        }
        let used = jobs.iter().flat_map(|(_, _, l)| l.iter().flatten().map(|c| ("a prediction".to_string(), *c)));
        let place = cuda::place_of(std::iter::once(("the forms buffer".to_string(), &buf)).chain(used))?;
        let stream = importer.stream();
        let run = || match place {
            Place::Cpu => {
                // SAFETY: host memory (checked), kept alive by the importer; the buffer overlaps no input.
                let mut view = unsafe { buf.view_mut() };
                let ElementsMut::F32(all) = &mut view.data else { unreachable!("checked to be f32") };
                let mut rest: &mut [f32] = all;
                for (p, n, local) in &jobs {
                    // SAFETY: as above.
                    let local: Vec<Option<Elements<'_>>> =
                        local.iter().map(|c| c.map(|c| unsafe { c.view() }.data)).collect();
                    for form in &p.forms {
                        let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(*n);
                        rest = tail;
                        partial_form(form, &local, chunk);
                    }
                }
                Ok(())
            }
            Place::Cuda(ordinal) => {
                let dev = cuda::device(ordinal)?;
                cuda::partial_forms(&dev, stream, &jobs, &buf)
            }
        };
        py.detach(run).map_err(|e| guidance(format!("step {step}: {e}")))
    }

    /// Finishes an all-reduce step from the summed forms (`forms_len` f32
    /// values, identical on every rank): the non-linear ops run and every
    /// output is written. Operator state advances.
    #[pyo3(signature = (step, num_steps, sigma, forms, outputs, stream = None))]
    #[allow(clippy::too_many_arguments)]
    fn finish<'py>(
        &mut self,
        py: Python<'py>,
        step: usize,
        num_steps: usize,
        sigma: Option<f64>,
        forms: Bound<'py, PyAny>,
        outputs: Vec<Output<'py>>,
        stream: Option<usize>,
    ) -> PyResult<()> {
        let program = self.lower(step, num_steps, sigma)?;
        let mut importer = Importer::new(stream);
        let outs = self.outputs_of(&program, &mut importer, &outputs)?;
        if outs.len() != program.outputs.len() {
            return Err(guidance(format!("finish writes every output: give tensors for {}", names(&program))));
        }
        let shapes: Vec<(String, Vec<usize>)> =
            outs.iter().map(|(p, c)| (p.output.clone(), c.shape.dims().to_vec())).collect();
        let sizes = layout(&program, &shapes)?;
        let total = sizes.iter().map(|(n, f)| n * f).sum();
        let buf = f32_buffer(&mut importer, &forms, total, "the reduced forms")?;
        let named_outs: Vec<(String, &Checked)> =
            outs.iter().map(|(p, c)| (format!("output `{}`", p.output), c)).collect();
        check_disjoint(&named_outs, &[("the reduced forms".to_string(), &buf)])?;
        for (p, out) in &outs {
            p.check_shape(&out.shape).map_err(|e| guidance(format!("step {step}, output `{}`: {e}", p.output)))?;
        }
        let place = cuda::place_of(std::iter::once(("the reduced forms".to_string(), &buf)).chain(named_outs))?;
        let stream = importer.stream();
        let state = &mut self.state;
        let run = |state: &mut GuidanceState| match place {
            Place::Cpu => {
                // SAFETY: host memory (checked), kept alive by the importer; no output overlaps it.
                let Elements::F32(all) = unsafe { buf.view() }.data else { unreachable!("checked to be f32") };
                let mut at = 0;
                for ((p, out), (n, count)) in outs.iter().zip(&sizes) {
                    let forms = &all[at..at + n * count];
                    at += n * count;
                    // SAFETY: as above.
                    let mut view = unsafe { out.view_mut() };
                    finish_output(p, forms, &out.shape, state, &mut view.data)
                        .map_err(|e| format!("output `{}`: {e}", p.output))?;
                }
                Ok(())
            }
            Place::Cuda(ordinal) => {
                let dev = cuda::device(ordinal)?;
                let programs: Vec<(&Program, &Checked)> = outs.iter().map(|(p, c)| (*p, c)).collect();
                cuda::finish(&dev, stream, &programs, &buf, state)
            }
        };
        py.detach(|| run(state)).map_err(|e| guidance(format!("step {step}, {e}")))
    }

    fn __repr__(&self) -> String {
        format!("Guider({:?}, rank {} of {}, {})", self.policy.loaded.policy.name, self.rank, self.world, self.mode())
    }
}

/// Every prediction of `p` has the output's shape and dtype, and the shape suits `p`'s ops.
fn check_like(p: &Program, inputs: &[&Checked], out: &Checked) -> Result<(), CoreError> {
    for (name, t) in p.branches.iter().zip(inputs) {
        if t.shape != out.shape || t.dtype != out.dtype {
            return Err(CoreError::Mismatch {
                branch: name.clone(),
                expected: out.shape.to_string(),
                expected_dtype: out.dtype.to_string(),
                got: t.shape.to_string(),
                got_dtype: t.dtype.to_string(),
            });
        }
    }
    p.check_shape(&out.shape)
}

/// Per output (program order): `(elements, number of forms)`.
fn layout(program: &StepProgram, shapes: &[(String, Vec<usize>)]) -> PyResult<Vec<(usize, usize)>> {
    program
        .outputs
        .iter()
        .map(|p| match shapes.iter().find(|(n, _)| *n == p.output) {
            Some((_, s)) => Ok((Shape::new(s.clone()).numel(), p.forms.len())),
            None => Err(guidance(format!("output `{}`: no shape given", p.output))),
        })
        .collect()
}

/// `out = Σ w·x` over the local terms of `form`, in form order, with fma in
/// f32 (zeros when none is local): the CPU backend's partial form.
fn partial_form(form: &cfg_core::program::Form, local: &[Option<Elements<'_>>], out: &mut [f32]) {
    macro_rules! go {
        ($variant:ident) => {{
            let terms: Vec<_> = form
                .terms
                .iter()
                .filter_map(|&(b, w)| match local[b] {
                    Some(Elements::$variant(v)) => Some((v, w)),
                    _ => None,
                })
                .collect();
            if terms.is_empty() {
                out.fill(0.0);
            } else {
                combine_into(&terms, out);
            }
        }};
    }
    match form.terms.iter().find_map(|&(b, _)| local[b].map(|e| e.dtype())) {
        Some(DType::F16) => go!(F16),
        Some(DType::BF16) => go!(BF16),
        _ => go!(F32),
    }
}

/// One output from its reduced forms, as the CPU backend's `evaluate_forms`:
/// a linear result is rounded; otherwise the ops run on the forms in f32 and
/// the result is rounded.
fn finish_output(
    program: &Program,
    forms: &[f32],
    shape: &Shape,
    state: &mut GuidanceState,
    out: &mut ElementsMut<'_>,
) -> Result<(), CoreError> {
    let n = shape.numel();
    if let (true, Value::Form(i)) = (program.is_linear(), program.result) {
        for slot in &program.counters {
            state.advance(slot);
        }
        round_into_view(&forms[i * n..(i + 1) * n], out);
        return Ok(());
    }
    let identity = identity_forms(program);
    let views: Vec<TensorView<'_>> = (0..program.forms.len())
        .map(|i| TensorView { shape: shape.clone(), data: Elements::F32(&forms[i * n..(i + 1) * n]) })
        .collect();
    let mut f32_out = Tensor::zeros(DType::F32, shape.clone());
    evaluate_view(&identity, &views, shape, state, &mut f32_out.view_mut())?;
    let values = f32_out.data.as_f32().unwrap_or(&[]);
    round_into_view(values, out);
    Ok(())
}
