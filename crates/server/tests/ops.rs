//! What operators rely on, through the router: the liveness and readiness probes, the
//! Prometheus metrics after real requests, API keys on every closed route of both HTTP
//! protocols (probes, metrics and docs stay open), and CORS only when configured.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{example_state, get, post_json, send, test_config};
use http_body_util::BodyExt;
use inference_server::{AppState, app};
use tower::ServiceExt;

const PREDICT: &str = r#"{"inputs": 1.0}"#;
/// Two rows, run as one engine batch.
const PREDICT_BATCH: &str = r#"{"inputs": [1.0, 2.0]}"#;

async fn text_of(state: &AppState, request: Request<Body>) -> (StatusCode, String) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of the first sample of `name` whose labels include every one of `labels` (the
/// order of series is the exporter's, so `labels` must pick one series).
fn sample(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .and_then(|(_, value)| value.parse().ok())
}

#[tokio::test]
async fn liveness_answers_and_readiness_follows_loading_and_draining() {
    // Not yet settled: the loader task has not run on this test's single thread.
    let state = AppState::start(test_config()).unwrap();
    let loading = send(&state, get("/health/ready")).await;
    assert_eq!(loading.status, StatusCode::SERVICE_UNAVAILABLE);
    let detail = loading.body["detail"].as_str().unwrap();
    assert!(detail.contains("loading"), "{detail}");
    assert_eq!(
        send(&state, get("/health/live")).await.status,
        StatusCode::OK
    );

    state.settled().await;
    let ready = send(&state, get("/health/ready")).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(ready.body["status"], "ready");

    state.begin_drain();
    let draining = send(&state, get("/health/ready")).await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        draining.body["detail"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );
    let live = send(&state, get("/health/live")).await;
    assert_eq!(live.status, StatusCode::OK, "a draining process is alive");
    assert_eq!(live.body["status"], "alive");
}

#[tokio::test]
async fn a_failed_model_keeps_the_server_unready_and_is_named() {
    let root = tempfile::tempdir().unwrap();
    let broken = root.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.toml"), "name = \n").unwrap();
    let mut config = test_config();
    config.models.dir = root.path().to_path_buf();
    let state = AppState::from_config(config).await.unwrap();
    let reply = send(&state, get("/health/ready")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("'broken' is failed"), "{detail}");
}

#[tokio::test]
async fn a_made_up_method_is_counted_as_other_not_by_its_name() {
    let state = example_state().await;
    let request = axum::http::Request::builder()
        .method(axum::http::Method::from_bytes(b"MADEUP-7F3A").unwrap())
        .uri("/predict")
        .body(axum::body::Body::empty())
        .unwrap();
    let _ = app(state.clone()).oneshot(request).await.unwrap();

    let response = app(state.clone()).oneshot(get("/metrics")).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(!text.contains("MADEUP-7F3A"), "{text}");
    let other = [r#"route="/predict""#, r#"method="other""#];
    assert!(
        sample(&text, "http_requests_total", &other).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn metrics_count_requests_and_show_the_histograms_after_a_few_requests() {
    let state = example_state().await;
    for _ in 0..3 {
        let reply = send(&state, post_json("/predict/batch", PREDICT_BATCH)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let refused = send(&state, post_json("/predict/batch", r#"{"inputs": "x"}"#)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    let response = app(state.clone()).oneshot(get("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();

    let ok = [
        r#"route="/predict/batch""#,
        r#"method="POST""#,
        r#"status="200""#,
        r#"model="example_model""#,
    ];
    let answered = sample(&text, "http_requests_total", &ok).unwrap_or(0.0);
    assert!(answered >= 3.0, "{answered} in:\n{text}");
    let unprocessable = [r#"route="/predict/batch""#, r#"status="422""#];
    assert!(sample(&text, "http_requests_total", &unprocessable).unwrap_or(0.0) >= 1.0);
    // The route has a series per status: name the status too.
    let route = [r#"route="/predict/batch""#, r#"status="200""#];
    assert!(sample(&text, "http_request_duration_seconds_count", &route).unwrap_or(0.0) >= 3.0);
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "{text}"
    );
    let model = [r#"model="example_model""#];
    for histogram in [
        "inference_batch_size",
        "inference_queue_duration_seconds",
        "inference_compute_duration_seconds",
    ] {
        let count = sample(&text, &format!("{histogram}_count"), &model).unwrap_or(0.0);
        assert!(count >= 3.0, "{histogram}: {count} in:\n{text}");
        assert!(
            text.contains(&format!("{histogram}_bucket{{")),
            "{histogram}"
        );
    }
    // Each /predict/batch here is one engine batch of its two rows; other tests of this
    // process add batches of one row under the same model name.
    let rows = sample(&text, "inference_batch_size_sum", &model).unwrap();
    let batches = sample(&text, "inference_batch_size_count", &model).unwrap();
    assert!(
        rows >= 2.0 * 3.0 && rows <= 2.0 * batches,
        "{rows} rows in {batches}"
    );
    let ready = [r#"model="example_model""#, r#"state="ready""#];
    assert_eq!(sample(&text, "inference_model_state", &ready), Some(1.0));
    let loading = [r#"model="example_model""#, r#"state="loading""#];
    assert_eq!(sample(&text, "inference_model_state", &loading), Some(0.0));
    assert_eq!(sample(&text, "inference_queue_rows", &model), Some(0.0));
    assert!(
        sample(&text, "http_requests_in_flight", &[]).is_some(),
        "{text}"
    );
    let rss = sample(&text, "process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6, "{rss}");
    assert!(text.contains("# HELP inference_batch_size "), "help text");
}

#[tokio::test]
async fn unknown_routes_and_model_names_do_not_become_series() {
    let state = example_state().await;
    send(&state, get("/no/such/route/4f1c")).await;
    send(&state, post_json("/models/made_up_4f1c/predict", PREDICT)).await;
    let (_, text) = text_of(&state, get("/metrics")).await;
    assert!(!text.contains("4f1c"), "{text}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
}

async fn keyed_state() -> AppState {
    let mut config = test_config();
    config.server.api_keys = vec!["s3cret".into(), "other".into()];
    AppState::from_config(config).await.unwrap()
}

fn with_key(mut request: Request<Body>, credential: &str) -> Request<Body> {
    request
        .headers_mut()
        .insert("authorization", credential.parse().unwrap());
    request
}

#[tokio::test]
async fn with_an_api_key_closed_routes_need_it_and_probes_metrics_stay_open() {
    let state = keyed_state().await;

    let refused = send(&state, post_json("/predict", PREDICT)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body["detail"].as_str().unwrap().contains("Bearer"));
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let wrong = send(
        &state,
        with_key(post_json("/predict", PREDICT), "Bearer s3cre"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body["detail"].as_str().unwrap().contains("not valid"));
    for credential in ["Bearer s3cret", "bearer other"] {
        let admitted = send(&state, with_key(post_json("/predict", PREDICT), credential)).await;
        assert_eq!(admitted.status, StatusCode::OK, "{:?}", admitted.body);
    }

    for closed in ["/models", "/config", "/stats", "/", "/v2"] {
        assert_eq!(
            send(&state, get(closed)).await.status,
            StatusCode::UNAUTHORIZED,
            "{closed}"
        );
    }
    let unload = Request::delete("/models/example_model")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&state, unload).await.status, StatusCode::UNAUTHORIZED);
    let v2_infer = post_json(
        "/v2/models/example_model/infer",
        r#"{"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}"#,
    );
    let refused = send(&state, v2_infer).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.body["error"].is_string(),
        "v2 errors: {:?}",
        refused.body
    );

    for open in [
        "/health",
        "/health/live",
        "/health/ready",
        "/v2/health/live",
    ] {
        let reply = send(&state, get(open)).await;
        assert_eq!(reply.status, StatusCode::OK, "{open}: {:?}", reply.body);
    }
    let (status, _) = text_of(&state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let config = send(&state, with_key(get("/config"), "Bearer s3cret")).await;
    assert_eq!(
        config.body["server"]["api_keys"], "***",
        "keys are never shown"
    );
}

fn preflight(origin: &str) -> Request<Body> {
    Request::options("/predict")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn cors_headers_only_for_configured_origins_and_preflight_needs_no_key() {
    let plain = example_state().await;
    let reply = send(&plain, preflight("https://app.example")).await;
    assert!(reply.headers.get("access-control-allow-origin").is_none());

    let mut config = test_config();
    config.server.api_keys = vec!["s3cret".into()];
    config.server.cors_allowed_origins = vec!["https://app.example".into()];
    let state = AppState::from_config(config).await.unwrap();
    let allowed = send(&state, preflight("https://app.example")).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let other = send(&state, preflight("https://elsewhere.example")).await;
    assert!(other.headers.get("access-control-allow-origin").is_none());

    let mut request = with_key(post_json("/predict", PREDICT), "Bearer s3cret");
    request
        .headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let answered = send(&state, request).await;
    assert_eq!(answered.status, StatusCode::OK);
    assert_eq!(
        answered.headers["access-control-allow-origin"],
        "https://app.example"
    );
}
