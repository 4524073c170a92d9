//! The HTTP floor of `cargo xtask bench http`: a bare axum server that parses the same JSON
//! bodies as `POST /predict` and `/predict/batch` and answers documents of the same shape,
//! with no model, scheduler or middleware. What the served routes cost beyond it is the
//! server's own overhead.
//!
//! `cargo run --release -p inference-server --example http_floor -- --port 0`

use axum::Json;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct PredictRequest {
    inputs: Value,
}

/// Three numbers per sample, as the example model gives: computed from the input so that
/// the parse cannot be optimised away.
fn fake_output(sample: &Value) -> [f64; 3] {
    let x = match sample {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::Array(items) => items.iter().filter_map(Value::as_f64).sum(),
        _ => 0.0,
    };
    [x * 0.5, x * 0.25, x * 0.125]
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

#[derive(Serialize)]
struct ProcessingTime {
    preprocessing_ms: f64,
    inference_ms: f64,
    postprocessing_ms: f64,
}

#[derive(Serialize)]
struct ModelInfo {
    model: &'static str,
    backend: &'static str,
    device: &'static str,
}

#[derive(Serialize)]
struct Metadata {
    framework_version: &'static str,
    model_version: &'static str,
    backend: &'static str,
    device: &'static str,
    input_shape: [i64; 1],
    output_shape: [i64; 1],
}

/// The fields every answer shares, flattened into each document.
#[derive(Serialize)]
struct Common {
    model_name: &'static str,
    inference_time_ms: f64,
    processing_time: ProcessingTime,
    timestamp: String,
    request_id: String,
    model_info: ModelInfo,
    metadata: Metadata,
}

impl Common {
    fn new(headers: &HeaderMap) -> Self {
        Self {
            model_name: "example_model",
            inference_time_ms: 0.0,
            processing_time: ProcessingTime {
                preprocessing_ms: 0.0,
                inference_ms: 0.0,
                postprocessing_ms: 0.0,
            },
            timestamp: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            request_id: request_id(headers),
            model_info: ModelInfo {
                model: "example_model",
                backend: "none",
                device: "cpu",
            },
            metadata: Metadata {
                framework_version: "0.1.0",
                model_version: "v1.0",
                backend: "none",
                device: "cpu",
                input_shape: [1],
                output_shape: [3],
            },
        }
    }
}

#[derive(Serialize)]
struct PredictResponse {
    success: bool,
    result: [f64; 3],
    prediction: [f64; 3],
    #[serde(flatten)]
    common: Common,
}

#[derive(Serialize)]
struct BatchResponse {
    success: bool,
    results: Vec<[f64; 3]>,
    predictions: Vec<[f64; 3]>,
    batch_size: usize,
    #[serde(flatten)]
    common: Common,
}

async fn predict(headers: HeaderMap, Json(body): Json<PredictRequest>) -> Json<PredictResponse> {
    let output = fake_output(&body.inputs);
    Json(PredictResponse {
        success: true,
        result: output,
        prediction: output,
        common: Common::new(&headers),
    })
}

async fn predict_batch(
    headers: HeaderMap,
    Json(body): Json<PredictRequest>,
) -> Json<BatchResponse> {
    let outputs: Vec<[f64; 3]> = match &body.inputs {
        Value::Array(samples) => samples.iter().map(fake_output).collect(),
        _ => Vec::new(),
    };
    Json(BatchResponse {
        success: true,
        batch_size: outputs.len(),
        results: outputs.clone(),
        predictions: outputs,
        common: Common::new(&headers),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 0u16;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other:?} (only --port N)"),
        }
    }
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/predict", post(predict))
        .route("/predict/batch", post(predict_batch));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
