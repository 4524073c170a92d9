//! The KServe v2 / Open Inference Protocol routes through `tower::ServiceExt::oneshot`: every
//! route on the example model (against its golden outputs), JSON and binary tensors, output
//! selection, the error cases with their status codes, and v2 rows sharing batches with the
//! seed endpoints' rows (on core's fake engine).

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::{assert_rows_close, example_state, f32s, post_json};
use http_body_util::BodyExt;
use inference_core::InferenceEngine;
use inference_core::testing::FakeEngine;
use inference_server::{AppState, Config, app};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The JSON header of a binary response and the bytes after it.
    fn split(&self) -> (Value, &[u8]) {
        assert_eq!(self.headers["content-type"], "application/octet-stream");
        let len: usize = self.headers["inference-header-content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let header = serde_json::from_slice(&self.body[..len]).unwrap();
        (header, &self.body[len..])
    }

    /// The `{"error": ...}` message, checking the status on the way.
    fn error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert!(body.get("detail").is_none(), "{body}");
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"))
            .to_string()
    }
}

async fn call(state: &AppState, request: Request<Body>) -> Raw {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    Raw {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.into_body().collect().await.unwrap().to_bytes(),
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A body with the binary tensor data extension: the JSON header, then `raw`.
fn binary_post(
    uri: &str,
    header: &Value,
    raw: &[u8],
    declared_len: Option<usize>,
) -> Request<Body> {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = declared_len.unwrap_or(body.len());
    body.extend_from_slice(raw);
    Request::post(uri)
        .header("inference-header-content-length", len.to_string())
        .header("content-type", "application/octet-stream")
        .body(Body::from(body))
        .unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn json_values(output: &Value) -> Vec<f64> {
    output["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {output}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

const INFER: &str = "/v2/models/example_model/infer";

fn json_request(data: Value, shape: Value) -> String {
    json!({
        "id": "req-7",
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}],
    })
    .to_string()
}

#[tokio::test]
async fn server_metadata_and_health() {
    let state = example_state().await;
    let meta = call(&state, get("/v2")).await;
    assert_eq!(meta.status, StatusCode::OK);
    assert_eq!(
        meta.json(),
        json!({
            "name": "inference-server",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        })
    );
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let reply = call(&state, get(path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(reply.body.is_empty(), "{path}");
    }
    state.begin_drain();
    assert_eq!(
        call(&state, get("/v2/health/live")).await.status,
        StatusCode::OK
    );
    let ready = call(&state, get("/v2/health/ready")).await;
    assert!(
        ready
            .error(StatusCode::SERVICE_UNAVAILABLE)
            .contains("shutting down")
    );
}

#[tokio::test]
async fn model_metadata_and_readiness_with_and_without_a_version() {
    let state = example_state().await;
    let expected = json!({
        "name": "example_model",
        "versions": ["v1.0"],
        "platform": "candle",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
    });
    for path in [
        "/v2/models/example_model",
        "/v2/models/example_model/versions/v1.0",
    ] {
        let reply = call(&state, get(path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.json(), expected, "{path}");
        let ready = call(&state, get(&format!("{path}/ready"))).await;
        assert_eq!(ready.status, StatusCode::OK, "{path}/ready");
    }
    for path in [
        "/v2/models/example_model/versions/2",
        "/v2/models/example_model/versions/2/ready",
    ] {
        let reply = call(&state, get(path)).await;
        let error = reply.error(StatusCode::NOT_FOUND);
        assert!(error.contains("no version '2'"), "{path}: {error}");
    }
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/versions/1",
    ] {
        let reply = call(&state, get(path)).await;
        assert!(
            reply.error(StatusCode::NOT_FOUND).contains("nope"),
            "{path}"
        );
    }
    state.begin_drain();
    let ready = call(&state, get("/v2/models/example_model/ready")).await;
    ready.error(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn json_infer_matches_the_golden_outputs_flat_and_nested() {
    let state = example_state().await;
    for data in [json!([1, 2, 3]), json!([[1], [2], [3.0]])] {
        let reply = call(&state, post_json(INFER, &json_request(data, json!([3, 1])))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
        assert_eq!(reply.headers["content-type"], "application/json");
        assert!(
            reply
                .headers
                .get("inference-header-content-length")
                .is_none()
        );
        assert!(reply.headers.contains_key("x-inference-time"));
        let body = reply.json();
        assert_eq!(body["model_name"], "example_model");
        assert_eq!(body["model_version"], "v1.0");
        assert_eq!(body["id"], "req-7");
        let output = &body["outputs"][0];
        assert_eq!(output["name"], "output");
        assert_eq!(output["datatype"], "FP32");
        assert_eq!(output["shape"], json!([3, 3]));
        assert_rows_close(&json_values(output), &[1.0, 2.0, 3.0]);
    }
}

#[tokio::test]
async fn binary_infer_in_and_out_as_tritonclient_sends_it() {
    let state = example_state().await;
    let header = json!({
        "inputs": [{"name": "input", "shape": [2, 1], "datatype": "FP32",
                    "parameters": {"binary_data_size": 8}}],
        "parameters": {"binary_data_output": true},
    });
    let reply = call(
        &state,
        binary_post(INFER, &header, &f32_bytes(&[4.0, 5.0]), None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let (meta, raw) = reply.split();
    assert!(meta.get("id").is_none());
    let output = &meta["outputs"][0];
    assert_eq!(output["shape"], json!([2, 3]));
    assert_eq!(output["parameters"]["binary_data_size"], 24);
    assert!(output.get("data").is_none());
    assert_rows_close(&f32s(raw), &[4.0, 5.0]);

    // Binary in, JSON out (no binary_data_output), on the versioned route.
    let header = json!({
        "inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32",
                    "parameters": {"binary_data_size": 4}}],
    });
    let uri = "/v2/models/example_model/versions/v1.0/infer";
    let reply = call(&state, binary_post(uri, &header, &f32_bytes(&[0.0]), None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_rows_close(&json_values(&reply.json()["outputs"][0]), &[0.0]);
}

#[tokio::test]
async fn requested_outputs_choose_their_own_encoding() {
    let state = example_state().await;
    let request = |outputs: Value, binary_data_output: bool| {
        json!({
            "inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [-1]}],
            "outputs": outputs,
            "parameters": {"binary_data_output": binary_data_output},
        })
        .to_string()
    };
    let binary = call(
        &state,
        post_json(
            INFER,
            &request(
                json!([{"name": "output", "parameters": {"binary_data": true}}]),
                false,
            ),
        ),
    )
    .await;
    assert_eq!(binary.status, StatusCode::OK);
    let (_, raw) = binary.split();
    assert_rows_close(&f32s(raw), &[-1.0]);

    let json_out = call(
        &state,
        post_json(
            INFER,
            &request(
                json!([{"name": "output", "parameters": {"binary_data": false}}]),
                true,
            ),
        ),
    )
    .await;
    assert_eq!(json_out.headers["content-type"], "application/json");
    assert_rows_close(&json_values(&json_out.json()["outputs"][0]), &[-1.0]);

    let unknown = call(
        &state,
        post_json(INFER, &request(json!([{"name": "logits"}]), false)),
    )
    .await;
    let error = unknown.error(StatusCode::BAD_REQUEST);
    assert!(error.contains("no output 'logits'"), "{error}");
}

#[tokio::test]
async fn bad_requests_are_400_with_an_error_and_unknown_models_404() {
    let state = example_state().await;
    let input = |shape: Value, datatype: &str, data: Value| {
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
            .to_string()
    };
    let cases = [
        (
            input(json!([1, 1]), "FP64", json!([1])),
            "must be of datatype FP32, got FP64",
        ),
        (
            input(json!([1, 1]), "FLOAT", json!([1])),
            "unknown datatype \"FLOAT\"",
        ),
        (
            input(json!([3]), "FP32", json!([1, 2, 3])),
            "must have shape [-1, 1] (rows first), got [3]",
        ),
        (
            input(json!([1, 2]), "FP32", json!([1, 2])),
            "must have shape [-1, 1]",
        ),
        (
            input(json!([2, 1]), "FP32", json!([1])),
            "the shape holds 2 value(s), data has 1",
        ),
        (input(json!([0, 1]), "FP32", json!([])), "no rows"),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]})
                .to_string(),
            "has no input 'x'",
        ),
        ("{\"inputs\": [".to_string(), "not valid JSON"),
        ("[1, 2]".to_string(), "invalid inference request"),
    ];
    for (body, expected) in cases {
        let reply = call(&state, post_json(INFER, &body)).await;
        let error = reply.error(StatusCode::BAD_REQUEST);
        assert!(error.contains(expected), "{body}: {error}");
    }

    let header = json!({
        "inputs": [{"name": "input", "shape": [2, 1], "datatype": "FP32",
                    "parameters": {"binary_data_size": 8}}],
    });
    let truncated = call(&state, binary_post(INFER, &header, &[0; 5], None)).await;
    let error = truncated.error(StatusCode::BAD_REQUEST);
    assert!(
        error.contains("runs past the end of the body (5 bytes"),
        "{error}"
    );
    let beyond = call(&state, binary_post(INFER, &header, &[0; 8], Some(10_000))).await;
    let error = beyond.error(StatusCode::BAD_REQUEST);
    assert!(
        error.contains("Inference-Header-Content-Length is 10000"),
        "{error}"
    );
    let garbled = Request::post(INFER)
        .header("inference-header-content-length", "twelve")
        .body(Body::from("{}"))
        .unwrap();
    let error = call(&state, garbled).await.error(StatusCode::BAD_REQUEST);
    assert!(error.contains("must be a number of bytes"), "{error}");

    let body = json_request(json!([1]), json!([1, 1]));
    for uri in [
        "/v2/models/nope/infer",
        "/v2/models/example_model/versions/9/infer",
    ] {
        let reply = call(&state, post_json(uri, &body)).await;
        reply.error(StatusCode::NOT_FOUND);
    }
    let route = call(&state, get("/v2/nothing/here")).await;
    route.error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admission_refusals_under_v2_read_as_errors() {
    let mut config = common::test_config();
    config.server.max_body_bytes = 64;
    let state = AppState::from_config(config).await.unwrap();
    let big = json_request(json!(vec![0; 40]), json!([40, 1]));
    let reply = call(&state, post_json(INFER, &big)).await;
    assert!(
        reply
            .error(StatusCode::PAYLOAD_TOO_LARGE)
            .contains("too large")
    );
    state.begin_drain();
    let reply = call(
        &state,
        post_json(INFER, &json_request(json!([1]), json!([1, 1]))),
    )
    .await;
    assert!(
        reply
            .error(StatusCode::SERVICE_UNAVAILABLE)
            .contains("shutting down")
    );
}

fn fake_state(engine: Arc<FakeEngine>, configure: impl FnOnce(&mut Config)) -> AppState {
    let mut config = Config::default();
    configure(&mut config);
    AppState::new(config, vec![engine as Arc<dyn InferenceEngine>])
}

fn fake_infer(values: &[f32], parameters: Value) -> Request<Body> {
    let body = json!({
        "inputs": [{"name": "input", "shape": [values.len(), 1], "datatype": "FP32",
                    "data": values}],
        "parameters": parameters,
    });
    post_json("/v2/models/fake/infer", &body.to_string())
}

#[tokio::test]
async fn v2_rows_share_forward_passes_with_seed_requests() {
    let engine = Arc::new(FakeEngine::new());
    let state = fake_state(Arc::clone(&engine), |_| {});
    engine.hold();
    let blocker = {
        let state = state.clone();
        tokio::spawn(async move { call(&state, fake_infer(&[1.0], json!({}))).await })
    };
    engine.wait_for_batches(1).await;
    let seed = {
        let state = state.clone();
        tokio::spawn(async move { call(&state, post_json("/predict", r#"{"inputs": 5}"#)).await })
    };
    let v2 = {
        let state = state.clone();
        tokio::spawn(async move { call(&state, fake_infer(&[6.0, 7.0], json!({}))).await })
    };
    while state.default_model().unwrap().scheduler.queue_len() < 3 {
        tokio::task::yield_now().await;
    }
    engine.release();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    assert_eq!(seed.await.unwrap().status, StatusCode::OK);
    let v2 = v2.await.unwrap();
    assert_eq!(v2.status, StatusCode::OK);
    assert_eq!(
        json_values(&v2.json()["outputs"][0]),
        [6.0, 12.0, 18.0, 7.0, 14.0, 21.0]
    );
    assert_eq!(engine.batch_sizes(), [1, 3], "{:?}", engine.batches());
}

#[tokio::test]
async fn overload_deadline_backend_failure_and_priority_map_to_their_codes() {
    let engine = Arc::new(FakeEngine::new().fail_on(9.0));
    let state = fake_state(Arc::clone(&engine), |c| {
        c.batching.max_queue_size = 2;
        c.batching.max_batch_size = 1;
    });
    let failed = call(&state, fake_infer(&[9.0], json!({}))).await;
    assert!(
        failed
            .error(StatusCode::INTERNAL_SERVER_ERROR)
            .contains("fail on 9")
    );
    let too_many = call(&state, fake_infer(&[1.0, 2.0, 3.0], json!({}))).await;
    assert!(
        too_many
            .error(StatusCode::BAD_REQUEST)
            .contains("holds at most 2")
    );
    let priority = call(&state, fake_infer(&[1.0], json!({"priority": 7}))).await;
    assert!(priority.error(StatusCode::BAD_REQUEST).contains("priority"));
    let ranked = call(&state, fake_infer(&[1.0], json!({"priority": 1}))).await;
    assert_eq!(ranked.status, StatusCode::OK);

    engine.hold();
    let before = engine.batch_sizes().len();
    let running = {
        let state = state.clone();
        tokio::spawn(async move { call(&state, fake_infer(&[1.0], json!({}))).await })
    };
    engine.wait_for_batches(before + 1).await;
    // Triton's timeout is in microseconds: 20 ms here, while the engine is held.
    let late = call(&state, fake_infer(&[2.0], json!({"timeout": 20_000}))).await;
    late.error(StatusCode::GATEWAY_TIMEOUT);
    let queued = {
        let state = state.clone();
        tokio::spawn(async move { call(&state, fake_infer(&[3.0, 4.0], json!({}))).await })
    };
    while state.default_model().unwrap().scheduler.queue_len() < 2 {
        tokio::task::yield_now().await;
    }
    let full = call(&state, fake_infer(&[5.0], json!({}))).await;
    assert!(
        full.error(StatusCode::TOO_MANY_REQUESTS)
            .contains("queue is full")
    );
    assert!(full.headers.contains_key("retry-after"));
    engine.release();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
}
