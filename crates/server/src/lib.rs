//! # inference-server
//!
//! The HTTP face of the inference framework: an axum router serving the endpoints of the
//! PyTorch Inference Framework API in front of any `inference_core::InferenceEngine`.
//! `main` only loads the configuration, binds and serves; everything else is here so tests
//! can drive the router directly.

pub mod backends;
pub mod codec;
pub mod config;
pub mod error;
pub mod image_input;
pub mod processing;
pub mod repository;
pub mod responses;
pub mod routes;
pub mod serve;
pub mod state;
pub mod telemetry;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use config::{Cli, Config};
pub use serve::{run, serve_until, shutdown_signal};
pub use state::{AppState, StartupError};

/// The application router with every endpoint and middleware.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config().server.max_body_bytes;
    // Only inference is admission-controlled: probes and stats must answer under load.
    let inference = Router::new()
        .route("/predict", post(routes::predict))
        .route("/predict/batch", post(routes::predict_batch))
        .route("/examples/simple", post(routes::example_simple))
        .route("/examples/batch", post(routes::example_batch))
        .route("/models/{name}/predict", post(routes::model_predict))
        .route(
            "/models/{name}/predict/batch",
            post(routes::model_predict_batch),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .route("/", get(routes::root))
        .route("/health", get(routes::health))
        .route("/models", get(routes::models))
        .route(
            "/models/{name}",
            get(routes::model).delete(routes::unload_model),
        )
        .route("/models/{name}/load", post(routes::load_model))
        .route("/stats", get(routes::stats))
        .route("/config", get(routes::config))
        .merge(inference)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        // A bug in a handler answers 500 with a detail instead of dropping the connection.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(telemetry::log_request))
        // Outermost: the id exists before logging and handlers, and goes back on the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Turns a request away with 429 when `server.max_concurrent_requests` are in progress,
/// before its body is read.
async fn admit(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.try_admit() {
        Some(_permit) => next.run(request).await,
        None => error::ApiError::Overloaded {
            detail: format!(
                "too many requests in progress (server.max_concurrent_requests = {})",
                state.config().server.max_concurrent_requests
            ),
            retry_after: std::time::Duration::from_secs(1),
        }
        .into_response(),
    }
}

fn panic_response(panic: Box<dyn std::any::Any + Send>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let message = inference_core::panic_message(&*panic);
    tracing::error!(%message, "a request handler panicked");
    error::ApiError::Internal(format!("internal error: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn a_handler_panic_becomes_a_500_with_a_detail() {
        let response = panic_response(Box::new("boom"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
