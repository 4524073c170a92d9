//! Loads the example model with the tch backend and runs one batch through it, no server.
//!
//! `cargo run -p inference-backend-tch --example tch_run_batch [-- <model dir> [device]]`

use inference_core::{Batch, EngineOptions, InferenceEngine, ModelManifest, Sample, Tensor};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example"));
    let options = EngineOptions {
        device: args.next().unwrap_or_else(|| "auto".into()),
        ..EngineOptions::default()
    };
    let manifest = ModelManifest::load(&dir)?;
    let engine = inference_backend_tch::load(&manifest, &options)?;
    let info = engine.info();
    println!(
        "model {} {} on {} ({})",
        info.model.name, info.model.version, info.backend, info.device
    );

    let inputs = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    let samples = inputs
        .iter()
        .map(|&x| Tensor::from_f32(vec![1], vec![x]).map(|t| Sample::new(vec![t])))
        .collect::<Result<Vec<_>, _>>()?;
    let started = std::time::Instant::now();
    let outputs = engine.infer(Batch::stack(&samples)?).await?;
    let elapsed = started.elapsed();
    for (x, row) in inputs.iter().zip(outputs.unstack()?) {
        println!(
            "{x} -> {:?}",
            row.tensors[0].to_f64_vec().unwrap_or_default()
        );
    }
    println!("batch of {} in {elapsed:?}", inputs.len());
    Ok(())
}
