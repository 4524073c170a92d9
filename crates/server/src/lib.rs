//! # inference-server
//!
//! The HTTP face of the inference framework: an axum router serving the endpoints of the
//! PyTorch Inference Framework API in front of any `inference_core::InferenceEngine`.
//! `main` only loads the configuration, binds and serves; everything else is here so tests
//! can drive the router directly.

pub mod allocator;
pub mod auth;
pub mod backends;
pub mod clock;
pub mod codec;
pub mod config;
pub mod edge;
pub mod error;
pub mod image_input;
pub mod log_writer;
pub mod metrics;
pub mod openapi;
pub mod probe;
pub mod probes;
pub mod processing;
pub mod repository;
pub mod responses;
pub mod routes;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod ui;
pub mod v2;

use axum::Router;
use std::future::Future;
use std::task::Poll;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::{Cli, Config};
pub use serve::{run, serve_until, shutdown_signal};
pub use state::{AppState, StartupError};

/// The application router with every endpoint and middleware.
pub fn app(state: AppState) -> Router {
    // Only inference is admission-controlled: probes and stats must answer under load.
    // Every route is declared through `routes!`, from its handler's `#[utoipa::path]`: the
    // route and its entry in the OpenAPI document are one declaration.
    let inference = OpenApiRouter::new()
        .routes(routes!(routes::predict))
        .routes(routes!(routes::predict_batch))
        .routes(routes!(routes::example_simple))
        .routes(routes!(routes::example_batch))
        .routes(routes!(routes::model_predict))
        .routes(routes!(routes::model_predict_batch))
        .merge(v2::inference_routes());
    let admitted = edge::AdmittedRoutes::of(inference.get_openapi());
    let (router, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::root))
        .routes(routes!(routes::health))
        .routes(routes!(probes::live))
        .routes(routes!(probes::ready))
        .routes(routes!(metrics::scrape))
        .routes(routes!(ui::page))
        .routes(routes!(ui::app_script))
        .routes(routes!(ui::seed_tester))
        .routes(routes!(routes::models))
        .routes(routes!(routes::model, routes::unload_model))
        .routes(routes!(routes::load_model))
        .routes(routes!(routes::stats))
        .routes(routes!(routes::config))
        .merge(v2::routes())
        .merge(inference)
        .split_for_parts();
    let router = router
        .merge(openapi::docs(document))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Outside every handler: the request id, the key check (before any admission or body
        // read, so a stranger costs nothing but this check), the admission of the inference
        // routes, the body limit, the panic catcher, the v2 error shape, the metrics and the
        // log line, for every answer, refusals included.
        .layer(edge::EdgeLayer::new(&state, admitted));
    // Outermost: a browser's preflight carries no key and is answered here.
    let router = match auth::cors_layer(&state.config().server.cors_allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// Admission of an inference request, cheapest refusal first: 503 while draining; the body
/// read within `server.body_read_timeout_secs` (408) while its bytes are counted against
/// `server.max_in_flight_bytes` (429) and `server.max_body_bytes` (413); only then a slot of
/// `server.max_concurrent_requests`, waited for first come first served at most
/// `server.max_admission_wait_ms` (429), so a slow uploader holds no slot. The request comes
/// back with its body read; the bytes and the slot are held by [`Admitted`] until the answer
/// is ready. `crate::edge` runs it before the handler of every inference route.
pub(crate) async fn admit(
    state: AppState,
    request: axum::extract::Request,
) -> Result<(axum::extract::Request, Admitted), axum::response::Response> {
    use axum::response::IntoResponse;
    if state.is_draining() {
        return Err(
            error::ApiError::Unavailable("the server is shutting down".into()).into_response(),
        );
    }
    let (parts, body) = request.into_parts();
    let limits = &state.config().server;
    let mut reading = std::pin::pin!(read_body(&state, body, limits.max_body_bytes));
    // A small body usually came with the head: polled once first, it needs no timer.
    let first = std::future::poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await;
    let read = match first {
        Poll::Ready(read) => Ok(read),
        Poll::Pending => tokio::time::timeout(state.config().body_read_timeout(), reading).await,
    };
    let (bytes, body_permits) = match read {
        Ok(Ok(read)) => read,
        // What is left of the body is not read: the connection cannot be reused.
        Ok(Err(error)) => return Err(closing(error.into_response())),
        Err(_elapsed) => {
            return Err(closing(
                error::ApiError::BodyTimeout(format!(
                    "the request body did not arrive within {} s (server.body_read_timeout_secs)",
                    limits.body_read_timeout_secs
                ))
                .into_response(),
            ));
        }
    };
    let Some(slot) = state
        .admit_within(state.config().max_admission_wait())
        .await
    else {
        return Err(error::ApiError::Overloaded {
            detail: format!(
                "too many requests in progress (server.max_concurrent_requests = {}) for {} ms (server.max_admission_wait_ms)",
                limits.max_concurrent_requests, limits.max_admission_wait_ms
            ),
            retry_after: std::time::Duration::from_secs(1),
        }
        .into_response());
    };
    let mut request =
        axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
    request.extensions_mut().insert(AdmittedBody(bytes));
    Ok((
        request,
        Admitted {
            _body_permits: body_permits,
            _slot: slot,
        },
    ))
}

/// What an admitted request holds until its answer is ready: its body's bytes against
/// `server.max_in_flight_bytes` and its slot of `server.max_concurrent_requests`.
pub(crate) struct Admitted {
    _body_permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The whole body [`admit`] read, beside the request's body of the same bytes: an extractor
/// that finds it skips reading the body again (`codec::JsonBody`).
#[derive(Debug, Clone)]
pub(crate) struct AdmittedBody(pub(crate) bytes::Bytes);

fn closing(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Reads a whole body, reserving its bytes against the in-flight budget as they arrive (a
/// trickling client holds only what it sent), at most `max_bytes`.
async fn read_body(
    state: &AppState,
    body: axum::body::Body,
    max_bytes: usize,
) -> Result<(bytes::Bytes, Vec<tokio::sync::OwnedSemaphorePermit>), error::ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    // A body of one frame, the usual case, is kept as it came; a second frame starts a copy.
    let mut whole = bytes::Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    let mut length = 0usize;
    let mut permits = Vec::new();
    let mut reserved_kib: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            error::ApiError::MalformedJson(format!("cannot read request body: {err}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if length + data.len() > max_bytes {
            return Err(error::ApiError::TooLarge(format!(
                "request body is too large: the limit is {max_bytes} bytes (server.max_body_bytes)"
            )));
        }
        length += data.len();
        match &mut joined {
            Some(buffer) => buffer.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut buffer = bytes::BytesMut::with_capacity(length);
                buffer.extend_from_slice(&whole);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
        let needed_kib = length.div_ceil(1024);
        if needed_kib > reserved_kib {
            let more = u32::try_from(needed_kib - reserved_kib).unwrap_or(u32::MAX);
            let permit =
                state
                    .try_reserve_body(more)
                    .ok_or_else(|| error::ApiError::Overloaded {
                        detail: format!(
                            "too many request bytes in progress (server.max_in_flight_bytes = {})",
                            state.config().server.max_in_flight_bytes
                        ),
                        retry_after: std::time::Duration::from_secs(1),
                    })?;
            permits.push(permit);
            reserved_kib = needed_kib;
        }
    }
    Ok((joined.map_or(whole, bytes::BytesMut::freeze), permits))
}
