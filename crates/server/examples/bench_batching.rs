//! Throughput and latency of `POST /predict` with the scheduler merging rows into one
//! forward pass versus one row per forward pass, at several client concurrencies.
//!
//! Run through `cargo xtask bench batching`, or directly:
//! `cargo run --release -p inference-server --example bench_batching -- --help`.
//! Every cell gets a fresh in-process server on 127.0.0.1 and real HTTP clients.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use inference_server::{AppState, Config, serve_until};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Parser)]
#[command(about = "Merged versus unmerged batching over HTTP, one fresh server per cell")]
struct Args {
    /// Seconds measured per cell.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of load before measuring, so connections and caches are warm.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Client tasks, each with one request in flight at a time.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    concurrency: Vec<usize>,
    /// Most rows per forward pass when merging (the server default is 32).
    #[arg(long, default_value_t = 32)]
    max_batch_size: usize,
    /// Engine workers, each with its own model instance.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Backend compiled into this example (default features: candle).
    #[arg(long, default_value = "candle")]
    backend: String,
    /// Directory holding the model's `model.toml`.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
}

/// One scheduler setting under test.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    max_batch_size: usize,
}

/// What one (mode, concurrency) cell measured.
#[derive(Debug)]
struct Cell {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: u64,
    /// Rows per engine forward pass during the measured window, from `GET /stats`.
    rows_per_forward: f64,
}

/// A server running on its own port until `stop`.
struct RunningServer {
    base: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    async fn start(config: Config) -> Result<Self> {
        let state = AppState::from_config(config)
            .await
            .context("cannot load the model")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let (shutdown, signalled) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_until(listener, state, async move {
            let _ = signalled.await;
        }));
        Ok(Self {
            base: format!("http://{addr}"),
            shutdown,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        self.task.await?.context("server failed")
    }
}

/// One finished request: when it started and how long it took.
struct Sample {
    started: Instant,
    latency: Duration,
    ok: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be > 0 and --warmup >= 0"
    );
    ensure!(
        !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--concurrency needs positive counts"
    );
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example"));
    let modes = [
        Mode {
            name: "merged",
            max_batch_size: args.max_batch_size,
        },
        Mode {
            name: "unmerged",
            max_batch_size: 1,
        },
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "backend {}, {} instance(s), model {}; {:.1} s measured per cell after {:.1} s warmup; \
         clients and server share this machine's {cores} core(s)",
        args.backend,
        args.instances,
        model_dir.display(),
        args.duration,
        args.warmup,
    );

    let mut results = Vec::new();
    // Modes alternate within each concurrency, so drift on a shared machine hits both alike.
    for &concurrency in &args.concurrency {
        for mode in modes {
            let mut config = Config::default();
            config.models.dir = model_dir.clone();
            config.model.backend = args.backend.clone();
            config.model.instances = args.instances;
            config.batching.max_batch_size = mode.max_batch_size;
            config.batching.max_queue_delay_ms = 0.0;
            config.server.drain_timeout_secs = 5.0;
            let server = RunningServer::start(config).await?;
            let cell = measure(&server.base, concurrency, &args).await;
            server.stop().await?;
            let cell = cell?;
            println!(
                "  {:<8} concurrency {concurrency:>3}: {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  \
                 {:>5.1} rows/forward  {} failed",
                mode.name,
                cell.requests_per_second,
                cell.p50_ms,
                cell.p99_ms,
                cell.rows_per_forward,
                cell.failures,
            );
            results.push((mode.name, concurrency, cell));
        }
    }
    print_table(&args.concurrency, &results);
    Ok(())
}

/// Loads the server from `concurrency` clients for warmup + duration and measures the window.
async fn measure(base: &str, concurrency: usize, args: &Args) -> Result<Cell> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let window_start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);

    let before = {
        let (client, base) = (client.clone(), base.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start.into()).await;
            engine_counts(&client, &base).await
        })
    };
    let workers: Vec<JoinHandle<Vec<Sample>>> = (0..concurrency)
        .map(|worker| {
            let (client, url) = (client.clone(), format!("{base}/predict"));
            tokio::spawn(async move {
                let mut samples = Vec::new();
                for sent in 0usize.. {
                    let started = Instant::now();
                    if started >= window_end {
                        break;
                    }
                    // Varied inputs, so nothing downstream can answer from a cache.
                    let input = ((worker * 7919 + sent) % 1000) as f64 / 100.0;
                    let answer = client
                        .post(&url)
                        .json(&json!({ "inputs": [input] }))
                        .send()
                        .await;
                    let ok = match answer {
                        Ok(response) if response.status().is_success() => {
                            response.bytes().await.is_ok()
                        }
                        _ => false,
                    };
                    samples.push(Sample {
                        started,
                        latency: started.elapsed(),
                        ok,
                    });
                }
                samples
            })
        })
        .collect();

    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        for sample in worker.await? {
            let in_window =
                sample.started >= window_start && sample.started + sample.latency <= window_end;
            if !in_window {
                continue;
            }
            if sample.ok {
                latencies.push(sample.latency);
            } else {
                failures += 1;
            }
        }
    }
    let (rows_before, batches_before) = before.await??;
    let (rows_after, batches_after) = engine_counts(&client, base).await?;
    let batches = batches_after.saturating_sub(batches_before);
    if latencies.is_empty() || batches == 0 {
        bail!("no request finished inside the measured window");
    }
    latencies.sort_unstable();
    Ok(Cell {
        requests_per_second: latencies.len() as f64 / args.duration,
        p50_ms: percentile_ms(&latencies, 50.0),
        p99_ms: percentile_ms(&latencies, 99.0),
        failures,
        rows_per_forward: rows_after.saturating_sub(rows_before) as f64 / batches as f64,
    })
}

/// `(rows_processed, batches_processed)` from `GET /stats`.
async fn engine_counts(client: &reqwest::Client, base: &str) -> Result<(u64, u64)> {
    let stats: Value = client
        .get(format!("{base}/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let count = |field: &str| {
        stats[field]
            .as_u64()
            .with_context(|| format!("GET /stats has no integer `{field}`"))
    };
    Ok((count("rows_processed")?, count("batches_processed")?))
}

/// Nearest-rank percentile of sorted, non-empty `latencies`.
fn percentile_ms(latencies: &[Duration], percent: f64) -> f64 {
    let rank = (percent / 100.0 * latencies.len() as f64).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
}

fn print_table(concurrencies: &[usize], results: &[(&'static str, usize, Cell)]) {
    let find = |mode: &str, concurrency: usize| {
        results
            .iter()
            .find(|(name, c, _)| *name == mode && *c == concurrency)
            .map(|(_, _, cell)| cell)
    };
    println!();
    println!(
        "| clients | mode     |    req/s | p50 ms | p99 ms | rows/forward | failed | merged/unmerged req/s |"
    );
    println!(
        "|--------:|----------|---------:|-------:|-------:|-------------:|-------:|----------------------:|"
    );
    for &concurrency in concurrencies {
        let (Some(merged), Some(unmerged)) =
            (find("merged", concurrency), find("unmerged", concurrency))
        else {
            continue;
        };
        let ratio = merged.requests_per_second / unmerged.requests_per_second;
        for (mode, cell) in [("merged", merged), ("unmerged", unmerged)] {
            let ratio_column = if mode == "merged" {
                format!("{ratio:.2}x")
            } else {
                String::new()
            };
            println!(
                "| {concurrency:>7} | {mode:<8} | {:>8.0} | {:>6.2} | {:>6.2} | {:>12.1} | {:>6} | {ratio_column:>21} |",
                cell.requests_per_second,
                cell.p50_ms,
                cell.p99_ms,
                cell.rows_per_forward,
                cell.failures,
            );
        }
    }
}
