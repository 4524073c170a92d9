//! A corpus of malformed and hostile requests: each gets its documented 4xx with a
//! `detail`, and the server keeps answering `/health` afterwards.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;

struct Case {
    name: &'static str,
    request: Request<Body>,
    status: StatusCode,
    /// A fragment the detail must contain, so the reason is one a person understands.
    detail_contains: &'static str,
}

fn case(
    name: &'static str,
    request: Request<Body>,
    status: StatusCode,
    detail_contains: &'static str,
) -> Case {
    Case {
        name,
        request,
        status,
        detail_contains,
    }
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn corpus() -> Vec<Case> {
    use StatusCode as S;
    let huge_array = format!(r#"{{"inputs": [{}]}}"#, vec!["0.5"; 1_000_000].join(","));
    let million_samples_small_body = format!(r#"{{"inputs": [{}]}}"#, vec!["1"; 5000].join(","));
    vec![
        case(
            "invalid JSON",
            post_json("/predict", "{\"inputs\": [1,"),
            S::BAD_REQUEST,
            "not valid JSON",
        ),
        case(
            "not JSON at all",
            post_json("/predict", "hello"),
            S::BAD_REQUEST,
            "not valid JSON",
        ),
        case(
            "wrong content type",
            Request::post("/predict")
                .header("content-type", "text/plain")
                .body(Body::from(r#"{"inputs": 1}"#))
                .unwrap(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        case(
            "form content type",
            Request::post("/predict")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("inputs=1"))
                .unwrap(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        case(
            "missing inputs",
            post_json("/predict", "{}"),
            S::UNPROCESSABLE_ENTITY,
            "inputs",
        ),
        case(
            "body is a list",
            post_json("/predict", "[1, 2]"),
            S::UNPROCESSABLE_ENTITY,
            "object",
        ),
        case(
            "body is a string",
            post_json("/predict", "\"x\""),
            S::UNPROCESSABLE_ENTITY,
            "object",
        ),
        case(
            "string input",
            post_json("/predict", r#"{"inputs": "7"}"#),
            S::UNPROCESSABLE_ENTITY,
            "string",
        ),
        case(
            "object input",
            post_json("/predict", r#"{"inputs": {"x": 1}}"#),
            S::UNPROCESSABLE_ENTITY,
            "object",
        ),
        case(
            "null input",
            post_json("/predict", r#"{"inputs": null}"#),
            S::UNPROCESSABLE_ENTITY,
            "null",
        ),
        case(
            "boolean input",
            post_json("/predict", r#"{"inputs": true}"#),
            S::UNPROCESSABLE_ENTITY,
            "boolean",
        ),
        case(
            "too many values",
            post_json("/predict", r#"{"inputs": [1, 2, 3]}"#),
            S::UNPROCESSABLE_ENTITY,
            "too many values",
        ),
        case(
            "empty sample",
            post_json("/predict", r#"{"inputs": []}"#),
            S::UNPROCESSABLE_ENTITY,
            "empty",
        ),
        case(
            "ragged list",
            post_json("/predict/batch", r#"{"inputs": [[[1], [2, 3]]]}"#),
            S::UNPROCESSABLE_ENTITY,
            "input 0",
        ),
        case(
            "wrong rank",
            post_json("/predict", r#"{"inputs": [[2]]}"#),
            S::UNPROCESSABLE_ENTITY,
            "shape",
        ),
        case(
            "deeply nested list",
            post_json("/predict", &format!(r#"{{"inputs": {}}}"#, nested(100))),
            S::UNPROCESSABLE_ENTITY,
            "nested",
        ),
        case(
            "nesting past the JSON limit",
            post_json("/predict", &format!(r#"{{"inputs": {}}}"#, nested(5000))),
            S::UNPROCESSABLE_ENTITY,
            "nested deeper than 32 levels",
        ),
        case(
            "number too large for f32",
            post_json("/predict", r#"{"inputs": 1e300}"#),
            S::UNPROCESSABLE_ENTITY,
            "32-bit",
        ),
        case(
            "number beyond f64",
            post_json("/predict", r#"{"inputs": 1e400}"#),
            S::UNPROCESSABLE_ENTITY,
            "number out of range",
        ),
        case(
            "10^6-element array",
            post_json("/predict", &huge_array),
            S::PAYLOAD_TOO_LARGE,
            "too large",
        ),
        case(
            "too many samples",
            post_json("/predict/batch", &million_samples_small_body),
            S::PAYLOAD_TOO_LARGE,
            "limit",
        ),
        case(
            "empty batch",
            post_json("/predict/batch", r#"{"inputs": []}"#),
            S::UNPROCESSABLE_ENTITY,
            "empty",
        ),
        case(
            "batch inputs not a list",
            post_json("/predict/batch", r#"{"inputs": 5}"#),
            S::UNPROCESSABLE_ENTITY,
            "list",
        ),
        case(
            "unknown field",
            post_json("/predict", r#"{"inputs": 1, "temperature": 0.5}"#),
            S::UNPROCESSABLE_ENTITY,
            "temperature",
        ),
        case(
            "unknown model",
            post_json("/predict", r#"{"inputs": 1, "model": "gpt-9"}"#),
            S::NOT_FOUND,
            "gpt-9",
        ),
        case(
            "unknown model in batch",
            post_json("/predict/batch", r#"{"inputs": [1], "model": "nope"}"#),
            S::NOT_FOUND,
            "nope",
        ),
        case(
            "priority of the wrong type",
            post_json("/predict", r#"{"inputs": 1, "priority": "high"}"#),
            S::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        case(
            "priority out of range",
            post_json("/predict", r#"{"inputs": 1, "priority": 99999999999}"#),
            S::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        case(
            "negative timeout",
            post_json("/predict", r#"{"inputs": 1, "timeout": -1}"#),
            S::UNPROCESSABLE_ENTITY,
            "timeout",
        ),
        case(
            "absurd timeout",
            post_json("/predict", r#"{"inputs": 1, "timeout": 1e300}"#),
            S::UNPROCESSABLE_ENTITY,
            "timeout",
        ),
        case(
            "simple example with a string",
            post_json("/examples/simple", r#"{"input": "x"}"#),
            S::UNPROCESSABLE_ENTITY,
            "string",
        ),
        case(
            "unknown route",
            get("/does-not-exist"),
            S::NOT_FOUND,
            "no route",
        ),
        case(
            "wrong method",
            get("/predict"),
            S::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
        case(
            "invalid UTF-8",
            Request::post("/predict")
                .header("content-type", "application/json")
                .body(Body::from(vec![0xff, 0xfe, 0x7b]))
                .unwrap(),
            S::BAD_REQUEST,
            "not valid JSON",
        ),
    ]
}

#[tokio::test]
async fn every_bad_request_gets_its_4xx_with_a_detail_and_the_server_stays_up() {
    let state = example_state().await;
    let cases = corpus();
    assert!(cases.len() >= 25, "the corpus has {} cases", cases.len());
    for case in cases {
        let reply = send(&state, case.request).await;
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.body);
        let detail = &reply.body["detail"];
        let text = match detail {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("; "),
            other => panic!("{}: detail is {other}", case.name),
        };
        assert!(
            text.contains(case.detail_contains),
            "{}: detail {text:?} lacks {:?}",
            case.name,
            case.detail_contains
        );
        let health = send(&state, get("/health")).await;
        assert_eq!(health.status, StatusCode::OK, "after {}", case.name);
    }
}
