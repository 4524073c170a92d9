//! The HTTP endpoints of API.md.

use crate::codec::{JsonBody, PathParams, Prediction, decode_sample_raw, raw_kind};
use crate::error::ApiError;
use crate::image_input;
use crate::processing::Preprocess;
use crate::responses::{
    BatchInfo, BatchPredictResponse, ExampleBatchInner, ExampleBatchResponse, ExampleSimpleInner,
    ExampleSimpleResponse, Metadata, ModelInfo, PredictBody, PredictResponse, ProcessingTime,
};
use crate::state::{AppState, ModelHandle, ModelState};
use axum::Json;
use axum::extract::{FromRequest, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use inference_core::scheduler::{InferenceRequest, SchedulerStats};
use inference_core::{Sample, Tensor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The crate version, reported as `framework_version`.
pub const FRAMEWORK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The fixed inputs of `POST /examples/batch`.
const EXAMPLE_BATCH_INPUTS: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 5.0];
const EXAMPLE_SIMPLE_DEFAULT_INPUT: f64 = 42.0;
const PARTIAL_FAILURE_WARNING: &str =
    "Some predictions in the batch failed - see failed_indices for details";

// ---------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// One sample (a number or a nested list) for a prediction, a list of samples for a
    /// batch; a base64 picture for an image model.
    // Kept as the client's JSON text: samples are decoded straight into typed buffers.
    #[schema(value_type = serde_json::Value, example = json!([1.0]))]
    pub inputs: Box<RawValue>,
    #[serde(default)]
    pub priority: i32,
    /// Seconds the client is willing to wait.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SimpleExampleRequest {
    /// A number or a list; 42 when absent.
    #[serde(default = "default_simple_input")]
    #[schema(value_type = serde_json::Value, example = json!(42))]
    pub input: Value,
}

fn default_simple_input() -> Value {
    json!(EXAMPLE_SIMPLE_DEFAULT_INPUT)
}

// ---------------------------------------------------------------------------------------
// The shared inference path
// ---------------------------------------------------------------------------------------

/// What one request's samples produced, with every phase measured.
#[derive(Debug)]
struct Outcome {
    predictions: Vec<Option<Prediction>>,
    /// Per failed index, in index order, the sentence that says why.
    failures: Vec<(usize, String)>,
    /// Per input index: enqueue to result, in milliseconds (`None` for a failed sample).
    row_times_ms: Vec<Option<f64>>,
    processing: ProcessingTime,
    queue_ms: f64,
    total_ms: f64,
}

impl Outcome {
    fn batch_info(&self) -> BatchInfo {
        let failed = self.failures.len();
        BatchInfo {
            batch_size: self.predictions.len(),
            successful_predictions: self.predictions.len() - failed,
            failed_predictions: failed,
            failed_indices: (failed > 0).then(|| self.failures.iter().map(|(i, _)| *i).collect()),
            failure_reasons: (failed > 0).then(|| {
                self.failures
                    .iter()
                    .map(|(_, reason)| reason.clone())
                    .collect()
            }),
            processing_time: self.processing,
        }
    }

    fn warnings(&self) -> Option<Vec<String>> {
        (!self.failures.is_empty()).then(|| vec![PARTIAL_FAILURE_WARNING.to_string()])
    }

    /// Adds the timing headers every inference response carries.
    fn with_headers(&self, body: impl IntoResponse) -> Response {
        const QUEUE_TIME: HeaderName = HeaderName::from_static("x-queue-time");
        const INFERENCE_TIME: HeaderName = HeaderName::from_static("x-inference-time");
        const TOTAL_TIME: HeaderName = HeaderName::from_static("x-total-time");
        let mut response = body.into_response();
        let headers = response.headers_mut();
        for (name, ms) in [
            (QUEUE_TIME, self.queue_ms),
            (INFERENCE_TIME, self.processing.inference_ms),
            (TOTAL_TIME, self.total_ms),
        ] {
            // Written in place: `format!` would allocate a string only to copy it again. The
            // value is a whole number of microseconds (`millis`), written as integers: a
            // float with a fixed precision takes the slow exact path of the formatter.
            let micros = (ms * 1000.0).round() as u64;
            let mut text = [0u8; 32];
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let written = format_args!("{}.{:03}", micros / 1000, micros % 1000);
            if std::io::Write::write_fmt(&mut cursor, written).is_ok() {
                let written = usize::try_from(cursor.position()).unwrap_or_default();
                if let Ok(value) = HeaderValue::from_bytes(&text[..written]) {
                    headers.insert(name, value);
                }
            }
        }
        response
    }
}

/// Milliseconds, rounded to the microsecond the clocks can honestly claim.
pub(crate) fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Decodes every sample, runs the valid ones as one request through the model's scheduler,
/// and places each output back at its input's index. Fails as a whole only when no sample
/// is valid or the engine fails.
async fn infer(
    model: &ModelHandle,
    samples: Vec<Box<RawValue>>,
    priority: i32,
    timeout: Option<Duration>,
) -> Result<Outcome, ApiError> {
    let started = Instant::now();
    let decoded = decode_all(model, samples).await?;
    infer_decoded(model, decoded, priority, timeout, started).await
}

/// Decodes every sample for `model`; pictures are decoded on a blocking thread, never on
/// the async runtime.
async fn decode_all(
    model: &ModelHandle,
    samples: Vec<Box<RawValue>>,
) -> Result<Vec<Result<Sample, String>>, ApiError> {
    let spec = &model.info().model;
    match &model.processing.preprocess {
        None => Ok(samples.iter().map(|v| decode_sample_raw(v, spec)).collect()),
        Some(preprocess) => {
            // The blocking thread owns what it reads; pictures dwarf these copies.
            let (spec, preprocess) = (spec.clone(), preprocess.clone());
            let max_pixels = model.processing.max_image_pixels;
            tokio::task::spawn_blocking(move || {
                samples
                    .iter()
                    .map(|value| decode_with_image(value, &spec, &preprocess, max_pixels))
                    .collect()
            })
            .await
            .map_err(|e| ApiError::Internal(format!("image decoding failed: {e}")))
        }
    }
}

/// A string sample is a base64 picture; anything else decodes as numbers.
fn decode_with_image(
    value: &RawValue,
    spec: &inference_core::ModelSpec,
    preprocess: &Preprocess,
    max_pixels: u64,
) -> Result<Sample, String> {
    if raw_kind(value) != "a string" {
        return decode_sample_raw(value, spec);
    }
    let text: String = serde_json::from_str(value.get()).map_err(|e| e.to_string())?;
    let bytes = image_input::decode_base64(&text).map_err(|e| e.to_string())?;
    image_sample(&bytes, preprocess, max_pixels)
}

/// One picture's bytes through the model's image preprocessing.
pub fn image_sample(
    bytes: &[u8],
    preprocess: &Preprocess,
    max_pixels: u64,
) -> Result<Sample, String> {
    let Preprocess::Image(image) = preprocess;
    let values = image_input::preprocess(bytes, image, max_pixels).map_err(|e| e.to_string())?;
    let tensor =
        Tensor::from_f32(image.sample_shape().to_vec(), values).map_err(|e| e.to_string())?;
    Ok(Sample::new(vec![tensor]))
}

/// Runs the valid samples as one request through the model's scheduler and places each
/// output back at its input's index. Fails as a whole only when no sample is valid or the
/// engine fails.
async fn infer_decoded(
    model: &ModelHandle,
    decoded: Vec<Result<Sample, String>>,
    priority: i32,
    timeout: Option<Duration>,
    started: Instant,
) -> Result<Outcome, ApiError> {
    let spec = &model.info().model;
    let count = decoded.len();
    let mut valid = Vec::with_capacity(count);
    let mut valid_indices = Vec::with_capacity(count);
    let mut invalid = Vec::new();
    for (index, sample) in decoded.into_iter().enumerate() {
        match sample {
            Ok(sample) => {
                valid.push(sample);
                valid_indices.push(index);
            }
            Err(reason) => invalid.push((index, reason)),
        }
    }
    if valid.is_empty() {
        return Err(ApiError::UnprocessableList(
            invalid
                .into_iter()
                .map(|(i, reason)| format!("input {i}: {reason}"))
                .collect(),
        ));
    }
    let mut failures: Vec<(usize, String)> = invalid
        .into_iter()
        .map(|(i, reason)| {
            (
                i,
                format!("Input validation failed for index {i}: {reason}"),
            )
        })
        .collect();
    let preprocessing = started.elapsed();

    let request = InferenceRequest {
        samples: valid,
        priority,
        timeout,
    };
    let response = model.submit(request).await?;

    let post_started = Instant::now();
    let mut predictions: Vec<Option<Prediction>> = vec![None; count];
    let mut row_times_ms = vec![None; count];
    for ((index, output), latency) in valid_indices
        .iter()
        .zip(response.outputs)
        .zip(&response.row_latencies)
    {
        // JSON has no NaN or infinity: such an output is this sample's failure, never a
        // `null` inside a successful answer.
        if let Some(reason) = crate::codec::non_finite_output(spec, &output) {
            failures.push((
                *index,
                format!("Inference failed for index {index}: {reason}"),
            ));
            continue;
        }
        let mut prediction = Prediction::new(spec, output);
        if let Some(classification) = &model.processing.classification {
            prediction = prediction.classify(classification);
        }
        predictions[*index] = Some(prediction);
        row_times_ms[*index] = Some(millis(*latency));
    }
    let postprocessing = post_started.elapsed();
    if predictions.iter().all(Option::is_none) {
        let reasons: Vec<String> = failures.into_iter().map(|(_, reason)| reason).collect();
        return Err(ApiError::Internal(reasons.join("; ")));
    }
    failures.sort_by_key(|(index, _)| *index);
    Ok(Outcome {
        predictions,
        failures,
        row_times_ms,
        processing: ProcessingTime {
            preprocessing_ms: millis(preprocessing),
            inference_ms: millis(response.inference_time),
            postprocessing_ms: millis(postprocessing),
        },
        queue_ms: millis(response.queue_time),
        total_ms: millis(started.elapsed()),
    })
}

/// One sample through [`infer`]; its failure reads as one sentence, not a list.
async fn infer_one(
    model: &ModelHandle,
    sample: Box<RawValue>,
    priority: i32,
    timeout: Option<Duration>,
) -> Result<(Outcome, Prediction), ApiError> {
    let started = Instant::now();
    let decoded = decode_all(model, vec![sample]).await?;
    infer_one_decoded(model, decoded, priority, timeout, started).await
}

async fn infer_one_decoded(
    model: &ModelHandle,
    decoded: Vec<Result<Sample, String>>,
    priority: i32,
    timeout: Option<Duration>,
    started: Instant,
) -> Result<(Outcome, Prediction), ApiError> {
    let mut outcome = infer_decoded(model, decoded, priority, timeout, started)
        .await
        .map_err(|err| match err {
            ApiError::UnprocessableList(mut reasons) if reasons.len() == 1 => {
                let reason = reasons.remove(0);
                let reason = reason.strip_prefix("input 0: ").unwrap_or(&reason);
                ApiError::Unprocessable(reason.to_string())
            }
            other => other,
        })?;
    let prediction = outcome.predictions[0]
        .take()
        .ok_or_else(|| ApiError::Internal("the sample produced no output".into()))?;
    Ok((outcome, prediction))
}

fn timeout_of(seconds: Option<f64>) -> Result<Option<Duration>, ApiError> {
    seconds
        .map(|s| {
            if s > 0.0 {
                Duration::try_from_secs_f64(s).ok()
            } else {
                None
            }
            .ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "timeout must be a positive number of seconds, got {s}"
                ))
            })
        })
        .transpose()
}

/// A client's priority, bounded to the configured levels so that no client can put itself
/// so far ahead that aging never lets anyone else through.
fn priority_of(state: &AppState, priority: i32) -> Result<i32, ApiError> {
    let levels = state.config().batching.priority_levels;
    match u32::try_from(priority) {
        Ok(level) if level < levels => Ok(priority),
        _ => Err(ApiError::Unprocessable(format!(
            "priority must be an integer from 0 to {} (batching.priority_levels = {levels}), got {priority}",
            levels.saturating_sub(1)
        ))),
    }
}

/// The request's id, which `crate::edge` sets on every request: an extractor that copies
/// only it (a `HeaderMap` extractor copies every header, and its table, per request).
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    fn of(headers: &HeaderMap) -> Self {
        Self(
            headers
                .get("x-request-id")
                .cloned()
                .unwrap_or(HeaderValue::from_static("")),
        )
    }

    fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.headers))
    }
}

/// ISO 8601 UTC with milliseconds, e.g. `2025-08-14T10:30:00.000Z`.
pub fn timestamp() -> String {
    let mut text = String::with_capacity("2025-08-14T10:30:00.000Z".len());
    crate::clock::push_now(&mut text, crate::clock::Fraction::Millis);
    text
}

fn model_info(model: &ModelHandle) -> ModelInfo {
    model_info_of(model.info())
}

pub(crate) fn model_info_of(info: &inference_core::EngineInfo) -> ModelInfo {
    ModelInfo {
        model: info.model.name.clone(),
        backend: info.backend.clone(),
        device: info.device.clone(),
    }
}

/// Per-sample shapes; `batch` prepends the batch dimension.
fn metadata(model: &ModelHandle, batch: Option<usize>) -> Metadata {
    metadata_of(model.info(), batch)
}

pub(crate) fn metadata_of(info: &inference_core::EngineInfo, batch: Option<usize>) -> Metadata {
    let shape = |specs: &[inference_core::TensorSpec]| -> Vec<i64> {
        let per_sample = specs.first().map(|s| s.shape.clone()).unwrap_or_default();
        batch
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
            .into_iter()
            .chain(per_sample)
            .collect()
    };
    Metadata {
        framework_version: FRAMEWORK_VERSION,
        model_version: info.model.version.clone(),
        backend: info.backend.clone(),
        device: info.device.clone(),
        input_shape: shape(&info.model.inputs),
        output_shape: shape(&info.model.outputs),
        batch_processing: None,
        individual_inference_times: None,
        processing_time: None,
    }
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

/// `POST /predict`: one sample.
#[utoipa::path(
    post,
    path = "/predict",
    tag = "inference",
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The prediction", body = PredictResponse),
        crate::openapi::SeedInferenceRefusals,
    )
)]
pub async fn predict(
    State(state): State<AppState>,
    request_id: RequestId,
    JsonBody(body): JsonBody<PredictRequest>,
) -> Result<Response, ApiError> {
    let model = state.model(body.model.as_deref())?;
    let timeout = timeout_of(body.timeout)?;
    let priority = priority_of(&state, body.priority)?;
    let (outcome, prediction) = infer_one(&model, body.inputs, priority, timeout).await?;
    Ok(predict_response(&model, &request_id, outcome, prediction))
}

/// A [`PredictResponse`], written from borrowed parts and the model's pre-serialized ones
/// (the answer of every single-sample route, so the one most worth not copying).
fn predict_response(
    model: &ModelHandle,
    request_id: &RequestId,
    outcome: Outcome,
    prediction: Prediction,
) -> Response {
    let constant = model.constant_parts();
    let body = PredictBody {
        success: true,
        result: &prediction,
        prediction: &prediction,
        model_name: &model.info().model.name,
        inference_time_ms: outcome.total_ms,
        processing_time: outcome.processing,
        timestamp: &timestamp(),
        request_id: request_id.as_str(),
        model_info: &constant.model_info,
        metadata: &constant.metadata,
    };
    outcome.with_headers(json_response(&body))
}

/// A 200 with `body` as JSON, written straight into a buffer that fits a typical answer
/// (axum's `Json` starts smaller and regrows as it writes).
fn json_response(body: &impl serde::Serialize) -> Response {
    let mut bytes = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => {
            let mut response = Response::new(axum::body::Body::from(bytes));
            let headers = response.headers_mut();
            // Room for the timing headers and the request id to come, without regrowing.
            headers.reserve(8);
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => ApiError::Internal(format!("cannot write the response: {err}")).into_response(),
    }
}

/// `POST /models/{name}/predict`: one sample for the named model, as a JSON body like
/// `/predict`'s or, for an image model, the raw bytes of a PNG or JPEG picture.
#[utoipa::path(
    post,
    path = "/models/{name}/predict",
    tag = "inference",
    params(("name" = String, Path, description = "The model's name", example = "example_model")),
    request_body(content(
        (PredictRequest = "application/json"),
        (crate::openapi::Picture = "image/png"),
        (crate::openapi::Picture = "image/jpeg"),
    )),
    responses(
        (status = 200, description = "The prediction", body = PredictResponse),
        crate::openapi::SeedInferenceRefusals,
    )
)]
pub async fn model_predict(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let model = state.model(Some(&name))?;
    let request_id = RequestId::of(request.headers());
    let content_type = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("image/") {
        let Some(preprocess) = model.processing.preprocess.clone() else {
            return Err(ApiError::UnsupportedMediaType(format!(
                "model {name:?} takes no pictures (it has no [preprocess] table): send JSON"
            )));
        };
        if !["image/png", "image/jpeg"]
            .contains(&content_type.split(';').next().unwrap_or("").trim())
        {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported picture type {content_type:?}: send image/png or image/jpeg"
            )));
        }
        let started = Instant::now();
        let bytes = axum::body::Bytes::from_request(request, &state)
            .await
            .map_err(|rejection| ApiError::TooLarge(rejection.body_text()))?;
        let max_pixels = model.processing.max_image_pixels;
        let sample =
            tokio::task::spawn_blocking(move || image_sample(&bytes, &preprocess, max_pixels))
                .await
                .map_err(|e| ApiError::Internal(format!("image decoding failed: {e}")))?;
        let (outcome, prediction) =
            infer_one_decoded(&model, vec![sample], 0, None, started).await?;
        return Ok(predict_response(&model, &request_id, outcome, prediction));
    }
    let JsonBody(body) = JsonBody::<PredictRequest>::from_request(request, &state).await?;
    if body.model.as_deref().is_some_and(|m| m != name) {
        return Err(ApiError::Unprocessable(format!(
            "the body names model {:?} but the path names {name:?}",
            body.model.unwrap_or_default()
        )));
    }
    let timeout = timeout_of(body.timeout)?;
    let priority = priority_of(&state, body.priority)?;
    let (outcome, prediction) = infer_one(&model, body.inputs, priority, timeout).await?;
    Ok(predict_response(&model, &request_id, outcome, prediction))
}

/// `POST /predict/batch`: many samples; a bad one fails only itself.
#[utoipa::path(
    post,
    path = "/predict/batch",
    tag = "inference",
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One prediction per sample (null for a failed one)", body = BatchPredictResponse),
        crate::openapi::SeedInferenceRefusals,
    )
)]
pub async fn predict_batch(
    State(state): State<AppState>,
    request_id: RequestId,
    JsonBody(body): JsonBody<PredictRequest>,
) -> Result<Response, ApiError> {
    let model = state.model(body.model.as_deref())?;
    batch_response(&state, &model, &request_id, body).await
}

/// `POST /models/{name}/predict/batch`: `/predict/batch` for the named model.
#[utoipa::path(
    post,
    path = "/models/{name}/predict/batch",
    tag = "inference",
    params(("name" = String, Path, description = "The model's name", example = "example_model")),
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One prediction per sample (null for a failed one)", body = BatchPredictResponse),
        crate::openapi::SeedInferenceRefusals,
    )
)]
pub async fn model_predict_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    request_id: RequestId,
    JsonBody(body): JsonBody<PredictRequest>,
) -> Result<Response, ApiError> {
    if body.model.as_deref().is_some_and(|m| m != name) {
        return Err(ApiError::Unprocessable(format!(
            "the body names model {:?} but the path names {name:?}",
            body.model.unwrap_or_default()
        )));
    }
    let model = state.model(Some(&name))?;
    batch_response(&state, &model, &request_id, body).await
}

async fn batch_response(
    state: &AppState,
    model: &ModelHandle,
    request_id: &RequestId,
    body: PredictRequest,
) -> Result<Response, ApiError> {
    let timeout = timeout_of(body.timeout)?;
    let Ok(samples) = serde_json::from_str::<Vec<Box<RawValue>>>(body.inputs.get()) else {
        return Err(ApiError::Unprocessable(
            "inputs must be a list of samples".into(),
        ));
    };
    if samples.is_empty() {
        return Err(ApiError::Unprocessable(
            "inputs is empty: send at least one sample".into(),
        ));
    }
    let cap = state.config().server.max_batch_inputs;
    if samples.len() > cap {
        return Err(ApiError::TooLarge(format!(
            "{} samples in one request; the limit is {cap} (server.max_batch_inputs)",
            samples.len()
        )));
    }
    let count = samples.len();
    let priority = priority_of(state, body.priority)?;
    let outcome = infer(model, samples, priority, timeout).await?;
    let batch_info = outcome.batch_info();
    let mut meta = metadata(model, Some(count));
    meta.batch_processing = Some(true);
    meta.individual_inference_times = Some(outcome.row_times_ms.clone());
    let body = BatchPredictResponse {
        success: batch_info.successful_predictions > 0,
        results: outcome.predictions.clone(),
        predictions: outcome.predictions.clone(),
        batch_size: count,
        model_name: model.info().model.name.clone(),
        inference_time_ms: outcome.total_ms,
        processing_time: outcome.processing,
        timestamp: timestamp(),
        request_id: request_id.as_str().to_string(),
        batch_info,
        model_info: model_info(model),
        metadata: meta,
        warnings: outcome.warnings(),
    };
    Ok(outcome.with_headers(Json(body)))
}

/// `POST /examples/batch`: the fixed inputs 1..5 through the default model as one batch.
/// The body is ignored.
#[utoipa::path(
    post,
    path = "/examples/batch",
    tag = "inference",
    responses(
        (status = 200, description = "The fixed inputs 1..5 as one batch", body = ExampleBatchResponse),
        crate::openapi::SeedInferenceRefusals,
    )
)]
pub async fn example_batch(State(state): State<AppState>, request_id: RequestId) -> Response {
    let model = match state.default_model() {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let model = &*model;
    let samples: Vec<Box<RawValue>> = EXAMPLE_BATCH_INPUTS
        .iter()
        .filter_map(|&x| serde_json::value::to_raw_value(&x).ok())
        .collect();
    let count = samples.len();
    let outcome = match infer(model, samples, 0, None).await {
        Ok(outcome) => outcome,
        Err(err) => {
            let status = err.status();
            let status = if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                status
            };
            return (
                status,
                Json(json!({ "detail": format!("Batch inference failed: {err}") })),
            )
                .into_response();
        }
    };
    let mut meta = metadata(model, Some(count));
    meta.batch_processing = Some(true);
    meta.individual_inference_times = Some(outcome.row_times_ms.clone());
    let batch_info = outcome.batch_info();
    let body = ExampleBatchResponse {
        example: "batch_prediction",
        input_count: count,
        response: ExampleBatchInner {
            success: batch_info.successful_predictions > 0,
            predictions: outcome.predictions.clone(),
            model_name: model.info().model.name.clone(),
            inference_time_ms: outcome.total_ms,
            timestamp: timestamp(),
            request_id: request_id.as_str().to_string(),
            batch_info,
            metadata: meta,
            warnings: outcome.warnings(),
        },
    };
    outcome.with_headers(Json(body))
}

/// `POST /examples/simple`: one prediction for `input` (42 when absent).
#[utoipa::path(
    post,
    path = "/examples/simple",
    tag = "inference",
    request_body(content = Option<SimpleExampleRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "One prediction", body = ExampleSimpleResponse),
        crate::openapi::SeedInferenceRefusals,
    )
)]
pub async fn example_simple(
    State(state): State<AppState>,
    request_id: RequestId,
    JsonBody(body): JsonBody<SimpleExampleRequest>,
) -> Result<Response, ApiError> {
    let model = state.default_model()?;
    let model = &*model;
    let input = serde_json::value::to_raw_value(&body.input)
        .map_err(|e| ApiError::Unprocessable(format!("invalid input: {e}")))?;
    let (outcome, prediction) = infer_one(model, input, 0, None).await?;
    let mut meta = metadata(model, None);
    meta.processing_time = Some(outcome.processing);
    let response = ExampleSimpleResponse {
        example: "simple_prediction",
        input: body.input,
        response: ExampleSimpleInner {
            success: true,
            prediction,
            model_name: model.info().model.name.clone(),
            inference_time_ms: outcome.total_ms,
            timestamp: timestamp(),
            request_id: request_id.as_str().to_string(),
            metadata: meta,
        },
    };
    Ok(outcome.with_headers(Json(response)))
}

/// Resident memory of this process, read from `/proc` (None where it is not available).
fn resident_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn engine_stats(stats: &SchedulerStats) -> Value {
    json!({
        "requests_processed": stats.requests_processed,
        "batches_processed": stats.batches_processed,
        "average_batch_size": stats.average_batch_size,
        "errors": stats.errors,
        "average_processing_time": stats.average_row_latency_ms,
        "throughput_rps": stats.requests_per_second,
        "queue_size": stats.queue_size,
        "running": stats.running,
        "memory_usage": { "cpu_memory_mb": resident_memory_mb() },
    })
}

/// Each model's state, with its error when it failed.
fn model_states(state: &AppState) -> Value {
    let states: serde_json::Map<String, Value> = state
        .entries()
        .into_iter()
        .map(|entry| {
            let mut value = json!({ "state": entry.state });
            if let Some(error) = entry.error {
                value["error"] = json!(error);
            }
            (entry.name, value)
        })
        .collect();
    Value::Object(states)
}

/// `GET /health`: every model's state and the default model's readiness, read from state
/// (no forward pass on the request's path; `test_inference_ms` is the cached probe's). 503
/// while the server drains, until the default model is ready, when none of its instances is
/// live, or when its latest probe failed.
#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    responses(
        (status = 200, description = "Healthy", body = crate::openapi::Health),
        (status = 503, description = "Not healthy: draining, the default model not ready, no live instance or a failed probe", body = crate::openapi::Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let models = model_states(&state);
    let draining = state.is_draining();
    let model = match state.default_model() {
        Ok(model) => model,
        Err(err) => {
            let body = json!({
                "healthy": false,
                "checks": {
                    "model_loaded": false,
                    "model": state.default_model_name(),
                    "draining": draining,
                    "detail": err.to_string(),
                },
                "models": models,
                "timestamp": timestamp(),
            });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    let info = model.info();
    let stats = model.scheduler.stats();
    let engine = model.scheduler.engine();
    let live_instances = engine.live_instances();
    let probe = model.probe.latest(engine);
    let inference_healthy = probe.as_ref().is_none_or(|p| p.healthy);
    let capacity = model.scheduler.config().max_queue_size;
    // Healthy while at most 90% of the queue is taken: past that, 429s are imminent.
    let queue_healthy = stats.queue_size * 10 <= capacity * 9;
    let healthy = !draining && stats.running && live_instances > 0 && inference_healthy;
    let mut checks = json!({
        "engine_running": stats.running,
        "model_loaded": true,
        "backend": info.backend,
        "device": info.device,
        "model": info.model.name,
        "queue_size": stats.queue_size,
        "queue_healthy": queue_healthy,
        "test_inference_ms": probe.as_ref().map(|p| millis(p.took)),
        "probe_age_s": probe.as_ref().map(|p| p.at.elapsed().as_secs_f64()),
        "inference_healthy": inference_healthy,
        "instances": info.instances,
        "live_instances": live_instances,
        "draining": draining,
    });
    if let Some(error) = probe.and_then(|p| p.error) {
        checks["inference_error"] = json!(error);
    }
    if let Some(outage) = model.outage() {
        checks["instance_error"] = json!(outage);
    }
    let body = json!({
        "healthy": healthy,
        "checks": checks,
        "models": models,
        "timestamp": timestamp(),
        "engine_stats": engine_stats(&stats),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /stats`: the engine statistics plus latency percentiles and batching detail.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "server",
    responses(
        (status = 200, description = "The default model's statistics", body = crate::openapi::Stats),
        (status = 404, description = "Unknown model", body = crate::openapi::Detail),
        (status = 503, description = "The model is not ready, or the server is shutting down", body = crate::openapi::Detail),
    )
)]
pub async fn stats(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let model = state.default_model()?;
    let stats = model.scheduler.stats();
    let mut body = engine_stats(&stats);
    let extra = json!({
        "model_name": model.info().model.name,
        "backend": model.info().backend,
        "device": model.info().device,
        "requests_failed": stats.requests_failed,
        "rejected": stats.rejected,
        "expired": stats.expired,
        "cancelled": stats.cancelled,
        "rows_processed": stats.rows_processed,
        "rows_per_second": stats.rows_per_second,
        "max_batch_size_seen": stats.max_batch_size_seen,
        "batch_size_histogram": stats.batch_size_histogram,
        "average_queue_time_ms": stats.average_queue_time_ms,
        "average_inference_time_ms": stats.average_inference_time_ms,
        "average_row_latency_ms": stats.average_row_latency_ms,
        "latency_percentiles_ms": {
            "p50": stats.latency_p50_ms,
            "p95": stats.latency_p95_ms,
            "p99": stats.latency_p99_ms,
        },
        "uptime_seconds": stats.uptime.as_secs_f64(),
        "timestamp": timestamp(),
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut body, extra) {
        base.extend(more);
    }
    Ok(Json(body))
}

/// One model of the repository as `/models` lists it.
fn model_document(state: &AppState, entry: &crate::state::ModelEntry) -> Value {
    let mut doc = json!({
        "name": entry.name,
        "state": entry.state,
        "loaded": entry.handle.is_some(),
        "default": entry.name == state.default_model_name(),
        "dir": entry.dir.as_ref().map(|d| d.display().to_string()),
        "error": entry.error,
        "load_time_ms": entry.load_time.map(millis),
    });
    if let Some(handle) = &entry.handle {
        let info = handle.info();
        let meta = metadata(handle, None);
        let batching = handle.scheduler.config();
        let extra = json!({
            "version": handle.version,
            "description": handle.description,
            "backend": info.backend,
            "device": info.device,
            "instances": info.instances,
            "input_shape": meta.input_shape,
            "output_shape": meta.output_shape,
            "inputs": info.model.inputs,
            "outputs": info.model.outputs,
            "batching": {
                "max_batch_size": batching.max_batch_size,
                "max_queue_delay_ms": batching.max_queue_delay.as_secs_f64() * 1000.0,
                "max_queue_size": batching.max_queue_size,
            },
            "accepts_images": handle.processing.preprocess.is_some(),
            "classifies": handle.processing.classification.is_some(),
        });
        if let (Value::Object(base), Value::Object(more)) = (&mut doc, extra) {
            base.extend(more);
        }
    }
    doc
}

/// `GET /models`: every model of the repository, served or not, with its state.
#[utoipa::path(
    get,
    path = "/models",
    tag = "models",
    responses(
        (status = 200, description = "Every model of the repository", body = crate::openapi::ModelList),
    )
)]
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .entries()
        .iter()
        .map(|entry| model_document(&state, entry))
        .collect();
    Json(json!({
        "models": models,
        "default_model": state.default_model_name(),
        "count": models.len(),
    }))
}

/// `GET /models/{name}`: one model's document.
#[utoipa::path(
    get,
    path = "/models/{name}",
    tag = "models",
    params(("name" = String, Path, description = "The model's name", example = "example_model")),
    responses(
        (status = 200, description = "The model", body = crate::openapi::ModelDocument),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::Detail),
        (status = 404, description = "Unknown model", body = crate::openapi::Detail),
        (status = 422, description = "JSON that does not fit the endpoint or the model", body = crate::openapi::Detail),
    )
)]
pub async fn model(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    crate::repository::check_name(&name).map_err(ApiError::Unprocessable)?;
    let entry = state
        .entries()
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no model named {name:?}")))?;
    Ok(Json(model_document(&state, &entry)))
}

/// `POST /models/{name}/load`: loads the model from the repository, or reloads it from disk
/// (the old version serves until the new one is ready).
#[utoipa::path(
    post,
    path = "/models/{name}/load",
    tag = "models",
    params(("name" = String, Path, description = "The model's name", example = "example_model")),
    responses(
        (status = 200, description = "The model, loaded", body = crate::openapi::ModelDocument),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::Detail),
        (status = 404, description = "No such model in the repository", body = crate::openapi::Detail),
        (status = 422, description = "Not a model name, or the model cannot be loaded", body = crate::openapi::Detail),
        (status = 503, description = "The model was unloaded while it loaded", body = crate::openapi::Detail),
    )
)]
pub async fn load_model(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    state.load(&name).await?;
    let entry = state
        .entries()
        .into_iter()
        .find(|e| e.name == name && e.state == ModelState::Ready)
        .ok_or_else(|| ApiError::Unavailable(format!("model {name:?} was unloaded meanwhile")))?;
    Ok(Json(model_document(&state, &entry)))
}

/// `DELETE /models/{name}`: stops serving the model once what it accepted is answered.
#[utoipa::path(
    delete,
    path = "/models/{name}",
    tag = "models",
    params(("name" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model is no longer served", body = crate::openapi::Unloaded),
        (status = 400, description = "A path segment that is not UTF-8", body = crate::openapi::Detail),
        (status = 404, description = "No such model is loaded", body = crate::openapi::Detail),
        (status = 422, description = "Not a model name", body = crate::openapi::Detail),
    )
)]
pub async fn unload_model(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    state.unload(&name).await?;
    Ok(Json(json!({ "name": name, "unloaded": true })))
}

/// `GET /config`: the effective configuration, secrets redacted.
#[utoipa::path(
    get,
    path = "/config",
    tag = "server",
    responses(
        (status = 200, description = "The effective configuration, secrets redacted", body = Object),
    )
)]
pub async fn config(State(state): State<AppState>) -> Json<Value> {
    let mut value = serde_json::to_value(state.config()).unwrap_or(Value::Null);
    redact(&mut value);
    Json(value)
}

/// Replaces the value of every key that looks like a secret.
fn redact(value: &mut Value) {
    const SECRET_WORDS: [&str; 4] = ["key", "token", "secret", "password"];
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| lower.contains(w)) && !inner.is_null() {
                    *inner = json!("***");
                } else {
                    redact(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `GET /`: what this server is and where its endpoints are.
#[utoipa::path(
    get,
    path = "/",
    tag = "server",
    responses(
        (status = 200, description = "What this server is and where its endpoints are", body = crate::openapi::Root),
    )
)]
pub async fn root(State(state): State<AppState>) -> Json<Value> {
    let model = state.default_model().ok();
    let info = model.as_ref().map(|m| m.info());
    Json(json!({
        "name": "inference-server",
        "description": "PyTorch Inference Framework API, served in Rust",
        "version": FRAMEWORK_VERSION,
        "status": "running",
        "timestamp": timestamp(),
        "default_model": state.default_model_name(),
        "backend": info.map(|i| i.backend.clone()),
        "device": info.map(|i| i.device.clone()),
        "models": state.model_names(),
        "uptime_seconds": state.started().elapsed().as_secs_f64(),
        "endpoints": {
            "root": "GET /",
            "health": "GET /health",
            "liveness": "GET /health/live",
            "readiness": "GET /health/ready",
            "metrics": "GET /metrics",
            "openapi": "GET /openapi.json",
            "docs": "GET /docs",
            "ui": "GET /ui",
            "models": "GET /models",
            "model": "GET /models/{name}",
            "model_predict": "POST /models/{name}/predict",
            "model_predict_batch": "POST /models/{name}/predict/batch",
            "model_load": "POST /models/{name}/load",
            "model_unload": "DELETE /models/{name}",
            "stats": "GET /stats",
            "config": "GET /config",
            "predict": "POST /predict",
            "predict_batch": "POST /predict/batch",
            "example_simple": "POST /examples/simple",
            "example_batch": "POST /examples/batch",
        },
    }))
}

pub async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "detail": format!("method {method} is not allowed on {}", uri.path()) })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_secret_values_only() {
        let mut value = json!({"server": {"api_key": "abc", "port": 1}, "token": null});
        redact(&mut value);
        assert_eq!(
            value,
            json!({"server": {"api_key": "***", "port": 1}, "token": null})
        );
    }

    #[test]
    fn timeout_must_be_positive_and_finite() {
        assert_eq!(timeout_of(None).unwrap(), None);
        assert_eq!(
            timeout_of(Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(timeout_of(Some(0.0)).is_err());
        assert!(timeout_of(Some(-1.0)).is_err());
        assert!(timeout_of(Some(1e30)).is_err());
    }

    #[test]
    fn the_written_prediction_reads_as_the_documented_response() {
        use inference_core::InferenceEngine;
        let engine = inference_core::testing::FakeEngine::new();
        let info = engine.info();
        let constant = crate::state::ConstantParts::of(info);
        let output = Tensor::from_f32(vec![2], vec![0.5, 0.25]).unwrap();
        let prediction = Prediction::new(&info.model, Sample::new(vec![output]));
        let processing = ProcessingTime {
            preprocessing_ms: 0.01,
            inference_ms: 0.2,
            postprocessing_ms: 0.003,
        };
        let written = PredictBody {
            success: true,
            result: &prediction,
            prediction: &prediction,
            model_name: &info.model.name,
            inference_time_ms: 0.25,
            processing_time: processing,
            timestamp: "2026-12-06T00:45:37.123Z",
            request_id: "id-1",
            model_info: &constant.model_info,
            metadata: &constant.metadata,
        };
        let documented = PredictResponse {
            success: true,
            result: prediction.clone(),
            prediction: prediction.clone(),
            model_name: info.model.name.clone(),
            inference_time_ms: 0.25,
            processing_time: processing,
            timestamp: "2026-12-06T00:45:37.123Z".into(),
            request_id: "id-1".into(),
            model_info: model_info_of(info),
            metadata: metadata_of(info, None),
        };
        let written = String::from_utf8(serde_json::to_vec(&written).unwrap()).unwrap();
        let documented = serde_json::to_string(&documented).unwrap();
        assert_eq!(written, documented);
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let ts = timestamp();
        assert_eq!(ts.len(), "2025-08-14T10:30:00.000Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
        assert!(chrono::DateTime::parse_from_rfc3339(&ts).is_ok());
    }
}
