//! Tensors handed over from Python as raw descriptors, read and written in
//! place.
//!
//! The Python half describes each torch tensor or NumPy array by its data
//! address, dtype name, shape, byte strides and device, and keeps the object
//! alive for the whole call. Everything that can be checked here is:
//! dtype, device, row-major contiguity, alignment, and that an output
//! overlaps no other tensor of the call. What cannot be checked (that the
//! address really holds that many elements) is the Python half's contract.

use crate::errors::guidance;
use cfg_core::view::{Elements, ElementsMut, TensorView, TensorViewMut};
use cfg_core::{DType, Shape};
use half::{bf16, f16};
use pyo3::prelude::*;

/// `(address, dtype, shape, byte strides, device)` of one tensor.
#[derive(Debug, Clone, FromPyObject)]
pub struct Desc(pub usize, pub String, pub Vec<usize>, pub Vec<isize>, pub String);

/// A checked descriptor: CPU memory, a supported dtype, row-major contiguous.
#[derive(Debug, Clone)]
pub struct Checked {
    addr: usize,
    /// The element type.
    pub dtype: DType,
    /// The shape.
    pub shape: Shape,
}

impl Checked {
    /// Checks `d`; `what` names the tensor in messages (`branch \`cond\``).
    pub fn new(d: &Desc, what: &str) -> PyResult<Checked> {
        let Desc(addr, dtype, shape, strides, device) = d;
        if device != "cpu" {
            return Err(guidance(format!(
                "{what}: the tensor is on `{device}`, but this build of cfg_guidance combines CPU tensors only \
                 (the CUDA kernels are not wired into the Python package yet); move it with `.cpu()`"
            )));
        }
        let dtype = match dtype.as_str() {
            "float32" => DType::F32,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            other => {
                return Err(guidance(format!(
                    "{what}: dtype {other} is not supported: expected float32, float16 or bfloat16"
                )))
            }
        };
        if strides.len() != shape.len() {
            return Err(guidance(format!("{what}: {} strides for {} dimensions", strides.len(), shape.len())));
        }
        let mut expected = dtype.size() as isize;
        for (&n, &s) in shape.iter().zip(strides).rev() {
            // A dimension of size 1 is never stepped over, whatever its stride.
            if n > 1 && s != expected {
                return Err(guidance(format!(
                    "{what}: the tensor is not contiguous (shape {shape:?}, byte strides {strides:?}); \
                     pass a row-major contiguous tensor (`.contiguous()`, `np.ascontiguousarray`)"
                )));
            }
            expected = expected.saturating_mul(n as isize);
        }
        let shape = Shape::new(shape.clone());
        if shape.numel() > 0 && (*addr == 0 || addr % dtype.size() != 0) {
            return Err(guidance(format!("{what}: data address {addr:#x} is not aligned for {dtype}")));
        }
        Ok(Checked { addr: *addr, dtype, shape })
    }

    /// The byte range it occupies.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.addr..self.addr + self.shape.numel() * self.dtype.size()
    }

    /// Borrows the elements for reading.
    ///
    /// # Safety
    /// The memory described must hold `shape.numel()` elements of `dtype`,
    /// stay alive and not be written by anyone else for `'a`.
    pub unsafe fn view<'a>(&self) -> TensorView<'a> {
        let n = self.shape.numel();
        // SAFETY: the caller's contract; a zero-length slice needs only a non-null aligned pointer.
        let data = unsafe {
            match self.dtype {
                DType::F32 => Elements::F32(std::slice::from_raw_parts(self.ptr::<f32>(), n)),
                DType::F16 => Elements::F16(std::slice::from_raw_parts(self.ptr::<f16>(), n)),
                DType::BF16 => Elements::BF16(std::slice::from_raw_parts(self.ptr::<bf16>(), n)),
            }
        };
        TensorView { shape: self.shape.clone(), data }
    }

    /// Borrows the elements for writing.
    ///
    /// # Safety
    /// As [`Checked::view`], and nothing else may read or write the memory for `'a`.
    pub unsafe fn view_mut<'a>(&self) -> TensorViewMut<'a> {
        let n = self.shape.numel();
        // SAFETY: the caller's contract.
        let data = unsafe {
            match self.dtype {
                DType::F32 => ElementsMut::F32(std::slice::from_raw_parts_mut(self.ptr::<f32>() as *mut f32, n)),
                DType::F16 => ElementsMut::F16(std::slice::from_raw_parts_mut(self.ptr::<f16>() as *mut f16, n)),
                DType::BF16 => ElementsMut::BF16(std::slice::from_raw_parts_mut(self.ptr::<bf16>() as *mut bf16, n)),
            }
        };
        TensorViewMut { shape: self.shape.clone(), data }
    }

    /// The address as a pointer (dangling but aligned when empty).
    fn ptr<T>(&self) -> *const T {
        if self.shape.numel() == 0 {
            std::ptr::NonNull::<T>::dangling().as_ptr()
        } else {
            self.addr as *const T
        }
    }
}

/// Refuses outputs that overlap each other or any input: they are written
/// while the inputs are read.
pub fn check_disjoint(outputs: &[(String, &Checked)], inputs: &[(String, &Checked)]) -> PyResult<()> {
    for (i, (name, out)) in outputs.iter().enumerate() {
        let o = out.range();
        let others = outputs.iter().skip(i + 1).chain(inputs);
        for (other, t) in others {
            let r = t.range();
            if !o.is_empty() && !r.is_empty() && o.start < r.end && r.start < o.end {
                return Err(guidance(format!(
                    "{name} shares memory with {other}: the output must be a tensor of its own"
                )));
            }
        }
    }
    Ok(())
}

/// A checked f32 buffer of `len` elements at `addr` (the reduced forms).
pub fn f32_buffer(d: &Desc, len: usize, what: &str) -> PyResult<Checked> {
    let c = Checked::new(d, what)?;
    if c.dtype != DType::F32 || c.shape.numel() != len {
        return Err(guidance(format!(
            "{what}: expected {len} float32 values, got {} {} (allocate it with the size `forms_len` gives)",
            c.shape.numel(),
            c.dtype
        )));
    }
    Ok(c)
}
