//! Kubernetes-style probes: `GET /health/live` (the process answers) and
//! `GET /health/ready` (it should receive traffic). `/health` keeps the seed page's shape.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /health/live`: 200 while the process can answer at all; it reads no state, so a
/// busy or draining server is still alive and is not restarted for it.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "server",
    responses((status = 200, description = "The process answers", body = crate::openapi::ProbeStatus))
)]
pub async fn live() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// `GET /health/ready`: 200 once every model of `models.load` (every model of the
/// repository when that is empty) is ready; 503 with the reason while any is loading,
/// failed or has no live instance, and from the moment a shutdown signal arrives, so a load
/// balancer stops sending before the drain.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "server",
    responses(
        (status = 200, description = "Every model to load is ready", body = crate::openapi::ProbeStatus),
        (status = 503, description = "A model is loading, failed or has no live instance, or the server is shutting down", body = crate::openapi::Detail),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    match crate::v2::service::server_ready(&state) {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(why) => ApiError::Unavailable(why.to_string()).into_response(),
    }
}
