//! Tensors handed over from Python through DLPack, read and written in place.
//!
//! Each torch tensor, NumPy array or other DLPack producer is imported as a
//! managed DLPack tensor, kept alive for the whole call. Everything that can
//! be checked is: device, dtype, row-major contiguity, alignment, and that
//! an output overlaps no other tensor of the call.

use crate::errors::guidance;
use cfg_core::view::{Elements, ElementsMut, TensorView, TensorViewMut};
use cfg_core::{DType, Shape};
use dlpark::ffi::{DLDataTypeCode, DLDevice, DLDeviceType};
use dlpark::python::consumer::exchange::ExchangeApi;
use dlpark::python::consumer::stream;
use dlpark::python::{from_dlpack, DlpackStream, ImportedDlpack, StreamArg};
use dlpark::tensor::TensorRef;
use half::{bf16, f16};
use pyo3::prelude::*;

/// Where a tensor's memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Host memory.
    Cpu,
    /// The memory of CUDA device `n`.
    Cuda(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Cpu => write!(f, "cpu"),
            Place::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Imports the tensors of one call and keeps them alive until it is dropped.
pub struct Importer {
    /// The raw CUDA stream the call's work is ordered on (0: the default stream).
    stream: usize,
    keep: Vec<ImportedDlpack>,
}

/// The consumer stream handed to a producer's `__dlpack__`: data written on
/// the producer's streams must be ready on it.
struct Consumer(usize);

// SAFETY: the handle is the caller's live stream (torch's current stream, or
// 0 for the legacy default one), in DLPack's CUDA stream convention.
unsafe impl DlpackStream for Consumer {
    fn as_python_arg(&self, _py: Python<'_>, device: DLDevice) -> PyResult<StreamArg> {
        Ok(match device.device_type {
            DLDeviceType::CUDA => stream::cuda(std::ptr::without_provenance_mut(self.0)),
            _ => stream::none(),
        })
    }
}

impl Importer {
    /// An importer for a call whose CUDA work runs ordered on `stream`.
    pub fn new(stream: Option<usize>) -> Importer {
        Importer { stream: stream.unwrap_or(0), keep: Vec::new() }
    }

    /// The raw CUDA stream of the call.
    pub fn stream(&self) -> usize {
        self.stream
    }

    /// Imports and checks `obj`; `what` names it in messages (`branch \`cond\``).
    pub fn import(&mut self, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Checked> {
        if !obj.hasattr("__dlpack__")? {
            return Err(guidance(format!(
                "{what}: expected a tensor (torch.Tensor, numpy.ndarray or another DLPack producer), got {}",
                obj.get_type().name()?
            )));
        }
        // A producer with the C exchange API's borrowed view (torch) is read
        // without a managed tensor: its object, alive for the call, owns the memory.
        if let Some(api) = ExchangeApi::from_object(obj.as_borrowed())? {
            // SAFETY: the view is valid for the closure; only its fields are read.
            let viewed =
                api.with_tensor_view_no_sync(obj.as_borrowed(), |t, _| match unsafe { TensorRef::from_raw(t) } {
                    Ok(t) => Checked::new(t, what),
                    Err(e) => Err(guidance(format!("{what}: an invalid DLPack tensor: {e}"))),
                });
            if let Ok(checked) = viewed {
                return checked;
            }
        }
        let imported = from_dlpack(obj.as_borrowed(), Some(&Consumer(self.stream)), None).map_err(|e| {
            // The producer's message, without the C++ backtrace torch appends.
            let e = e.to_string();
            guidance(format!("{what}: could not be read through DLPack: {}", e.lines().next().unwrap_or("")))
        })?;
        let t = imported.validate().map_err(|e| guidance(format!("{what}: an invalid DLPack tensor: {e}")))?;
        let checked = Checked::new(t, what)?;
        self.keep.push(imported);
        Ok(checked)
    }
}

/// A checked tensor: a supported device and dtype, row-major contiguous.
#[derive(Debug, Clone)]
pub struct Checked {
    addr: usize,
    /// The element type.
    pub dtype: DType,
    /// The shape.
    pub shape: Shape,
    /// Where its memory is.
    pub place: Place,
}

impl Checked {
    fn new(t: TensorRef<'_>, what: &str) -> PyResult<Checked> {
        let dev = t.device();
        let place = match dev.device_type {
            DLDeviceType::CPU => Place::Cpu,
            DLDeviceType::CUDA => Place::Cuda(dev.device_id.max(0) as usize),
            other => {
                return Err(guidance(format!(
                    "{what}: the tensor is on DLPack device type {}, expected CPU or CUDA memory",
                    other.0
                )))
            }
        };
        let dt = t.dtype();
        let dtype = match (dt.code, dt.bits, dt.lanes) {
            (DLDataTypeCode::FLOAT, 32, 1) => DType::F32,
            (DLDataTypeCode::FLOAT, 16, 1) => DType::F16,
            (DLDataTypeCode::BFLOAT, 16, 1) => DType::BF16,
            _ => {
                return Err(guidance(format!(
                    "{what}: dtype {} is not supported: expected float32, float16 or bfloat16",
                    dtype_name(dt.code, dt.bits, dt.lanes)
                )))
            }
        };
        let shape: Vec<usize> = t.shape().iter().map(|&d| d.max(0) as usize).collect();
        if let Some(strides) = t.strides() {
            let mut expected = 1i64;
            for (&n, &s) in shape.iter().zip(strides).rev() {
                // A dimension of size 1 is never stepped over, whatever its stride.
                if n > 1 && s != expected {
                    return Err(guidance(format!(
                        "{what}: the tensor is not contiguous (shape {shape:?}, element strides {strides:?}); \
                         pass a row-major contiguous tensor (`.contiguous()`, `np.ascontiguousarray`)"
                    )));
                }
                expected = expected.saturating_mul(n as i64);
            }
        }
        let addr = (t.data_ptr() as usize).wrapping_add(t.byte_offset() as usize);
        let shape = Shape::new(shape);
        if shape.numel() > 0 && (addr == 0 || !addr.is_multiple_of(dtype.size())) {
            return Err(guidance(format!("{what}: data address {addr:#x} is not aligned for {dtype}")));
        }
        Ok(Checked { addr, dtype, shape, place })
    }

    /// The address of the first element (host or device memory, by `place`).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// The byte range it occupies.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.addr..self.addr + self.shape.numel() * self.dtype.size()
    }

    /// Borrows the elements for reading.
    ///
    /// # Safety
    /// The tensor must be in host memory ([`Place::Cpu`]).
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

/// A checked f32 buffer of `len` elements (the reduced forms).
pub fn f32_buffer(importer: &mut Importer, obj: &Bound<'_, PyAny>, len: usize, what: &str) -> PyResult<Checked> {
    let c = importer.import(obj, what)?;
    if c.dtype != DType::F32 || c.shape.numel() != len {
        return Err(guidance(format!(
            "{what}: expected {len} float32 values, got {} {} (allocate it with the size `forms_len` gives)",
            c.shape.numel(),
            c.dtype
        )));
    }
    Ok(c)
}

/// A DLPack dtype in NumPy's words (`int64`, `float64`, `complex64`).
fn dtype_name(code: DLDataTypeCode, bits: u8, lanes: u16) -> String {
    let kind = match code {
        DLDataTypeCode::INT => "int",
        DLDataTypeCode::UINT => "uint",
        DLDataTypeCode::FLOAT => "float",
        DLDataTypeCode::BFLOAT => "bfloat",
        DLDataTypeCode::COMPLEX => "complex",
        DLDataTypeCode::BOOL => return "bool".into(),
        other => return format!("DLPack type code {} of {bits} bits", other.0),
    };
    match lanes {
        1 => format!("{kind}{bits}"),
        _ => format!("{kind}{bits}x{lanes}"),
    }
}
