//! Reading and writing prediction tensors as safetensors files.
//!
//! Only f32, f16 and bf16 tensors are read, and only when asked for by name, so
//! a file may carry other tensors (timesteps, latents) that are never touched.

use crate::error::CliError;
use cfg_core::{DType, Shape, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Reads the whole file, naming the path in any error.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, CliError> {
    if path.is_dir() {
        return Err(CliError(format!("{}: is a directory, expected a .safetensors file", path.display())));
    }
    std::fs::read(path).map_err(|e| CliError(format!("{}: cannot read: {e}", path.display())))
}

/// Parses the safetensors header of `bytes`.
pub fn open<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, CliError> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| CliError(format!("{}: not a valid safetensors file: {e}", path.display())))
}

/// The free-form string metadata of the file (`__metadata__`).
pub fn metadata(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>, CliError> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| CliError(format!("{}: not a valid safetensors file: {e}", path.display())))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// The dtype of ours that a safetensors dtype maps to.
pub fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

fn safetensors_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    }
}

/// The tensor `name`, or `None` when the file has no such tensor.
pub fn load(file: &SafeTensors<'_>, name: &str) -> Result<Option<Tensor>, CliError> {
    let Ok(view) = file.tensor(name) else {
        return Ok(None);
    };
    let dtype = dtype_of(view.dtype())
        .ok_or_else(|| CliError(format!("tensor `{name}` has dtype {:?}: expected F32, F16 or BF16", view.dtype())))?;
    let shape = Shape::new(view.shape());
    let tensor = Tensor::from_bytes(dtype, shape, view.data())
        .ok_or_else(|| CliError(format!("tensor `{name}`: its byte count does not match its shape")))?;
    Ok(Some(tensor))
}

/// Serializes `tensors` with `metadata` into bytes.
pub fn to_bytes(tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>, CliError> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors_dtype(t.dtype()), t.shape.0.to_vec(), t.as_bytes())
                    .map_err(|e| CliError(format!("tensor `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| CliError(format!("cannot serialize the output: {e}")))
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// renamed into place at the end, so a failure never leaves a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = |what: &str, e: std::io::Error| CliError(format!("{}: cannot {what}: {e}", path.display()));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cfg-combine-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| fail("create a temporary file beside it", e))?;
    tmp.write_all(bytes).map_err(|e| fail("write", e))?;
    tmp.as_file().sync_all().map_err(|e| fail("write", e))?;
    // On failure the temporary file is deleted when `tmp` drops.
    tmp.persist(path).map_err(|e| fail("rename the temporary file into place", e.error))?;
    Ok(())
}
