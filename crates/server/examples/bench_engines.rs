//! Forward passes per second of one model on every backend compiled in, in-process through
//! `InferenceEngine` (no HTTP, no scheduler): load time, then per batch size the median and
//! slowest pass and images (rows) per second. The first pass of each batch size is a warmup
//! and is not measured.
//!
//! Run through `cargo xtask bench engines`, or directly:
//! `cargo run --release -p inference-server --features ort,tch --example bench_engines -- --help`.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use inference_core::{Batch, EngineOptions, InferenceEngine, ModelManifest, Sample};
use inference_server::backends;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "In-process forward passes per second of one model on every compiled backend")]
struct Args {
    /// The model's folder [default: models/resnet18 of this checkout].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Comma-separated batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    batch_sizes: Vec<usize>,
    /// Seconds of measured passes per cell (at least 3 passes run).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Threads one forward pass may use (unset: each library's default).
    #[arg(long)]
    intra_op_threads: Option<usize>,
}

/// Passes measured per cell at the least, however long they take.
const MIN_PASSES: usize = 3;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/resnet18"));
    let manifest = ModelManifest::load(&dir).with_context(|| {
        format!(
            "no model in {} (cargo xtask export-models --resnet18 writes ResNet-18 there)",
            dir.display()
        )
    })?;
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    println!(
        "model {} ({}), {} s per cell, intra-op threads: {}",
        manifest.name,
        dir.display(),
        args.seconds,
        args.intra_op_threads
            .map_or("library default".to_string(), |n| n.to_string())
    );
    println!();
    println!("| backend | load s | batch | median ms | slowest ms | passes | rows/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for backend in backends::COMPILED {
        let options = EngineOptions {
            intra_op_threads: args.intra_op_threads,
            ..EngineOptions::default()
        };
        let started = Instant::now();
        let loaded = {
            let manifest = manifest.clone();
            tokio::task::spawn_blocking(move || backends::load(backend, &manifest, &options))
                .await?
        };
        let engine = match loaded {
            Ok(engine) => engine,
            Err(error) => {
                println!("| {backend} | cannot load: {error} | | | | | |");
                continue;
            }
        };
        let load = started.elapsed();
        for &size in &args.batch_sizes {
            let cell = measure(engine.as_ref(), size, args.seconds).await?;
            println!(
                "| {backend} | {:.2} | {size} | {:.1} | {:.1} | {} | {:.1} |",
                load.as_secs_f64(),
                cell.median.as_secs_f64() * 1e3,
                cell.slowest.as_secs_f64() * 1e3,
                cell.passes,
                size as f64 / cell.median.as_secs_f64()
            );
        }
    }
    Ok(())
}

struct Cell {
    median: Duration,
    slowest: Duration,
    passes: usize,
}

async fn measure(engine: &dyn InferenceEngine, size: usize, seconds: f64) -> Result<Cell> {
    let rows: Vec<Sample> = (0..size.max(1))
        .map(|_| engine.info().model.zero_sample())
        .collect();
    let batch = Batch::stack(&rows)?;
    // The first pass pays for lazy initialisation (kernels, allocators): not measured.
    engine.infer(batch.clone()).await?;
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < MIN_PASSES || started.elapsed() < budget {
        let pass = Instant::now();
        engine.infer(batch.clone()).await?;
        times.push(pass.elapsed());
    }
    times.sort_unstable();
    Ok(Cell {
        median: times[times.len() / 2],
        slowest: times[times.len() - 1],
        passes: times.len(),
    })
}
