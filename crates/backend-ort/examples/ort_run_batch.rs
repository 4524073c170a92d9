//! Loads the example model on ONNX Runtime and runs one batch through the
//! `InferenceEngine` trait, without the server.
//!
//! ```text
//! cargo run -p inference-backend-ort --example ort_run_batch -- [MODEL_DIR] [X ...]
//! ```
//!
//! The runtime library comes from `ORT_DYLIB_PATH` or what `cargo xtask setup` installed.

use inference_backend_ort::load;
use inference_core::{Batch, EngineOptions, InferenceEngine, ModelManifest, Sample, Tensor};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example"),
        PathBuf::from,
    );
    let inputs: Vec<f32> = args.map(|x| x.parse()).collect::<Result<_, _>>()?;
    let inputs = if inputs.is_empty() {
        vec![-1.0, 0.0, 1.0, 2.5, 10.0]
    } else {
        inputs
    };

    let manifest = ModelManifest::load(&dir)?;
    let engine = load(&manifest, &EngineOptions::default())?;
    let info = engine.info();
    println!(
        "model {} {} on {} ({}), warmup {:?}",
        info.model.name,
        info.model.version,
        info.backend,
        info.device,
        engine.warmup().await?
    );

    // The example model takes one f32 value per row.
    let samples = inputs
        .iter()
        .map(|&x| Ok(Sample::new(vec![Tensor::from_f32(vec![1], vec![x])?])))
        .collect::<Result<Vec<_>, inference_core::TensorError>>()?;
    let output = engine.infer(Batch::stack(&samples)?).await?;
    for (x, row) in inputs.iter().zip(output.unstack()?) {
        println!(
            "{x:>8} -> {:?}",
            row.tensors[0].to_f64_vec().unwrap_or_default()
        );
    }
    Ok(())
}
