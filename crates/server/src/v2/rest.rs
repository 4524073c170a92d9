//! The protocol over HTTP: the JSON inference header with the binary tensor data extension
//! (a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor's raw
//! contents in input order), the response in the same form, and the axum handlers.

use super::V2Error;
use super::service::{self, InferResponse};
use super::tensors::{self, InferRequest, NamedTensor, RequestedOutput};
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use inference_core::{DType, Tensor, bf16, f16};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde::{Deserialize, Serialize as DeriveSerialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::Duration;

/// The header that says how long the JSON part of a body is, in requests and responses.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Deepest nesting of a tensor's `data`: deeper than any tensor a model takes.
const MAX_DATA_DEPTH: usize = 32;

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct RequestHeader<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<InputHeader<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputHeader>>,
}

#[derive(Debug, Deserialize)]
struct InputHeader<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Kept as the client's text: decoded straight into the datatype's buffer once the
    /// datatype is known, whatever the order of the fields.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct OutputHeader {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Parses a request body: its first `header_len` bytes (the whole body when `None`) are the
/// JSON inference header, and the rest holds the raw contents of every input whose
/// `binary_data_size` parameter is set, one after the other in input order. Every size is
/// checked against the body and against its tensor's shape and datatype (`BYTES` elements
/// behind their 4-byte little-endian lengths) before anything is allocated for it; binary
/// contents are shared with `body`, not copied, when aligned.
pub fn parse_binary_request(
    body: &Bytes,
    header_len: Option<usize>,
) -> Result<InferRequest, V2Error> {
    let (header, binary) = match header_len {
        None => (&body[..], Bytes::new()),
        Some(len) if len > body.len() => {
            return Err(V2Error::bad_request(format!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(len) => (&body[..len], body.slice(len..)),
    };
    let parsed = parse_header(header)?;
    let parameters = parsed.parameters.unwrap_or_default();
    if parameters
        .get("sequence_id")
        .is_some_and(|id| id != &Value::from(0) && id != &Value::from(""))
    {
        return Err(V2Error::bad_request(
            "sequence_id: sequence batching is not supported",
        ));
    }
    let binary_data_output = bool_parameter(&parameters, "binary_data_output", "the request")?;
    let priority = uint_parameter(&parameters, "priority", "the request")?.unwrap_or(0);
    let timeout = uint_parameter(&parameters, "timeout", "the request")?
        .filter(|&us| us > 0)
        .map(Duration::from_micros);

    let mut offset = 0usize;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in parsed.inputs {
        let what = format!("input '{}'", input.name);
        let dtype = tensors::datatype(&input.datatype)
            .map_err(|e| V2Error::bad_request(format!("{what}: {e}")))?;
        let shape = tensors::shape_from_dims(&input.shape, &what)?;
        let parameters = input.parameters.unwrap_or_default();
        refuse_shared_memory(&parameters, &what)?;
        let size = uint_parameter(&parameters, "binary_data_size", &what)?;
        let tensor = match (size, input.data) {
            (Some(_), Some(_)) => {
                return Err(V2Error::bad_request(format!(
                    "{what} has both data and the binary_data_size parameter"
                )));
            }
            (Some(size), None) => {
                if header_len.is_none() {
                    return Err(V2Error::bad_request(format!(
                        "{what} has binary_data_size but the request has no \
                         Inference-Header-Content-Length header"
                    )));
                }
                let end = usize::try_from(size)
                    .ok()
                    .and_then(|size| offset.checked_add(size))
                    .filter(|&end| end <= binary.len())
                    .ok_or_else(|| {
                        V2Error::bad_request(format!(
                            "the binary data of {what} ({size} bytes from offset {offset}) runs \
                             past the end of the body ({} bytes after the header)",
                            binary.len()
                        ))
                    })?;
                let contents = binary.slice(offset..end);
                offset = end;
                tensors::tensor_from_raw(&input.name, dtype, shape, contents)?
            }
            (None, Some(data)) => decode_json_data(&what, dtype, shape, data)?,
            (None, None) => {
                return Err(V2Error::bad_request(format!(
                    "{what} has neither data nor the binary_data_size parameter"
                )));
            }
        };
        inputs.push(NamedTensor {
            name: input.name,
            tensor,
        });
    }
    if offset != binary.len() {
        return Err(V2Error::bad_request(format!(
            "the body has {} bytes after the header but the inputs' binary_data_size add up \
             to {offset}",
            binary.len()
        )));
    }
    let outputs = parsed
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|output| {
            let what = format!("output '{}'", output.name);
            let parameters = output.parameters.unwrap_or_default();
            refuse_shared_memory(&parameters, &what)?;
            if parameters.contains_key("classification") {
                return Err(V2Error::bad_request(format!(
                    "{what}: the classification extension is not supported"
                )));
            }
            Ok(RequestedOutput {
                binary_data: bool_parameter(&parameters, "binary_data", &what)?,
                name: output.name,
            })
        })
        .collect::<Result<Vec<_>, V2Error>>()?;
    Ok(InferRequest {
        id: parsed.id,
        inputs,
        outputs,
        binary_data_output: binary_data_output.unwrap_or(false),
        priority,
        timeout,
    })
}

fn parse_header(header: &[u8]) -> Result<RequestHeader<'_>, V2Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(header);
    let parsed: RequestHeader<'_> =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_data() && path != "." {
                V2Error::bad_request(format!("invalid inference request: {path}: {inner}"))
            } else if inner.is_data() {
                V2Error::bad_request(format!("invalid inference request: {inner}"))
            } else {
                not_json(&inner)
            }
        })?;
    deserializer.end().map_err(|e| not_json(&e))?;
    Ok(parsed)
}

fn not_json(err: &serde_json::Error) -> V2Error {
    V2Error::bad_request(format!("the inference header is not valid JSON: {err}"))
}

fn refuse_shared_memory(parameters: &Map<String, Value>, what: &str) -> Result<(), V2Error> {
    if parameters.contains_key("shared_memory_region") {
        return Err(V2Error::bad_request(format!(
            "{what}: the shared memory extensions are not supported"
        )));
    }
    Ok(())
}

fn bool_parameter(
    parameters: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<bool>, V2Error> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(V2Error::bad_request(format!(
            "{what}: parameter {key} must be true or false, got {other}"
        ))),
    }
}

fn uint_parameter(
    parameters: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<u64>, V2Error> {
    match parameters.get(key) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            V2Error::bad_request(format!(
                "{what}: parameter {key} must be an integer of 0 or more, got {value}"
            ))
        }),
    }
}

// ---------------------------------------------------------------------------------------
// JSON tensor data
// ---------------------------------------------------------------------------------------

/// A scalar of a JSON `data` list, as the parser read it.
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
}

impl std::fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(v) => write!(f, "{v}"),
            Scalar::Int(v) => write!(f, "{v}"),
            Scalar::UInt(v) => write!(f, "{v}"),
            Scalar::Float(v) => write!(f, "{v}"),
            Scalar::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// An element type a JSON scalar converts to; the error says why it does not.
trait FromScalar: Sized {
    const DTYPE: DType;
    fn from_scalar(value: Scalar<'_>) -> Option<Self>;
}

impl FromScalar for bool {
    const DTYPE: DType = DType::Bool;
    fn from_scalar(value: Scalar<'_>) -> Option<Self> {
        match value {
            Scalar::Bool(v) => Some(v),
            _ => None,
        }
    }
}

macro_rules! integers {
    ($($ty:ty => $dtype:ident),*) => {$(
        impl FromScalar for $ty {
            const DTYPE: DType = DType::$dtype;
            fn from_scalar(value: Scalar<'_>) -> Option<Self> {
                match value {
                    Scalar::Int(v) => <$ty>::try_from(v).ok(),
                    Scalar::UInt(v) => <$ty>::try_from(v).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
integers!(u8 => U8, i8 => I8, i16 => I16, i32 => I32, i64 => I64);

/// A number as f64, for the float types; JSON has no NaN or infinity.
#[allow(clippy::cast_precision_loss)]
fn number(value: Scalar<'_>) -> Option<f64> {
    match value {
        Scalar::Int(v) => Some(v as f64),
        Scalar::UInt(v) => Some(v as f64),
        Scalar::Float(v) => Some(v),
        Scalar::Bool(_) | Scalar::Str(_) => None,
    }
}

macro_rules! floats {
    ($($ty:ty => $dtype:ident, $narrow:expr),*) => {$(
        impl FromScalar for $ty {
            const DTYPE: DType = DType::$dtype;
            fn from_scalar(value: Scalar<'_>) -> Option<Self> {
                // A number too large for the type would become infinite: refused.
                number(value).map($narrow).filter(|v: &$ty| v.is_finite())
            }
        }
    )*};
}
#[allow(clippy::cast_possible_truncation)]
fn narrow_f32(v: f64) -> f32 {
    v as f32
}
floats!(f16 => F16, f16::from_f64, bf16 => BF16, bf16::from_f64, f32 => F32, narrow_f32,
    f64 => F64, |v| v);

impl FromScalar for Bytes {
    const DTYPE: DType = DType::Bytes;
    fn from_scalar(value: Scalar<'_>) -> Option<Self> {
        match value {
            Scalar::Str(v) => Some(Bytes::copy_from_slice(v.as_bytes())),
            _ => None,
        }
    }
}

/// Where the elements of one `data` list go while it is read: at most `limit` of them.
struct Collector<T> {
    values: Vec<T>,
    limit: usize,
    /// Why reading stopped, kept apart so no parser position is appended to it.
    error: Option<String>,
}

impl<T: FromScalar> Collector<T> {
    fn push<E: serde::de::Error>(&mut self, value: Scalar<'_>) -> Result<(), E> {
        if self.values.len() >= self.limit {
            return Err(self.fail(format!("more values than the shape holds ({})", self.limit)));
        }
        match T::from_scalar(value) {
            Some(element) => {
                self.values.push(element);
                Ok(())
            }
            None => Err(self.fail(format!(
                "{value} is not a valid {} value",
                T::DTYPE.kserve_name()
            ))),
        }
    }

    fn fail<E: serde::de::Error>(&mut self, reason: String) -> E {
        let error = E::custom(&reason);
        self.error = Some(reason);
        error
    }
}

/// One level of a `data` list: a scalar or a list of levels, flattened in row-major order.
struct Level<'c, T> {
    collector: &'c mut Collector<T>,
    depth: usize,
}

impl<'de, T: FromScalar> DeserializeSeed<'de> for Level<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, json: D) -> Result<(), D::Error> {
        json.deserialize_any(self)
    }
}

impl<'de, T: FromScalar> Visitor<'de> for Level<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of values")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.collector.push(Scalar::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.collector.push(Scalar::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.collector.push(Scalar::UInt(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.collector.push(Scalar::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.collector.push(Scalar::Str(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self.collector.fail("null is not a tensor element".into()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self
            .collector
            .fail("an object is not a tensor element".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let Level { collector, depth } = self;
        if depth >= MAX_DATA_DEPTH {
            return Err(collector.fail(format!("data nested deeper than {MAX_DATA_DEPTH} lists")));
        }
        while items
            .next_element_seed(Level {
                collector: &mut *collector,
                depth: depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

fn collect<T: FromScalar>(raw: &RawValue, count: usize) -> Result<Vec<T>, String> {
    let mut collector = Collector {
        values: Vec::new(),
        limit: count,
        error: None,
    };
    let mut json = serde_json::Deserializer::from_str(raw.get());
    Level {
        collector: &mut collector,
        depth: 0,
    }
    .deserialize(&mut json)
    .map_err(|err| collector.error.take().unwrap_or_else(|| err.to_string()))?;
    if collector.values.len() != count {
        return Err(format!(
            "the shape holds {count} value(s), data has {}",
            collector.values.len()
        ));
    }
    Ok(collector.values)
}

/// Decodes an input's JSON `data` (flat, or nested lists as some clients send) into a
/// tensor of `dtype` and `shape`, converting each value as it is read.
fn decode_json_data(
    what: &str,
    dtype: DType,
    shape: Vec<usize>,
    raw: &RawValue,
) -> Result<Tensor, V2Error> {
    let count = tensors::element_count(&shape)
        .ok_or_else(|| V2Error::bad_request(format!("{what} has shape {shape:?}, too large")))?;
    let tensor = match dtype {
        DType::Bool => collect::<bool>(raw, count).and_then(|v| fit(Tensor::from_bools(shape, &v))),
        DType::U8 => collect::<u8>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::I8 => collect::<i8>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::I16 => collect::<i16>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::I32 => collect::<i32>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::I64 => collect::<i64>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::F16 => collect::<f16>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::BF16 => collect::<bf16>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::F32 => collect::<f32>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::F64 => collect::<f64>(raw, count).and_then(|v| fit(Tensor::from_vec(shape, v))),
        DType::Bytes => {
            collect::<Bytes>(raw, count).and_then(|v| fit(Tensor::from_strings(shape, v)))
        }
    };
    tensor.map_err(|reason| V2Error::bad_request(format!("{what}: {reason}")))
}

fn fit(tensor: Result<Tensor, inference_core::TensorError>) -> Result<Tensor, String> {
    tensor.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

#[derive(DeriveSerialize)]
struct ResponseHeader<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(DeriveSerialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(DeriveSerialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// A tensor's elements as one flat JSON list; checked by [`json_ready`] first.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn slice<T: inference_core::Element>(tensor: &Tensor) -> &[T] {
            tensor.as_slice::<T>().unwrap_or_default()
        }
        let t = self.0;
        match t.dtype() {
            DType::Bool => s.collect_seq(t.bools().into_iter().flatten()),
            DType::U8 => s.collect_seq(slice::<u8>(t)),
            DType::I8 => s.collect_seq(slice::<i8>(t)),
            DType::I16 => s.collect_seq(slice::<i16>(t)),
            DType::I32 => s.collect_seq(slice::<i32>(t)),
            DType::I64 => s.collect_seq(slice::<i64>(t)),
            DType::F16 => s.collect_seq(slice::<f16>(t).iter().map(|v| v.to_f32())),
            DType::BF16 => s.collect_seq(slice::<bf16>(t).iter().map(|v| v.to_f32())),
            DType::F32 => s.collect_seq(slice::<f32>(t)),
            DType::F64 => s.collect_seq(slice::<f64>(t)),
            DType::Bytes => s.collect_seq(
                t.strings()
                    .unwrap_or_default()
                    .iter()
                    .map(|item| std::str::from_utf8(item).unwrap_or_default()),
            ),
        }
    }
}

/// Why an output cannot be sent as JSON (a NaN or infinity, a `BYTES` element that is not
/// UTF-8), so it fails with a reason instead of turning into `null` or empty text.
fn json_ready(name: &str, tensor: &Tensor) -> Result<(), V2Error> {
    let advice = "request it with the binary_data parameter";
    if let Some(items) = tensor.strings() {
        if let Some(index) = items.iter().position(|i| std::str::from_utf8(i).is_err()) {
            return Err(V2Error::Internal(format!(
                "element {index} of output '{name}' is not UTF-8, which JSON cannot carry: {advice}"
            )));
        }
        return Ok(());
    }
    if matches!(
        tensor.dtype(),
        DType::F16 | DType::BF16 | DType::F32 | DType::F64
    ) && let Some(values) = tensor.to_f64_vec()
        && let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite())
    {
        return Err(V2Error::Internal(format!(
            "the model produced {value} at element {index} of output '{name}', which JSON \
             cannot carry: {advice}"
        )));
    }
    Ok(())
}

/// A response body: the JSON header, then the raw contents of every output sent in binary,
/// in output order. Returns the body and, when any output is binary, the header's length.
pub fn encode_response(
    response: &InferResponse,
    binary_data_output: bool,
) -> Result<(Bytes, Option<usize>), V2Error> {
    let mut raws = Vec::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for output in &response.outputs {
        let binary = output.binary_data.unwrap_or(binary_data_output);
        let (parameters, data) = if binary {
            let raw = tensors::raw_contents(&output.tensor);
            let parameters = BinaryParameters {
                binary_data_size: raw.len(),
            };
            raws.push(raw);
            (Some(parameters), None)
        } else {
            json_ready(&output.name, &output.tensor)?;
            (None, Some(JsonData(&output.tensor)))
        };
        outputs.push(OutputJson {
            name: &output.name,
            datatype: output.tensor.dtype().kserve_name(),
            shape: output.tensor.shape(),
            parameters,
            data,
        });
    }
    let header = ResponseHeader {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        outputs,
    };
    let json = serde_json::to_vec(&header)
        .map_err(|e| V2Error::Internal(format!("cannot encode the response: {e}")))?;
    if raws.is_empty() {
        return Ok((Bytes::from(json), None));
    }
    let header_len = json.len();
    let mut body = BytesMut::with_capacity(header_len + raws.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(&json);
    for raw in &raws {
        body.extend_from_slice(raw);
    }
    Ok((body.freeze(), Some(header_len)))
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let status = match &self {
            V2Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            V2Error::NotFound(_) => StatusCode::NOT_FOUND,
            V2Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            V2Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            V2Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            V2Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if let V2Error::Overloaded { retry_after, .. } = &self {
            // Whole seconds, rounded up so clients never retry too early.
            let seconds = retry_after.as_secs_f64().ceil().max(1.0);
            if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.0}")) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// `GET /v2/health/live`: 200 while the process serves HTTP, with an empty body.
#[utoipa::path(
    get,
    path = "/v2/health/live",
    tag = "v2",
    responses((status = 200, description = "The process serves HTTP")),
)]
pub async fn server_live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: 200 once every model is ready, 503 (with the reason) before,
/// while one has failed, and while draining.
#[utoipa::path(
    get,
    path = "/v2/health/ready",
    tag = "v2",
    responses(
        (status = 200, description = "Every model is ready"),
        (status = 503, description = "A model is not ready, or the server is shutting down", body = crate::openapi::V2ErrorBody),
    )
)]
pub async fn server_ready(State(state): State<AppState>) -> Result<StatusCode, V2Error> {
    service::server_ready(&state).map(|()| StatusCode::OK)
}

/// `GET /v2`.
#[utoipa::path(
    get,
    path = "/v2",
    tag = "v2",
    responses((status = 200, description = "The server's metadata", body = service::ServerMetadata)),
)]
pub async fn server_metadata() -> Json<service::ServerMetadata> {
    Json(service::server_metadata())
}

/// `GET /v2/models/{name}`.
#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    tag = "v2",
    params(("name" = String, Path, description = "The model's name", example = "example_model")),
    responses(
        (status = 200, description = "The model's metadata", body = service::ModelMetadata),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = crate::openapi::V2ErrorBody),
        (status = 503, description = "The model is not ready, or the server is shutting down", body = crate::openapi::V2ErrorBody),
    )
)]
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<service::ModelMetadata>, V2Error> {
    let model = service::model(&state, &name, None)?;
    Ok(Json(service::model_metadata(&model)))
}

/// `GET /v2/models/{name}/versions/{version}`.
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}",
    tag = "v2",
    params(("name" = String, Path, description = "The model's name", example = "example_model"), ("version" = String, Path, description = "The model's version", example = "1")),
    responses(
        (status = 200, description = "The model's metadata", body = service::ModelMetadata),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = crate::openapi::V2ErrorBody),
        (status = 503, description = "The model is not ready, or the server is shutting down", body = crate::openapi::V2ErrorBody),
    )
)]
pub async fn model_version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<service::ModelMetadata>, V2Error> {
    let model = service::model(&state, &name, Some(&version))?;
    Ok(Json(service::model_metadata(&model)))
}

/// `GET /v2/models/{name}/ready`: 200, or 404 for an unknown model, 503 when not ready.
#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    tag = "v2",
    params(("name" = String, Path, description = "The model's name", example = "example_model")),
    responses(
        (status = 200, description = "Ready for inference"),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = crate::openapi::V2ErrorBody),
        (status = 503, description = "Loading, failed or draining", body = crate::openapi::V2ErrorBody),
    )
)]
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, V2Error> {
    service::model_ready(&state, &name, None).map(|()| StatusCode::OK)
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}/ready",
    tag = "v2",
    params(("name" = String, Path, description = "The model's name", example = "example_model"), ("version" = String, Path, description = "The model's version", example = "1")),
    responses(
        (status = 200, description = "Ready for inference"),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = crate::openapi::V2ErrorBody),
        (status = 503, description = "Loading, failed or draining", body = crate::openapi::V2ErrorBody),
    )
)]
pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, V2Error> {
    service::model_ready(&state, &name, Some(&version)).map(|()| StatusCode::OK)
}

/// `POST /v2/models/{name}/infer`.
#[utoipa::path(
    post,
    path = "/v2/models/{name}/infer",
    tag = "v2",
    params(
        ("name" = String, Path, description = "The model's name", example = "example_model"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "With the binary tensor data extension: the length of the JSON header"),
    ),
    request_body(content(
        (crate::openapi::V2InferRequest = "application/json"),
        (crate::openapi::V2InferRequest = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The outputs; `application/octet-stream` (a JSON header of Inference-Header-Content-Length bytes, then the binary outputs) when binary outputs were requested", content(
            (crate::openapi::V2InferResponse = "application/json"),
            (crate::openapi::V2InferResponse = "application/octet-stream"),
        )),
        crate::openapi::V2InferRefusals,
    )
)]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    infer_at(&state, &name, None, &headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
#[utoipa::path(
    post,
    path = "/v2/models/{name}/versions/{version}/infer",
    tag = "v2",
    params(
        ("name" = String, Path, description = "The model's name", example = "example_model"), ("version" = String, Path, description = "The model's version", example = "1"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "With the binary tensor data extension: the length of the JSON header"),
    ),
    request_body(content(
        (crate::openapi::V2InferRequest = "application/json"),
        (crate::openapi::V2InferRequest = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The outputs; `application/octet-stream` (a JSON header of Inference-Header-Content-Length bytes, then the binary outputs) when binary outputs were requested", content(
            (crate::openapi::V2InferResponse = "application/json"),
            (crate::openapi::V2InferResponse = "application/octet-stream"),
        )),
        crate::openapi::V2InferRefusals,
    )
)]
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    infer_at(&state, &name, Some(&version), &headers, body).await
}

async fn infer_at(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    let model = service::model(state, name, version)?;
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(V2Error::bad_request(format!(
            "Content-Encoding {} is not supported: send the body uncompressed",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let header_len = header_length(headers)?;
    let body = body.map_err(|rejection| {
        V2Error::bad_request(format!("cannot read the body: {}", rejection.body_text()))
    })?;
    let request = parse_binary_request(&body, header_len)?;
    let binary_data_output = request.binary_data_output;
    let response = service::infer(state, &model, request).await?;
    let (body, header_len) = encode_response(&response, binary_data_output)?;
    let mut reply = body.into_response();
    let headers = reply.headers_mut();
    let content_type = if header_len.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(length) = header_len {
        headers.insert(HEADER_LENGTH, HeaderValue::from(length));
    }
    for (name, time) in [
        ("x-queue-time", response.queue_time),
        ("x-inference-time", response.inference_time),
        ("x-total-time", response.total_time),
    ] {
        let ms = time.as_secs_f64() * 1000.0;
        if let Ok(value) = HeaderValue::from_str(&format!("{ms:.3}")) {
            headers.insert(name, value);
        }
    }
    Ok(reply)
}

/// The `Inference-Header-Content-Length` of a request, when it has one.
fn header_length(headers: &HeaderMap) -> Result<Option<usize>, V2Error> {
    headers
        .get(HEADER_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    V2Error::bad_request(format!(
                        "Inference-Header-Content-Length must be a number of bytes, got {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    ))
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A request body with a JSON header and the raw contents after it.
    fn body(header: &serde_json::Value, raw: &[&[u8]]) -> (Bytes, Option<usize>) {
        let mut bytes = serde_json::to_vec(header).unwrap();
        let len = bytes.len();
        for part in raw {
            bytes.extend_from_slice(part);
        }
        (Bytes::from(bytes), Some(len))
    }

    /// A binary request carrying every tensor as input `in{i}`.
    fn binary_request(tensors: &[Tensor]) -> (Bytes, Option<usize>) {
        let inputs: Vec<Value> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::json!({
                    "name": format!("in{i}"),
                    "shape": t.shape(),
                    "datatype": t.dtype().kserve_name(),
                    "parameters": {"binary_data_size": tensors::raw_contents(t).len()},
                })
            })
            .collect();
        let raws: Vec<Bytes> = tensors.iter().map(tensors::raw_contents).collect();
        let parts: Vec<&[u8]> = raws.iter().map(|r| &r[..]).collect();
        body(&serde_json::json!({ "inputs": inputs }), &parts)
    }

    fn error_of(body: &Bytes, header_len: Option<usize>) -> String {
        parse_binary_request(body, header_len)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn json_data_is_read_flat_or_nested_with_every_field() {
        let header = serde_json::json!({
            "id": "abc",
            "parameters": {"binary_data_output": true, "priority": 1, "timeout": 2500},
            "inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]},
                {"data": [true, false], "name": "m", "shape": [2], "datatype": "BOOL"},
                {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": false}}, {"name": "z"}],
        });
        let request = parse_binary_request(&Bytes::from(header.to_string()), None).unwrap();
        assert_eq!(request.id.as_deref(), Some("abc"));
        assert!(request.binary_data_output);
        assert_eq!(request.priority, 1);
        assert_eq!(request.timeout, Some(Duration::from_micros(2500)));
        assert_eq!(request.inputs[0].tensor.shape(), &[2, 2]);
        assert_eq!(
            request.inputs[0].tensor.as_f32().unwrap(),
            &[1.0, 2.5, 3.0, 4.0]
        );
        assert_eq!(
            request.inputs[1]
                .tensor
                .bools()
                .unwrap()
                .collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(
            request.inputs[2].tensor.strings().unwrap()[0],
            "héllo".as_bytes()
        );
        assert_eq!(request.outputs[0].binary_data, Some(false));
        assert_eq!(request.outputs[1].binary_data, None);
    }

    #[test]
    fn binary_inputs_are_sliced_from_the_body_in_order() {
        let floats: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let strings = [&3u32.to_le_bytes()[..], b"cat"].concat();
        let header = serde_json::json!({"inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32",
             "parameters": {"binary_data_size": 8}},
            {"name": "j", "shape": [1], "datatype": "INT64", "data": [7]},
            {"name": "s", "shape": [1, 1], "datatype": "BYTES",
             "parameters": {"binary_data_size": strings.len()}},
        ]});
        let (bytes, len) = body(&header, &[&floats, &strings]);
        let request = parse_binary_request(&bytes, len).unwrap();
        assert_eq!(request.inputs[0].tensor.as_f32().unwrap(), &[1.0, 2.0]);
        assert_eq!(request.inputs[1].tensor.as_slice::<i64>().unwrap(), &[7]);
        assert_eq!(request.inputs[2].tensor.strings().unwrap()[0], &b"cat"[..]);
        assert!(!request.binary_data_output);
    }

    #[test]
    fn sizes_that_do_not_add_up_are_refused() {
        let header = |size: u64| {
            serde_json::json!({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                "parameters": {"binary_data_size": size}}]})
        };
        let (bytes, len) = body(&header(8), &[&[0; 7]]);
        assert!(error_of(&bytes, len).contains("runs past the end of the body (7 bytes"));
        let (bytes, len) = body(&header(8), &[&[0; 9]]);
        assert!(error_of(&bytes, len).contains("9 bytes after the header"));
        let (bytes, len) = body(&header(4), &[&[0; 4]]);
        assert!(error_of(&bytes, len).contains("needs 8 bytes, got 4"));
        let (bytes, len) = body(&header(u64::MAX), &[&[0; 8]]);
        assert!(error_of(&bytes, len).contains("runs past the end"));
        let (bytes, len) = body(&header(8), &[&[0; 8]]);
        let err = error_of(&bytes, len.map(|l| l + 100));
        assert!(err.contains("Inference-Header-Content-Length is"), "{err}");
        assert!(error_of(&bytes, None).contains("not valid JSON"));
        let (bytes, _) = body(&header(0), &[]);
        assert!(error_of(&bytes, None).contains("no Inference-Header-Content-Length"));
    }

    #[test]
    fn malformed_headers_name_the_problem() {
        let cases = [
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP99", "data": [1]}]}"#,
                "input 'a': unknown datatype \"FP99\"",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [-2], "datatype": "FP32", "data": [1]}]}"#,
                "every dimension must be 0 or more",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1]}]}"#,
                "the shape holds 2 value(s), data has 1",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1, 2]}]}"#,
                "more values than the shape holds (1)",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}]}"#,
                "1.5 is not a valid INT32 value",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "UINT8", "data": [256]}]}"#,
                "256 is not a valid UINT8 value",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1e300]}]}"#,
                "is not a valid FP32 value",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "BOOL", "data": [1]}]}"#,
                "1 is not a valid BOOL value",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [null]}]}"#,
                "null is not a tensor element",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}"#,
                "neither data nor",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1],
                 "parameters": {"binary_data_size": 4}}]}"#,
                "both data and",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
                 "parameters": {"binary_data_output": "yes"}}"#,
                "binary_data_output must be true or false",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
                 "parameters": {"sequence_id": 7}}"#,
                "sequence batching is not supported",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
                 "outputs": [{"name": "y", "parameters": {"classification": 2}}]}"#,
                "classification extension is not supported",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                 "parameters": {"shared_memory_region": "r"}}]}"#,
                "shared memory",
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": "one", "datatype": "FP32", "data": [1]}]}"#,
                "invalid inference request: inputs[0].shape",
            ),
            (r#"{"outputs": []}"#, "missing field `inputs`"),
            (r#"{"inputs": []} trailing"#, "not valid JSON"),
        ];
        for (text, expected) in cases {
            let err = error_of(&Bytes::from(text), None);
            assert!(
                err.contains(expected),
                "{text}: {err} (expected {expected:?})"
            );
        }
        let deep = format!(
            r#"{{"inputs": [{{"name": "a", "shape": [1], "datatype": "FP32", "data": {}1{}}}]}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(error_of(&Bytes::from(deep), None).contains("nested deeper"));
    }

    fn response(outputs: Vec<tensors::OutputTensor>) -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("req".into()),
            outputs,
            queue_time: Duration::ZERO,
            inference_time: Duration::ZERO,
            total_time: Duration::ZERO,
        }
    }

    fn output(name: &str, tensor: Tensor, binary_data: Option<bool>) -> tensors::OutputTensor {
        tensors::OutputTensor {
            name: name.into(),
            tensor,
            binary_data,
        }
    }

    #[test]
    fn responses_are_json_unless_an_output_is_binary() {
        let x = Tensor::from_f32(vec![1, 2], vec![0.5, 1.0]).unwrap();
        let h = Tensor::from_vec(vec![1], vec![f16::from_f32(1.5)]).unwrap();
        let all_json = response(vec![output("x", x.clone(), None), output("h", h, None)]);
        let (bytes, len) = encode_response(&all_json, false).unwrap();
        assert_eq!(len, None);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"model_name": "m", "model_version": "1", "id": "req", "outputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.0]},
                {"name": "h", "datatype": "FP16", "shape": [1], "data": [1.5]},
            ]})
        );
        let mixed = response(vec![
            output("x", x.clone(), None),
            output("y", x, Some(false)),
        ]);
        let (bytes, len) = encode_response(&mixed, true).unwrap();
        let len = len.unwrap();
        let value: Value = serde_json::from_slice(&bytes[..len]).unwrap();
        assert_eq!(value["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(value["outputs"][0].get("data").is_none());
        assert_eq!(value["outputs"][1]["data"], serde_json::json!([0.5, 1.0]));
        assert_eq!(
            &bytes[len..],
            &[0.5f32.to_le_bytes(), 1.0f32.to_le_bytes()].concat()[..]
        );
    }

    #[test]
    fn outputs_json_cannot_carry_are_errors_not_nulls() {
        let nan = Tensor::from_f32(vec![1], vec![f32::NAN]).unwrap();
        let err = encode_response(&response(vec![output("x", nan.clone(), None)]), false);
        assert!(err.unwrap_err().to_string().contains("binary_data"));
        assert!(encode_response(&response(vec![output("x", nan, Some(true))]), false).is_ok());
        let latin = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"\xff")]).unwrap();
        let err = encode_response(&response(vec![output("s", latin, None)]), false);
        assert!(err.unwrap_err().to_string().contains("not UTF-8"));
    }

    /// Any tensor of any datatype, with its shape.
    fn any_tensor() -> impl Strategy<Value = Tensor> {
        let dtypes: Vec<DType> = DType::ALL.to_vec();
        (
            proptest::sample::select(dtypes),
            proptest::collection::vec(0usize..4, 0..4),
            any::<u64>(),
        )
            .prop_map(|(dtype, shape, seed)| {
                let count: usize = shape.iter().product();
                let mut rng = seed;
                let mut next = move || {
                    rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (rng >> 33) as u8
                };
                match dtype.size() {
                    Some(size) => {
                        let bytes: Vec<u8> = (0..count * size)
                            .map(|_| {
                                if dtype == DType::Bool {
                                    next() % 2
                                } else {
                                    next()
                                }
                            })
                            .collect();
                        Tensor::from_bytes(dtype, shape, Bytes::from(bytes)).unwrap()
                    }
                    None => {
                        let items = (0..count)
                            .map(|_| Bytes::from(vec![next(); usize::from(next() % 5)]))
                            .collect();
                        Tensor::from_strings(shape, items).unwrap()
                    }
                }
            })
    }

    proptest! {
        #[test]
        fn any_bytes_and_any_header_length_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            header_len in proptest::option::of(0usize..300),
        ) {
            let _ = parse_binary_request(&Bytes::from(bytes), header_len);
        }

        #[test]
        fn binary_requests_round_trip_every_datatype(
            tensors in proptest::collection::vec(any_tensor(), 1..4),
        ) {
            let (bytes, len) = binary_request(&tensors);
            let request = parse_binary_request(&bytes, len).unwrap();
            let parsed: Vec<Tensor> = request.inputs.into_iter().map(|i| i.tensor).collect();
            prop_assert_eq!(&parsed, &tensors);
            // Any cut of the binary part is refused, never misread.
            if let Some(total) = len.filter(|&l| l < bytes.len()) {
                prop_assert!(parse_binary_request(&bytes.slice(..bytes.len() - 1), Some(total)).is_err());
            }
        }

        #[test]
        fn mutated_requests_never_panic_and_what_parses_is_consistent(
            tensors in proptest::collection::vec(any_tensor(), 1..3),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
            shift in -6isize..6,
        ) {
            let (bytes, len) = binary_request(&tensors);
            let mut bytes = bytes.to_vec();
            for (index, mask) in flips {
                let i = index.index(bytes.len());
                bytes[i] ^= mask;
            }
            let len = len.map(|l| l.saturating_add_signed(shift));
            if let Ok(request) = parse_binary_request(&Bytes::from(bytes), len) {
                for input in request.inputs {
                    let tensor = input.tensor;
                    let count = tensors::element_count(tensor.shape()).unwrap();
                    match tensor.dtype().size() {
                        Some(size) => prop_assert_eq!(tensor.raw_bytes().unwrap().len(), count * size),
                        None => prop_assert_eq!(tensor.strings().unwrap().len(), count),
                    }
                }
            }
        }

        #[test]
        fn binary_responses_read_back_as_the_outputs(
            tensors in proptest::collection::vec(any_tensor(), 1..4),
        ) {
            let outputs = tensors
                .iter()
                .enumerate()
                .map(|(i, t)| output(&format!("out{i}"), t.clone(), None))
                .collect();
            let (bytes, len) = encode_response(&response(outputs), true).unwrap();
            let len = len.unwrap();
            let header: Value = serde_json::from_slice(&bytes[..len]).unwrap();
            let mut offset = len;
            for (i, tensor) in tensors.iter().enumerate() {
                let meta = &header["outputs"][i];
                let size = meta["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
                let shape: Vec<usize> = serde_json::from_value(meta["shape"].clone()).unwrap();
                let dtype = tensors::datatype(meta["datatype"].as_str().unwrap()).unwrap();
                let raw = bytes.slice(offset..offset + size);
                let back = tensors::tensor_from_raw("x", dtype, shape, raw).unwrap();
                prop_assert_eq!(&back, tensor);
                offset += size;
            }
            prop_assert_eq!(offset, bytes.len());
        }
    }
}
