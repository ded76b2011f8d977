//! Borrowed tensors: elements that live in someone else's memory (a
//! [`Tensor`], a NumPy array, a torch tensor), read or written in place.
//! The CPU evaluator runs on these, so a caller that owns its buffers hands
//! them over without a copy.

use crate::tensor::{Tensor, TensorData};
use crate::{DType, Shape};
use half::{bf16, f16};

/// Borrowed elements of one dtype.
#[derive(Debug, Clone, Copy)]
pub enum Elements<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

/// Mutably borrowed elements of one dtype.
#[derive(Debug)]
pub enum ElementsMut<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// f16 elements.
    F16(&'a mut [f16]),
    /// bf16 elements.
    BF16(&'a mut [bf16]),
}

/// A dense row-major tensor read in place.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Its shape.
    pub shape: Shape,
    /// Its elements (as many as the shape says, checked by the evaluator).
    pub data: Elements<'a>,
}

/// A dense row-major tensor written in place.
#[derive(Debug)]
pub struct TensorViewMut<'a> {
    /// Its shape.
    pub shape: Shape,
    /// Its elements.
    pub data: ElementsMut<'a>,
}

impl Elements<'_> {
    /// Their dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Elements::F32(_) => DType::F32,
            Elements::F16(_) => DType::F16,
            Elements::BF16(_) => DType::BF16,
        }
    }

    /// Their count.
    pub fn len(&self) -> usize {
        match self {
            Elements::F32(v) => v.len(),
            Elements::F16(v) => v.len(),
            Elements::BF16(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ElementsMut<'_> {
    /// Their dtype.
    pub fn dtype(&self) -> DType {
        match self {
            ElementsMut::F32(_) => DType::F32,
            ElementsMut::F16(_) => DType::F16,
            ElementsMut::BF16(_) => DType::BF16,
        }
    }

    /// Their count.
    pub fn len(&self) -> usize {
        match self {
            ElementsMut::F32(v) => v.len(),
            ElementsMut::F16(v) => v.len(),
            ElementsMut::BF16(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> TensorView<'a> {
    /// Its dtype.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl TensorViewMut<'_> {
    /// Its dtype.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl Tensor {
    /// The tensor, borrowed.
    pub fn view(&self) -> TensorView<'_> {
        let data = match &self.data {
            TensorData::F32(v) => Elements::F32(v),
            TensorData::F16(v) => Elements::F16(v),
            TensorData::BF16(v) => Elements::BF16(v),
        };
        TensorView { shape: self.shape.clone(), data }
    }

    /// The tensor, mutably borrowed.
    pub fn view_mut(&mut self) -> TensorViewMut<'_> {
        let data = match &mut self.data {
            TensorData::F32(v) => ElementsMut::F32(v),
            TensorData::F16(v) => ElementsMut::F16(v),
            TensorData::BF16(v) => ElementsMut::BF16(v),
        };
        TensorViewMut { shape: self.shape.clone(), data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_see_the_tensor() {
        let mut t = Tensor::from_f32(DType::BF16, Shape::new([2, 2]), &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((t.view().dtype(), t.view().len()), (DType::BF16, 4));
        if let ElementsMut::BF16(v) = t.view_mut().data {
            v[0] = bf16::from_f32(8.0);
        }
        assert_eq!(t.get(0), 8.0);
    }
}
