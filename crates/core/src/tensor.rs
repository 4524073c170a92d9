//! Tensors as plain data: a shape, an element type and one contiguous buffer.
//!
//! A dense tensor's elements live in one reference-counted [`Bytes`] buffer, so a tensor
//! moves from request to batch to backend and back without copying: cloning shares the
//! buffer, and [`Tensor::unstack`] hands each row a slice of it. Stacking rows into a batch
//! writes them once into a preallocated buffer. `BYTES` tensors (variable-length elements,
//! as the KServe v2 protocol carries strings) hold one shared [`Bytes`] per element.
//!
//! Every buffer is aligned for its element type, so typed views ([`Tensor::as_slice`]) are
//! free. Backends convert at the edge; nothing of a backend library crosses this module.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use half::{bf16, f16};

/// Declares the element types once: the enum, its names in configuration and in the KServe
/// v2 protocol, and its width. Adding a type is one line here plus, when it has a Rust
/// element type, one [`Element`] impl.
macro_rules! dtypes {
    ($($variant:ident = $name:literal, $kserve:literal, $size:expr;)*) => {
        /// Element type of a tensor.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum DType {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl DType {
            /// Every element type, in declaration order.
            pub const ALL: &'static [DType] = &[$(DType::$variant,)*];

            /// The name used in `model.toml` and in this server's JSON.
            pub fn as_str(self) -> &'static str {
                match self { $(DType::$variant => $name,)* }
            }

            /// The datatype name of the KServe v2 / Open Inference Protocol.
            pub fn kserve_name(self) -> &'static str {
                match self { $(DType::$variant => $kserve,)* }
            }

            /// Bytes per element; `None` for `BYTES`, whose elements vary in length.
            pub fn size(self) -> Option<usize> {
                match self { $(DType::$variant => $size,)* }
            }

            /// Parses a configuration name (`f32`) or a KServe name (`FP32`).
            pub fn parse(name: &str) -> Option<DType> {
                DType::ALL
                    .iter()
                    .copied()
                    .find(|d| d.as_str() == name || d.kserve_name() == name)
            }
        }
    };
}

dtypes! {
    Bool = "bool", "BOOL", Some(1);
    U8 = "u8", "UINT8", Some(1);
    I8 = "i8", "INT8", Some(1);
    I16 = "i16", "INT16", Some(2);
    I32 = "i32", "INT32", Some(4);
    I64 = "i64", "INT64", Some(8);
    F16 = "f16", "FP16", Some(2);
    BF16 = "bf16", "BF16", Some(2);
    F32 = "f32", "FP32", Some(4);
    F64 = "f64", "FP64", Some(8);
    Bytes = "bytes", "BYTES", None;
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust type that is the element of a dense tensor. `bool` is not one: a byte holding
/// 2 is not a valid `bool`, so boolean tensors are read as `u8` 0/1 (see [`Tensor::bools`]).
pub trait Element: bytemuck::Pod + Send + Sync + fmt::Debug {
    const DTYPE: DType;
}

macro_rules! elements {
    ($($ty:ty => $dtype:ident),*) => {
        $(impl Element for $ty { const DTYPE: DType = DType::$dtype; })*
    };
}
elements!(u8 => U8, i8 => I8, i16 => I16, i32 => I32, i64 => I64, f16 => F16, bf16 => BF16,
    f32 => F32, f64 => F64);

/// Calls `$body` with `$T` bound to the Rust element type of a dense `$dtype` (`u8` for
/// booleans); evaluates `$bytes` for `BYTES`.
#[macro_export]
macro_rules! with_element_type {
    ($dtype:expr, $T:ident => $body:expr, bytes => $bytes:expr) => {
        match $dtype {
            $crate::DType::Bool | $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::I8 => {
                type $T = i8;
                $body
            }
            $crate::DType::I16 => {
                type $T = i16;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::F16 => {
                type $T = $crate::tensor::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = $crate::tensor::bf16;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::Bytes => $bytes,
        }
    };
}

/// Owns a typed vector and lends it as bytes, so `Bytes::from_owner` takes it without a copy
/// and the buffer keeps the element type's alignment.
struct ElementsOwner<T: Element>(Vec<T>);

impl<T: Element> AsRef<[u8]> for ElementsOwner<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// A zeroed buffer aligned for every element type (8 bytes), written once and then frozen.
struct AlignedBuffer {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuffer {
    fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// The elements of a tensor.
#[derive(Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-width elements, row-major, little-endian, aligned for the element type.
    Dense(Bytes),
    /// One byte string per element (`BYTES`).
    Strings(Vec<Bytes>),
}

impl fmt::Debug for TensorData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorData::Dense(bytes) => write!(f, "Dense({} bytes)", bytes.len()),
            TensorData::Strings(items) => write!(f, "Strings({} elements)", items.len()),
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
    #[error("{0} bytes do not divide into {1} elements")]
    ByteLength(usize, DType),
}

/// A tensor: its element type, its shape and its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    fn checked(dtype: DType, shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let expected: usize = shape.iter().product();
        let found = match (&data, dtype.size()) {
            (TensorData::Dense(bytes), Some(size)) => {
                if !bytes.len().is_multiple_of(size) {
                    return Err(TensorError::ByteLength(bytes.len(), dtype));
                }
                bytes.len() / size
            }
            (TensorData::Strings(items), None) => items.len(),
            (TensorData::Dense(_), None) => {
                return Err(TensorError::DTypeMismatch {
                    expected: dtype,
                    found: DType::U8,
                });
            }
            (TensorData::Strings(_), Some(_)) => {
                return Err(TensorError::DTypeMismatch {
                    expected: dtype,
                    found: DType::Bytes,
                });
            }
        };
        if expected != found {
            return Err(TensorError::ShapeDataMismatch {
                shape,
                expected,
                found,
            });
        }
        Ok(Self { dtype, shape, data })
    }

    /// A dense tensor from its elements, without copying them.
    pub fn from_vec<T: Element>(shape: Vec<usize>, values: Vec<T>) -> Result<Self, TensorError> {
        let bytes = Bytes::from_owner(ElementsOwner(values));
        Self::checked(T::DTYPE, shape, TensorData::Dense(bytes))
    }

    pub fn from_f32(shape: Vec<usize>, values: Vec<f32>) -> Result<Self, TensorError> {
        Self::from_vec(shape, values)
    }

    pub fn from_bools(shape: Vec<usize>, values: &[bool]) -> Result<Self, TensorError> {
        let bytes: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
        Self::checked(DType::Bool, shape, TensorData::Dense(Bytes::from(bytes)))
    }

    /// A dense tensor over raw little-endian bytes (e.g. a request's binary payload). The
    /// bytes are shared when aligned for `dtype` and copied once when not.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<Self, TensorError> {
        let align = dtype.size().unwrap_or(1);
        let bytes = if (bytes.as_ptr() as usize).is_multiple_of(align) {
            bytes
        } else {
            let mut copy = AlignedBuffer::zeroed(bytes.len());
            copy.as_mut().copy_from_slice(&bytes);
            copy.freeze()
        };
        if dtype == DType::Bool && bytes.iter().any(|&b| b > 1) {
            return Err(TensorError::DTypeMismatch {
                expected: DType::Bool,
                found: DType::U8,
            });
        }
        Self::checked(dtype, shape, TensorData::Dense(bytes))
    }

    /// A `BYTES` tensor: one byte string per element.
    pub fn from_strings(shape: Vec<usize>, items: Vec<Bytes>) -> Result<Self, TensorError> {
        Self::checked(DType::Bytes, shape, TensorData::Strings(items))
    }

    /// Zeros (false, empty strings) of the given type and shape.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Self {
        let count: usize = shape.iter().product();
        let data = match dtype.size() {
            Some(size) => TensorData::Dense(AlignedBuffer::zeroed(count * size).freeze()),
            None => TensorData::Strings(vec![Bytes::new(); count]),
        };
        Self { dtype, shape, data }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw little-endian bytes of a dense tensor; `None` for `BYTES`.
    pub fn raw_bytes(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Dense(bytes) => Some(bytes),
            TensorData::Strings(_) => None,
        }
    }

    /// The elements of a `BYTES` tensor.
    pub fn strings(&self) -> Option<&[Bytes]> {
        match &self.data {
            TensorData::Strings(items) => Some(items),
            TensorData::Dense(_) => None,
        }
    }

    /// The elements as `T`, when `T` is this tensor's element type (`u8` reads booleans).
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        let matches =
            T::DTYPE == self.dtype || (T::DTYPE == DType::U8 && self.dtype == DType::Bool);
        match &self.data {
            TensorData::Dense(bytes) if matches => bytemuck::try_cast_slice(bytes).ok(),
            _ => None,
        }
    }

    /// The f32 elements, if this is an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.as_slice()
    }

    /// The elements of a boolean tensor.
    pub fn bools(&self) -> Option<impl Iterator<Item = bool> + '_> {
        (self.dtype == DType::Bool).then(|| self.raw_bytes().into_iter().flatten().map(|&b| b != 0))
    }

    /// The elements widened to f64, for callers that report numbers (JSON, golden files);
    /// `None` for `BYTES`.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        #[allow(clippy::cast_precision_loss)]
        fn widen<T: Element + num_to_f64::ToF64>(values: &[T]) -> Vec<f64> {
            values.iter().map(|v| v.to_f64()).collect()
        }
        with_element_type!(self.dtype, T => self.as_slice::<T>().map(widen), bytes => None)
    }

    /// Stacks tensors of equal type and shape along a new leading (batch) dimension, writing
    /// each row once into one preallocated buffer.
    pub fn stack(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or(TensorError::EmptyStack)?;
        for part in parts {
            if part.dtype != first.dtype {
                return Err(TensorError::DTypeMismatch {
                    expected: first.dtype,
                    found: part.dtype,
                });
            }
            if part.shape != first.shape {
                return Err(TensorError::StackShapeMismatch {
                    first: first.shape.clone(),
                    other: part.shape.clone(),
                });
            }
        }
        let mut shape = Vec::with_capacity(first.shape.len() + 1);
        shape.push(parts.len());
        shape.extend_from_slice(&first.shape);
        let data = match &first.data {
            TensorData::Dense(row) => {
                let row_len = row.len();
                let mut buffer = AlignedBuffer::zeroed(row_len * parts.len());
                for (chunk, part) in buffer.as_mut().chunks_exact_mut(row_len.max(1)).zip(parts) {
                    chunk.copy_from_slice(part.raw_bytes().unwrap_or(&Bytes::new()));
                }
                TensorData::Dense(buffer.freeze())
            }
            TensorData::Strings(_) => TensorData::Strings(
                parts
                    .iter()
                    .flat_map(|p| p.strings().unwrap_or_default().iter().cloned())
                    .collect(),
            ),
        };
        Tensor::checked(first.dtype, shape, data)
    }

    /// Splits along the leading (batch) dimension into one tensor per row; each row shares
    /// this tensor's buffer.
    pub fn unstack(&self) -> Result<Vec<Tensor>, TensorError> {
        let (&rows, row_shape) = self
            .shape
            .split_first()
            .ok_or_else(|| TensorError::NoBatchDimension(self.shape.clone()))?;
        let row_count: usize = row_shape.iter().product();
        Ok((0..rows)
            .map(|row| {
                let data = match &self.data {
                    TensorData::Dense(bytes) => {
                        let row_len = row_count * self.dtype.size().unwrap_or(1);
                        TensorData::Dense(bytes.slice(row * row_len..(row + 1) * row_len))
                    }
                    TensorData::Strings(items) => {
                        TensorData::Strings(items[row * row_count..(row + 1) * row_count].to_vec())
                    }
                };
                Tensor {
                    dtype: self.dtype,
                    shape: row_shape.to_vec(),
                    data,
                }
            })
            .collect())
    }
}

/// Widening to f64 for reports, implemented for every dense element type.
mod num_to_f64 {
    pub(super) trait ToF64 {
        fn to_f64(&self) -> f64;
    }
    macro_rules! lossless {
        ($($ty:ty),*) => { $(impl ToF64 for $ty { fn to_f64(&self) -> f64 { f64::from(*self) } })* };
    }
    lossless!(u8, i8, i16, i32, f32, f64);
    impl ToF64 for i64 {
        // i64 beyond 2^53 loses precision; acceptable for reporting.
        #[allow(clippy::cast_precision_loss)]
        fn to_f64(&self) -> f64 {
            *self as f64
        }
    }
    impl ToF64 for super::f16 {
        fn to_f64(&self) -> f64 {
            super::f16::to_f64(*self)
        }
    }
    impl ToF64 for super::bf16 {
        fn to_f64(&self) -> f64 {
            super::bf16::to_f64(*self)
        }
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
        let c = Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap();
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

    #[test]
    fn rows_share_the_batch_buffer() {
        let batch = Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let rows = batch.unstack().unwrap();
        let base = batch.raw_bytes().unwrap().as_ptr();
        assert_eq!(rows[1].raw_bytes().unwrap().as_ptr(), base.wrapping_add(8));
        assert_eq!(rows[1].as_f32().unwrap(), &[3.0, 4.0]);
    }

    #[test]
    fn misaligned_bytes_are_copied_once_into_an_aligned_buffer() {
        let raw = Bytes::from(vec![0u8; 9]).slice(1..9);
        let tensor = Tensor::from_bytes(DType::F32, vec![2], raw).unwrap();
        assert_eq!(tensor.as_f32().unwrap(), &[0.0, 0.0]);
        assert!(Tensor::from_bytes(DType::F32, vec![2], Bytes::from(vec![0u8; 7])).is_err());
        assert!(Tensor::from_bytes(DType::Bool, vec![1], Bytes::from(vec![2u8])).is_err());
    }

    #[test]
    fn every_dtype_round_trips_its_names_and_stacks() {
        for &dtype in DType::ALL {
            assert_eq!(DType::parse(dtype.as_str()), Some(dtype));
            assert_eq!(DType::parse(dtype.kserve_name()), Some(dtype));
            let row = Tensor::zeros(dtype, vec![3]);
            let stacked = Tensor::stack(&[&row, &row]).unwrap();
            assert_eq!(stacked.shape(), &[2, 3]);
            assert_eq!(stacked.unstack().unwrap(), vec![row.clone(), row]);
        }
    }

    #[test]
    fn byte_strings_stack_and_unstack() {
        let a = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"cat")]).unwrap();
        let b = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"a longer one")]).unwrap();
        let stacked = Tensor::stack(&[&a, &b]).unwrap();
        assert_eq!(stacked.strings().unwrap().len(), 2);
        assert_eq!(stacked.unstack().unwrap(), vec![a, b]);
        assert_eq!(stacked.to_f64_vec(), None);
    }

    #[test]
    fn half_precision_and_bools_read_back() {
        let h = Tensor::from_vec(vec![2], vec![f16::from_f32(1.5), f16::from_f32(-2.0)]).unwrap();
        assert_eq!(h.to_f64_vec().unwrap(), vec![1.5, -2.0]);
        let b = Tensor::from_bools(vec![2], &[true, false]).unwrap();
        assert_eq!(b.bools().unwrap().collect::<Vec<_>>(), vec![true, false]);
        assert_eq!(b.to_f64_vec().unwrap(), vec![1.0, 0.0]);
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
