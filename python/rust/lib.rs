//! `cfg_guidance._native`: the compiled half of the `cfg_guidance` Python
//! package. Tensors arrive through DLPack (torch, NumPy, any producer) and
//! are read and written in place, on the CPU or, for CUDA tensors, by the
//! project's kernels on their device. The Python half allocates outputs and
//! runs collectives; everything about policies, plans and arithmetic is the
//! Rust workspace's own code, reached from here.
#![deny(missing_docs)]
#![warn(clippy::all)]

mod buffers;
mod cuda;
mod errors;
mod guider;
mod plan;
mod policy;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Shown as `cfg_guidance.PolicyError`, where users import them from.
    let policy_error = py.get_type::<errors::PolicyError>();
    policy_error.setattr("__module__", "cfg_guidance")?;
    m.add("PolicyError", policy_error)?;
    let guidance_error = py.get_type::<errors::GuidanceError>();
    guidance_error.setattr("__module__", "cfg_guidance")?;
    m.add("GuidanceError", guidance_error)?;
    m.add_class::<policy::Policy>()?;
    m.add_class::<plan::StepPlan>()?;
    m.add_class::<guider::Guider>()?;
    m.add_function(wrap_pyfunction!(policy::list_policies, m)?)?;
    m.add_function(wrap_pyfunction!(policy::check, m)?)?;
    Ok(())
}
