//! The model repository through the router: good and broken models side by side, names that
//! try to leave the repository, image models with per-sample failures, and reload and
//! unload under concurrent load.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{example_dir, get, post_json, send};
use inference_server::{AppState, Config, backends};
use serde_json::{Value, json};
use std::io::Cursor;
use std::path::Path;

/// Copies the example model's folder to `dir/folder`, with `edit` applied to its manifest.
fn example_copy(root: &Path, folder: &str, edit: impl Fn(String) -> String) {
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["model.safetensors", "model.onnx", "model.pt"] {
        std::fs::copy(example_dir().join(file), dir.join(file)).unwrap();
    }
    let manifest = std::fs::read_to_string(example_dir().join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), edit(manifest)).unwrap();
}

fn rename(name: &'static str) -> impl Fn(String) -> String {
    move |text| text.replace("name = \"example_model\"", &format!("name = \"{name}\""))
}

async fn repository_state(root: &Path) -> AppState {
    let mut config = Config::default();
    config.models.dir = root.to_path_buf();
    AppState::from_config(config).await.unwrap()
}

fn model<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {listing}"))
}

#[tokio::test]
async fn broken_models_fail_alone_with_one_sentence_and_the_good_ones_serve() {
    let root = tempfile::tempdir().unwrap();
    example_copy(root.path(), "a_good", rename("good"));
    example_copy(root.path(), "b_bad_toml", |_| "name = \n".into());
    example_copy(root.path(), "c_missing_file", |text| {
        text.replace("model.safetensors", "gone.safetensors")
            .replace("example_model", "missing_file")
    });
    example_copy(root.path(), "d_unknown_backend", |text| {
        format!(
            "backend = \"tensorflow\"\n{}",
            text.replace("example_model", "unknown_backend")
        )
    });
    // The manifest promises 4 outputs per row; the weights give 3.
    example_copy(root.path(), "e_wrong_output", |text| {
        text.replace("shape = [3]", "shape = [4]")
            .replace("example_model", "wrong_output")
    });
    let onnx_only = root.path().join("f_onnx_only");
    std::fs::create_dir_all(&onnx_only).unwrap();
    std::fs::copy(
        example_dir().join("model.onnx"),
        onnx_only.join("model.onnx"),
    )
    .unwrap();

    let state = repository_state(root.path()).await;
    let listing = send(&state, get("/models")).await.body;
    assert_eq!(listing["default_model"], "good");
    assert_eq!(model(&listing, "good")["state"], "ready");
    for (name, words) in [
        ("b_bad_toml", "model.toml"),
        ("missing_file", "gone.safetensors"),
        ("unknown_backend", "tensorflow"),
        ("wrong_output", "4"),
    ] {
        let entry = model(&listing, name);
        assert_eq!(entry["state"], "failed", "{entry}");
        let error = entry["error"].as_str().unwrap();
        assert!(error.contains(words), "{name}: {error}");
        assert!(!error.contains('\n'), "{name}: {error}");
    }
    let reply = send(
        &state,
        post_json("/models/good/predict", r#"{"inputs": 2.0}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    common::assert_close(&reply.body["prediction"], &common::golden_for(2.0));
    let reply = send(
        &state,
        post_json("/predict", r#"{"inputs": 2.0, "model": "wrong_output"}"#),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(reply.body["detail"].as_str().unwrap().contains("failed"));

    // A folder holding only model.onnx is a model served by ort, its spec read from the graph.
    let onnx = model(&listing, "f_onnx_only");
    if backends::COMPILED.contains(&"ort") {
        assert_eq!(onnx["state"], "ready", "{onnx}");
        assert_eq!(onnx["backend"], "ort");
        assert_eq!(
            onnx["inputs"],
            json!([{"name": "input", "dtype": "f32", "shape": [1]}])
        );
        assert_eq!(
            onnx["outputs"],
            json!([{"name": "output", "dtype": "f32", "shape": [3]}])
        );
        let reply = send(
            &state,
            post_json("/models/f_onnx_only/predict", r#"{"inputs": 2.0}"#),
        )
        .await;
        common::assert_close(&reply.body["prediction"], &common::golden_for(2.0));
    } else {
        assert_eq!(onnx["state"], "failed");
    }
    let health = send(&state, get("/health")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["models"]["wrong_output"]["state"], "failed");
}

#[tokio::test]
async fn a_manifest_that_disagrees_with_the_onnx_graph_names_the_field() {
    if !backends::COMPILED.contains(&"ort") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    example_copy(root.path(), "m", |text| {
        format!(
            "backend = \"ort\"\n{}",
            text.replace("name = \"input\"", "name = \"pixels\"")
        )
    });
    let state = repository_state(root.path()).await;
    let listing = send(&state, get("/models")).await.body;
    let error = model(&listing, "example_model")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("'pixels'") && error.contains("input"),
        "{error}"
    );
}

#[tokio::test]
async fn names_that_leave_the_repository_are_refused_without_reading_files() {
    let state = common::example_state().await;
    for path in [
        "/models/..%2F..%2Fetc",
        "/models/a%5Cb",
        "/models/x%00y",
        "/models/..",
    ] {
        for request in [
            get(path),
            post_json(&format!("{path}/load"), ""),
            post_json(&format!("{path}/predict"), r#"{"inputs": 1.0}"#),
            Request::delete(path).body(Body::empty()).unwrap(),
        ] {
            let what = format!("{} {}", request.method(), request.uri());
            let reply = send(&state, request).await;
            assert!(
                reply.status == StatusCode::UNPROCESSABLE_ENTITY
                    || reply.status == StatusCode::NOT_FOUND,
                "{what}: {} {}",
                reply.status,
                reply.body
            );
            assert!(reply.body["detail"].is_string(), "{what}: {}", reply.body);
        }
    }
    let reply = send(&state, get("/models/..%2Fexample")).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn reload_and_unload_under_concurrent_load_lose_no_request() {
    let root = tempfile::tempdir().unwrap();
    example_copy(root.path(), "example", |t| t);
    let state = repository_state(root.path()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let state = state.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = send(
                    &state,
                    post_json("/models/example_model/predict", r#"{"inputs": 3.0}"#),
                )
                .await;
                if reply.status == StatusCode::OK {
                    common::assert_close(&reply.body["prediction"], &common::golden_for(3.0));
                }
                statuses.push(reply.status);
                tokio::task::yield_now().await;
            }
            statuses
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let reply = send(&state, post_json("/models/example_model/load", "")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["state"], "ready");
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reload_phase = Vec::new();
    for client in clients {
        reload_phase.extend(client.await.unwrap());
    }
    assert!(
        reload_phase.len() > 24,
        "too little load: {}",
        reload_phase.len()
    );
    assert!(
        reload_phase.iter().all(|s| *s == StatusCode::OK),
        "a request failed during reloads: {reload_phase:?}"
    );

    // Unload while clients keep sending: each is answered 200, or refused cleanly.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let state = state.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                let reply = send(
                    &state,
                    post_json("/models/example_model/predict", r#"{"inputs": 3.0}"#),
                )
                .await;
                statuses.push(reply.status);
                if reply.status == StatusCode::NOT_FOUND {
                    break;
                }
                tokio::task::yield_now().await;
            }
            statuses
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let reply = send(
        &state,
        Request::delete("/models/example_model")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for client in clients {
        for status in client.await.unwrap() {
            assert!(
                [
                    StatusCode::OK,
                    StatusCode::NOT_FOUND,
                    StatusCode::SERVICE_UNAVAILABLE
                ]
                .contains(&status),
                "unexpected {status} during unload"
            );
        }
    }
    let listing = send(&state, get("/models")).await.body;
    assert_eq!(listing["count"], 0);
    // Loading it again brings it back from the repository.
    let reply = send(&state, post_json("/models/example_model/load", "")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = send(&state, post_json("/predict", r#"{"inputs": 3.0}"#)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------
// Image models
// ---------------------------------------------------------------------------------------

const SIDE: u32 = 8;
const CLASSES: usize = 4;

/// A safetensors file of named f32 tensors, written by hand (the format is a JSON header).
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            (*name).to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// A tiny image classifier: 8×8 RGB picture → one linear layer → 4 logits, labelled.
fn image_model(root: &Path) {
    let dir = root.join("tiny");
    std::fs::create_dir_all(&dir).unwrap();
    let inputs = 3 * (SIDE * SIDE) as usize;
    let weight: Vec<f32> = (0..CLASSES * inputs)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 50.0)
        .collect();
    write_safetensors(
        &dir.join("model.safetensors"),
        &[
            ("fc.weight", vec![CLASSES, inputs], weight),
            ("fc.bias", vec![CLASSES], vec![0.1, -0.2, 0.3, 0.0]),
        ],
    );
    std::fs::write(dir.join("labels.txt"), "cat\ndog\nfish\nbird\n").unwrap();
    let manifest = format!(
        r#"name = "tiny"
[[inputs]]
name = "image"
dtype = "f32"
shape = [3, {SIDE}, {SIDE}]
[[outputs]]
name = "logits"
dtype = "f32"
shape = [{CLASSES}]
[files]
candle = "model.safetensors"
[candle]
architecture = "mlp"
layers = ["fc"]
activations = ["identity"]
[preprocess]
kind = "image"
resize = {SIDE}
crop = {SIDE}
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[postprocess]
kind = "classification"
top_k = 3
labels = "labels.txt"
"#
    );
    std::fs::write(dir.join("model.toml"), manifest).unwrap();
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn picture(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

/// A PNG that is only a signature and a header claiming `side`×`side` pixels.
fn png_header_only(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(ihdr);
    png.extend(crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn an_image_corpus_gets_classes_and_per_sample_422s() {
    let root = tempfile::tempdir().unwrap();
    image_model(root.path());
    let state = repository_state(root.path()).await;
    let png = encode(picture(40, 30).into(), image::ImageFormat::Png);
    let jpeg = encode(picture(50, 70).into(), image::ImageFormat::Jpeg);
    let gray = encode(
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(9, 13, |x, _| {
            image::Luma([x as u8 * 20])
        })),
        image::ImageFormat::Png,
    );
    let rgba = encode(
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(17, 5, |x, y| {
            image::Rgba([x as u8, y as u8, 9, (x * 10) as u8])
        })),
        image::ImageFormat::Png,
    );
    let odd = encode(picture(3, 101).into(), image::ImageFormat::Png);
    let truncated = png[..png.len() / 2].to_vec();
    let bomb = png_header_only(20_000);
    let corpus: Vec<(&str, Vec<u8>, bool)> = vec![
        ("png", png.clone(), true),
        ("jpeg", jpeg, true),
        ("grayscale", gray, true),
        ("rgba", rgba, true),
        ("odd size", odd, true),
        ("truncated", truncated, false),
        ("not an image", b"hello, this is text".to_vec(), false),
        (
            "gif",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
            false,
        ),
        ("20000x20000 header", bomb.clone(), false),
    ];
    let inputs: Vec<String> = corpus.iter().map(|(_, bytes, _)| base64(bytes)).collect();
    let body = json!({ "inputs": inputs }).to_string();
    let reply = send(&state, post_json("/models/tiny/predict/batch", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let failed: Vec<usize> =
        serde_json::from_value(reply.body["batch_info"]["failed_indices"].clone()).unwrap();
    let expected_failures: Vec<usize> = corpus
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.2)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, expected_failures, "{}", reply.body);
    for (index, (name, _, good)) in corpus.iter().enumerate() {
        let prediction = &reply.body["predictions"][index];
        if *good {
            let classes = prediction["classes"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {prediction}"));
            assert_eq!(classes.len(), 3, "{name}");
            assert!(
                ["cat", "dog", "fish", "bird"].contains(&classes[0]["label"].as_str().unwrap())
            );
            assert_eq!(prediction["logits"].as_array().unwrap().len(), CLASSES);
        } else {
            assert!(prediction.is_null(), "{name}: {prediction}");
        }
    }
    let reasons = reply.body["batch_info"]["failure_reasons"].to_string();
    assert!(reasons.contains("20000x20000"), "{reasons}");
    assert!(
        reasons.contains("truncated") || reasons.contains("corrupt"),
        "{reasons}"
    );

    // The raw bytes, posted as a picture, give the same answer as the base64 JSON.
    let raw = Request::post("/models/tiny/predict")
        .header("content-type", "image/png")
        .body(Body::from(png.clone()))
        .unwrap();
    let from_raw = send(&state, raw).await;
    assert_eq!(from_raw.status, StatusCode::OK, "{}", from_raw.body);
    assert_eq!(from_raw.body["prediction"], reply.body["predictions"][0]);
    let raw_bomb = Request::post("/models/tiny/predict")
        .header("content-type", "image/png")
        .body(Body::from(bomb))
        .unwrap();
    let refused = send(&state, raw_bomb).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let gif = Request::post("/models/tiny/predict")
        .header("content-type", "image/gif")
        .body(Body::from("GIF89a"))
        .unwrap();
    assert_eq!(
        send(&state, gif).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

#[tokio::test]
async fn max_image_pixels_is_the_configured_bound() {
    let root = tempfile::tempdir().unwrap();
    image_model(root.path());
    let mut config = Config::default();
    config.models.dir = root.path().to_path_buf();
    config.server.max_image_pixels = 40 * 30 - 1;
    let state = AppState::from_config(config).await.unwrap();
    let post = |side: (u32, u32)| {
        Request::post("/models/tiny/predict")
            .header("content-type", "image/png")
            .body(Body::from(encode(
                picture(side.0, side.1).into(),
                image::ImageFormat::Png,
            )))
            .unwrap()
    };
    let refused = send(&state, post((40, 30))).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert!(
        refused.body["detail"].as_str().unwrap().contains("40x30"),
        "{}",
        refused.body
    );
    assert_eq!(send(&state, post((39, 30))).await.status, StatusCode::OK);
}
