//! The package's exceptions, and the Rust errors they carry.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    _native,
    PolicyError,
    PyValueError,
    "A policy that cannot be loaded: the message is `file:line:col: what is wrong`; \
     the attributes `origin`, `line` and `col` hold the position (None when the file could not be read)."
);
create_exception!(
    _native,
    GuidanceError,
    PyValueError,
    "A guidance step that cannot run: a missing branch, tensors that disagree in shape or dtype, \
     an unsupported dtype or device, a non-contiguous tensor, a bad reduced buffer."
);

/// A [`PolicyError`] from the loader's error, with its position as attributes.
pub fn policy_error(py: Python<'_>, e: &cfg_policies::LoadError) -> PyErr {
    let err = PolicyError::new_err(e.to_string());
    let (origin, line, col) = match e {
        cfg_policies::LoadError::Policy(p) => (Some(p.origin.clone()), Some(p.line), Some(p.col)),
        _ => (None, None, None),
    };
    let value = err.value(py);
    // Setting attributes on a fresh exception instance cannot fail in practice;
    // if it did, the message alone still carries the position.
    let _ = value.setattr("origin", origin);
    let _ = value.setattr("line", line);
    let _ = value.setattr("col", col);
    err
}

/// A [`GuidanceError`] with `message`.
pub fn guidance(message: impl Into<String>) -> PyErr {
    GuidanceError::new_err(message.into())
}
