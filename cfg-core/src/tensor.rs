//! Host tensors of f32, f16 or bf16 elements.

use crate::recycle;
use crate::zeroed::zeroed_vec;
use crate::{DType, Shape};
use half::{bf16, f16};

/// The elements of a host tensor, in their own dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

impl TensorData {
    /// The f32 elements, if that is the dtype.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The f16 elements, if that is the dtype.
    pub fn as_f16(&self) -> Option<&[f16]> {
        match self {
            TensorData::F16(v) => Some(v),
            _ => None,
        }
    }

    /// The bf16 elements, if that is the dtype.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            TensorData::BF16(v) => Some(v),
            _ => None,
        }
    }
}

/// A dense row-major tensor on the host.
///
/// Dropping one of 32 MB or more keeps its buffer for the next new output of
/// the same size ([`crate::recycle`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its shape.
    pub shape: Shape,
    /// Its elements.
    pub data: TensorData,
}

impl Tensor {
    /// A tensor from f32 values, rounded (nearest even) to `dtype`.
    ///
    /// # Panics
    /// If `values.len()` differs from the shape's element count (a programming error).
    pub fn from_f32(dtype: DType, shape: Shape, values: &[f32]) -> Tensor {
        assert_eq!(values.len(), shape.numel(), "values do not fill the shape");
        let data = match dtype {
            DType::F32 => TensorData::F32(values.to_vec()),
            DType::F16 => TensorData::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => TensorData::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
        };
        Tensor { shape, data }
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Shape) -> Tensor {
        let n = shape.numel();
        let data = match dtype {
            DType::F32 => TensorData::F32(zeroed_vec(n)),
            DType::F16 => TensorData::F16(zeroed_vec(n)),
            DType::BF16 => TensorData::BF16(zeroed_vec(n)),
        };
        Tensor { shape, data }
    }

    /// Its dtype.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
        }
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f32.
    pub fn get(&self, i: usize) -> f32 {
        match &self.data {
            TensorData::F32(v) => v[i],
            TensorData::F16(v) => v[i].to_f32(),
            TensorData::BF16(v) => v[i].to_f32(),
        }
    }

    /// All elements widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// The raw little-endian bytes of the elements.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            TensorData::F32(v) => bytemuck_cast(v),
            TensorData::F16(v) => bytemuck_cast(v),
            TensorData::BF16(v) => bytemuck_cast(v),
        }
    }

    /// A tensor from raw little-endian bytes. Returns `None` when the byte count
    /// does not match the shape.
    pub fn from_bytes(dtype: DType, shape: Shape, bytes: &[u8]) -> Option<Tensor> {
        if bytes.len() != shape.numel() * dtype.size() {
            return None;
        }
        // One copy; `pod_collect_to_vec` copes with unaligned input (little-endian hosts).
        let data = match dtype {
            DType::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => TensorData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => TensorData::BF16(bytemuck::pod_collect_to_vec(bytes)),
        };
        Some(Tensor { shape, data })
    }

    /// The bit patterns of the elements (for bit-exact comparisons and hashing).
    pub fn bits(&self) -> Vec<u32> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            TensorData::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
        }
    }
}

impl Drop for Tensor {
    /// A large buffer is kept for the next new output of its size (see
    /// [`crate::recycle`]); a small one is freed as usual.
    fn drop(&mut self) {
        match &mut self.data {
            TensorData::F32(v) => recycle::keep(v),
            TensorData::F16(v) => recycle::keep(v),
            TensorData::BF16(v) => recycle::keep(v),
        }
    }
}

fn bytemuck_cast<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}
