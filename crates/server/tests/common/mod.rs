//! Helpers shared by the server's integration tests.
#![allow(dead_code, unreachable_pub)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use inference_server::{AppState, Config, app};
use serde_json::Value;
use std::path::PathBuf;
use tower::ServiceExt;

pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example")
}

/// The golden outputs of the example model, keyed by the input value.
pub fn golden() -> Vec<(f64, Vec<f64>)> {
    #[derive(serde::Deserialize)]
    struct Golden {
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        input: Vec<f64>,
        output: Vec<f64>,
    }
    let text = std::fs::read_to_string(example_dir().join("golden.toml")).unwrap();
    let golden: Golden = toml::from_str(&text).unwrap();
    golden
        .cases
        .into_iter()
        .map(|c| (c.input[0], c.output))
        .collect()
}

pub fn golden_for(input: f64) -> Vec<f64> {
    golden()
        .into_iter()
        .find(|(x, _)| *x == input)
        .unwrap_or_else(|| panic!("no golden case for {input}"))
        .1
}

pub fn assert_close(actual: &Value, expected: &[f64]) {
    let actual: Vec<f64> = actual
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {actual}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= 1e-5, "{actual:?} vs {expected:?}");
    }
}

/// The default configuration: the example model with the default backend.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.models.dir = example_dir();
    config
}

pub async fn example_state() -> AppState {
    AppState::from_config(test_config()).await.unwrap()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends one request through the router (no sockets).
pub async fn send(state: &AppState, request: Request<Body>) -> Reply {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}
