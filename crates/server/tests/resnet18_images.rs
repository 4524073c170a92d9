//! ResNet-18 served over the router on every compiled backend: each picture of the exported
//! corpus, posted as raw bytes, gets PyTorch's top-5; and the server's preprocessing matches
//! torchvision's tensors. Needs `cargo xtask export-models --resnet18` (`cargo xtask test`
//! runs it and makes a missing export an error).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::send;
use inference_core::conformance::{resnet18_golden, resnet18_manifest};
use inference_server::image_input;
use inference_server::processing::Preprocess;
use inference_server::{AppState, Config, backends};

#[derive(serde::Deserialize)]
struct GoldenImages {
    images: Vec<String>,
}

#[test]
fn preprocessing_matches_torchvision_on_the_corpus() {
    let Some(manifest) = resnet18_manifest() else {
        return;
    };
    let Preprocess::Image(image) = manifest.table::<Preprocess>("preprocess").unwrap();
    let names: GoldenImages =
        toml::from_str(&std::fs::read_to_string(manifest.dir.join("golden.toml")).unwrap())
            .unwrap();
    let golden = resnet18_golden();
    let reference = golden.preprocessed.as_f32().unwrap();
    let row_len = 3 * 224 * 224;
    let mut worst_mean = 0.0f64;
    for (index, name) in names.images.iter().enumerate() {
        let bytes = std::fs::read(manifest.dir.join("images").join(name)).unwrap();
        let ours = image_input::preprocess(&bytes, &image, 40_000_000).unwrap();
        let theirs = &reference[index * row_len..(index + 1) * row_len];
        let diffs: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| f64::from((a - b).abs()))
            .collect();
        let max = diffs.iter().copied().fold(0.0, f64::max);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        eprintln!("preprocess {name}: max abs diff {max:.3e}, mean abs diff {mean:.3e}");
        assert!(
            mean <= 1e-3,
            "{name}: mean abs diff {mean} exceeds 1e-3 (max {max})"
        );
        worst_mean = worst_mean.max(mean);
    }
    eprintln!("preprocess: worst mean abs diff {worst_mean:.3e}");
}

#[tokio::test]
async fn a_posted_picture_gets_pytorchs_top5_on_every_backend() {
    let Some(manifest) = resnet18_manifest() else {
        return;
    };
    let names: GoldenImages =
        toml::from_str(&std::fs::read_to_string(manifest.dir.join("golden.toml")).unwrap())
            .unwrap();
    let golden = resnet18_golden();
    let top5 = golden.image_top5.as_slice::<i64>().unwrap();
    for backend in backends::COMPILED {
        let mut config = Config::default();
        config.models.dir = manifest.dir.clone();
        config.model.backend = (*backend).to_string();
        let state = AppState::from_config(config).await.unwrap();
        for (index, name) in names.images.iter().enumerate() {
            let kind = if name.ends_with(".jpg") {
                "image/jpeg"
            } else {
                "image/png"
            };
            let bytes = std::fs::read(manifest.dir.join("images").join(name)).unwrap();
            let request = Request::post("/models/resnet18/predict")
                .header("content-type", kind)
                .body(Body::from(bytes))
                .unwrap();
            let reply = send(&state, request).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{backend} {name}: {}",
                reply.body
            );
            let classes = reply.body["prediction"]["classes"].as_array().unwrap();
            let got: Vec<i64> = classes
                .iter()
                .map(|c| c["index"].as_i64().unwrap())
                .collect();
            let want = &top5[index * 5..(index + 1) * 5];
            assert_eq!(got, want, "{backend} {name}: top-5 differs from PyTorch's");
            eprintln!("{backend} {name}: top-1 {}", classes[0]["label"]);
        }
        state.shutdown().await;
    }
}
