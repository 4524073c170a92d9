//! The OpenAPI 3 document of the HTTP API and its browsable page.
//!
//! Every route of [`crate::app`] is declared with `utoipa_axum::routes!`, which takes the
//! route from the handler's `#[utoipa::path]` annotation: the route and its documentation
//! are one declaration, so the document cannot leave a route out. `GET /openapi.json`
//! serves the document, `GET /docs` Swagger UI from the crate's own copy of its assets.
//!
//! The handlers that build their answers with `json!` are documented by the types below,
//! which nothing serializes: `tests/openapi.rs` validates real answers of every operation
//! against the document, so a field that drifts from its documentation fails there.

use crate::state::AppState;
use axum::Router;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::{self, HttpMethod};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";

/// The document's header; its paths and schemas come from the router's `routes!`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "inference-server",
        description = "The PyTorch Inference Framework HTTP API, per-model routes and the \
                       KServe v2 / Open Inference Protocol REST API. Errors of the seed \
                       routes are `{\"detail\": ...}`, errors under `/v2` `{\"error\": ...}`. \
                       Try the server in a browser: [/ui](/ui)."
    ),
    tags(
        (name = "inference", description = "Predictions, admission-controlled"),
        (name = "models", description = "The model repository"),
        (name = "server", description = "Health, statistics and configuration"),
        (name = "v2", description = "KServe v2 / Open Inference Protocol"),
        (name = "ui", description = "The browser page"),
    )
)]
pub struct ApiDoc;

/// The router for the document and the UI: `/openapi.json` (added to the document itself
/// first, so it describes every route but the UI's own pages) and Swagger UI at `/docs`.
pub fn docs(mut document: openapi::OpenApi) -> Router<AppState> {
    document.paths.add_path_operation(
        DOCUMENT_PATH,
        vec![HttpMethod::Get],
        openapi::path::OperationBuilder::new()
            .operation_id(Some("openapi_document"))
            .tag("server")
            .summary(Some("This OpenAPI 3 document"))
            .response(
                "200",
                openapi::ResponseBuilder::new()
                    .description("The OpenAPI document of every route")
                    .content(
                        "application/json",
                        openapi::ContentBuilder::new()
                            .schema(Some(
                                openapi::ObjectBuilder::new()
                                    .schema_type(openapi::schema::Type::Object),
                            ))
                            .build(),
                    ),
            ),
    );
    document_api_keys(&mut document);
    SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, document)
        .into()
}

/// With `server.api_keys` set, every route but the open ones ([`crate::auth::is_open`])
/// needs a bearer key: each such operation takes the `bearer` scheme, optionally (a server
/// without keys needs none), and lists its 401.
fn document_api_keys(document: &mut openapi::OpenApi) {
    use openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description = Some("One of `server.api_keys`, when any is configured".into());
    document
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    for (path, item) in document.paths.paths.iter_mut() {
        if crate::auth::is_open(path) {
            continue;
        }
        let body = if path.starts_with("/v2") {
            "V2ErrorBody"
        } else {
            "Detail"
        };
        let unauthorized = openapi::ResponseBuilder::new()
            .description("API keys are configured and the request has none, or not a valid one")
            .content(
                "application/json",
                openapi::ContentBuilder::new()
                    .schema(Some(openapi::Ref::from_schema_name(body)))
                    .build(),
            )
            .build();
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .insert("401".into(), unauthorized.clone().into());
            operation.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------------------

/// The error body of every route outside `/v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Detail {
    pub detail: DetailText,
}

/// A sentence, or for a batch of which no sample was valid, one reason per sample.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DetailText {
    One(String),
    Many(Vec<String>),
}

/// The refusals of every seed inference route, after its own 200: `{"detail"}` bodies.
#[derive(Debug)]
pub struct SeedInferenceRefusals;

impl utoipa::IntoResponses for SeedInferenceRefusals {
    fn responses() -> BTreeMap<String, openapi::RefOr<openapi::Response>> {
        refusals(
            "Detail",
            &[
                (
                    "400",
                    "The body is not JSON or cannot be read, or a path segment is not UTF-8",
                ),
                ("404", "Unknown model"),
                (
                    "408",
                    "The body did not arrive within server.body_read_timeout_secs",
                ),
                (
                    "413",
                    "Body larger than server.max_body_bytes, or more samples than server.max_batch_inputs",
                ),
                (
                    "415",
                    "The content type is not JSON (or, for a picture, not PNG or JPEG)",
                ),
                ("422", "JSON that does not fit the endpoint or the model"),
                ("429", OVERLOADED),
                ("500", "The backend failed"),
                (
                    "503",
                    "The model is not ready, or the server is shutting down",
                ),
                ("504", "The request's timeout passed before it was served"),
            ],
        )
    }
}

/// The refusals of the v2 infer routes, after their 200: `{"error"}` bodies.
#[derive(Debug)]
pub struct V2InferRefusals;

impl utoipa::IntoResponses for V2InferRefusals {
    fn responses() -> BTreeMap<String, openapi::RefOr<openapi::Response>> {
        refusals(
            "V2ErrorBody",
            &[
                (
                    "400",
                    "The request is malformed or does not fit the model, or a path segment is not UTF-8",
                ),
                ("404", "Unknown model or version"),
                (
                    "408",
                    "The body did not arrive within server.body_read_timeout_secs",
                ),
                ("413", "Body larger than server.max_body_bytes"),
                ("429", OVERLOADED),
                (
                    "500",
                    "The backend failed, or its outputs cannot be answered",
                ),
                (
                    "503",
                    "The model is not ready, or the server is shutting down",
                ),
                ("504", "The request's timeout passed before it was served"),
            ],
        )
    }
}

const OVERLOADED: &str = "The server or the model's queue is full; retry after Retry-After";

/// One JSON response of the schema named `body` per `(status, description)`; a 429 carries
/// `Retry-After`.
fn refusals(
    body: &str,
    statuses: &[(&str, &str)],
) -> BTreeMap<String, openapi::RefOr<openapi::Response>> {
    statuses
        .iter()
        .map(|(status, description)| {
            let mut response = openapi::ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    openapi::ContentBuilder::new()
                        .schema(Some(openapi::Ref::from_schema_name(body)))
                        .build(),
                );
            if *status == "429" {
                let seconds = openapi::ObjectBuilder::new()
                    .schema_type(openapi::schema::Type::Integer)
                    .minimum(Some(0));
                response = response.header(
                    "Retry-After",
                    openapi::HeaderBuilder::new()
                        .schema(seconds)
                        .description(Some("Seconds to wait before retrying"))
                        .build(),
                );
            }
            ((*status).to_owned(), response.build().into())
        })
        .collect()
}

/// The answer of a probe that passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeStatus {
    /// `alive` (`/health/live`) or `ready` (`/health/ready`).
    pub status: String,
}

/// The error body of every route under `/v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2ErrorBody {
    pub error: String,
}

// ---------------------------------------------------------------------------------------
// The documents routes.rs builds with `json!`
// ---------------------------------------------------------------------------------------

/// `GET /`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Root {
    pub name: String,
    pub description: String,
    pub version: String,
    pub status: String,
    pub timestamp: String,
    pub default_model: String,
    /// The default model's backend, null when it is not loaded.
    pub backend: Option<String>,
    pub device: Option<String>,
    pub models: Vec<String>,
    pub uptime_seconds: f64,
    /// Endpoint name to `METHOD /path`.
    pub endpoints: BTreeMap<String, String>,
}

/// `GET /health`: 200 when healthy, 503 (same shape) when not.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub healthy: bool,
    /// `engine_running`, `model_loaded`, `backend`, `device`, `queue_size`,
    /// `queue_healthy`, `test_inference_ms`, `inference_healthy`, … (`model_loaded` and a
    /// `detail` only, when the default model is not loaded).
    #[schema(value_type = Object)]
    pub checks: serde_json::Value,
    /// Each model's `state`, with its `error` when it failed.
    #[schema(value_type = Object)]
    pub models: serde_json::Value,
    pub timestamp: String,
    /// Absent when the default model is not loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_stats: Option<EngineStats>,
}

/// The default model's scheduler counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct EngineStats {
    pub requests_processed: u64,
    pub batches_processed: u64,
    pub average_batch_size: f64,
    pub errors: u64,
    pub average_processing_time: f64,
    pub throughput_rps: f64,
    pub queue_size: u64,
    pub running: bool,
    pub memory_usage: MemoryUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryUsage {
    /// Resident memory of the process, null where it cannot be read.
    pub cpu_memory_mb: Option<f64>,
}

/// `GET /stats`: [`EngineStats`] and the batching and latency detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    #[serde(flatten)]
    pub engine: EngineStats,
    pub model_name: String,
    pub backend: String,
    pub device: String,
    pub requests_failed: u64,
    pub rejected: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub rows_processed: u64,
    pub rows_per_second: f64,
    pub max_batch_size_seen: u64,
    /// Batch size to the number of batches of that size.
    pub batch_size_histogram: BTreeMap<String, u64>,
    pub average_queue_time_ms: f64,
    pub average_inference_time_ms: f64,
    pub average_row_latency_ms: f64,
    pub latency_percentiles_ms: LatencyPercentiles,
    pub uptime_seconds: f64,
    pub timestamp: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// `GET /models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelDocument>,
    pub default_model: String,
    pub count: u64,
}

/// Where a model is in its life.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelStateName {
    Loading,
    Ready,
    Failed,
    Unloading,
}

/// One model of the repository; the fields after `load_time_ms` are there while it is
/// loaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDocument {
    pub name: String,
    pub state: ModelStateName,
    pub loaded: bool,
    pub default: bool,
    /// Its directory in the repository (null for a model given in code).
    pub dir: Option<String>,
    /// Why it failed to load.
    pub error: Option<String>,
    pub load_time_ms: Option<f64>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub backend: Option<String>,
    pub device: Option<String>,
    pub instances: Option<u64>,
    pub input_shape: Option<Vec<i64>>,
    pub output_shape: Option<Vec<i64>>,
    /// Each input's `name`, `dtype` and per-sample `shape` (`-1`: any size).
    pub inputs: Option<Vec<TensorSpecDoc>>,
    pub outputs: Option<Vec<TensorSpecDoc>>,
    pub batching: Option<BatchingDoc>,
    /// Whether it takes PNG or JPEG pictures.
    pub accepts_images: Option<bool>,
    /// Whether its answers carry labelled top classes.
    pub classifies: Option<bool>,
}

/// One input or output of a model.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorSpecDoc {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

/// A model's batching settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchingDoc {
    pub max_batch_size: u64,
    pub max_queue_delay_ms: f64,
    pub max_queue_size: u64,
}

/// `DELETE /models/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Unloaded {
    pub name: String,
    pub unloaded: bool,
}

/// A PNG or JPEG picture, the request's whole body.
#[derive(Debug)]
pub struct Picture;

impl utoipa::PartialSchema for Picture {
    fn schema() -> openapi::RefOr<openapi::schema::Schema> {
        openapi::ObjectBuilder::new()
            .schema_type(openapi::schema::Type::String)
            .format(Some(openapi::SchemaFormat::KnownFormat(
                openapi::KnownFormat::Binary,
            )))
            .description(Some("A PNG or JPEG picture, the request's whole body"))
            .into()
    }
}

impl ToSchema for Picture {}

// ---------------------------------------------------------------------------------------
// KServe v2 bodies that rest.rs parses and writes by hand
// ---------------------------------------------------------------------------------------

/// `POST /v2/models/{name}/infer` as JSON. With the binary tensor data extension the body
/// is this JSON header (`Inference-Header-Content-Length` bytes), then each binary input's
/// raw contents in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2InferRequest {
    pub id: Option<String>,
    /// `binary_data_output`, `priority`, `timeout` (µs).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    pub inputs: Vec<V2InputTensor>,
    pub outputs: Option<Vec<V2RequestedOutput>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct V2InputTensor {
    pub name: String,
    /// Rows first.
    pub shape: Vec<i64>,
    /// `FP32`, `INT64`, `BYTES`, …
    pub datatype: String,
    /// `binary_data_size` when the contents follow the JSON header.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// The elements, flat or nested, when not sent as binary.
    pub data: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct V2RequestedOutput {
    pub name: String,
    /// `binary_data`: this output's contents after the JSON header.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

/// The answer of an inference; with binary outputs this is the JSON header
/// (`Inference-Header-Content-Length` bytes) and the outputs' raw contents follow.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<V2OutputTensor>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct V2OutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<u64>,
    /// `binary_data_size` when the contents follow the header.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// The elements, flat, when sent as JSON.
    pub data: Option<Vec<serde_json::Value>>,
}
