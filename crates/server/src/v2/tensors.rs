//! v2 tensors and core tensors, both ways, independent of the transport: datatype names,
//! shapes with their batch dimension, raw contents (the binary extension's bytes and the
//! gRPC `raw_*_contents`), and a request's tensors split into the scheduler's rows and its
//! rows' outputs stacked back.

use super::V2Error;
use bytes::{BufMut, Bytes, BytesMut};
use inference_core::{DType, ModelSpec, Sample, Tensor, TensorSpec};
use std::time::Duration;

/// A named tensor of a request or a response, with its batch dimension first.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// An output the client asked for; `binary_data: None` takes the request's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary_data: Option<bool>,
}

/// An inference request as the protocol means it, whatever carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// Empty: every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// The `binary_data_output` request parameter: outputs in binary unless they say not.
    pub binary_data_output: bool,
    /// Triton's convention: 0 is the default, 1 the highest priority, larger numbers lower.
    pub priority: u64,
    /// The `timeout` request parameter (microseconds on the wire); `None` or zero: none.
    pub timeout: Option<Duration>,
}

/// An output of the response, with how the client wants it sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub tensor: Tensor,
    /// The output's own `binary_data` parameter, when the request set one.
    pub binary_data: Option<bool>,
}

/// The element type a v2 datatype name (`FP32`, `BYTES`, ...) stands for.
pub fn datatype(name: &str) -> Result<DType, V2Error> {
    DType::ALL
        .iter()
        .copied()
        .find(|d| d.kserve_name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = DType::ALL.iter().map(|d| d.kserve_name()).collect();
            V2Error::bad_request(format!(
                "unknown datatype {name:?} (known: {})",
                known.join(", ")
            ))
        })
}

/// A shape of the wire (signed, as the protocol declares it) as sizes; `what` names the
/// tensor in the error.
pub fn shape_from_dims(dims: &[i64], what: &str) -> Result<Vec<usize>, V2Error> {
    dims.iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            V2Error::bad_request(format!(
                "{what} has shape {dims:?}: every dimension must be 0 or more"
            ))
        })
}

/// How many elements a shape holds, `None` when that overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |count, &d| count.checked_mul(d))
}

/// The shape a model's input or output has on the wire: the batch dimension (`-1`: any
/// number of rows) and then the per-row shape.
pub fn batch_shape(spec: &TensorSpec) -> Vec<i64> {
    std::iter::once(-1)
        .chain(spec.shape.iter().copied())
        .collect()
}

/// A tensor from its raw contents: little-endian elements for a fixed-width datatype, each
/// element behind a 4-byte little-endian length for `BYTES`. Dense bytes are shared, not
/// copied, when aligned for the element type.
pub fn tensor_from_raw(
    name: &str,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Bytes,
) -> Result<Tensor, V2Error> {
    let count = element_count(&shape).ok_or_else(|| {
        V2Error::bad_request(format!("input '{name}' has shape {shape:?}, too large"))
    })?;
    match dtype.size() {
        Some(size) => {
            let expected = count.checked_mul(size);
            if expected != Some(bytes.len()) {
                return Err(V2Error::bad_request(format!(
                    "input '{name}' of datatype {} and shape {shape:?} needs {} bytes, got {}",
                    dtype.kserve_name(),
                    expected.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string()),
                    bytes.len()
                )));
            }
            Tensor::from_bytes(dtype, shape, bytes)
                .map_err(|e| V2Error::bad_request(format!("input '{name}': {e}")))
        }
        None => {
            let items = split_bytes_elements(&bytes)
                .map_err(|reason| V2Error::bad_request(format!("input '{name}': {reason}")))?;
            if items.len() != count {
                return Err(V2Error::bad_request(format!(
                    "input '{name}' of shape {shape:?} holds {count} BYTES element(s), got {}",
                    items.len()
                )));
            }
            Tensor::from_strings(shape, items)
                .map_err(|e| V2Error::bad_request(format!("input '{name}': {e}")))
        }
    }
}

/// Splits serialized `BYTES` contents (a 4-byte little-endian length, then that many bytes,
/// per element) into its elements, each sharing `bytes`.
pub fn split_bytes_elements(bytes: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut items = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let Some(prefix) = bytes.get(offset..offset.saturating_add(4)) else {
            return Err(format!(
                "BYTES element {} has a truncated 4-byte length ({} byte(s) left)",
                items.len(),
                bytes.len() - offset
            ));
        };
        let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let start = offset + 4;
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| start.checked_add(length))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                format!(
                    "BYTES element {} declares {length} bytes but only {} remain",
                    items.len(),
                    bytes.len() - start
                )
            })?;
        items.push(bytes.slice(start..end));
        offset = end;
    }
    Ok(items)
}

/// The raw contents of a tensor, as [`tensor_from_raw`] reads them: a dense tensor's own
/// buffer (shared), or the length-prefixed elements of a `BYTES` tensor.
pub fn raw_contents(tensor: &Tensor) -> Bytes {
    if let Some(bytes) = tensor.raw_bytes() {
        return bytes.clone();
    }
    let items = tensor.strings().unwrap_or_default();
    let mut out = BytesMut::with_capacity(items.iter().map(|item| item.len() + 4).sum());
    for item in items {
        // An element longer than u32::MAX bytes cannot come from a request body.
        out.put_u32_le(u32::try_from(item.len()).unwrap_or(u32::MAX));
        out.put_slice(item);
    }
    out.freeze()
}

/// Splits a request's inputs into the scheduler's rows: each input must be one of the
/// model's, of its datatype, with the batch dimension first and the model's per-row shape
/// after it; every input must have the same number of rows. Rows share the inputs' buffers.
pub fn batch_rows(spec: &ModelSpec, inputs: Vec<NamedTensor>) -> Result<Vec<Sample>, V2Error> {
    for (index, input) in inputs.iter().enumerate() {
        if !spec.inputs.iter().any(|s| s.name == input.name) {
            let names: Vec<&str> = spec.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(V2Error::bad_request(format!(
                "model '{}' has no input '{}' (its inputs: {})",
                spec.name,
                input.name,
                names.join(", ")
            )));
        }
        if inputs[..index].iter().any(|other| other.name == input.name) {
            return Err(V2Error::bad_request(format!(
                "input '{}' is given twice",
                input.name
            )));
        }
    }
    let mut inputs = inputs;
    let mut columns = Vec::with_capacity(spec.inputs.len());
    let mut rows: Option<(usize, &str)> = None;
    for input_spec in &spec.inputs {
        let position = inputs
            .iter()
            .position(|input| input.name == input_spec.name)
            .ok_or_else(|| {
                V2Error::bad_request(format!(
                    "model '{}' needs input '{}', which the request does not have",
                    spec.name, input_spec.name
                ))
            })?;
        let tensor = inputs.swap_remove(position).tensor;
        check_input(input_spec, &tensor)?;
        let count = tensor.shape()[0];
        match rows {
            Some((expected, first)) if expected != count => {
                return Err(V2Error::bad_request(format!(
                    "inputs '{first}' and '{}' have different batch sizes ({expected} and {count})",
                    input_spec.name
                )));
            }
            _ => rows = Some((count, &input_spec.name)),
        }
        columns.push(
            tensor
                .unstack()
                .map_err(|e| V2Error::bad_request(format!("input '{}': {e}", input_spec.name)))?,
        );
    }
    let count = rows.map_or(0, |(count, _)| count);
    if count == 0 {
        return Err(V2Error::bad_request(
            "the request has no rows: the batch dimension is 0",
        ));
    }
    let mut samples: Vec<Sample> = (0..count)
        .map(|_| Sample::new(Vec::with_capacity(columns.len())))
        .collect();
    for column in columns {
        for (sample, tensor) in samples.iter_mut().zip(column) {
            sample.tensors.push(tensor);
        }
    }
    Ok(samples)
}

fn check_input(spec: &TensorSpec, tensor: &Tensor) -> Result<(), V2Error> {
    if tensor.dtype() != spec.dtype {
        return Err(V2Error::bad_request(format!(
            "input '{}' must be of datatype {}, got {}",
            spec.name,
            spec.dtype.kserve_name(),
            tensor.dtype().kserve_name()
        )));
    }
    let shape = tensor.shape();
    let fits = shape.len() == spec.shape.len() + 1
        && spec
            .shape
            .iter()
            .zip(&shape[1..])
            .all(|(&want, &got)| want < 0 || usize::try_from(want) == Ok(got));
    if !fits {
        return Err(V2Error::bad_request(format!(
            "input '{}' must have shape {:?} (rows first), got {shape:?}",
            spec.name,
            batch_shape(spec)
        )));
    }
    Ok(())
}

/// Which of the model's outputs to answer, by index, with each one's `binary_data`: the
/// requested ones in the order asked, or every output when none is named.
pub fn select_outputs(
    spec: &ModelSpec,
    requested: &[RequestedOutput],
) -> Result<Vec<(usize, Option<bool>)>, V2Error> {
    if requested.is_empty() {
        return Ok((0..spec.outputs.len()).map(|i| (i, None)).collect());
    }
    let mut selected: Vec<(usize, Option<bool>)> = Vec::with_capacity(requested.len());
    for output in requested {
        let index = spec
            .outputs
            .iter()
            .position(|s| s.name == output.name)
            .ok_or_else(|| {
                let names: Vec<&str> = spec.outputs.iter().map(|s| s.name.as_str()).collect();
                V2Error::bad_request(format!(
                    "model '{}' has no output '{}' (its outputs: {})",
                    spec.name,
                    output.name,
                    names.join(", ")
                ))
            })?;
        if selected.iter().any(|(i, _)| *i == index) {
            return Err(V2Error::bad_request(format!(
                "output '{}' is requested twice",
                output.name
            )));
        }
        selected.push((index, output.binary_data));
    }
    Ok(selected)
}

/// The selected outputs of every row, stacked back into tensors with the batch dimension.
pub fn stack_outputs(
    spec: &ModelSpec,
    rows: &[Sample],
    selected: &[(usize, Option<bool>)],
) -> Result<Vec<OutputTensor>, V2Error> {
    selected
        .iter()
        .map(|&(index, binary_data)| {
            let name = spec
                .outputs
                .get(index)
                .map_or_else(|| format!("#{index}"), |s| s.name.clone());
            let column = rows
                .iter()
                .map(|row| row.tensors.get(index))
                .collect::<Option<Vec<&Tensor>>>()
                .ok_or_else(|| {
                    V2Error::Internal(format!("the model returned no output '{name}'"))
                })?;
            let tensor = Tensor::stack(&column)
                .map_err(|e| V2Error::Internal(format!("output '{name}': {e}")))?;
            Ok(OutputTensor {
                name,
                tensor,
                binary_data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        let tensor = |name: &str, dtype, shape: &[i64]| TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        };
        ModelSpec {
            name: "m".into(),
            version: "1".into(),
            inputs: vec![
                tensor("a", DType::F32, &[2]),
                tensor("ids", DType::I64, &[-1]),
            ],
            outputs: vec![
                tensor("x", DType::F32, &[1]),
                tensor("y", DType::Bytes, &[1]),
            ],
        }
    }

    fn named(name: &str, tensor: Tensor) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor,
        }
    }

    #[test]
    fn datatypes_are_the_protocol_names_only() {
        assert_eq!(datatype("FP32").unwrap(), DType::F32);
        assert_eq!(datatype("BYTES").unwrap(), DType::Bytes);
        let err = datatype("f32").unwrap_err().to_string();
        assert!(
            err.contains("unknown datatype \"f32\"") && err.contains("FP16"),
            "{err}"
        );
    }

    #[test]
    fn negative_dimensions_and_overflowing_shapes_are_refused() {
        assert!(shape_from_dims(&[2, -1], "input 'a'").is_err());
        assert_eq!(shape_from_dims(&[2, 0], "x").unwrap(), vec![2, 0]);
        assert_eq!(element_count(&[usize::MAX, 2]), None);
        let err = tensor_from_raw("a", DType::F32, vec![usize::MAX, 2], Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        let err = tensor_from_raw("a", DType::F64, vec![usize::MAX / 4], Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("more than usize::MAX"), "{err}");
    }

    #[test]
    fn raw_contents_must_match_shape_and_datatype() {
        let ok = tensor_from_raw(
            "a",
            DType::I32,
            vec![2],
            Bytes::from(vec![1, 0, 0, 0, 2, 0, 0, 0]),
        );
        assert_eq!(ok.unwrap().as_slice::<i32>().unwrap(), &[1, 2]);
        let short = tensor_from_raw("a", DType::I32, vec![2], Bytes::from(vec![0; 7]));
        assert!(
            short
                .unwrap_err()
                .to_string()
                .contains("needs 8 bytes, got 7")
        );
        let bad_bool = tensor_from_raw("a", DType::Bool, vec![1], Bytes::from(vec![7]));
        assert!(bad_bool.is_err());
    }

    #[test]
    fn bytes_elements_round_trip_and_truncation_is_named() {
        let tensor = Tensor::from_strings(
            vec![3],
            vec![
                Bytes::from_static(b"cat"),
                Bytes::new(),
                Bytes::from_static(b"\xff\x00"),
            ],
        )
        .unwrap();
        let raw = raw_contents(&tensor);
        assert_eq!(raw.len(), 3 * 4 + 5);
        assert_eq!(
            tensor_from_raw("s", DType::Bytes, vec![3], raw.clone()).unwrap(),
            tensor
        );
        let err = tensor_from_raw("s", DType::Bytes, vec![4], raw.clone()).unwrap_err();
        assert!(
            err.to_string().contains("holds 4 BYTES element(s), got 3"),
            "{err}"
        );
        let cut = split_bytes_elements(&raw.slice(..raw.len() - 1)).unwrap_err();
        assert!(
            cut.contains("element 2 declares 2 bytes but only 1 remain"),
            "{cut}"
        );
        let half_prefix = split_bytes_elements(&Bytes::from_static(&[1, 0])).unwrap_err();
        assert!(
            half_prefix.contains("truncated 4-byte length"),
            "{half_prefix}"
        );
        let huge = split_bytes_elements(&Bytes::from_static(&[255, 255, 255, 255, 1])).unwrap_err();
        assert!(huge.contains("4294967295 bytes"), "{huge}");
    }

    #[test]
    fn inputs_split_into_rows_in_the_models_order() {
        let a = Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let ids = Tensor::from_vec(vec![2, 3], vec![1i64, 2, 3, 4, 5, 6]).unwrap();
        let rows = batch_rows(&spec(), vec![named("ids", ids), named("a", a)]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].tensors[0].as_f32().unwrap(), &[3.0, 4.0]);
        assert_eq!(rows[1].tensors[1].as_slice::<i64>().unwrap(), &[4, 5, 6]);
        spec().check_sample(&rows[0]).unwrap();
    }

    #[test]
    fn inputs_that_do_not_fit_are_refused_with_a_reason() {
        let a = || Tensor::from_f32(vec![1, 2], vec![1.0, 2.0]).unwrap();
        let ids = |rows: usize| Tensor::from_vec(vec![rows, 1], vec![0i64; rows]).unwrap();
        let cases = [
            (vec![named("a", a())], "needs input 'ids'"),
            (
                vec![named("a", a()), named("ids", ids(1)), named("b", a())],
                "has no input 'b'",
            ),
            (
                vec![named("a", a()), named("a", a()), named("ids", ids(1))],
                "given twice",
            ),
            (
                vec![named("a", a()), named("ids", ids(2))],
                "different batch sizes (1 and 2)",
            ),
            (
                vec![
                    named("a", Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap()),
                    named("ids", ids(1)),
                ],
                "must have shape [-1, 2] (rows first), got [2]",
            ),
            (
                vec![
                    named("a", Tensor::zeros(DType::F64, vec![1, 2])),
                    named("ids", ids(1)),
                ],
                "must be of datatype FP32, got FP64",
            ),
            (
                vec![
                    named("a", Tensor::zeros(DType::F32, vec![0, 2])),
                    named("ids", ids(0)),
                ],
                "no rows",
            ),
        ];
        for (inputs, expected) in cases {
            let err = batch_rows(&spec(), inputs).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} (expected {expected:?})");
        }
    }

    #[test]
    fn outputs_are_selected_by_name_and_stacked() {
        let all = select_outputs(&spec(), &[]).unwrap();
        assert_eq!(all, vec![(0, None), (1, None)]);
        let want = |name: &str, binary_data| RequestedOutput {
            name: name.into(),
            binary_data,
        };
        let picked = select_outputs(&spec(), &[want("y", Some(true))]).unwrap();
        assert_eq!(picked, vec![(1, Some(true))]);
        let unknown = select_outputs(&spec(), &[want("z", None)]).unwrap_err();
        assert!(unknown.to_string().contains("no output 'z'"));
        let twice = select_outputs(&spec(), &[want("x", None), want("x", None)]).unwrap_err();
        assert!(twice.to_string().contains("requested twice"));
        let row = |v: f32, s: &'static [u8]| {
            Sample::new(vec![
                Tensor::from_f32(vec![1], vec![v]).unwrap(),
                Tensor::from_strings(vec![1], vec![Bytes::from_static(s)]).unwrap(),
            ])
        };
        let stacked = stack_outputs(&spec(), &[row(1.0, b"a"), row(2.0, b"b")], &all).unwrap();
        assert_eq!(stacked[0].name, "x");
        assert_eq!(stacked[0].tensor.shape(), &[2, 1]);
        assert_eq!(stacked[0].tensor.as_f32().unwrap(), &[1.0, 2.0]);
        assert_eq!(stacked[1].tensor.strings().unwrap().len(), 2);
        assert_eq!(batch_shape(&spec().outputs[0]), vec![-1, 1]);
    }
}
