//! ONNX Runtime specifics beyond the shared conformance suite: every graph optimization
//! level, thread settings, the loaded runtime, and output checks.
//!
//! Needs the ONNX Runtime library (`ORT_DYLIB_PATH`, or what `cargo xtask setup` installs).

use inference_backend_ort::{GRAPH_OPTIMIZATION_LEVELS, default_library_path, load};
use inference_core::conformance::{
    compare_with_golden, example_golden, example_manifest, input_batch,
};
use inference_core::{Batch, EngineOptions, ErrorKind, InferenceEngine, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

/// The library the tests load: `ORT_DYLIB_PATH`, else the setup default; panics with the fix
/// when neither exists, so a machine without the runtime fails rather than skips.
fn library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .or_else(default_library_path)
        .filter(|path| path.is_file())
        .expect("ONNX Runtime library not found: run `cargo xtask setup` or set ORT_DYLIB_PATH")
}

#[tokio::test]
async fn every_graph_optimization_level_matches_the_golden_outputs() {
    let golden = example_golden();
    let cases = golden.cycled(golden.cases.len());
    for level in GRAPH_OPTIMIZATION_LEVELS {
        let options = EngineOptions {
            intra_op_threads: Some(1),
            runtime_library: Some(library()),
            ..EngineOptions::default()
        };
        let mut manifest = example_manifest();
        let table = format!("graph_optimization = {level:?}");
        manifest
            .tables
            .insert("ort".into(), toml::from_str(&table).unwrap());
        let engine = load(&manifest, &options)
            .unwrap_or_else(|e| panic!("graph_optimization '{level}': {e}"));
        let output = engine.infer(input_batch(&cases)).await.unwrap();
        let max_error = compare_with_golden(&output, &cases)
            .unwrap_or_else(|reason| panic!("graph_optimization '{level}': {reason}"));
        println!("ort graph_optimization={level}: max abs error vs golden {max_error:e}");
    }
}

#[tokio::test]
async fn reports_backend_device_and_instances() {
    let options = EngineOptions {
        instances: 3,
        device: "auto".into(),
        ..EngineOptions::default()
    };
    let engine = load(&example_manifest(), &options).unwrap();
    let info = engine.info();
    assert_eq!(info.backend, "ort");
    // Without the `cuda` feature, `auto` must resolve to the CPU.
    if !cfg!(feature = "cuda") {
        assert_eq!(info.device, "cpu");
    }
    assert_eq!(info.instances, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_batches_over_several_sessions_keep_their_rows() {
    let options = EngineOptions {
        instances: 2,
        intra_op_threads: Some(1),
        ..EngineOptions::default()
    };
    let engine = Arc::new(load(&example_manifest(), &options).unwrap());
    let golden = Arc::new(example_golden());
    let mut requests = tokio::task::JoinSet::new();
    for request in 0..16 {
        let engine = Arc::clone(&engine);
        let golden = Arc::clone(&golden);
        requests.spawn(async move {
            // Different offsets and sizes, so a mixed-up reply cannot match by accident.
            let all = golden.cycled(golden.cases.len() * 4);
            let cases = &all[request..request + 1 + request % 5];
            let output = engine.infer(input_batch(cases)).await.unwrap();
            compare_with_golden(&output, cases).unwrap();
        });
    }
    while let Some(finished) = requests.join_next().await {
        finished.expect("request task");
    }
}

#[tokio::test]
async fn a_second_runtime_library_in_one_process_is_refused() {
    let options = EngineOptions {
        runtime_library: Some(library()),
        ..EngineOptions::default()
    };
    load(&example_manifest(), &options).expect("the real library loads");
    // Any other existing file: the check must refuse before ONNX Runtime sees it.
    let other = std::env::current_exe().unwrap();
    let options = EngineOptions {
        runtime_library: Some(other.clone()),
        ..EngineOptions::default()
    };
    let err = load(&example_manifest(), &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Load);
    let message = err.to_string();
    assert!(message.contains("already loaded"), "{message}");
    assert!(message.contains(&other.display().to_string()), "{message}");
}

#[tokio::test]
async fn a_manifest_that_disagrees_with_the_graph_fails_at_load() {
    let mut renamed = example_manifest();
    renamed.inputs[0].name = "x".into();
    let message = load(&renamed, &EngineOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("no input named 'x'") && message.contains("\"input\""),
        "{message}"
    );

    let mut wrong_width = example_manifest();
    wrong_width.outputs[0].shape = vec![4];
    let message = load(&wrong_width, &EngineOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("output 'output' has shape"), "{message}");
}

#[tokio::test]
async fn outputs_keep_row_order_for_a_large_batch() {
    let engine = load(&example_manifest(), &EngineOptions::default()).unwrap();
    let golden = example_golden();
    let cases = golden.cycled(1000);
    let output = engine.infer(input_batch(&cases)).await.unwrap();
    let max_error = compare_with_golden(&output, &cases).unwrap();
    println!("ort batch of 1000: max abs error vs golden {max_error:e}");
}

#[tokio::test]
async fn a_malformed_batch_never_reaches_the_session() {
    let engine = load(&example_manifest(), &EngineOptions::default()).unwrap();
    let wrong = Batch {
        size: 1,
        tensors: vec![Tensor::from_f32(vec![1, 2], vec![1.0, 2.0]).unwrap()],
    };
    assert_eq!(
        engine.infer(wrong).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn cuda_loads_on_cuda_or_fails_with_one_clear_line() {
    let options = EngineOptions {
        device: "cuda".into(),
        ..EngineOptions::default()
    };
    match load(&example_manifest(), &options) {
        Ok(engine) => assert_eq!(engine.info().device, "cuda:0"),
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Load, "{err}");
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(
                message.contains("cuda") || message.contains("CUDA"),
                "{message}"
            );
            println!("device cuda here: {message}");
        }
    }
}
