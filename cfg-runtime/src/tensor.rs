//! Tensors where a rank's work happens: host memory for the CPU backend,
//! device memory for CUDA. The guider, the sampling loop and the collectives
//! are written once over these; only backends and communicators look inside.

use crate::cuda::{Buffer, Device, DeviceMem};
use cfg_core::{DType, Shape, Tensor};
use std::sync::Arc;

/// Where a rank's tensors live.
#[derive(Debug, Clone)]
pub enum Place {
    /// Host memory (the CPU backend).
    Host,
    /// The memory of one CUDA device.
    Cuda(Arc<Device>),
}

/// A tensor in the memory of a rank's device.
#[derive(Debug)]
pub enum DeviceTensor {
    /// In host memory.
    Host(Tensor),
    /// In CUDA device memory.
    Cuda(CudaTensor),
}

/// A tensor in CUDA device memory: a buffer and its shape.
#[derive(Debug)]
pub struct CudaTensor {
    /// The elements (dtype and count).
    pub buf: Buffer,
    /// The shape (`buf.len == shape.numel()`).
    pub shape: Shape,
}

/// Raw bytes where a rank's tensors live (the payload of a gather).
#[derive(Debug)]
pub enum DeviceBytes {
    /// In host memory.
    Host(Vec<u8>),
    /// In CUDA device memory (`len` bytes used).
    Cuda {
        /// The memory.
        mem: DeviceMem,
        /// Bytes in use.
        len: usize,
    },
}

impl DeviceTensor {
    /// The shape.
    pub fn shape(&self) -> &Shape {
        match self {
            DeviceTensor::Host(t) => &t.shape,
            DeviceTensor::Cuda(t) => &t.shape,
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            DeviceTensor::Host(t) => t.dtype(),
            DeviceTensor::Cuda(t) => t.buf.dtype,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            DeviceTensor::Host(t) => t.len(),
            DeviceTensor::Cuda(t) => t.buf.len,
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of its elements.
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// The host tensor, when it is in host memory.
    pub fn as_host(&self) -> Option<&Tensor> {
        match self {
            DeviceTensor::Host(t) => Some(t),
            DeviceTensor::Cuda(_) => None,
        }
    }

    /// The host tensor, when it is in host memory (mutable).
    pub fn as_host_mut(&mut self) -> Option<&mut Tensor> {
        match self {
            DeviceTensor::Host(t) => Some(t),
            DeviceTensor::Cuda(_) => None,
        }
    }

    /// The device buffer, when it is in CUDA memory.
    pub fn as_cuda(&self) -> Option<&CudaTensor> {
        match self {
            DeviceTensor::Host(_) => None,
            DeviceTensor::Cuda(t) => Some(t),
        }
    }
}

impl From<Tensor> for DeviceTensor {
    fn from(t: Tensor) -> Self {
        DeviceTensor::Host(t)
    }
}

impl DeviceBytes {
    /// Bytes in use.
    pub fn len(&self) -> usize {
        match self {
            DeviceBytes::Host(v) => v.len(),
            DeviceBytes::Cuda { len, .. } => *len,
        }
    }

    /// Whether no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
