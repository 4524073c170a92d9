//! Embeds the candle backend in a program, with no server: loads `models/example` and runs
//! one batch through the `InferenceEngine` trait.
//!
//! Run from the workspace root: `cargo run -p inference-backend-candle --example embed [MODEL_DIR]`.

use inference_core::{Batch, EngineOptions, InferenceEngine, ModelManifest, Sample, Tensor};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example"),
        PathBuf::from,
    );
    let manifest = ModelManifest::load(&dir)?;
    let engine = inference_backend_candle::load(&manifest, &EngineOptions::default())?;
    let info = engine.info();
    println!(
        "loaded {} {} on {} ({} backend)",
        info.model.name, info.model.version, info.device, info.backend
    );

    let inputs = [1.0_f32, 2.0, 3.0, 4.0, 5.0];
    let rows = inputs
        .iter()
        .map(|&x| Ok(Sample::new(vec![Tensor::from_f32(vec![1], vec![x])?])))
        .collect::<Result<Vec<_>, inference_core::TensorError>>()?;
    let output = engine.infer(Batch::stack(&rows)?).await?;
    for (x, row) in inputs.iter().zip(output.unstack()?) {
        println!("{x} -> {:?}", row.tensors[0].as_f32().unwrap_or_default());
    }
    Ok(())
}
