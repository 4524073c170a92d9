//! Tensors as plain owned data: a shape and a flat, row-major buffer of one element type.
//!
//! Backends convert these to and from their own tensor types at the edge; nothing of a
//! backend library crosses this module.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I32,
    I64,
    U8,
    Bool,
}

impl DType {
    /// The name used in configuration and in the KServe v2 protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A flat, row-major element buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// Applies `$body` to the inner vector of every variant, rebuilding the same variant.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::U8($v) => TensorData::U8($body),
            TensorData::Bool($v) => TensorData::Bool($body),
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::U8(_) => DType::U8,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer of `len` zeros (false for booleans).
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; len]),
            DType::F64 => TensorData::F64(vec![0.0; len]),
            DType::I32 => TensorData::I32(vec![0; len]),
            DType::I64 => TensorData::I64(vec![0; len]),
            DType::U8 => TensorData::U8(vec![0; len]),
            DType::Bool => TensorData::Bool(vec![false; len]),
        }
    }

    /// Elements `range` as a new buffer of the same type.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        map_data!(self, v => v[range].to_vec())
    }

    /// Appends `other`, which must hold the same element type.
    fn extend_from(&mut self, other: &TensorData) -> Result<(), TensorError> {
        match (self, other) {
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F64(a), TensorData::F64(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), TensorData::U8(b)) => a.extend_from_slice(b),
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (a, b) => {
                return Err(TensorError::DTypeMismatch {
                    expected: a.dtype(),
                    found: b.dtype(),
                });
            }
        }
        Ok(())
    }

    /// The elements widened to f64, for callers that report numbers (JSON, golden files).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            // i64 beyond 2^53 loses precision; acceptable for reporting.
            #[allow(clippy::cast_precision_loss)]
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// Errors of tensor construction and reshaping.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but the data has {found}")]
    ShapeDataMismatch {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("expected element type {expected}, found {found}")]
    DTypeMismatch { expected: DType, found: DType },
    #[error("cannot stack tensors of shapes {first:?} and {other:?}")]
    StackShapeMismatch {
        first: Vec<usize>,
        other: Vec<usize>,
    },
    #[error("cannot stack zero tensors")]
    EmptyStack,
    #[error("a tensor of shape {0:?} has no batch dimension to split")]
    NoBatchDimension(Vec<usize>),
}

/// A dense tensor: its shape and its row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the shape accounts for every element.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TensorError::ShapeDataMismatch {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, values: Vec<f32>) -> Result<Self, TensorError> {
        Self::new(shape, TensorData::F32(values))
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Self {
            shape,
            data: TensorData::zeros(dtype, len),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    pub fn element_count(&self) -> usize {
        self.data.len()
    }

    /// The f32 elements, if this is an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Stacks tensors of equal shape and type along a new leading (batch) dimension.
    pub fn stack(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or(TensorError::EmptyStack)?;
        let mut data = TensorData::zeros(first.dtype(), 0);
        for part in parts {
            if part.shape != first.shape {
                return Err(TensorError::StackShapeMismatch {
                    first: first.shape.clone(),
                    other: part.shape.clone(),
                });
            }
            data.extend_from(&part.data)?;
        }
        let mut shape = Vec::with_capacity(first.shape.len() + 1);
        shape.push(parts.len());
        shape.extend_from_slice(&first.shape);
        Tensor::new(shape, data)
    }

    /// Splits along the leading (batch) dimension into one tensor per row.
    pub fn unstack(&self) -> Result<Vec<Tensor>, TensorError> {
        let (&rows, row_shape) = self
            .shape
            .split_first()
            .ok_or_else(|| TensorError::NoBatchDimension(self.shape.clone()))?;
        let row_len: usize = row_shape.iter().product();
        Ok((0..rows)
            .map(|row| Tensor {
                shape: row_shape.to_vec(),
                data: self.data.slice(row * row_len..(row + 1) * row_len),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_rejects_shape_that_does_not_match_data() {
        let err = Tensor::from_f32(vec![2, 2], vec![1.0; 3]).unwrap_err();
        assert!(matches!(
            err,
            TensorError::ShapeDataMismatch {
                expected: 4,
                found: 3,
                ..
            }
        ));
    }

    #[test]
    fn stack_rejects_mixed_shapes_and_types() {
        let a = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::from_f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(
            Tensor::stack(&[&a, &b]),
            Err(TensorError::StackShapeMismatch { .. })
        ));
        let c = Tensor::new(vec![2], TensorData::I64(vec![1, 2])).unwrap();
        assert!(matches!(
            Tensor::stack(&[&a, &c]),
            Err(TensorError::DTypeMismatch { .. })
        ));
        assert_eq!(Tensor::stack(&[]), Err(TensorError::EmptyStack));
    }

    #[test]
    fn unstack_of_scalar_is_an_error() {
        let scalar = Tensor::from_f32(vec![], vec![1.0]).unwrap();
        assert!(matches!(
            scalar.unstack(),
            Err(TensorError::NoBatchDimension(_))
        ));
    }

    proptest! {
        #[test]
        fn stack_then_unstack_is_identity(
            rows in 1usize..20,
            row_shape in proptest::collection::vec(1usize..4, 0..3),
            seed in any::<u32>(),
        ) {
            let row_len: usize = row_shape.iter().product();
            let tensors: Vec<Tensor> = (0..rows)
                .map(|r| {
                    let values = (0..row_len)
                        .map(|i| (seed as f32) + (r * row_len + i) as f32)
                        .collect();
                    Tensor::from_f32(row_shape.clone(), values).unwrap()
                })
                .collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let stacked = Tensor::stack(&refs).unwrap();
            prop_assert_eq!(stacked.shape()[0], rows);
            prop_assert_eq!(stacked.unstack().unwrap(), tensors);
        }
    }
}
