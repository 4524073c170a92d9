//! Router tests: every endpoint of API.md through `tower::ServiceExt::oneshot`, checking
//! each documented field and its type against the example model.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{Value, json};

fn assert_timestamp(value: &Value) {
    let ts = value.as_str().expect("timestamp is a string");
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    chrono::DateTime::parse_from_rfc3339(ts).expect("ISO 8601");
}

fn assert_number(value: &Value, name: &str) -> f64 {
    let n = value
        .as_f64()
        .unwrap_or_else(|| panic!("{name} is not a number: {value}"));
    assert!(n.is_finite() && n >= 0.0, "{name} = {n}");
    n
}

fn assert_processing_time(value: &Value) {
    for key in ["preprocessing_ms", "inference_ms", "postprocessing_ms"] {
        assert_number(&value[key], key);
    }
}

fn assert_timing_headers(reply: &Reply) {
    for name in ["x-queue-time", "x-inference-time", "x-total-time"] {
        let text = reply.headers[name].to_str().unwrap();
        let value: f64 = text.parse().unwrap();
        assert!(value >= 0.0, "{name}");
        // Milliseconds to the microsecond, always three decimals.
        let decimals = text.split_once('.').map(|(_, fraction)| fraction.len());
        assert_eq!(decimals, Some(3), "{name}: {text}");
    }
    let id = reply.headers["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty());
}

#[tokio::test]
async fn examples_batch_matches_the_seed_page_and_the_golden_outputs() {
    let state = example_state().await;
    let reply = send(&state, post_json("/examples/batch", "{}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_timing_headers(&reply);
    let body = &reply.body;
    assert_eq!(body["example"], "batch_prediction");
    assert_eq!(body["input_count"], 5);
    let response = &body["response"];
    assert_eq!(response["success"], true);
    assert_eq!(response["model_name"], "example_model");
    let predictions = response["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 5);
    for (i, row) in predictions.iter().enumerate() {
        assert_close(row, &golden_for((i + 1) as f64));
    }
    let total = assert_number(&response["inference_time_ms"], "inference_time_ms");
    assert!(total > 0.0, "timings are measured");
    assert_timestamp(&response["timestamp"]);
    assert_eq!(
        response["request_id"].as_str().unwrap(),
        reply.headers["x-request-id"].to_str().unwrap()
    );
    let info = &response["batch_info"];
    assert_eq!(info["batch_size"], 5);
    assert_eq!(info["successful_predictions"], 5);
    assert_eq!(info["failed_predictions"], 0);
    assert!(info.get("failed_indices").is_none());
    assert!(info.get("failure_reasons").is_none());
    assert_processing_time(&info["processing_time"]);
    let meta = &response["metadata"];
    assert_eq!(meta["framework_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["model_version"], "v1.0");
    assert_eq!(meta["batch_processing"], true);
    assert_eq!(meta["input_shape"], json!([5, 1]));
    assert_eq!(meta["output_shape"], json!([5, 3]));
    let times = meta["individual_inference_times"].as_array().unwrap();
    assert_eq!(times.len(), 5);
    times.iter().for_each(|t| {
        assert_number(t, "individual_inference_times");
    });
    assert!(response.get("warnings").is_none());
}

#[tokio::test]
async fn examples_batch_ignores_any_body_and_gives_fresh_request_ids() {
    let state = example_state().await;
    let empty = send(
        &state,
        Request::post("/examples/batch")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let garbage = send(&state, post_json("/examples/batch", "not json at all")).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(garbage.status, StatusCode::OK);
    assert_ne!(
        empty.body["response"]["request_id"],
        garbage.body["response"]["request_id"]
    );
    assert_eq!(
        empty.body["response"]["predictions"], garbage.body["response"]["predictions"],
        "deterministic"
    );
}

#[tokio::test]
async fn an_incoming_request_id_is_honoured() {
    let state = example_state().await;
    let request = Request::post("/examples/batch")
        .header("x-request-id", "batch_req_12345")
        .body(Body::empty())
        .unwrap();
    let reply = send(&state, request).await;
    assert_eq!(reply.headers["x-request-id"], "batch_req_12345");
    assert_eq!(reply.body["response"]["request_id"], "batch_req_12345");
}

#[tokio::test]
async fn examples_simple_defaults_to_42_and_echoes_its_input() {
    let state = example_state().await;
    let reply = send(&state, post_json("/examples/simple", "{}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["example"], "simple_prediction");
    assert_eq!(reply.body["input"], 42.0);

    let reply = send(&state, post_json("/examples/simple", r#"{"input": 3}"#)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_timing_headers(&reply);
    assert_eq!(reply.body["input"], 3);
    let response = &reply.body["response"];
    assert_eq!(response["success"], true);
    assert_close(&response["prediction"], &golden_for(3.0));
    assert_eq!(response["model_name"], "example_model");
    assert_number(&response["inference_time_ms"], "inference_time_ms");
    assert_timestamp(&response["timestamp"]);
    assert!(response["request_id"].as_str().is_some());
    let meta = &response["metadata"];
    assert_eq!(meta["framework_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["model_version"], "v1.0");
    assert_eq!(meta["input_shape"], json!([1]));
    assert_eq!(meta["output_shape"], json!([3]));
    assert_processing_time(&meta["processing_time"]);
}

#[tokio::test]
async fn predict_returns_result_and_prediction_with_model_info() {
    let state = example_state().await;
    for inputs in ["2", "[2]", "2.0"] {
        let body = format!(r#"{{"inputs": {inputs}, "priority": 1, "timeout": 5}}"#);
        let reply = send(&state, post_json("/predict", &body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{inputs}: {}", reply.body);
        assert_timing_headers(&reply);
        let body = &reply.body;
        assert_eq!(body["success"], true);
        assert_close(&body["result"], &golden_for(2.0));
        assert_eq!(body["result"], body["prediction"]);
        assert_eq!(body["model_name"], "example_model");
        assert_number(&body["inference_time_ms"], "inference_time_ms");
        assert_processing_time(&body["processing_time"]);
        assert_timestamp(&body["timestamp"]);
        assert!(body["request_id"].as_str().is_some());
        assert_eq!(body["model_info"]["model"], "example_model");
        assert_eq!(body["model_info"]["backend"], "candle");
        assert_eq!(body["model_info"]["device"], "cpu");
        assert_eq!(body["metadata"]["model_version"], "v1.0");
    }
    let named = send(
        &state,
        post_json("/predict", r#"{"inputs": 1, "model": "example_model"}"#),
    )
    .await;
    assert_eq!(named.status, StatusCode::OK);
    assert_close(&named.body["result"], &golden_for(1.0));
}

#[tokio::test]
async fn predict_batch_computes_good_samples_and_reports_bad_ones() {
    let state = example_state().await;
    let reply = send(
        &state,
        post_json(
            "/predict/batch",
            r#"{"inputs": [1, 2, "three", [4], [5, 6]]}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_timing_headers(&reply);
    let body = &reply.body;
    assert_eq!(body["success"], true);
    assert_eq!(body["batch_size"], 5);
    assert_eq!(body["model_name"], "example_model");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results, body["predictions"].as_array().unwrap());
    assert_close(&results[0], &golden_for(1.0));
    assert_close(&results[1], &golden_for(2.0));
    assert!(results[2].is_null());
    assert_close(&results[3], &golden_for(4.0));
    assert!(results[4].is_null());
    let info = &body["batch_info"];
    assert_eq!(info["batch_size"], 5);
    assert_eq!(info["successful_predictions"], 3);
    assert_eq!(info["failed_predictions"], 2);
    assert_eq!(info["failed_indices"], json!([2, 4]));
    let reasons = info["failure_reasons"].as_array().unwrap();
    assert!(
        reasons[0].as_str().unwrap().contains("string"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].as_str().unwrap().contains("too many values"),
        "{reasons:?}"
    );
    assert_eq!(
        body["warnings"],
        json!(["Some predictions in the batch failed - see failed_indices for details"])
    );
    assert_number(&body["inference_time_ms"], "inference_time_ms");
    assert_processing_time(&body["processing_time"]);
    assert_timestamp(&body["timestamp"]);
    assert_eq!(body["model_info"]["backend"], "candle");
    assert_eq!(body["metadata"]["input_shape"], json!([5, 1]));
}

#[tokio::test]
async fn predict_batch_with_no_valid_sample_is_422_listing_every_reason() {
    let state = example_state().await;
    let reply = send(
        &state,
        post_json("/predict/batch", r#"{"inputs": ["a", null]}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = reply.body["detail"].as_array().unwrap();
    assert_eq!(detail.len(), 2);
}

#[tokio::test]
async fn health_reports_the_engine_and_its_statistics() {
    let state = example_state().await;
    send(&state, post_json("/examples/batch", "{}")).await;
    let reply = send(&state, get("/health")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = &reply.body;
    assert_eq!(body["healthy"], true);
    let checks = &body["checks"];
    assert_eq!(checks["engine_running"], true);
    assert_eq!(checks["model_loaded"], true);
    assert_eq!(checks["backend"], "candle");
    assert_eq!(checks["device"], "cpu");
    assert!(checks["queue_size"].is_u64());
    assert_eq!(checks["queue_healthy"], true);
    assert_number(&checks["test_inference_ms"], "test_inference_ms");
    assert_eq!(checks["inference_healthy"], true);
    assert_timestamp(&body["timestamp"]);
    let stats = &body["engine_stats"];
    assert!(stats["requests_processed"].as_u64().unwrap() >= 1);
    assert!(stats["batches_processed"].as_u64().unwrap() >= 1);
    assert_number(&stats["average_batch_size"], "average_batch_size");
    assert_eq!(stats["errors"], 0);
    assert_number(&stats["average_processing_time"], "average_processing_time");
    assert_number(&stats["throughput_rps"], "throughput_rps");
    assert!(stats["queue_size"].is_u64());
    assert_eq!(stats["running"], true);
    assert!(stats["memory_usage"]["cpu_memory_mb"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn stats_count_what_was_served() {
    let state = example_state().await;
    send(&state, post_json("/examples/batch", "{}")).await;
    send(&state, post_json("/predict", r#"{"inputs": 1}"#)).await;
    let reply = send(&state, get("/stats")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = &reply.body;
    assert_eq!(body["requests_processed"], 2);
    assert_eq!(body["rows_processed"], 6);
    assert!(body["batches_processed"].as_u64().unwrap() >= 2);
    for p in ["p50", "p95", "p99"] {
        assert!(assert_number(&body["latency_percentiles_ms"][p], p) > 0.0);
    }
    assert!(body["batch_size_histogram"].is_object());
    assert_eq!(body["model_name"], "example_model");
}

#[tokio::test]
async fn models_lists_the_loaded_model() {
    let state = example_state().await;
    let reply = send(&state, get("/models")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["default_model"], "example_model");
    assert_eq!(reply.body["count"], 1);
    let model = &reply.body["models"][0];
    assert_eq!(model["name"], "example_model");
    assert_eq!(model["version"], "v1.0");
    assert_eq!(model["backend"], "candle");
    assert_eq!(model["device"], "cpu");
    assert_eq!(model["input_shape"], json!([1]));
    assert_eq!(model["output_shape"], json!([3]));
    assert_eq!(model["inputs"][0]["name"], "input");
    assert_eq!(model["loaded"], true);
}

#[tokio::test]
async fn config_shows_the_effective_configuration() {
    let state = example_state().await;
    let reply = send(&state, get("/config")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["server"]["port"], 8000);
    assert_eq!(reply.body["model"]["backend"], "candle");
    assert!(reply.body["batching"]["max_batch_size"].as_u64().unwrap() >= 1);
    assert_eq!(reply.body["log"]["format"], "text");
}

#[tokio::test]
async fn root_names_the_service_and_its_endpoints() {
    let state = example_state().await;
    let reply = send(&state, get("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["name"], "inference-server");
    assert_eq!(reply.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(reply.body["status"], "running");
    assert_timestamp(&reply.body["timestamp"]);
    assert_eq!(reply.body["endpoints"]["predict"], "POST /predict");
}
