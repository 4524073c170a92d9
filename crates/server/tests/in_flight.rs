//! `http_requests_in_flight` counts requests being handled, also when one ends because its
//! client went away. A file of its own: the gauge is process-wide, and other tests running
//! at the same time would move it.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use http_body_util::BodyExt;
use inference_core::InferenceEngine;
use inference_core::testing::FakeEngine;
use inference_server::{AppState, Config, app};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

async fn in_flight(state: &AppState) -> f64 {
    let response = app(state.clone()).oneshot(get("/metrics")).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("http_requests_in_flight "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no http_requests_in_flight in:\n{text}"))
}

#[tokio::test]
async fn a_request_dropped_unanswered_leaves_the_in_flight_gauge() {
    let engine = Arc::new(FakeEngine::new());
    engine.hold();
    let state = AppState::new(
        Config::default(),
        vec![Arc::clone(&engine) as Arc<dyn InferenceEngine>],
    );
    // The scrape counts itself.
    let idle = in_flight(&state).await;

    let request: Request<Body> = post_json("/predict", r#"{"inputs": 1}"#);
    let pending = tokio::spawn(app(state.clone()).oneshot(request));
    tokio::time::timeout(Duration::from_secs(10), engine.wait_for_batches(1))
        .await
        .expect("the request reaches the engine");
    assert_eq!(in_flight(&state).await, idle + 1.0);

    // The client goes away: its request's future is dropped before any answer.
    pending.abort();
    let _ = pending.await;
    assert_eq!(in_flight(&state).await, idle);
    engine.release();
}
