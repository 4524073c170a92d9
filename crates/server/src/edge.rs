//! The edge of every route: one layer that does, around each request's handler, what every
//! request needs: an `x-request-id` (the client's, or a new UUID), the API key check
//! (`crate::auth`), the admission of the inference routes (`crate::admit`), the default
//! body limit for extractors (`server.max_body_bytes`), a 500
//! with a detail when a handler panics, the `{"error"}` shape of errors under `/v2`
//! (`crate::v2::error_body`), the HTTP metrics (`http_requests_total`,
//! `http_request_duration_seconds`, `http_requests_in_flight`) and the request's log line.
//!
//! One hand-written layer rather than a middleware per concern: each `from_fn` middleware
//! boxes a future and clones a service per request, and five of them cost more CPU than
//! routing, parsing and inference together on a small model. For the same reason the
//! admission, the body limit and the panic catcher are composed here rather than layered on
//! the router, where each layer adds a boxed service to clone (with every service inside
//! it) and a boxed future per request.

use crate::metrics::SERVED_MODEL;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use metrics::{Counter, Histogram};
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    api_keys: Arc<[String]>,
    body_limit: DefaultBodyLimit,
    admission: Option<Admission>,
}

impl EdgeLayer {
    /// The edge of the application, admitting requests to the `admitted` routes.
    pub fn new(state: &AppState, admitted: AdmittedRoutes) -> Self {
        Self {
            api_keys: state.config().server.api_keys.clone().into(),
            body_limit: DefaultBodyLimit::max(state.config().server.max_body_bytes),
            admission: Some(Admission {
                state: state.clone(),
                routes: Arc::new(admitted),
            }),
        }
    }
}

/// The routes, by template and method, whose requests go through [`crate::admit`] first.
#[derive(Debug, Default)]
pub struct AdmittedRoutes(Vec<(Method, String)>);

impl AdmittedRoutes {
    /// Every operation of `document`: the inference routes' part of the API.
    pub fn of(document: &utoipa::openapi::OpenApi) -> Self {
        let mut routes = Vec::new();
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ] {
                if operation.is_some() {
                    routes.push((method, path.clone()));
                }
            }
        }
        Self(routes)
    }

    fn contains(&self, method: &Method, route: &str) -> bool {
        self.0.iter().any(|(m, r)| m == method && r == route)
    }
}

/// What the edge needs to admit a request.
#[derive(Clone)]
struct Admission {
    state: AppState,
    routes: Arc<AdmittedRoutes>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// A route with the default body limit set for its extractors.
type Limited<S> = <DefaultBodyLimit as Layer<S>>::Service;

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<Limited<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner: self.body_limit.layer(inner),
            api_keys: Arc::clone(&self.api_keys),
            admission: self.admission.clone(),
        }
    }
}

/// The service [`EdgeLayer`] wraps each route in.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    api_keys: Arc<[String]>,
    admission: Option<Admission>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id(&mut request);
        let route = request.extensions().get::<MatchedPath>().cloned();
        // Only an unmatched request is logged by its raw path: a route's template is enough.
        let unmatched_path = route.is_none().then(|| request.uri().path().to_owned());
        let admission = self.admission.as_ref().filter(|admission| {
            route
                .as_ref()
                .is_some_and(|route| admission.routes.contains(request.method(), route.as_str()))
        });
        let meta = Meta {
            started,
            method: request.method().clone(),
            route,
            unmatched_path,
            request_id,
            v2: crate::v2::is_v2_path(request.uri().path()),
            in_flight: InFlight::enter(),
        };
        let stage = match crate::auth::refusal(&self.api_keys, &request) {
            Some(refused) => Stage::Refused {
                response: Some(refused),
            },
            None => match admission {
                Some(admission) => Stage::Admitting {
                    future: Box::pin(crate::admit(admission.state.clone(), request)),
                    // The handler is called once the request is admitted, by the future.
                    inner: Some(self.inner.clone()),
                },
                None => handle(&mut self.inner, request),
            },
        };
        EdgeFuture {
            stage,
            meta: Some(meta),
            model: None,
            admitted: None,
        }
    }
}

/// Calls the handler, answering 500 if that panics before any future exists.
fn handle<S>(inner: &mut S, request: Request) -> Stage<S, S::Future>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
        Ok(future) => Stage::Handling {
            future: SERVED_MODEL.scope(RefCell::new(None), future),
        },
        Err(panic) => Stage::Refused {
            response: Some(panic_response(panic)),
        },
    }
}

/// The request's id: the client's `x-request-id` when it sent one, else a new UUID, which
/// is then set on the request for the handlers to read.
fn request_id(request: &mut Request) -> HeaderValue {
    if let Some(id) = request.headers().get(&REQUEST_ID) {
        return id.clone();
    }
    let mut text = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    let id = HeaderValue::from_str(text).expect("a UUID is a valid header value");
    request.headers_mut().insert(REQUEST_ID, id.clone());
    id
}

/// What is known of a request before its answer.
struct Meta {
    started: Instant,
    method: Method,
    route: Option<MatchedPath>,
    unmatched_path: Option<String>,
    request_id: HeaderValue,
    v2: bool,
    in_flight: InFlight,
}

/// The admission of a request: the request with its body read, or the refusal.
type Admitting = Pin<Box<dyn Future<Output = Result<(Request, crate::Admitted), Response>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`Edge`]: the admission when the route has one, the handler's (or the
    /// refusal), then the rewrite of a v2 error's body when one is needed, then the
    /// bookkeeping.
    pub struct EdgeFuture<S, F> {
        #[pin]
        stage: Stage<S, F>,
        meta: Option<Meta>,
        model: Option<String>,
        // Held while the handler runs, released with its answer.
        admitted: Option<crate::Admitted>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProjection]
    enum Stage<S, F> {
        Admitting { future: Admitting, inner: Option<S> },
        Handling { #[pin] future: TaskLocalFuture<RefCell<Option<String>>, F> },
        Refused { response: Option<Response> },
        Rewriting { future: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<S> Future for EdgeFuture<S, S::Future>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let response = match this.stage.as_mut().project() {
                StageProjection::Admitting { future, inner } => {
                    let polled =
                        std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
                    match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok((request, admitted)))) => {
                            *this.admitted = Some(admitted);
                            let mut inner = inner.take().expect("admitted once");
                            this.stage.set(handle(&mut inner, request));
                            continue;
                        }
                        Ok(Poll::Ready(Err(refusal))) => refusal,
                        Err(panic) => panic_response(panic),
                    }
                }
                StageProjection::Handling { mut future } => {
                    let polled =
                        std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
                    let response = match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(response))) => response,
                        // A bug in a handler answers 500 with a detail instead of dropping
                        // the connection.
                        Err(panic) => panic_response(panic),
                    };
                    *this.model = future.take_value().and_then(RefCell::into_inner);
                    // The answer is ready: the request's bytes and slot are free for others.
                    this.admitted.take();
                    response
                }
                StageProjection::Refused { response } => {
                    response.take().expect("a refusal is answered once")
                }
                StageProjection::Rewriting { future } => ready!(future.as_mut().poll(cx)),
            };
            let meta = this.meta.as_ref().expect("polled after completion");
            if meta.v2
                && crate::v2::needs_error_body(response.status())
                && !matches!(*this.stage, Stage::Rewriting { .. })
            {
                this.stage.set(Stage::Rewriting {
                    future: Box::pin(crate::v2::error_body(response)),
                });
                continue;
            }
            let meta = this.meta.take().expect("polled after completion");
            return Poll::Ready(Ok(finish(meta, this.model.take(), response)));
        }
    }
}

/// The answer to a request whose handler panicked.
fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    use axum::response::IntoResponse;
    let message = inference_core::panic_message(&*panic);
    tracing::error!(%message, "a request handler panicked");
    crate::error::ApiError::Internal(format!("internal error: {message}")).into_response()
}

/// Counts, logs and labels a request's answer.
fn finish(meta: Meta, model: Option<String>, mut response: Response) -> Response {
    let elapsed = meta.started.elapsed();
    let status = response.status().as_u16();
    let route = meta.route.as_ref().map(MatchedPath::as_str);
    record(
        route.unwrap_or("unmatched"),
        method_label(&meta.method),
        status,
        model.as_deref().unwrap_or_default(),
        elapsed.as_secs_f64(),
    );
    log_request(
        &meta.method,
        route.or(meta.unmatched_path.as_deref()).unwrap_or_default(),
        status,
        elapsed,
        meta.request_id.to_str().unwrap_or_default(),
    );
    response
        .headers_mut()
        .entry(REQUEST_ID)
        .or_insert(meta.request_id);
    drop(meta.in_flight);
    response
}

/// The target of the one log line per request.
pub(crate) const REQUEST_LOG_TARGET: &str = "inference_server::request";

/// The one log line per request: written straight to the log's writer when the server's
/// own text log is installed (`crate::telemetry::write_request_line`), else through tracing.
pub(crate) fn log_request(
    method: &Method,
    route: &str,
    status: u16,
    elapsed: std::time::Duration,
    request_id: &str,
) {
    if !tracing::enabled!(target: REQUEST_LOG_TARGET, tracing::Level::INFO) {
        return;
    }
    // Rounded to the microsecond: the unrounded float prints as 0.15562299999999998.
    let latency_ms = crate::routes::millis(elapsed);
    let line = crate::telemetry::RequestLine {
        method: method.as_str(),
        route,
        status,
        latency_ms,
        request_id,
    };
    if crate::telemetry::write_request_line(&line) {
        return;
    }
    tracing::info!(
        target: REQUEST_LOG_TARGET,
        method = %method,
        route,
        status,
        latency_ms,
        request_id,
        "request"
    );
}

/// Requests between the edge and their answer, on every route; the gauge's value, kept
/// where the handlers can read it.
static IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// Whether the calling request is the only one in progress and at most one connection is
/// open, so no other request can arrive before its answer to be batched with it. (A count
/// of requests alone is not enough: under load, many requests wait unread in their
/// connections' sockets while one is handled.)
pub fn handling_one_request() -> bool {
    IN_PROGRESS.load(Ordering::Acquire) == 1 && crate::serve::open_connections() <= 1
}

/// Requests in progress in the process: `http_requests_in_flight`, which a scrape reads
/// (`crate::metrics`) rather than every request updating a gauge shared by every thread.
pub fn requests_in_progress() -> usize {
    IN_PROGRESS.load(Ordering::Acquire)
}

/// One request in [`IN_PROGRESS`], also when its future is dropped unanswered.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        IN_PROGRESS.fetch_add(1, Ordering::AcqRel);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_PROGRESS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The methods counted by name; any other is counted as `other`.
static METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::CONNECT,
    Method::TRACE,
];

/// A method's `method` label. Clients may send any token as a method: labelled by name,
/// each new one would add series (and memory) without bound.
fn method_label(method: &Method) -> &'static str {
    METHODS
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// The series of one route, method, status and model.
struct Series {
    route: String,
    method: &'static str,
    status: u16,
    model: String,
    duration: Histogram,
    total: Counter,
}

type SeriesHasher = BuildHasherDefault<DefaultHasher>;

thread_local! {
    /// The handles of the series seen on this thread, by a hash of their labels: looking a
    /// series up in the recorder builds its labels and key anew on every request.
    static SERIES: RefCell<HashMap<u64, Vec<Series>>> = RefCell::new(HashMap::new());
}

fn record(route: &str, method: &'static str, status: u16, model: &str, seconds: f64) {
    let hash = SeriesHasher::default().hash_one((route, method, status, model));
    SERIES.with(|series| {
        let mut series = series.borrow_mut();
        let bucket = series.entry(hash).or_default();
        let position = bucket.iter().position(|s| {
            s.status == status && s.route == route && s.method == method && s.model == model
        });
        let found = match position {
            Some(position) => &bucket[position],
            None => {
                let status_label = status.to_string();
                bucket.push(Series {
                    duration: metrics::histogram!("http_request_duration_seconds",
                        "route" => route.to_owned(), "method" => method,
                        "status" => status_label.clone()),
                    total: metrics::counter!("http_requests_total",
                        "route" => route.to_owned(), "method" => method,
                        "status" => status_label, "model" => model.to_owned()),
                    route: route.to_owned(),
                    method,
                    status,
                    model: model.to_owned(),
                });
                bucket.last().expect("just pushed")
            }
        };
        found.duration.record(seconds);
        found.total.increment(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;

    async fn detail_of(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        body["detail"].as_str().unwrap_or_default().to_string()
    }

    fn edge_around<S>(inner: S) -> Edge<S> {
        Edge {
            inner,
            api_keys: Arc::from([]),
            admission: None,
        }
    }

    #[tokio::test]
    async fn a_handler_that_panics_while_polled_is_answered_500_with_a_detail() {
        use tower::ServiceExt;
        let panicking = tower::service_fn(|_request: Request| async move {
            // Once pending first, so the panic comes from a later poll.
            tokio::task::yield_now().await;
            if true {
                panic!("boom in the handler");
            }
            Ok::<Response, Infallible>(Response::default())
        });
        let response = edge_around(panicking)
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(&REQUEST_ID));
        assert!(detail_of(response).await.contains("boom in the handler"));
    }

    /// A service whose `call` itself panics, before any future exists.
    #[derive(Clone)]
    struct PanicsOnCall;

    impl Service<Request> for PanicsOnCall {
        type Response = Response;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request) -> Self::Future {
            panic!("boom in call")
        }
    }

    #[tokio::test]
    async fn a_service_that_panics_in_call_is_answered_500_with_a_detail() {
        use tower::ServiceExt;
        let response = edge_around(PanicsOnCall)
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(detail_of(response).await.contains("boom in call"));
    }

    #[test]
    fn the_admitted_routes_are_the_operations_of_the_document_by_method() {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
        let paths = PathsBuilder::new()
            .path(
                "/predict",
                PathItem::new(HttpMethod::Post, OperationBuilder::new()),
            )
            .path(
                "/models/{name}/predict",
                PathItem::new(HttpMethod::Post, OperationBuilder::new()),
            )
            .build();
        let document = utoipa::openapi::OpenApiBuilder::new().paths(paths).build();
        let admitted = AdmittedRoutes::of(&document);
        assert!(admitted.contains(&Method::POST, "/predict"));
        assert!(admitted.contains(&Method::POST, "/models/{name}/predict"));
        assert!(!admitted.contains(&Method::GET, "/predict"));
        assert!(!admitted.contains(&Method::POST, "/health"));
        assert!(!admitted.contains(&Method::POST, "/models/resnet18/predict"));
    }

    #[test]
    fn standard_methods_are_labelled_by_name_and_any_other_as_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        let made_up = Method::from_bytes(b"FETCH-THIS-123").unwrap();
        assert_eq!(method_label(&made_up), "other");
    }
}
