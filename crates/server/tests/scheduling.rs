//! The HTTP mapping of the scheduler's outcomes (429, 504, 500, 503) and graceful shutdown,
//! driven by core's deterministic fake engine.

mod common;

use axum::http::StatusCode;
use common::*;
use inference_core::InferenceEngine;
use inference_core::testing::FakeEngine;
use inference_server::{AppState, Config};
use std::sync::Arc;
use std::time::Duration;

fn state_with(engine: Arc<FakeEngine>, configure: impl FnOnce(&mut Config)) -> AppState {
    let mut config = Config::default();
    configure(&mut config);
    AppState::new(config, vec![engine as Arc<dyn InferenceEngine>])
}

/// Holds the engine and puts one request (input 1) inside it, so that what is sent next
/// waits in the queue until `engine.release()`.
async fn occupy(state: &AppState, engine: &FakeEngine) -> tokio::task::JoinHandle<Reply> {
    engine.hold();
    let state = state.clone();
    let blocker =
        tokio::spawn(async move { send(&state, post_json("/predict", r#"{"inputs": 1}"#)).await });
    engine.wait_for_batches(1).await;
    blocker
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_then_recovers() {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(Arc::clone(&engine), |c| {
        c.batching.max_queue_size = 2;
        c.batching.max_batch_size = 1;
    });
    engine.hold();
    // One row runs (held), two wait: the queue is full.
    let mut waiting = Vec::new();
    for value in [1, 2, 3] {
        let state = state.clone();
        waiting.push(tokio::spawn(async move {
            send(
                &state,
                post_json("/predict", &format!(r#"{{"inputs": {value}}}"#)),
            )
            .await
        }));
        if value == 1 {
            engine.wait_for_batches(1).await;
        }
    }
    while state.default_model().unwrap().scheduler.queue_len() < 2 {
        tokio::task::yield_now().await;
    }
    let rejected = send(&state, post_json("/predict", r#"{"inputs": 4}"#)).await;
    assert_eq!(
        rejected.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        rejected.body
    );
    assert!(
        rejected.body["detail"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    let retry: u64 = rejected.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);

    engine.release();
    for handle in waiting {
        assert_eq!(handle.await.unwrap().status, StatusCode::OK);
    }
    let recovered = send(&state, post_json("/predict", r#"{"inputs": 4}"#)).await;
    assert_eq!(recovered.status, StatusCode::OK);
    assert_eq!(
        recovered.body["result"],
        serde_json::json!([4.0, 8.0, 12.0])
    );
}

#[tokio::test]
async fn a_passed_deadline_is_504_and_the_row_is_never_computed() {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(Arc::clone(&engine), |c| c.batching.max_batch_size = 1);
    let blocker = occupy(&state, &engine).await;
    let late = send(
        &state,
        post_json("/predict", r#"{"inputs": 5, "timeout": 0.05}"#),
    )
    .await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "{}", late.body);
    assert!(late.body["detail"].as_str().unwrap().contains("deadline"));
    engine.release();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    // Let the worker look at the queue again: the expired row must not reach the engine.
    let after = send(&state, post_json("/predict", r#"{"inputs": 2}"#)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!engine.computed(5.0), "expired row was computed");
}

#[tokio::test]
async fn a_backend_error_is_500_for_its_batch_only_and_health_counts_it() {
    let engine = Arc::new(FakeEngine::new().fail_on(7.0));
    let state = state_with(Arc::clone(&engine), |_| {});
    let failed = send(&state, post_json("/predict", r#"{"inputs": 7}"#)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failed.body["detail"].as_str().unwrap().contains("backend"));
    let fine = send(&state, post_json("/predict", r#"{"inputs": 3}"#)).await;
    assert_eq!(fine.status, StatusCode::OK);
    let health = send(&state, get("/health")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["engine_stats"]["errors"], 1);
}

#[tokio::test]
async fn a_backend_panic_is_500_and_the_server_keeps_serving() {
    let engine = Arc::new(FakeEngine::new().panic_on(9.0));
    let state = state_with(Arc::clone(&engine), |_| {});
    let failed = send(&state, post_json("/predict/batch", r#"{"inputs": [9]}"#)).await;
    assert_eq!(
        failed.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        failed.body
    );
    let example = send(&state, post_json("/examples/batch", "{}")).await;
    assert_eq!(example.status, StatusCode::OK);
    let stats = send(&state, get("/stats")).await;
    assert_eq!(stats.body["errors"], 1);
}

#[tokio::test]
async fn examples_batch_reports_a_failed_engine_as_batch_inference_failed() {
    let engine = Arc::new(FakeEngine::new().fail_on(3.0));
    let state = state_with(engine, |_| {});
    let reply = send(&state, post_json("/examples/batch", "{}")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.starts_with("Batch inference failed: "), "{detail}");
}

#[tokio::test]
async fn after_shutdown_new_requests_get_503() {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(engine, |_| {});
    state.shutdown().await;
    let reply = send(&state, post_json("/predict", r#"{"inputs": 1}"#)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    let health = send(&state, get("/health")).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_still_gets_its_answer() {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(Arc::clone(&engine), |c| c.server.drain_timeout_secs = 10.0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(inference_server::serve_until(listener, state, async move {
        let _ = stop_rx.await;
    }));

    engine.hold();
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(
        client
            .post(format!("http://{addr}/predict"))
            .json(&serde_json::json!({"inputs": 6}))
            .send(),
    );
    engine.wait_for_batches(1).await;
    stop_tx.send(()).unwrap();
    // The signal is in; the request is still held inside the engine.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.is_finished(),
        "server must wait for the in-flight request"
    );
    engine.release();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["result"], serde_json::json!([6.0, 12.0, 18.0]));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops after draining")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_request_whose_client_went_away_is_never_computed() {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(Arc::clone(&engine), |c| c.batching.max_batch_size = 1);
    let blocker = occupy(&state, &engine).await;
    // axum drops the handler's future when the connection closes; aborting does the same.
    let abandoned = {
        let state = state.clone();
        tokio::spawn(async move { send(&state, post_json("/predict", r#"{"inputs": 8}"#)).await })
    };
    while state.default_model().unwrap().scheduler.queue_len() < 1 {
        tokio::task::yield_now().await;
    }
    abandoned.abort();
    let _ = abandoned.await;
    engine.release();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    let after = send(&state, post_json("/predict", r#"{"inputs": 2}"#)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!engine.computed(8.0), "the abandoned row was computed");
    let stats = send(&state, get("/stats")).await;
    assert_eq!(stats.body["cancelled"], 1);
}

#[tokio::test]
async fn past_max_concurrent_requests_new_ones_get_429_and_probes_still_answer() {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(Arc::clone(&engine), |c| {
        c.server.max_concurrent_requests = 1
    });
    let blocker = occupy(&state, &engine).await;
    let refused = send(&state, post_json("/predict", r#"{"inputs": 2}"#)).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_requests")
    );
    assert_eq!(refused.headers["retry-after"], "1");
    let stats = send(&state, get("/stats")).await;
    assert_eq!(stats.status, StatusCode::OK);
    engine.release();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    let admitted = send(&state, post_json("/predict", r#"{"inputs": 2}"#)).await;
    assert_eq!(admitted.status, StatusCode::OK);
}
