//! JSON in and out: the body extractor, decoding a JSON sample into tensors checked against
//! the model, and encoding output tensors as nested lists.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use inference_core::{DType, ModelSpec, Sample, Tensor, TensorSpec, bf16, f16, with_element_type};
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;
use serde_json::{Number, Value};
use std::collections::BTreeMap;

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
        if let Some(crate::AdmittedBody(bytes)) = request.extensions().get() {
            return parse_json(bytes).map(JsonBody);
        }
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

/// The path's parameters, whose rejection (a segment that is not UTF-8) is an [`ApiError`]
/// with a `detail` like every other error, not axum's plain text.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|rejection| ApiError::BadPath(rejection.body_text()))
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
    // A valid body, the common case, is parsed once without tracking paths; only a refused
    // one is parsed again, to say where it went wrong.
    if let Ok(parsed) = serde_json::from_slice(bytes) {
        return Ok(parsed);
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
    let raw = serde_json::value::to_raw_value(value).map_err(|e| e.to_string())?;
    decode_sample_raw(&raw, model)
}

/// [`decode_sample`] straight from the sample's JSON text, as a request body holds it:
/// numbers go into typed buffers as they are read, with no tree of values in between.
pub fn decode_sample_raw(raw: &RawValue, model: &ModelSpec) -> Result<Sample, String> {
    let inputs = match model.inputs.as_slice() {
        [only] => return Ok(Sample::new(vec![decode_tensor_raw(raw, only)?])),
        inputs => inputs,
    };
    let kind = raw_kind(raw);
    if kind != "an object" {
        return Err(format!(
            "model '{}' takes {} inputs: send an object keyed by input name, got {kind}",
            model.name,
            inputs.len(),
        ));
    }
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
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
            decode_tensor_raw(field, input)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sample::new(tensors))
}

/// What kind of JSON value a raw value is, by its first character.
pub fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "a list",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn decode_tensor_raw(raw: &RawValue, spec: &TensorSpec) -> Result<Tensor, String> {
    decode_tensor_from(&mut serde_json::Deserializer::from_str(raw.get()), spec)
}

/// Decodes a number or (nested) list into a tensor of `spec`'s type and shape.
pub fn decode_tensor(value: &Value, spec: &TensorSpec) -> Result<Tensor, String> {
    decode_tensor_from(value, spec)
}

/// Decodes a number or (nested) list from any JSON deserializer, converting each number to
/// the model's element type as it is read: no tree of values and no second copy.
fn decode_tensor_from<'de, D: Deserializer<'de>>(
    json: D,
    spec: &TensorSpec,
) -> Result<Tensor, String> {
    let mut collector = Collector {
        values: Typed::new(spec.dtype),
        limit: spec.fixed_element_count(),
        spec,
        error: None,
    };
    let shape = SampleLevel {
        collector: &mut collector,
        depth: 0,
    }
    .deserialize(json)
    .map_err(|err| {
        collector.error.take().unwrap_or_else(|| {
            // The parser's position is within the sample, not the body: leave it out.
            let message = err.to_string();
            match message.rsplit_once(" at line ") {
                Some((reason, _)) => reason.to_string(),
                None => message,
            }
        })
    })?;
    let target_shape = fit_shape(&shape, collector.values.len(), spec)?;
    collector.values.into_tensor(target_shape)
}

/// Where the numbers of one tensor go while its JSON is read.
struct Collector<'s> {
    values: Typed,
    /// Most values the input takes, when its shape is fixed.
    limit: Option<usize>,
    spec: &'s TensorSpec,
    /// The reason decoding stopped, kept apart so no parser position is appended to it.
    error: Option<String>,
}

impl Collector<'_> {
    fn push<E: serde::de::Error>(&mut self, number: JsonNumber) -> Result<Vec<usize>, E> {
        // Stop at the first value too many: a huge list costs no more than a small one.
        if let Some(max) = self.limit
            && self.values.len() >= max
        {
            return Err(self.fail(format!(
                "too many values: input '{}' takes {max} (shape {:?})",
                self.spec.name, self.spec.shape
            )));
        }
        match self.values.push(number) {
            Ok(()) => Ok(Vec::new()),
            Err(reason) => Err(self.fail(reason)),
        }
    }

    fn fail<E: serde::de::Error>(&mut self, reason: String) -> E {
        let error = E::custom(&reason);
        self.error = Some(reason);
        error
    }
}

/// One nesting level of a sample: a number, or a list of equally shaped levels. Yields the
/// shape below it.
struct SampleLevel<'c, 's> {
    collector: &'c mut Collector<'s>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for SampleLevel<'_, '_> {
    type Value = Vec<usize>;

    fn deserialize<D: Deserializer<'de>>(self, json: D) -> Result<Vec<usize>, D::Error> {
        json.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SampleLevel<'_, '_> {
    type Value = Vec<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or a list of numbers")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Vec<usize>, E> {
        self.collector.push(JsonNumber::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Vec<usize>, E> {
        self.collector.push(JsonNumber::UInt(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Vec<usize>, E> {
        self.collector.push(JsonNumber::Float(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Vec<usize>, A::Error> {
        let SampleLevel { collector, depth } = self;
        if depth >= MAX_SAMPLE_DEPTH {
            return Err(
                collector.fail(format!("list nested deeper than {MAX_SAMPLE_DEPTH} levels"))
            );
        }
        let Some(inner) = items.next_element_seed(SampleLevel {
            collector: &mut *collector,
            depth: depth + 1,
        })?
        else {
            return Err(collector.fail("empty list: a sample needs at least one number".into()));
        };
        let mut count = 1;
        while let Some(other) = items.next_element_seed(SampleLevel {
            collector: &mut *collector,
            depth: depth + 1,
        })? {
            if other != inner {
                return Err(collector.fail(format!(
                    "ragged list: sub-lists of shapes {inner:?} and {other:?} at the same level"
                )));
            }
            count += 1;
        }
        let mut shape = Vec::with_capacity(inner.len() + 1);
        shape.push(count);
        shape.extend(inner);
        Ok(shape)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Vec<usize>, E> {
        Err(self.collector.fail(not_a_number("a string")))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Vec<usize>, E> {
        Err(self.collector.fail(not_a_number("a boolean")))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<usize>, E> {
        Err(self.collector.fail(not_a_number("null")))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<usize>, A::Error> {
        Err(self.collector.fail(not_a_number("an object")))
    }
}

fn not_a_number(kind: &str) -> String {
    format!("expected a number or a list of numbers, got {kind}")
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

/// A JSON number as the parser read it.
#[derive(Debug, Clone, Copy)]
enum JsonNumber {
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl JsonNumber {
    fn as_i64(self) -> Option<i64> {
        match self {
            JsonNumber::Int(v) => Some(v),
            JsonNumber::UInt(v) => i64::try_from(v).ok(),
            JsonNumber::Float(_) => None,
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn as_f64(self) -> f64 {
        match self {
            JsonNumber::Int(v) => v as f64,
            JsonNumber::UInt(v) => v as f64,
            JsonNumber::Float(v) => v,
        }
    }
}

impl std::fmt::Display for JsonNumber {
    /// As the client wrote it, the way `serde_json::Number` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonNumber::Int(v) => write!(f, "{v}"),
            JsonNumber::UInt(v) => write!(f, "{v}"),
            JsonNumber::Float(v) => match Number::from_f64(*v) {
                Some(number) => write!(f, "{number}"),
                None => write!(f, "{v}"),
            },
        }
    }
}

/// A tensor's values in the model's element type, filled one number at a time.
enum Typed {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Numbers never fit a BYTES input.
    Bytes,
}

impl Typed {
    fn new(dtype: DType) -> Self {
        match dtype {
            DType::Bool => Typed::Bool(Vec::new()),
            DType::U8 => Typed::U8(Vec::new()),
            DType::I8 => Typed::I8(Vec::new()),
            DType::I16 => Typed::I16(Vec::new()),
            DType::I32 => Typed::I32(Vec::new()),
            DType::I64 => Typed::I64(Vec::new()),
            DType::F16 => Typed::F16(Vec::new()),
            DType::BF16 => Typed::BF16(Vec::new()),
            DType::F32 => Typed::F32(Vec::new()),
            DType::F64 => Typed::F64(Vec::new()),
            DType::Bytes => Typed::Bytes,
        }
    }

    fn len(&self) -> usize {
        match self {
            Typed::Bool(v) => v.len(),
            Typed::U8(v) => v.len(),
            Typed::I8(v) => v.len(),
            Typed::I16(v) => v.len(),
            Typed::I32(v) => v.len(),
            Typed::I64(v) => v.len(),
            Typed::F16(v) => v.len(),
            Typed::BF16(v) => v.len(),
            Typed::F32(v) => v.len(),
            Typed::F64(v) => v.len(),
            Typed::Bytes => 0,
        }
    }

    /// Converts and appends one number; the error says why it does not fit.
    fn push(&mut self, n: JsonNumber) -> Result<(), String> {
        fn integer<T: TryFrom<i64>>(n: JsonNumber, dtype: DType) -> Result<T, String> {
            n.as_i64()
                .and_then(|v| T::try_from(v).ok())
                .ok_or_else(|| format!("{n} is not a valid {dtype} value"))
        }
        /// A finite value that stays finite in the target type.
        fn float<T>(
            n: JsonNumber,
            narrow: impl Fn(f64) -> T,
            is_finite: impl Fn(&T) -> bool,
            bits: u32,
        ) -> Result<T, String> {
            let v = n.as_f64();
            if !v.is_finite() {
                return Err(format!("{n} is not a finite number"));
            }
            let narrowed = narrow(v);
            if is_finite(&narrowed) {
                Ok(narrowed)
            } else {
                Err(format!("{v} does not fit a {bits}-bit float"))
            }
        }
        match self {
            Typed::Bool(values) => values.push(match integer::<i64>(n, DType::Bool)? {
                0 => false,
                1 => true,
                other => return Err(format!("{other} is not a boolean (0 or 1)")),
            }),
            Typed::U8(values) => values.push(integer(n, DType::U8)?),
            Typed::I8(values) => values.push(integer(n, DType::I8)?),
            Typed::I16(values) => values.push(integer(n, DType::I16)?),
            Typed::I32(values) => values.push(integer(n, DType::I32)?),
            Typed::I64(values) => values.push(integer(n, DType::I64)?),
            Typed::F16(values) => values.push(float(n, f16::from_f64, |v| v.is_finite(), 16)?),
            Typed::BF16(values) => {
                values.push(float(n, bf16::from_f64, |v| v.is_finite(), 16)?);
            }
            #[allow(clippy::cast_possible_truncation)]
            Typed::F32(values) => values.push(float(n, |v| v as f32, |v| v.is_finite(), 32)?),
            Typed::F64(values) => values.push(float(n, |v| v, |v| v.is_finite(), 64)?),
            Typed::Bytes => return Err("BYTES inputs take strings, not numbers".into()),
        }
        Ok(())
    }

    fn into_tensor(self, shape: Vec<usize>) -> Result<Tensor, String> {
        let tensor = match self {
            Typed::Bool(values) => Tensor::from_bools(shape, &values),
            Typed::U8(values) => Tensor::from_vec(shape, values),
            Typed::I8(values) => Tensor::from_vec(shape, values),
            Typed::I16(values) => Tensor::from_vec(shape, values),
            Typed::I32(values) => Tensor::from_vec(shape, values),
            Typed::I64(values) => Tensor::from_vec(shape, values),
            Typed::F16(values) => Tensor::from_vec(shape, values),
            Typed::BF16(values) => Tensor::from_vec(shape, values),
            Typed::F32(values) => Tensor::from_vec(shape, values),
            Typed::F64(values) => Tensor::from_vec(shape, values),
            Typed::Bytes => return Err("BYTES inputs take strings, not numbers".into()),
        };
        tensor.map_err(|e| e.to_string())
    }
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

/// Documented as what [`Prediction`]'s `Serialize` writes: the nested list of a single
/// output, or an object keyed by output name (with `classes` when the model classifies),
/// or the list of top classes alone.
impl utoipa::PartialSchema for Prediction {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "One row's outputs: the nested list of a single output, or an object keyed \
                 by output name (with `classes` when the model classifies), or the top \
                 classes alone.",
            ))
            .item(ArrayBuilder::new())
            .item(ObjectBuilder::new().schema_type(Type::Object))
            .into()
    }
}

impl utoipa::ToSchema for Prediction {}

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
