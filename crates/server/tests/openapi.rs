//! The OpenAPI document against the router: every route is documented, and every documented
//! operation, driven with real requests (valid ones and errors), answers with a status the
//! document lists and a body that the document's own schema for that status accepts.
//!
//! How a route without documentation fails here: the router is built only from
//! `utoipa_axum::routes!` declarations, which take each route from its handler's
//! `#[utoipa::path]`, so a route declared that way is in the document by construction. The
//! only other ways to add a route are axum's own (`.route(`, `.route_service(`, `.nest(`,
//! `.nest_service(`, `axum::routing::…`): `routes_are_declared_only_through_routes_macro`
//! fails when any of them appears in the server's sources. The other direction, a documented
//! operation the router does not serve, fails `every_documented_operation_answers_as_documented`,
//! which sends a request to every operation of the document and refuses the fallback's 404
//! and the 405 of a missing method.

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::{example_state, test_config};
use http_body_util::BodyExt;
use inference_server::{AppState, app};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

async fn call(state: &AppState, request: Request<Body>) -> Answer {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        bytes: bytes.to_vec(),
    }
}

async fn document(state: &AppState) -> Value {
    let answer = call(state, get("/openapi.json")).await;
    assert_eq!(answer.status, StatusCode::OK);
    serde_json::from_slice(&answer.bytes).expect("the document is JSON")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn request(method: &str, uri: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

fn post_json(uri: &str, body: &str) -> Request<Body> {
    request("POST", uri, Some("application/json"), body)
}

/// Checks one real answer against the document: its status is listed for the operation, its
/// content type is one the response declares (or it has no body when none is declared), and
/// a JSON body is valid against the schema given there, `$ref`s resolved by `jsonschema`
/// against the document's own `components`.
fn conforms(doc: &Value, method: &str, template: &str, answer: &Answer) {
    let operation = &doc["paths"][template][method];
    assert!(
        operation.is_object(),
        "{method} {template} is not in the document"
    );
    let status = answer.status.as_str();
    let body_text = String::from_utf8_lossy(&answer.bytes);
    let response = operation["responses"].get(status).unwrap_or_else(|| {
        panic!(
            "{method} {template} answered {status}, which the document does not list: {body_text}"
        )
    });
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            answer.bytes.is_empty(),
            "{method} {template} {status} has no documented content but answered {body_text}"
        );
        return;
    };
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let media = content.get(&content_type).unwrap_or_else(|| {
        panic!(
            "{method} {template} {status} answered {content_type:?}, the document lists {:?}",
            content.keys().collect::<Vec<_>>()
        )
    });
    if content_type != "application/json" {
        return;
    }
    let body: Value = serde_json::from_slice(&answer.bytes)
        .unwrap_or_else(|_| panic!("{method} {template} {status}: not JSON: {body_text}"));
    let mut schema = media["schema"].clone();
    let Some(object) = schema.as_object_mut() else {
        panic!("{method} {template} {status}: no schema object");
    };
    object.insert("components".into(), doc["components"].clone());
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{method} {template} {status}: invalid schema: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {template} {status}: the body does not fit its schema: {errors:?}\n{body_text}"
    );
}

/// Every `(method, path)` operation of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&m.as_str())
                })
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect()
}

/// Sends requests and checks each answer, recording which operations were exercised.
struct Driver {
    state: AppState,
    doc: Value,
    seen: BTreeSet<(String, String)>,
}

impl Driver {
    async fn new(state: AppState) -> Self {
        let doc = document(&state).await;
        Self {
            state,
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Sends `request` (whose path fills `template`), expects `status`, checks conformance.
    async fn expect(&mut self, template: &str, request: Request<Body>, status: u16) -> Value {
        let method = request.method().as_str().to_ascii_lowercase();
        let uri = request.uri().to_string();
        let answer = call(&self.state, request).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&answer.bytes)
        );
        // Neither the fallback's 404 nor a 405: the router serves what the document lists.
        let text = String::from_utf8_lossy(&answer.bytes);
        assert!(
            !text.contains("no route for") && answer.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri} is documented as {template} but not routed: {text}"
        );
        conforms(&self.doc, &method, template, &answer);
        self.seen.insert((method, template.to_string()));
        serde_json::from_slice(&answer.bytes).unwrap_or(Value::Null)
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let mut d = Driver::new(example_state().await).await;
    assert!(
        d.doc["openapi"].as_str().unwrap().starts_with("3."),
        "OpenAPI 3"
    );

    // Server and repository.
    d.expect("/", get("/"), 200).await;
    d.expect("/health", get("/health"), 200).await;
    d.expect("/stats", get("/stats"), 200).await;
    d.expect("/config", get("/config"), 200).await;
    d.expect("/openapi.json", get("/openapi.json"), 200).await;
    d.expect("/health/live", get("/health/live"), 200).await;
    d.expect("/health/ready", get("/health/ready"), 200).await;
    d.expect("/metrics", get("/metrics"), 200).await;
    d.expect("/ui", get("/ui"), 200).await;
    d.expect("/ui/app.js", get("/ui/app.js"), 200).await;
    d.expect("/ui/batch_client.js", get("/ui/batch_client.js"), 200)
        .await;
    d.expect("/models", get("/models"), 200).await;
    d.expect("/models/{name}", get("/models/example_model"), 200)
        .await;
    d.expect("/models/{name}", get("/models/nope"), 404).await;
    d.expect(
        "/models/{name}/load",
        post_json("/models/example_model/load", ""),
        200,
    )
    .await;
    d.expect(
        "/models/{name}/load",
        post_json("/models/nope/load", ""),
        404,
    )
    .await;
    d.expect(
        "/models/{name}",
        request("DELETE", "/models/nope", None, ""),
        404,
    )
    .await;

    // A path segment that is not UTF-8: a 400 in each family's error shape.
    d.expect("/models/{name}", get("/models/%FF"), 400).await;
    d.expect(
        "/models/{name}/predict",
        post_json("/models/%FF/predict", r#"{"inputs": [2.0]}"#),
        400,
    )
    .await;
    d.expect("/v2/models/{name}", get("/v2/models/%FF"), 400)
        .await;

    // Seed inference routes: successes and each kind of refusal.
    d.expect(
        "/predict",
        post_json("/predict", r#"{"inputs": [1.0]}"#),
        200,
    )
    .await;
    d.expect("/predict", post_json("/predict", "{not json"), 400)
        .await;
    d.expect("/predict", post_json("/predict", "{}"), 422).await;
    d.expect(
        "/predict",
        request("POST", "/predict", Some("text/plain"), "{}"),
        415,
    )
    .await;
    d.expect(
        "/predict",
        post_json("/predict", r#"{"inputs": [1.0], "model": "nope"}"#),
        404,
    )
    .await;
    d.expect(
        "/predict/batch",
        post_json("/predict/batch", r#"{"inputs": [[1.0], [2.0]]}"#),
        200,
    )
    .await;
    let partial = d
        .expect(
            "/predict/batch",
            post_json("/predict/batch", r#"{"inputs": [[1.0], "x"]}"#),
            200,
        )
        .await;
    assert_eq!(partial["batch_info"]["failed_indices"], json!([1]));
    let none_valid = d
        .expect(
            "/predict/batch",
            post_json("/predict/batch", r#"{"inputs": ["x", "y"]}"#),
            422,
        )
        .await;
    assert!(none_valid["detail"].is_array(), "{none_valid}");
    d.expect("/examples/simple", post_json("/examples/simple", "{}"), 200)
        .await;
    d.expect(
        "/examples/simple",
        post_json("/examples/simple", r#"{"input": [3.0]}"#),
        200,
    )
    .await;
    d.expect("/examples/batch", post_json("/examples/batch", ""), 200)
        .await;
    d.expect(
        "/models/{name}/predict",
        post_json("/models/example_model/predict", r#"{"inputs": [2.0]}"#),
        200,
    )
    .await;
    d.expect(
        "/models/{name}/predict",
        request(
            "POST",
            "/models/example_model/predict",
            Some("image/png"),
            "\u{89}PNG",
        ),
        415,
    )
    .await;
    d.expect(
        "/models/{name}/predict",
        post_json("/models/nope/predict", r#"{"inputs": [2.0]}"#),
        404,
    )
    .await;
    d.expect(
        "/models/{name}/predict/batch",
        post_json(
            "/models/example_model/predict/batch",
            r#"{"inputs": [[1.0], [2.0]]}"#,
        ),
        200,
    )
    .await;
    d.expect(
        "/models/{name}/predict/batch",
        post_json("/models/example_model/predict/batch", r#"{"inputs": []}"#),
        422,
    )
    .await;

    // KServe v2.
    d.expect("/v2", get("/v2"), 200).await;
    d.expect("/v2/health/live", get("/v2/health/live"), 200)
        .await;
    d.expect("/v2/health/ready", get("/v2/health/ready"), 200)
        .await;
    let metadata = d
        .expect("/v2/models/{name}", get("/v2/models/example_model"), 200)
        .await;
    d.expect("/v2/models/{name}", get("/v2/models/nope"), 404)
        .await;
    let version = metadata["versions"][0].as_str().unwrap().to_string();
    let input = metadata["inputs"][0]["name"].as_str().unwrap().to_string();
    let versioned = format!("/v2/models/example_model/versions/{version}");
    d.expect("/v2/models/{name}/versions/{version}", get(&versioned), 200)
        .await;
    d.expect(
        "/v2/models/{name}/versions/{version}",
        get("/v2/models/example_model/versions/999"),
        404,
    )
    .await;
    d.expect(
        "/v2/models/{name}/ready",
        get("/v2/models/example_model/ready"),
        200,
    )
    .await;
    d.expect("/v2/models/{name}/ready", get("/v2/models/nope/ready"), 404)
        .await;
    d.expect(
        "/v2/models/{name}/versions/{version}/ready",
        get(&format!("{versioned}/ready")),
        200,
    )
    .await;
    let infer = json!({"inputs": [{"name": input, "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}]})
        .to_string();
    d.expect(
        "/v2/models/{name}/infer",
        post_json("/v2/models/example_model/infer", &infer),
        200,
    )
    .await;
    let binary = json!({
        "inputs": [{"name": input, "shape": [1, 1], "datatype": "FP32", "data": [1.0]}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    d.expect(
        "/v2/models/{name}/infer",
        post_json("/v2/models/example_model/infer", &binary),
        200,
    )
    .await;
    d.expect(
        "/v2/models/{name}/infer",
        post_json("/v2/models/example_model/infer", "{not json"),
        400,
    )
    .await;
    d.expect(
        "/v2/models/{name}/infer",
        post_json("/v2/models/nope/infer", &infer),
        404,
    )
    .await;
    d.expect(
        "/v2/models/{name}/versions/{version}/infer",
        post_json(&format!("{versioned}/infer"), &infer),
        200,
    )
    .await;

    // Last, as it stops the default model: the unload, then what the server says without it.
    d.expect(
        "/models/{name}",
        request("DELETE", "/models/example_model", None, ""),
        200,
    )
    .await;
    d.expect("/health", get("/health"), 503).await;
    d.expect("/stats", get("/stats"), 404).await;
    d.expect("/examples/batch", post_json("/examples/batch", ""), 404)
        .await;
    d.expect("/v2/health/ready", get("/v2/health/ready"), 200)
        .await;

    let missing: Vec<_> = operations(&d.doc).difference(&d.seen).cloned().collect();
    assert!(
        missing.is_empty(),
        "documented operations this test never sent a request to: {missing:?}"
    );
}

#[tokio::test]
async fn admission_refusals_are_documented() {
    // A body over the limit is refused by the admission middleware with 413, before JSON.
    let mut config = test_config();
    config.server.max_body_bytes = 16;
    let state = AppState::from_config(config).await.unwrap();
    let mut d = Driver::new(state).await;
    let big = format!(r#"{{"inputs": [{}]}}"#, vec!["1.0"; 32].join(", "));
    d.expect("/predict", post_json("/predict", &big), 413).await;
    d.expect(
        "/v2/models/{name}/infer",
        post_json("/v2/models/example_model/infer", &big),
        413,
    )
    .await;
}

#[tokio::test]
async fn with_api_keys_every_closed_operation_answers_its_documented_401() {
    let mut config = test_config();
    config.server.api_keys = vec!["s3cret".into()];
    let state = AppState::from_config(config).await.unwrap();
    let mut d = Driver::new(state).await;
    let mut refused = 0;
    for (method, template) in operations(&d.doc) {
        let documented = &d.doc["paths"][&template][&method];
        let closed = !inference_server::auth::is_open(&template);
        assert_eq!(
            documented["responses"].get("401").is_some(),
            closed,
            "{method} {template}: a 401 is documented exactly on the closed routes"
        );
        if !closed {
            continue;
        }
        let uri = template
            .replace("{name}", "example_model")
            .replace("{version}", "v1.0");
        let content_type = (method != "get").then_some("application/json");
        let request = request(&method.to_ascii_uppercase(), &uri, content_type, "{}");
        d.expect(&template, request, 401).await;
        refused += 1;
    }
    assert!(refused > 15, "only {refused} closed operations");
}

#[test]
fn routes_are_declared_only_through_routes_macro() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for pattern in [
                    ".route(",
                    ".route_service(",
                    ".nest(",
                    ".nest_service(",
                    "routing::",
                ] {
                    if code.contains(pattern) {
                        offenders.push(format!(
                            "{}:{}: {}",
                            path.display(),
                            number + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes added past `routes!` have no OpenAPI documentation; declare them with \
         #[utoipa::path] and routes!(...):\n{}",
        offenders.join("\n")
    );
}

#[tokio::test]
async fn docs_serve_swagger_ui_from_the_binary_pointed_at_the_document() {
    let state = example_state().await;
    let page = call(&state, get("/docs/")).await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8_lossy(&page.bytes);
    assert!(html.contains("swagger-ui"), "{html}");
    // The page loads its assets from /docs itself, never from elsewhere.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let bundle = call(&state, get("/docs/swagger-ui-bundle.js")).await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert!(
        bundle.bytes.len() > 100_000,
        "the vendored bundle is served"
    );
    let initializer = call(&state, get("/docs/swagger-initializer.js")).await;
    assert_eq!(initializer.status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&initializer.bytes).contains("/openapi.json"),
        "Swagger UI reads /openapi.json"
    );
    // Without the slash: sent on to the page.
    let bare = call(&state, get("/docs")).await;
    assert!(bare.status.is_redirection(), "{}", bare.status);
}

#[tokio::test]
#[should_panic(expected = "does not fit its schema")]
async fn a_body_that_differs_from_its_schema_is_caught() {
    // The conformance check itself: a made-up answer whose `models` is not a list.
    let doc = document(&example_state().await).await;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    let answer = Answer {
        status: StatusCode::OK,
        headers,
        bytes: br#"{"models": 1, "default_model": "m", "count": 1}"#.to_vec(),
    };
    conforms(&doc, "get", "/models", &answer);
}
