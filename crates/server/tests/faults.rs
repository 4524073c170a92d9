//! Faults injected into the engine, and the defects they once exposed: each failure stays
//! with the requests it concerns, answers with a 5xx and a detail, and the server serves
//! again without a restart once the fault stops.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use inference_core::testing::{FakeEngine, INPUT, OUTPUT};
use inference_core::{
    Backend, BackendFactory, Batch, DType, EngineError, EngineInfo, InferenceEngine, ModelSpec,
    Tensor, TensorSpec, WorkerPool,
};
use inference_server::{AppState, Config};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn state_with(engine: Arc<dyn InferenceEngine>, configure: impl FnOnce(&mut Config)) -> AppState {
    let mut config = Config::default();
    configure(&mut config);
    AppState::new(config, vec![engine])
}

fn fake_state(engine: &Arc<FakeEngine>, configure: impl FnOnce(&mut Config)) -> AppState {
    state_with(Arc::clone(engine) as Arc<dyn InferenceEngine>, configure)
}

async fn predict(state: &AppState, body: &str) -> Reply {
    send(state, post_json("/predict", body)).await
}

fn detail(reply: &Reply) -> String {
    reply.body["detail"].to_string()
}

#[tokio::test]
async fn a_non_finite_output_fails_its_sample_instead_of_reading_as_null() {
    // 3e38 fits an f32; twice it does not: the fake model's second output is infinite.
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |_| {});
    let single = predict(&state, r#"{"inputs": 3e38}"#).await;
    assert_eq!(
        single.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        single.body
    );
    assert!(detail(&single).contains("inf"), "{}", single.body);

    let batch = send(
        &state,
        post_json("/predict/batch", r#"{"inputs": [1, 3e38, 2]}"#),
    )
    .await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.body);
    assert_eq!(
        batch.body["batch_info"]["failed_indices"],
        serde_json::json!([1])
    );
    assert!(batch.body["predictions"][1].is_null());
    assert_eq!(
        batch.body["predictions"][2],
        serde_json::json!([2.0, 4.0, 6.0])
    );
    let reason = batch.body["batch_info"]["failure_reasons"][0].to_string();
    assert!(
        reason.contains("index 1") && reason.contains("inf"),
        "{reason}"
    );
}

#[tokio::test]
async fn priority_is_bounded_to_the_configured_levels() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |c| c.batching.priority_levels = 3);
    let top = predict(&state, r#"{"inputs": 1, "priority": 2}"#).await;
    assert_eq!(top.status, StatusCode::OK);
    for priority in ["3", "-1", "2147483647"] {
        let body = format!(r#"{{"inputs": 1, "priority": {priority}}}"#);
        let refused = predict(&state, &body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{priority}"
        );
        assert!(
            detail(&refused).contains("priority_levels"),
            "{}",
            refused.body
        );
    }
    let batch = send(
        &state,
        post_json("/predict/batch", r#"{"inputs": [1], "priority": 9}"#),
    )
    .await;
    assert_eq!(batch.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn health_reads_state_and_never_waits_for_a_forward_pass() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |_| {});
    engine.hold();
    let started = Instant::now();
    for _ in 0..50 {
        let health = send(&state, get("/health")).await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // At most the one background probe, however many calls.
    assert!(engine.batches().len() <= 1, "{:?}", engine.batches());
    engine.release();
}

#[tokio::test]
async fn while_draining_health_and_new_requests_answer_503() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |_| {});
    assert_eq!(send(&state, get("/health")).await.status, StatusCode::OK);
    state.begin_drain();
    let health = send(&state, get("/health")).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body["checks"]["draining"], true);
    let refused = predict(&state, r#"{"inputs": 1}"#).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!engine.computed(1.0));
    // Admission is for the inference routes' own methods: a wrong method is still a 405.
    let wrong_method = send(&state, get("/predict")).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_hung_batch_answers_504_at_the_deadline_and_other_instances_keep_serving() {
    let engine = Arc::new(FakeEngine::new().hang_on(13.0).with_instances(2));
    let state = fake_state(&engine, |_| {});
    let hung_state = state.clone();
    let hung =
        tokio::spawn(
            async move { predict(&hung_state, r#"{"inputs": 13, "timeout": 0.3}"#).await },
        );
    engine.wait_for_batches(1).await;
    for value in 1..=5 {
        let fine = predict(&state, &format!(r#"{{"inputs": {value}}}"#)).await;
        assert_eq!(fine.status, StatusCode::OK, "{}", fine.body);
    }
    let hung = hung.await.unwrap();
    assert_eq!(hung.status, StatusCode::GATEWAY_TIMEOUT, "{}", hung.body);
    assert!(detail(&hung).contains("300ms"), "{}", hung.body);
}

#[tokio::test]
async fn a_batch_size_that_is_slow_fails_only_its_own_requests() {
    let engine = Arc::new(FakeEngine::new().slow_for_batch_size(3, Duration::from_secs(2)));
    let state = fake_state(&engine, |c| c.batching.max_batch_size = 3);
    // Three rows held back behind a running batch form one slow batch of three.
    engine.hold();
    let blocker = {
        let state = state.clone();
        tokio::spawn(async move { predict(&state, r#"{"inputs": 1}"#).await })
    };
    engine.wait_for_batches(1).await;
    let slow: Vec<_> = (2..=4)
        .map(|value| {
            let state = state.clone();
            tokio::spawn(async move {
                predict(&state, &format!(r#"{{"inputs": {value}, "timeout": 0.5}}"#)).await
            })
        })
        .collect();
    while state.models()[0].scheduler.queue_len() < 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    engine.release();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    for request in slow {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    }
    assert_eq!(engine.batch_sizes(), vec![1, 3]);
    let after = predict(&state, r#"{"inputs": 5}"#).await;
    assert_eq!(after.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failing_row_fails_only_its_request_not_its_batch_mates() {
    let engine = Arc::new(FakeEngine::new().fail_on(7.0));
    let state = fake_state(&engine, |_| {});
    engine.hold();
    let blocker = {
        let state = state.clone();
        tokio::spawn(async move { predict(&state, r#"{"inputs": 1}"#).await })
    };
    engine.wait_for_batches(1).await;
    let [bad, good] = [7, 5].map(|value| {
        let state = state.clone();
        tokio::spawn(async move { predict(&state, &format!(r#"{{"inputs": {value}}}"#)).await })
    });
    while state.models()[0].scheduler.queue_len() < 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    engine.release();
    blocker.await.unwrap();
    let bad = bad.await.unwrap();
    assert_eq!(bad.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(detail(&bad).contains("fail on 7"), "{}", bad.body);
    assert_eq!(good.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        engine.batches(),
        vec![vec![1.0], vec![7.0, 5.0], vec![7.0], vec![5.0]]
    );
}

/// `[s, 2s, 3s]` like the fake engine, on a worker thread; panics on a negative input.
struct Tripler;

impl Backend for Tripler {
    fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
        let values = batch.tensors[0].as_f32().unwrap_or_default();
        assert!(values.iter().all(|v| *v >= 0.0), "negative input");
        let out = values.iter().flat_map(|s| [*s, 2.0 * s, 3.0 * s]).collect();
        Ok(Batch {
            size: batch.size,
            tensors: vec![Tensor::from_f32(vec![batch.size, 3], out)?],
        })
    }
}

fn worker_pool(builds_fail: Arc<AtomicBool>) -> Arc<dyn InferenceEngine> {
    let spec = |name: &str, shape: Vec<i64>| TensorSpec {
        name: name.into(),
        dtype: DType::F32,
        shape,
    };
    let info = EngineInfo {
        backend: "threads".into(),
        device: "cpu".into(),
        model: ModelSpec {
            name: "tripler".into(),
            version: "1".into(),
            inputs: vec![spec(INPUT, vec![1])],
            outputs: vec![spec(OUTPUT, vec![3])],
        },
        instances: 1,
    };
    let factory: BackendFactory = Arc::new(move |_| {
        if builds_fail.load(Ordering::SeqCst) {
            Err(EngineError::Load("the device is gone".into()))
        } else {
            Ok(Box::new(Tripler) as Box<dyn Backend>)
        }
    });
    Arc::new(WorkerPool::start(info, factory).unwrap())
}

#[tokio::test]
async fn a_worker_that_cannot_be_rebuilt_fails_the_model_until_it_can() {
    let builds_fail = Arc::new(AtomicBool::new(false));
    let state = state_with(worker_pool(Arc::clone(&builds_fail)), |_| {});
    assert_eq!(
        predict(&state, r#"{"inputs": 1}"#).await.status,
        StatusCode::OK
    );

    builds_fail.store(true, Ordering::SeqCst);
    let panicked = predict(&state, r#"{"inputs": -1}"#).await;
    assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        detail(&panicked).contains("negative input"),
        "{}",
        panicked.body
    );

    // The replacement cannot be built: the model reads failed and requests fail at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = send(&state, get("/health")).await;
        if health.status == StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.body
    );
    assert_eq!(health.body["models"]["tripler"]["state"], "failed");
    assert!(
        health.body["models"]["tripler"]["error"]
            .to_string()
            .contains("device is gone")
    );
    assert_eq!(health.body["checks"]["live_instances"], 0);
    let started = Instant::now();
    let refused = predict(&state, r#"{"inputs": 2}"#).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "503 at once, not a wait"
    );

    // The fault stops: the worker comes back with no restart.
    builds_fail.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while send(&state, get("/health")).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "the model never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = predict(&state, r#"{"inputs": 2}"#).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        served.body["prediction"],
        serde_json::json!([2.0, 4.0, 6.0])
    );
}

/// A request whose body never finishes arriving.
fn stalled_upload() -> (Request<Body>, tokio::io::DuplexStream) {
    let (writer, reader) = tokio::io::duplex(64);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    let request = Request::post("/predict")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    (request, writer)
}

#[tokio::test]
async fn a_slow_upload_gets_408_and_holds_no_request_slot_meanwhile() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |c| {
        c.server.max_concurrent_requests = 1;
        c.server.body_read_timeout_secs = 0.5;
    });
    let (request, _writer) = stalled_upload();
    let slow = {
        let state = state.clone();
        tokio::spawn(async move { send(&state, request).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The only slot is free: the uploader has not been admitted yet.
    let other = predict(&state, r#"{"inputs": 1}"#).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::REQUEST_TIMEOUT, "{}", slow.body);
    assert!(detail(&slow).contains("body_read_timeout_secs"));
    assert_eq!(slow.headers["connection"], "close");
}

#[tokio::test]
async fn request_bytes_in_flight_are_bounded() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |c| c.server.max_in_flight_bytes = 4096);
    let padding = " ".repeat(6000);
    let refused = predict(&state, &format!(r#"{{"inputs": 1{padding}}}"#)).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(detail(&refused).contains("max_in_flight_bytes"));
    assert!(refused.headers.contains_key("retry-after"));
    // The refused request's bytes went back to the budget.
    for _ in 0..3 {
        assert_eq!(
            predict(&state, r#"{"inputs": 1}"#).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn a_request_waits_for_a_slot_up_to_max_admission_wait_then_gets_429() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(&engine, |c| {
        c.server.max_concurrent_requests = 1;
        c.server.max_admission_wait_ms = 300.0;
    });
    engine.hold();
    let blocker = {
        let state = state.clone();
        tokio::spawn(async move { predict(&state, r#"{"inputs": 1}"#).await })
    };
    engine.wait_for_batches(1).await;
    // No slot frees within the wait: 429, after the wait and not before.
    let started = Instant::now();
    let refused = predict(&state, r#"{"inputs": 2}"#).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(detail(&refused).contains("max_admission_wait_ms"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A slot that frees within the wait goes to the waiting request.
    let waiting = {
        let state = state.clone();
        tokio::spawn(async move { predict(&state, r#"{"inputs": 3}"#).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine.release();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
}
