//! Policies from Python: load by path or library name, check, list, graph,
//! parameters, and the plan of a whole run.

use crate::errors::policy_error;
use crate::plan::{mode_of, OutputShapes, StepPlan};
use cfg_core::branch::{Modifier, Prompt};
use cfg_core::expr::Space;
use cfg_policies::Loaded;
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;

/// A loaded, validated policy.
#[pyclass(module = "cfg_guidance._native", frozen)]
#[derive(Debug, Clone)]
pub struct Policy {
    pub loaded: Loaded,
}

#[pymethods]
impl Policy {
    /// Loads a policy: a path (with a `/` or ending in `.ron`) or a library name.
    #[staticmethod]
    fn load(py: Python<'_>, policy: &str) -> PyResult<Policy> {
        cfg_policies::resolve(policy).map(|loaded| Policy { loaded }).map_err(|e| policy_error(py, &e))
    }

    /// Parses policy text; `origin` names it in error messages.
    #[staticmethod]
    #[pyo3(signature = (text, origin = "<text>"))]
    fn from_text(py: Python<'_>, text: &str, origin: &str) -> PyResult<Policy> {
        cfg_policies::parse(text, origin)
            .map(|loaded| Policy { loaded })
            .map_err(|e| policy_error(py, &cfg_policies::LoadError::Policy(e)))
    }

    /// A copy with numeric parameters replaced, by their `--set` paths
    /// (`scale`, `Apg.momentum`, `ZeroStar.zero_init_steps`...).
    fn with_params(&self, params: HashMap<String, f64>) -> PyResult<Policy> {
        let mut sets: Vec<(String, f64)> = params.into_iter().collect();
        sets.sort_by(|a, b| a.0.cmp(&b.0));
        cfg_policies::params::apply(&self.loaded, &sets)
            .map(|loaded| Policy { loaded })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Every numeric parameter: `--set` path → value (None for a schedule or an absent field).
    fn params(&self) -> Vec<(String, Option<f64>)> {
        cfg_policies::params::parameters(&self.loaded.policy).into_iter().map(|p| (p.path, p.value)).collect()
    }

    /// The policy's name.
    #[getter]
    fn name(&self) -> String {
        self.loaded.policy.name.clone()
    }

    /// Its one-line summary.
    #[getter]
    fn summary(&self) -> String {
        self.loaded.policy.summary.clone()
    }

    /// Where it was loaded from: a path, or `builtin:NAME`.
    #[getter]
    fn origin(&self) -> String {
        self.loaded.origin.clone()
    }

    /// The RON text.
    #[getter]
    fn text(&self) -> String {
        self.loaded.source.clone()
    }

    /// The number of steps its source samples with, if it says.
    #[getter]
    fn steps(&self) -> Option<usize> {
        self.loaded.policy.steps
    }

    /// The branches, in declaration order.
    #[getter]
    fn branches(&self) -> Vec<String> {
        self.loaded.policy.branches.names().map(String::from).collect()
    }

    /// Per branch: its prompt (`positive`, `negative`, `empty`), model modifier and cost.
    fn branch_specs(&self) -> Vec<(String, String, String, f64)> {
        self.loaded
            .policy
            .branches
            .iter()
            .map(|(name, s)| (name.to_string(), prompt_name(s.prompt).to_string(), format!("{:?}", s.modify), s.cost))
            .collect()
    }

    /// How branch `name` modifies the model: `(kind, params)`, the kind as
    /// in the policy file (`None`, `SkipLayers`, `SkipSelfAttention`,
    /// `IdentityAttention`, `BlurQueries`, `IsolateModality`, `Model`,
    /// `DropReference`, `Nag`) and its parameters (`layers`, `sigma`, `name`;
    /// NAG's `negative`, `scale`, `tau`, `alpha`, `sigma_end`, `extra_cost`).
    fn modifier<'py>(&self, py: Python<'py>, name: &str) -> PyResult<(String, Bound<'py, PyDict>)> {
        let Some(spec) = self.loaded.policy.branches.get(name) else {
            return Err(PyValueError::new_err(format!(
                "branch `{name}`: policy `{}` has no such branch",
                self.loaded.policy.name
            )));
        };
        let params = PyDict::new(py);
        let kind = match &spec.modify {
            Modifier::None => "None",
            Modifier::SkipLayers(l) | Modifier::SkipSelfAttention(l) | Modifier::IdentityAttention(l) => {
                params.set_item("layers", l.clone())?;
                spec.modify.layers().map_or("None", |(kind, _)| kind)
            }
            Modifier::BlurQueries { layers, sigma } => {
                params.set_item("layers", layers.clone())?;
                params.set_item("sigma", *sigma)?;
                "BlurQueries"
            }
            Modifier::IsolateModality => "IsolateModality",
            Modifier::Model(m) => {
                params.set_item("name", m)?;
                "Model"
            }
            Modifier::DropReference(r) => {
                params.set_item("name", r)?;
                "DropReference"
            }
            Modifier::Nag { negative, scale, tau, alpha, sigma_end, extra_cost } => {
                params.set_item("negative", prompt_name(*negative))?;
                params.set_item("scale", *scale)?;
                params.set_item("tau", *tau)?;
                params.set_item("alpha", *alpha)?;
                params.set_item("sigma_end", *sigma_end)?;
                params.set_item("extra_cost", *extra_cost)?;
                "Nag"
            }
        };
        Ok((kind.to_string(), params))
    }

    /// The outputs, in declaration order.
    #[getter]
    fn outputs(&self) -> Vec<String> {
        self.loaded.policy.outputs.names().map(String::from).collect()
    }

    /// The outputs that declare a `renoise` prediction (CFG++), in declaration order.
    #[getter]
    fn renoise_outputs(&self) -> Vec<String> {
        self.loaded.policy.outputs.iter().filter(|(_, o)| o.renoise.is_some()).map(|(n, _)| n.to_string()).collect()
    }

    /// Per output, its working space (`eps`, `v`, `x0`).
    fn spaces(&self) -> Vec<(String, String)> {
        let name = |s: Space| format!("{s:?}").to_lowercase();
        self.loaded.policy.outputs.iter().map(|(n, o)| (n.to_string(), name(o.space))).collect()
    }

    /// The declared scales.
    #[getter]
    fn scales(&self) -> Vec<String> {
        self.loaded.policy.scales.names().map(String::from).collect()
    }

    /// Non-fatal findings, `file:line:col: warning: ...`.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.loaded.warnings.iter().map(|w| w.to_string()).collect()
    }

    /// The branch graph: `"dot"` (Graphviz) or `"text"`.
    #[pyo3(signature = (format = "dot"))]
    fn graph(&self, format: &str) -> PyResult<String> {
        let g = cfg_policies::graph::build(&self.loaded.policy);
        match format {
            "dot" => Ok(g.to_dot(&self.loaded.policy.name)),
            "text" => Ok(g.to_text()),
            _ => Err(PyValueError::new_err(format!("graph format `{format}`: expected \"dot\" or \"text\""))),
        }
    }

    /// The plan of every step of a run over `world_size` ranks, without
    /// running anything. Sigmas default to the Euler flow schedule of
    /// `num_steps` steps; `shapes` maps outputs to prediction shapes (default
    /// `[1, 4096, 64]`); adaptive guidance is assumed never to latch.
    #[pyo3(signature = (world_size, num_steps = None, sigmas = None, shapes = None, dtype = "bfloat16", mode = "fast"))]
    fn plan(
        &self,
        world_size: usize,
        num_steps: Option<usize>,
        sigmas: Option<Vec<f64>>,
        shapes: Option<HashMap<String, Vec<usize>>>,
        dtype: &str,
        mode: &str,
    ) -> PyResult<Vec<StepPlan>> {
        if world_size == 0 {
            return Err(PyValueError::new_err("world_size must be at least 1"));
        }
        let policy = &self.loaded.policy;
        let mode = mode_of(mode)?;
        let dtype: cfg_core::DType = dtype.parse().map_err(PyValueError::new_err)?;
        let outputs = policy
            .outputs
            .names()
            .map(|n| {
                let shape = shapes.as_ref().and_then(|s| s.get(n).cloned()).unwrap_or_else(|| vec![1, 4096, 64]);
                (n.to_string(), shape, dtype)
            })
            .collect();
        let model = OutputShapes::new(outputs);
        let times: Vec<(f64, f64)> = match sigmas {
            Some(s) => s.iter().map(|&x| (x, x)).chain(std::iter::once((0.0, 0.0))).collect(),
            None => Sampler::new(SamplerKind::Euler).times(num_steps.or(policy.steps).unwrap_or(32)),
        };
        let plans = cfg_runtime::plan_run(
            policy,
            &cfg_core::lower::Overrides::none(),
            &model.infos,
            &model,
            world_size,
            mode,
            &times,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(plans.iter().enumerate().map(|(step, p)| StepPlan::from_plan(step, p, None)).collect())
    }

    fn __repr__(&self) -> String {
        format!("Policy({:?} from {})", self.loaded.policy.name, self.loaded.origin)
    }
}

/// The names of the built-in policies, sorted.
#[pyfunction]
pub fn list_policies() -> Vec<String> {
    cfg_policies::library::names().into_iter().map(String::from).collect()
}

/// Validates a policy (path or library name); returns its warnings, raises
/// `PolicyError` (`file:line:col: message`) when it is wrong.
#[pyfunction]
pub fn check(py: Python<'_>, policy: &str) -> PyResult<Vec<String>> {
    let loaded = cfg_policies::resolve(policy).map_err(|e| policy_error(py, &e))?;
    Ok(loaded.warnings.iter().map(|w| w.to_string()).collect())
}

/// A prompt as the Python side names it.
fn prompt_name(prompt: Prompt) -> &'static str {
    match prompt {
        Prompt::Positive => "positive",
        Prompt::Negative => "negative",
        Prompt::Empty => "empty",
    }
}
