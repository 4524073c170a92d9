//! JSON in and out: the body extractor, decoding a JSON sample into tensors checked against
//! the model, and encoding output tensors as nested lists.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use inference_core::{DType, ModelSpec, Sample, Tensor, TensorSpec, bf16, f16, with_element_type};
use serde::de::DeserializeOwned;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value};

/// Deepest nesting a sample may have: deeper than any tensor a model takes.
const MAX_SAMPLE_DEPTH: usize = 32;

/// A JSON body whose every rejection is an [`ApiError`] with a `detail`. An empty body reads
/// as `{}`, so endpoints whose fields all have defaults accept it.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(&request)?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(format!(
                        "request body is too large: {}",
                        rejection.body_text()
                    ))
                } else {
                    ApiError::MalformedJson(format!(
                        "cannot read request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn check_content_type(request: &Request) -> Result<(), ApiError> {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        // curl without -H and many scripts send no content type: read the body as JSON.
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let is_json = mime.eq_ignore_ascii_case("application/json")
        || mime.to_ascii_lowercase().ends_with("+json");
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type: application/json, got {mime:?}"
        )))
    }
}

/// Parses a body straight into `T` (no intermediate JSON tree): not JSON is a 400, JSON of
/// the wrong form a 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let empty_object: &[u8] = b"{}";
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        empty_object
    } else {
        bytes
    };
    if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
        && !matches!(first, b'{')
    {
        // A scalar or a list: say what it is when it is JSON at all.
        let value: Value = serde_json::from_slice(bytes).map_err(syntax_error)?;
        return Err(ApiError::Unprocessable(format!(
            "request body must be a JSON object, got {}",
            kind_of(&value)
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            if path == "." {
                ApiError::Unprocessable(format!("invalid request: {inner}"))
            } else {
                ApiError::Unprocessable(format!("invalid request: {path}: {inner}"))
            }
        } else {
            syntax_error(inner)
        }
    })?;
    deserializer.end().map_err(syntax_error)?;
    Ok(parsed)
}

fn syntax_error(err: serde_json::Error) -> ApiError {
    if err.to_string().contains("recursion limit") {
        ApiError::Unprocessable("JSON is nested too deeply".into())
    } else {
        ApiError::MalformedJson(format!("request body is not valid JSON: {err}"))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Decodes one JSON sample for `model`: a single-input model takes a number, a flat list or
/// a nested list; a model with several inputs takes an object keyed by input name.
pub fn decode_sample(value: &Value, model: &ModelSpec) -> Result<Sample, String> {
    match (model.inputs.as_slice(), value) {
        ([only], _) => Ok(Sample::new(vec![decode_tensor(value, only)?])),
        (inputs, Value::Object(fields)) => {
            if let Some(unknown) = fields
                .keys()
                .find(|k| !inputs.iter().any(|i| &i.name == *k))
            {
                return Err(format!(
                    "model '{}' has no input named {unknown:?}",
                    model.name
                ));
            }
            let tensors = inputs
                .iter()
                .map(|input| {
                    let field = fields
                        .get(&input.name)
                        .ok_or_else(|| format!("missing input {:?}", input.name))?;
                    decode_tensor(field, input)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Sample::new(tensors))
        }
        (inputs, other) => Err(format!(
            "model '{}' takes {} inputs: send an object keyed by input name, got {}",
            model.name,
            inputs.len(),
            kind_of(other)
        )),
    }
}

/// Decodes a number or (nested) list into a tensor of `spec`'s type and shape.
pub fn decode_tensor(value: &Value, spec: &TensorSpec) -> Result<Tensor, String> {
    let mut leaves = Vec::new();
    let shape = walk(value, 0, &mut leaves, spec)?;
    let count = leaves.len();
    let target_shape = fit_shape(&shape, count, spec)?;
    convert(&leaves, target_shape, spec.dtype)
}

/// Collects the numbers of a rectangular nested list in row-major order and returns its
/// shape; rejects anything else with a reason a person understands.
fn walk<'a>(
    value: &'a Value,
    depth: usize,
    leaves: &mut Vec<&'a Number>,
    spec: &TensorSpec,
) -> Result<Vec<usize>, String> {
    match value {
        Value::Number(n) => {
            // Stop at the first value too many: a huge list costs no more than a small one.
            if let Some(max) = spec.fixed_element_count()
                && leaves.len() >= max
            {
                return Err(format!(
                    "too many values: input '{}' takes {max} (shape {:?})",
                    spec.name, spec.shape
                ));
            }
            leaves.push(n);
            Ok(Vec::new())
        }
        Value::Array(items) => {
            if depth >= MAX_SAMPLE_DEPTH {
                return Err(format!("list nested deeper than {MAX_SAMPLE_DEPTH} levels"));
            }
            let Some((first, rest)) = items.split_first() else {
                return Err("empty list: a sample needs at least one number".into());
            };
            let inner = walk(first, depth + 1, leaves, spec)?;
            for item in rest {
                let other = walk(item, depth + 1, leaves, spec)?;
                if other != inner {
                    return Err(format!(
                        "ragged list: sub-lists of shapes {inner:?} and {other:?} at the same level"
                    ));
                }
            }
            let mut shape = Vec::with_capacity(inner.len() + 1);
            shape.push(items.len());
            shape.extend(inner);
            Ok(shape)
        }
        other => Err(format!(
            "expected a number or a list of numbers, got {}",
            kind_of(other)
        )),
    }
}

/// The shape the decoded values take: the model's own shape when the values are a scalar or
/// a flat list of the right length, else the nested shape, which must fit the model's.
fn fit_shape(shape: &[usize], count: usize, spec: &TensorSpec) -> Result<Vec<usize>, String> {
    if let Some(expected) = spec.fixed_element_count() {
        if count != expected {
            return Err(format!(
                "input '{}' takes {expected} value(s) (shape {:?}), got {count}",
                spec.name, spec.shape
            ));
        }
        let spec_shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        if shape.len() <= 1 {
            return Ok(spec_shape);
        }
    }
    spec.check_parts(spec.dtype, shape)?;
    Ok(shape.to_vec())
}

fn convert(leaves: &[&Number], shape: Vec<usize>, dtype: DType) -> Result<Tensor, String> {
    fn integers<T: TryFrom<i64>>(leaves: &[&Number], dtype: DType) -> Result<Vec<T>, String> {
        leaves
            .iter()
            .map(|n| {
                n.as_i64()
                    .and_then(|v| T::try_from(v).ok())
                    .ok_or_else(|| format!("{n} is not a valid {dtype} value"))
            })
            .collect()
    }
    /// Finite values that stay finite in the target type.
    fn floats<T>(
        leaves: &[&Number],
        narrow: impl Fn(f64) -> T,
        is_finite: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, String> {
        leaves
            .iter()
            .map(|n| {
                let v = n
                    .as_f64()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("{n} is not a finite number"))?;
                let narrowed = narrow(v);
                if is_finite(&narrowed) {
                    Ok(narrowed)
                } else {
                    Err(format!(
                        "{v} does not fit a {} float",
                        narrowed_name(&narrowed)
                    ))
                }
            })
            .collect()
    }
    fn narrowed_name<T>(_: &T) -> &'static str {
        match std::mem::size_of::<T>() {
            2 => "16-bit",
            4 => "32-bit",
            _ => "64-bit",
        }
    }
    let tensor = match dtype {
        #[allow(clippy::cast_possible_truncation)]
        DType::F32 => Tensor::from_vec(shape, floats(leaves, |v| v as f32, |v| v.is_finite())?),
        DType::F64 => Tensor::from_vec(shape, floats(leaves, |v| v, |v| v.is_finite())?),
        DType::F16 => Tensor::from_vec(shape, floats(leaves, f16::from_f64, |v| v.is_finite())?),
        DType::BF16 => Tensor::from_vec(shape, floats(leaves, bf16::from_f64, |v| v.is_finite())?),
        DType::I8 => Tensor::from_vec(shape, integers::<i8>(leaves, dtype)?),
        DType::I16 => Tensor::from_vec(shape, integers::<i16>(leaves, dtype)?),
        DType::I32 => Tensor::from_vec(shape, integers::<i32>(leaves, dtype)?),
        DType::I64 => Tensor::from_vec(shape, integers::<i64>(leaves, dtype)?),
        DType::U8 => Tensor::from_vec(shape, integers::<u8>(leaves, dtype)?),
        DType::Bool => {
            let values = integers::<i64>(leaves, dtype)?
                .into_iter()
                .map(|v| match v {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(format!("{other} is not a boolean (0 or 1)")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::from_bools(shape, &values)
        }
        DType::Bytes => {
            return Err("BYTES inputs take strings, not numbers".into());
        }
    };
    tensor.map_err(|e| e.to_string())
}

/// Why a row's outputs cannot be answered in JSON: the first NaN or infinite value, named
/// by output and position. `None` when every value is finite.
pub fn non_finite_output(model: &ModelSpec, sample: &Sample) -> Option<String> {
    model
        .outputs
        .iter()
        .zip(&sample.tensors)
        .find_map(|(spec, tensor)| {
            let values = match tensor.dtype() {
                DType::F16 | DType::BF16 | DType::F32 | DType::F64 => tensor.to_f64_vec()?,
                _ => return None,
            };
            let (position, value) = values.iter().enumerate().find(|(_, v)| !v.is_finite())?;
            Some(format!(
                "the model produced {value} at element {position} of output '{}', which JSON cannot carry",
                spec.name
            ))
        })
}

/// One row's outputs, serialized as the original framework's clients expect: the nested
/// list of a single output, or an object keyed by output name for several.
#[derive(Debug, Clone)]
pub struct Prediction {
    outputs: Vec<(String, Tensor)>,
    /// Labelled top classes, when the model classifies.
    classes: Option<Vec<crate::image_input::Class>>,
    /// Whether the raw outputs go next to the classes.
    raw_outputs: bool,
}

impl Prediction {
    pub fn new(model: &ModelSpec, sample: Sample) -> Self {
        let outputs = model
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .zip(sample.tensors)
            .collect();
        Self {
            outputs,
            classes: None,
            raw_outputs: true,
        }
    }

    /// Adds the top classes of the first output (after softmax).
    pub fn classify(mut self, classification: &crate::processing::Classification) -> Self {
        let logits = self.outputs.first().and_then(|(_, t)| t.as_f32());
        self.classes = logits.map(|l| classification.classify(l));
        self.raw_outputs = classification.raw_outputs;
        self
    }

    pub fn classes(&self) -> Option<&[crate::image_input::Class]> {
        self.classes.as_deref()
    }

    /// The elements of every output, flattened, for tests and summaries.
    pub fn values(&self) -> Vec<f64> {
        self.outputs
            .iter()
            .flat_map(|(_, t)| t.to_f64_vec().unwrap_or_default())
            .collect()
    }
}

impl Serialize for Prediction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(classes) = &self.classes {
            if !self.raw_outputs {
                return classes.serialize(serializer);
            }
            let mut map = serializer.serialize_map(Some(self.outputs.len() + 1))?;
            for (name, tensor) in &self.outputs {
                map.serialize_entry(name, &NestedList(tensor))?;
            }
            map.serialize_entry("classes", classes)?;
            return map.end();
        }
        match self.outputs.as_slice() {
            [(_, only)] => NestedList(only).serialize(serializer),
            many => {
                let mut map = serializer.serialize_map(Some(many.len()))?;
                for (name, tensor) in many {
                    map.serialize_entry(name, &NestedList(tensor))?;
                }
                map.end()
            }
        }
    }
}

/// A tensor as nested JSON lists, each element in its own type (f32 prints as f32).
struct NestedList<'a>(&'a Tensor);

impl Serialize for NestedList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        serialize_level(serializer, tensor, tensor.shape(), 0)
    }
}

fn serialize_level<S: Serializer>(
    serializer: S,
    tensor: &Tensor,
    shape: &[usize],
    offset: usize,
) -> Result<S::Ok, S::Error> {
    let Some((&len, rest)) = shape.split_first() else {
        if let Some(mut bools) = tensor.bools() {
            return bools.nth(offset).unwrap_or_default().serialize(serializer);
        }
        return with_element_type!(tensor.dtype(), T => {
            tensor.as_slice::<T>().map(|v| v[offset]).serialize(serializer)
        }, bytes => {
            let item = tensor.strings().and_then(|items| items.get(offset));
            item.map(|b| String::from_utf8_lossy(b)).serialize(serializer)
        });
    };
    let stride: usize = rest.iter().product();
    let mut seq = serializer.serialize_seq(Some(len))?;
    for i in 0..len {
        seq.serialize_element(&Level {
            tensor,
            shape: rest,
            offset: offset + i * stride,
        })?;
    }
    seq.end()
}

struct Level<'a> {
    tensor: &'a Tensor,
    shape: &'a [usize],
    offset: usize,
}

impl Serialize for Level<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_level(serializer, self.tensor, self.shape, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn spec(shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: "input".into(),
            dtype: DType::F32,
            shape,
        }
    }

    #[test]
    fn a_number_fits_a_single_value_input() {
        let t = decode_tensor(&json!(2.5), &spec(vec![1])).unwrap();
        assert_eq!(t.shape(), &[1]);
        assert_eq!(t.as_f32().unwrap(), &[2.5]);
        let t = decode_tensor(&json!([2.5]), &spec(vec![1])).unwrap();
        assert_eq!(t.shape(), &[1]);
    }

    #[test]
    fn flat_and_nested_lists_fit_a_matrix_input() {
        let s = spec(vec![2, 2]);
        let flat = decode_tensor(&json!([1, 2, 3, 4]), &s).unwrap();
        let nested = decode_tensor(&json!([[1, 2], [3, 4]]), &s).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(nested.shape(), &[2, 2]);
        let wrong = decode_tensor(&json!([[1, 2, 3, 4]]), &s).unwrap_err();
        assert!(wrong.contains("shape"), "{wrong}");
    }

    #[test]
    fn dynamic_dimensions_take_any_size() {
        let s = spec(vec![-1, 2]);
        assert_eq!(
            decode_tensor(&json!([[1, 2], [3, 4], [5, 6]]), &s)
                .unwrap()
                .shape(),
            &[3, 2]
        );
        assert!(decode_tensor(&json!([[1, 2, 3]]), &s).is_err());
    }

    #[test]
    fn bad_values_are_explained() {
        let s = spec(vec![1]);
        let cases = [
            (json!("7"), "string"),
            (json!({"a": 1}), "object"),
            (json!(null), "null"),
            (json!(true), "boolean"),
            (json!([]), "empty"),
            (json!([1, 2]), "too many values"),
            (json!([[1], [2, 3]]), "too many"),
            (json!(1e300), "32-bit"),
        ];
        for (value, expected) in cases {
            let err = decode_tensor(&value, &s).unwrap_err();
            assert!(err.contains(expected), "{value}: {err}");
        }
        let ragged = decode_tensor(&json!([[1], [2, 3]]), &spec(vec![-1, -1])).unwrap_err();
        assert!(ragged.contains("ragged"), "{ragged}");
    }

    #[test]
    fn deep_nesting_is_refused_before_recursing_far() {
        let mut value = json!(1);
        for _ in 0..100 {
            value = json!([value]);
        }
        let err = decode_tensor(&value, &spec(vec![-1])).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn integer_inputs_reject_fractions() {
        let s = TensorSpec {
            name: "ids".into(),
            dtype: DType::I64,
            shape: vec![2],
        };
        assert_eq!(
            decode_tensor(&json!([1, 2]), &s).unwrap().as_slice::<i64>(),
            Some(&[1i64, 2][..])
        );
        assert!(decode_tensor(&json!([1.5, 2]), &s).is_err());
    }

    #[test]
    fn predictions_serialize_as_nested_lists_in_their_own_type() {
        let model = ModelSpec {
            name: "m".into(),
            version: "1".into(),
            inputs: vec![],
            outputs: vec![spec(vec![2, 2])],
        };
        let tensor = Tensor::from_f32(vec![2, 2], vec![0.1, 0.2, 0.3, 0.4]).unwrap();
        let prediction = Prediction::new(&model, Sample::new(vec![tensor]));
        assert_eq!(
            serde_json::to_string(&prediction).unwrap(),
            "[[0.1,0.2],[0.3,0.4]]"
        );
    }

    #[test]
    fn parse_json_separates_syntax_from_shape_errors() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            inputs: Value,
        }
        assert!(matches!(
            parse_json::<Body>(b"{oops"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"[1]"),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{}"),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(parse_json::<Body>(b"{\"inputs\": 1}").is_ok());
    }

    /// Any JSON value at all either decodes to a tensor that fits the spec or is refused
    /// with a reason; nothing panics.
    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn decoding_never_panics_and_results_fit(value in arbitrary_json(), dims in proptest::collection::vec(prop_oneof![Just(-1i64), 1i64..4], 0..3)) {
            let s = spec(dims);
            if let Ok(tensor) = decode_tensor(&value, &s) {
                prop_assert!(s.check(&tensor).is_ok());
                prop_assert!(tensor.as_f32().unwrap().iter().all(|v| v.is_finite()));
            }
        }

        #[test]
        fn rectangular_lists_round_trip(rows in 1usize..5, cols in 1usize..5, seed in -1000i32..1000) {
            let values: Vec<Vec<f32>> = (0..rows)
                .map(|r| (0..cols).map(|c| (seed + (r * cols + c) as i32) as f32 / 8.0).collect())
                .collect();
            let s = spec(vec![rows as i64, cols as i64]);
            let tensor = decode_tensor(&json!(values), &s).unwrap();
            let model = ModelSpec { name: "m".into(), version: "1".into(), inputs: vec![], outputs: vec![s] };
            let back: Value = serde_json::to_value(Prediction::new(&model, Sample::new(vec![tensor]))).unwrap();
            prop_assert_eq!(back, json!(values));
        }
    }
}
