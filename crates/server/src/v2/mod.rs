//! The KServe v2 / Open Inference Protocol over REST, with the binary tensor data extension
//! (what tritonclient sends by default).
//!
//! - `tensors`: v2 tensors and core tensors both ways, and a request's tensors as the
//!   scheduler's rows; `service`: health, metadata and inference on the repository;
//!   `error`: the protocol's error causes. None of the three knows HTTP, so a gRPC service
//!   can reuse them as they are.
//! - `rest`: the JSON header with binary contents after it, and the axum handlers;
//!   `grpc`: the same operations as `inference.GRPCInferenceService` (tonic), on its own port.
//!
//! A request's rows go through the model's own scheduler, so v2 and seed requests share
//! forward passes. Every error answer under `/v2` is `{"error": ...}`: the handlers' own,
//! and through [`error_body`] (applied by the server's edge layer, `crate::edge`) those of the
//! admission middleware and of unknown routes.

pub mod error;
pub mod grpc;
pub mod rest;
pub mod service;
pub mod tensors;

pub use error::V2Error;
pub use rest::{encode_response, parse_binary_request};

use crate::state::AppState;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Health and metadata: outside admission control, so they answer under load.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rest::server_metadata))
        .routes(routes!(rest::server_live))
        .routes(routes!(rest::server_ready))
        .routes(routes!(rest::model_metadata))
        .routes(routes!(rest::model_ready))
        .routes(routes!(rest::model_version_metadata))
        .routes(routes!(rest::model_version_ready))
}

/// The inference routes, to sit behind the admission middleware with the seed ones.
pub fn inference_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rest::infer))
        .routes(routes!(rest::infer_version))
}

/// Error bodies are read at most this far; every error this server writes is far shorter.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Whether `path` is under the v2 protocol, whose errors are all `{"error": ...}`.
pub fn is_v2_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Whether an answer under `/v2` with this status needs [`error_body`].
pub fn needs_error_body(status: axum::http::StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// Rewrites an error answer under `/v2` that is not yet `{"error": ...}` (a refusal of the
/// admission middleware, an unknown route, a rejected path) into that shape, keeping its
/// status and headers, so clients of the protocol read every error.
pub async fn error_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) if map.contains_key("error") => {
            return Response::from_parts(parts, Body::from(bytes));
        }
        Ok(Value::Object(mut map)) => match map.remove("detail") {
            Some(Value::String(detail)) => detail,
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string)
                })
                .collect::<Vec<_>>()
                .join("; "),
            Some(other) => other.to_string(),
            None => Value::Object(map).to_string(),
        },
        _ => String::from_utf8_lossy(&bytes).trim().to_string(),
    };
    let message = if message.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string()
    } else {
        message
    };
    let body = serde_json::json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}
