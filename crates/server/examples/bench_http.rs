//! The served routes under a real load generator, beside the HTTP floor.
//!
//! Run through `cargo xtask bench http`, which builds this example, the release server and
//! the floor (`examples/http_floor.rs`) and installs `oha`. For each route and concurrency
//! the floor and the server are driven in turn with the same `oha` command (closed loop,
//! keep-alive), in `--rounds` turns each, so every figure sits beside its ratio to the floor
//! measured moments apart; a cell's p50 and p99 are the median of its rounds'.
//! Also measured: the engine's own batch-1 forward pass in-process, so that server overhead
//! = served p50 at concurrency 1 minus engine p50; ResNet-18's best batch size in-process,
//! found before its first cell, and its rows/s at that size in a turn of its own in each
//! round of ResNet-18's cells; and start to ready and idle memory.
//!
//! Writes `http.json`, `http.md` and `http.svg` (requests/s by concurrency) to `--out`
//! (default `target/bench`).

mod support;

// The server's allocator with the server's settings (`main.rs`): an engine's speed depends on
// how its activations' memory comes back, so in-process figures are taken the same way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Result, bail, ensure};
use base64::Engine as _;
use clap::Parser;
use inference_core::{Batch, EngineOptions, ModelManifest, Sample};
use inference_server::backends;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{Oha, ServerProcess, default_server_binary, sibling_example};

#[derive(Debug, Parser)]
#[command(about = "Served routes under oha beside a bare axum floor")]
struct Args {
    /// Seconds of load per cell.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Rounds per cell: the server, the floor and the baseline take turns this many times,
    /// each for `secs / rounds` (or a route's minimum round, 10 s for ResNet-18).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Comma-separated connection counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 32, 64])]
    concurrency: Vec<usize>,
    /// Backend the server runs its models on (it must be compiled in).
    #[arg(long, default_value = "candle")]
    backend: String,
    /// The model repository [default: models/ of this checkout].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The `oha` binary.
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// Folder for `http.json`, `http.md` and `http.svg`.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
    /// Another build of the server, measured in every cell beside this one (before and
    /// after a change, in one run).
    #[arg(long, value_name = "BINARY")]
    baseline: Option<PathBuf>,
}

const RESNET_SCENARIO: &str = "resnet18, base64 PNG";

/// One route with its body, as the server and (when it has the route) the floor get it.
struct Scenario {
    name: &'static str,
    path: String,
    body: Vec<u8>,
    /// Whether the floor answers this route with a document of the same shape.
    floor: bool,
    /// Rows per request, for rows/s.
    rows: usize,
    /// Extra request headers (`Name: value`).
    headers: Vec<String>,
    /// Seconds per round at least, whatever `--secs` says: where an answer takes a second,
    /// a short round is mostly the ramp up and down of its first and last batches.
    min_secs: f64,
    /// Whether its cells at concurrency 1 put `oha` and the servers on separate cores. A
    /// model whose passes use every core (ResNet-18) runs where the kernel puts it.
    pin_alone: bool,
}

/// Where the concurrency-1 cells run: on this virtual machine a lone request's latency
/// depends mostly on whether the kernel puts the load generator and the server on one core
/// (no wake at all: the floor's p50 17.5 µs) or on two (a wake of an idle core each way:
/// about 90 µs), and it picks one or the other from one `oha` run to the next. Pinned,
/// every server meets its requests as from a client on another core.
#[derive(Debug, Clone, Serialize)]
struct Pinning {
    /// `taskset` CPU lists.
    load_generator: String,
    servers: String,
    all: String,
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    concurrency: usize,
    server: support::OhaRun,
    floor: Option<support::OhaRun>,
    baseline: Option<support::OhaRun>,
    /// ResNet-18's rows: the engine's rows/s in-process at its best batch size, measured
    /// for 3 s before each of the cell's rounds with the servers idle (this machine's speed
    /// drifts): the rows of all those passes over their summed time.
    engine_rows_per_s: Option<f64>,
    /// Whether `oha` and the servers ran on separate cores.
    pinned: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    secs: f64,
    /// Turns per cell (`--rounds`).
    rounds: usize,
    engine_p50_ms: f64,
    /// Rows over the summed time of the passes, as `bench engines` counts samples/s.
    resnet_engine_best_rows_per_s: Option<f64>,
    /// Rows over the median pass, for comparison.
    resnet_engine_best_rows_per_s_by_median: Option<f64>,
    /// The batch size of the best rows/s, at which each ResNet-18 cell's engine is measured.
    resnet_engine_best_batch_size: Option<usize>,
    /// Where the pinned cells ran; none where the machine has one core or no `taskset`.
    pinning: Option<Pinning>,
    /// The example model alone on this backend: exec until `/health` answers 200.
    example_start_to_ready_ms: f64,
    /// The example model alone, one second after it was ready.
    example_idle_rss_mib: f64,
    /// Every model of the repository.
    server_start_to_ready_ms: f64,
    server_idle_rss_mib: f64,
    floor_idle_rss_mib: f64,
    rows: Vec<Row>,
}

fn main() -> Result<()> {
    // SAFETY: before any other thread exists (the runtime starts below).
    #[allow(unsafe_code)]
    unsafe {
        support::configure_like_the_server();
    }
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
    let args = Args::parse();
    ensure!(args.secs > 0.0, "--secs must be positive");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| root.join("models"));
    let oha = Oha::new(&args.oha)?;

    // The example's engine first, on a quiet machine.
    let example = ModelManifest::load(&model_dir.join("example"))?;
    let engine_p50 = engine_pass_times(&args.backend, &example, 1, 2.0)
        .await?
        .p50;
    let resnet_dir = model_dir.join("resnet18");
    let resnet = resnet_dir.join("model.toml").is_file();
    // ResNet-18's manifest and its best in-process rates, found before its first cell.
    let mut resnet_reference: Option<(ModelManifest, EngineRates)> = None;
    let cores = std::thread::available_parallelism()?.get();
    let pinning = (cores >= 2 && support::can_pin()).then(|| Pinning {
        load_generator: "0".to_string(),
        servers: format!("1-{}", cores - 1),
        all: format!("0-{}", cores - 1),
    });

    let binary = default_server_binary()?;
    let served = |binary: &std::path::Path, dir: &std::path::Path| {
        let mut command = tokio::process::Command::new(binary);
        command
            .args([
                "--port",
                "0",
                "--grpc-port",
                "0",
                "--backend",
                &args.backend,
                "--model-dir",
            ])
            .arg(dir);
        command
    };
    // Start and memory as a user of the example model alone sees them.
    let alone =
        ServerProcess::spawn(served(&binary, &model_dir.join("example")), "/health").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (example_ready_after, example_idle_rss) = (alone.ready_after, alone.rss_mib()?);
    alone.stop(Duration::from_secs(10)).await?;

    let server = ServerProcess::spawn(served(&binary, &model_dir), "/health").await?;
    let baseline = match &args.baseline {
        Some(binary) => Some(ServerProcess::spawn(served(binary, &model_dir), "/health").await?),
        None => None,
    };
    let floor_command = tokio::process::Command::new(sibling_example("http_floor")?);
    let floor = ServerProcess::spawn(floor_command, "/health").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_idle_rss = server.rss_mib()?;
    let floor_idle_rss = floor.rss_mib()?;

    let mut scenarios = vec![
        Scenario {
            name: "/predict",
            path: "/predict".into(),
            body: br#"{"inputs": 2}"#.to_vec(),
            floor: true,
            rows: 1,
            headers: Vec::new(),
            min_secs: 0.0,
            pin_alone: true,
        },
        Scenario {
            name: "/predict/batch (8)",
            path: "/predict/batch".into(),
            body: br#"{"inputs": [1, 2, 3, 4, 5, 6, 7, 8]}"#.to_vec(),
            floor: true,
            rows: 8,
            headers: Vec::new(),
            min_secs: 0.0,
            pin_alone: true,
        },
        Scenario {
            name: "v2 infer, JSON",
            path: "/v2/models/example_model/infer".into(),
            body: br#"{"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [2]}]}"#
                .to_vec(),
            floor: false,
            rows: 1,
            headers: Vec::new(),
            min_secs: 0.0,
            pin_alone: true,
        },
        v2_binary_scenario(),
    ];
    if resnet {
        // A 97x301 picture of 61 KB: resized, cropped and normalized like any photo.
        let picture = std::fs::read(resnet_dir.join("images/odd.png"))?;
        let text = base64::engine::general_purpose::STANDARD.encode(picture);
        scenarios.push(Scenario {
            name: RESNET_SCENARIO,
            path: "/models/resnet18/predict".into(),
            body: format!(r#"{{"inputs": "{text}"}}"#).into_bytes(),
            floor: false,
            rows: 1,
            headers: Vec::new(),
            min_secs: 10.0,
            pin_alone: false,
        });
    }

    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for scenario in &scenarios {
        if scenario.name == RESNET_SCENARIO {
            // Just before its served cells, with the servers idle: this machine's speed
            // drifts over the minutes the other routes take.
            let manifest = ModelManifest::load(&resnet_dir)?;
            let best = engine_best_rows_per_s(&args.backend, &manifest).await?;
            resnet_reference = Some((manifest, best));
        }
        let body = scratch.path().join("body.json");
        std::fs::write(&body, &scenario.body)?;
        // A short run of each first: connections, caches and the allocator warm up.
        oha.run_with_headers(
            &format!("{}{}", server.base(), scenario.path),
            4,
            1.0,
            &body,
            &scenario.headers,
        )
        .await?;
        if scenario.floor {
            oha.run(&format!("{}{}", floor.base(), scenario.path), 4, 1.0, &body)
                .await?;
        }
        if let Some(baseline) = &baseline {
            let url = format!("{}{}", baseline.base(), scenario.path);
            oha.run_with_headers(&url, 4, 1.0, &body, &scenario.headers)
                .await?;
        }
        let secs = (args.secs / args.rounds as f64).max(scenario.min_secs);
        for &concurrency in &args.concurrency {
            let mut floor_rounds = Vec::new();
            let mut baseline_rounds = Vec::new();
            let mut server_rounds = Vec::new();
            // ResNet-18's engine, at its best batch size, takes a turn of its own in each
            // round, with the servers idle.
            let engine_turns = resnet_reference
                .as_ref()
                .filter(|_| scenario.name == RESNET_SCENARIO)
                .map(|(manifest, best)| (manifest, best.batch_size));
            let mut engine_rows = 0;
            let mut engine_time = Duration::ZERO;
            let pin_servers = |cpus: &str| {
                [Some(&server), Some(&floor), baseline.as_ref()]
                    .into_iter()
                    .flatten()
                    .try_for_each(|process| process.pin(cpus))
            };
            let pinned = match &pinning {
                Some(pinning) if concurrency == 1 && scenario.pin_alone => {
                    pin_servers(&pinning.servers)?;
                    Some(oha.pinned(&pinning.load_generator))
                }
                _ => None,
            };
            let oha = pinned.as_ref().unwrap_or(&oha);
            for _ in 0..args.rounds {
                if let Some((manifest, size)) = engine_turns {
                    let times = engine_pass_times(&args.backend, manifest, size, 3.0).await?;
                    engine_rows += size * times.passes;
                    engine_time += times.total;
                }
                if scenario.floor {
                    let url = format!("{}{}", floor.base(), scenario.path);
                    floor_rounds.push(oha.run(&url, concurrency, secs, &body).await?);
                }
                if let Some(baseline) = &baseline {
                    let url = format!("{}{}", baseline.base(), scenario.path);
                    baseline_rounds.push(
                        oha.run_with_headers(&url, concurrency, secs, &body, &scenario.headers)
                            .await?,
                    );
                }
                let url = format!("{}{}", server.base(), scenario.path);
                server_rounds.push(
                    oha.run_with_headers(&url, concurrency, secs, &body, &scenario.headers)
                        .await?,
                );
            }
            let floor_run = scenario
                .floor
                .then(|| support::OhaRun::combine(floor_rounds))
                .transpose()?;
            let baseline_run = baseline
                .is_some()
                .then(|| support::OhaRun::combine(baseline_rounds))
                .transpose()?;
            let server_run = support::OhaRun::combine(server_rounds)?;
            let engine_rows_per_s = engine_turns
                .is_some()
                .then(|| engine_rows as f64 / engine_time.as_secs_f64());
            if let (Some(pinning), Some(_)) = (&pinning, &pinned) {
                pin_servers(&pinning.all)?;
            }
            eprintln!(
                "{} c={concurrency}: server {:.0} req/s p50 {:.3} ms{}",
                scenario.name,
                server_run.requests_per_s,
                server_run.p50_ms,
                floor_run.as_ref().map_or(String::new(), |f| format!(
                    ", floor {:.0} req/s p50 {:.3} ms",
                    f.requests_per_s, f.p50_ms
                )) + &baseline_run.as_ref().map_or(String::new(), |b| format!(
                    ", baseline {:.0} req/s p50 {:.3} ms",
                    b.requests_per_s, b.p50_ms
                ))
            );
            rows.push(Row {
                scenario: scenario.name,
                concurrency,
                server: server_run,
                floor: floor_run,
                baseline: baseline_run,
                engine_rows_per_s,
                pinned: pinned.is_some(),
            });
        }
    }
    let server_ready_after = server.ready_after;
    server.stop(Duration::from_secs(10)).await?;
    drop(floor);
    drop(baseline);

    let resnet_best = resnet_reference.map(|(_, best)| best);
    let report = Report {
        backend: args.backend.clone(),
        secs: args.secs,
        rounds: args.rounds,
        engine_p50_ms: engine_p50.as_secs_f64() * 1e3,
        resnet_engine_best_rows_per_s: resnet_best.map(|rates| rates.overall),
        resnet_engine_best_rows_per_s_by_median: resnet_best.map(|rates| rates.by_median),
        resnet_engine_best_batch_size: resnet_best.map(|rates| rates.batch_size),
        pinning,
        example_start_to_ready_ms: example_ready_after.as_secs_f64() * 1e3,
        example_idle_rss_mib: example_idle_rss,
        server_start_to_ready_ms: server_ready_after.as_secs_f64() * 1e3,
        server_idle_rss_mib: server_idle_rss,
        floor_idle_rss_mib: floor_idle_rss,
        rows,
    };
    let markdown = render(&report, &scenarios);
    println!("{markdown}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("http.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("http.md"), markdown)?;
    std::fs::write(args.out.join("http.svg"), chart(&report, &scenarios)?)?;
    eprintln!("wrote {}", args.out.join("http.{json,md,svg}").display());
    Ok(())
}

/// One row as tritonclient sends it by default: a JSON header, the input's 4 raw bytes after
/// it, and binary outputs back.
fn v2_binary_scenario() -> Scenario {
    let header = br#"{"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}], "parameters": {"binary_data_output": true}}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&2.0f32.to_le_bytes());
    Scenario {
        name: "v2 infer, binary",
        path: "/v2/models/example_model/infer".into(),
        body,
        floor: false,
        rows: 1,
        headers: vec![format!("Inference-Header-Content-Length: {}", header.len())],
        min_secs: 0.0,
        pin_alone: true,
    }
}

struct PassTimes {
    p50: Duration,
    /// The measured passes and their summed time.
    passes: usize,
    total: Duration,
}

impl PassTimes {
    /// Rows of every measured pass of `size` rows over their summed time.
    fn rows_per_s(&self, size: usize) -> f64 {
        (size * self.passes) as f64 / self.total.as_secs_f64()
    }
}

/// An engine's best rows/s over several batch sizes, counted two ways.
#[derive(Debug, Clone, Copy)]
struct EngineRates {
    /// Rows of every measured pass over their summed time (`bench engines`' samples/s).
    overall: f64,
    /// Rows of one pass over the median pass.
    by_median: f64,
    /// The batch size of `overall`.
    batch_size: usize,
}

/// The best of the engine's rows/s at batch 1, 8 and 32.
async fn engine_best_rows_per_s(backend: &str, manifest: &ModelManifest) -> Result<EngineRates> {
    let mut best = EngineRates {
        overall: 0.0,
        by_median: 0.0,
        batch_size: 1,
    };
    for size in [1, 8, 32] {
        let times = engine_pass_times(backend, manifest, size, 3.0).await?;
        let rows_per_s = times.rows_per_s(size);
        if rows_per_s > best.overall {
            best.overall = rows_per_s;
            best.batch_size = size;
        }
        best.by_median = best.by_median.max(size as f64 / times.p50.as_secs_f64());
    }
    Ok(best)
}

/// Forward passes of `size` zero rows through the engine for `seconds` (at least three), the
/// first pass excluded: their median and their summed time.
async fn engine_pass_times(
    backend: &str,
    manifest: &ModelManifest,
    size: usize,
    seconds: f64,
) -> Result<PassTimes> {
    let engine = {
        let (backend, manifest) = (backend.to_string(), manifest.clone());
        tokio::task::spawn_blocking(move || {
            backends::load(&backend, &manifest, &EngineOptions::default())
        })
        .await??
    };
    let rows: Vec<Sample> = (0..size)
        .map(|_| engine.info().model.zero_sample())
        .collect();
    let batch = Batch::stack(&rows)?;
    engine.infer(batch.clone()).await?;
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 || started.elapsed() < budget {
        let pass = Instant::now();
        engine.infer(batch.clone()).await?;
        times.push(pass.elapsed());
    }
    let total = times.iter().sum();
    times.sort_unstable();
    Ok(PassTimes {
        p50: times[times.len() / 2],
        passes: times.len(),
        total,
    })
}

fn render(report: &Report, scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backend {}, {} s per cell in {} rounds (ResNet-18: rounds of 10 s at least, each after 3 s of the engine in-process); the example model alone: start to ready {:.0} ms, idle RSS {:.1} MiB; every model: {:.0} ms, {:.1} MiB (floor {:.1} MiB)\n",
        report.backend,
        report.secs,
        report.rounds,
        report.example_start_to_ready_ms,
        report.example_idle_rss_mib,
        report.server_start_to_ready_ms,
        report.server_idle_rss_mib,
        report.floor_idle_rss_mib
    );
    if let Some(pinning) = &report.pinning {
        let _ = writeln!(
            out,
            "concurrency 1 on the example's routes: oha on CPU {}, the servers on CPU {} (taskset); every other cell where the kernel puts them\n",
            pinning.load_generator, pinning.servers
        );
    }
    let with_baseline = report.rows.iter().any(|row| row.baseline.is_some());
    let _ = writeln!(
        out,
        "| route | conc. | req/s | × floor | rows/s | p50 ms | floor p50 ms | p99 ms | floor p99 ms | errors |{}",
        if with_baseline {
            " baseline req/s | × baseline | baseline p50 ms | baseline errors |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if with_baseline {
            "---:|---:|---:|---:|"
        } else {
            ""
        }
    );
    let optional = |value: Option<f64>, digits: usize| {
        value.map_or(String::new(), |v| format!("{v:.digits$}"))
    };
    for row in &report.rows {
        let rows_per_request = scenarios
            .iter()
            .find(|s| s.name == row.scenario)
            .map_or(1, |s| s.rows);
        let server = &row.server;
        let floor = row.floor.as_ref();
        let _ = write!(
            out,
            "| {} | {} | {:.0} | {} | {:.0} | {:.3} | {} | {:.3} | {} | {} |",
            row.scenario,
            row.concurrency,
            server.requests_per_s,
            optional(floor.map(|f| server.requests_per_s / f.requests_per_s), 2),
            server.requests_per_s * rows_per_request as f64,
            server.p50_ms,
            optional(floor.map(|f| f.p50_ms), 3),
            server.p99_ms,
            optional(floor.map(|f| f.p99_ms), 3),
            server.errors
        );
        if with_baseline {
            let baseline = row.baseline.as_ref();
            let _ = write!(
                out,
                " {} | {} | {} | {} |",
                optional(baseline.map(|b| b.requests_per_s), 0),
                optional(
                    baseline.map(|b| server.requests_per_s / b.requests_per_s),
                    2
                ),
                optional(baseline.map(|b| b.p50_ms), 3),
                baseline.map_or(String::new(), |b| b.errors.to_string()),
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "engine p50 at batch 1 (example, in-process): {:.3} ms",
        report.engine_p50_ms
    );
    if let Some(row) = report
        .rows
        .iter()
        .find(|r| r.scenario == "/predict" && r.concurrency == 1)
    {
        let _ = writeln!(
            out,
            "server overhead at concurrency 1: {:.3} ms (served p50 − engine p50); floor p50 + {:.3} ms",
            row.server.p50_ms - report.engine_p50_ms,
            row.floor
                .as_ref()
                .map_or(f64::NAN, |f| row.server.p50_ms - f.p50_ms)
        );
    }
    if let (Some(best), Some(by_median), Some(size)) = (
        report.resnet_engine_best_rows_per_s,
        report.resnet_engine_best_rows_per_s_by_median,
        report.resnet_engine_best_batch_size,
    ) {
        let _ = writeln!(
            out,
            "resnet18 in-process best: {best:.1} rows/s at batch {size} (of 1, 8 and 32; rows over the passes' summed time; best over the median pass: {by_median:.1})"
        );
    }
    for row in &report.rows {
        if let Some(engine) = row.engine_rows_per_s {
            let _ = writeln!(
                out,
                "{} at concurrency {}: {:.2} images/s served, {engine:.2} rows/s in-process at that batch size in turns with it: {:.3}×",
                row.scenario,
                row.concurrency,
                row.server.requests_per_s,
                row.server.requests_per_s / engine
            );
        }
    }
    out
}

/// Requests/s by concurrency, one line per route (solid: the server; dashed, same colour:
/// the floor on the same route), on log scales so the small model and ResNet-18 share it.
fn chart(report: &Report, scenarios: &[Scenario]) -> Result<String> {
    use plotters::element::DashedPathElement;
    use plotters::prelude::*;

    let mut concurrencies: Vec<f64> = report.rows.iter().map(|r| r.concurrency as f64).collect();
    concurrencies.sort_by(f64::total_cmp);
    concurrencies.dedup();
    let rates = report.rows.iter().flat_map(|r| {
        std::iter::once(r.server.requests_per_s).chain(r.floor.as_ref().map(|f| f.requests_per_s))
    });
    let (low, high) = rates
        .filter(|rate| *rate > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(low, high), rate| {
            (low.min(rate), high.max(rate))
        });
    if concurrencies.is_empty() || high <= 0.0 {
        bail!("no measurements to chart");
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = support::chart::log_log(
            &root,
            &support::chart::Axes {
                caption: format!(
                    "{}: requests/s by concurrency (oha, keep-alive)",
                    report.backend
                ),
                x_points: concurrencies,
                y_extent: (low, high),
                x_desc: "concurrent connections",
                y_desc: "requests/s",
                y_label: &|v| format!("{v:.0}"),
            },
        )?;
        for (index, scenario) in scenarios.iter().enumerate() {
            let rows: Vec<&Row> = report
                .rows
                .iter()
                .filter(|r| r.scenario == scenario.name)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let color =
                support::chart::LINE_COLORS[index % support::chart::LINE_COLORS.len()].to_rgba();
            let style = color.stroke_width(2);
            let served: Vec<(f64, f64)> = rows
                .iter()
                .map(|r| (r.concurrency as f64, r.server.requests_per_s))
                .collect();
            chart
                .draw_series(LineSeries::new(served.clone(), style))?
                .label(scenario.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(served.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            let floor: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| {
                    r.floor
                        .as_ref()
                        .map(|f| (r.concurrency as f64, f.requests_per_s))
                })
                .collect();
            if !floor.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(floor, 6, 4, style))?
                    .label(format!("{} (floor)", scenario.name))
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, style)
                    });
            }
        }
        support::chart::legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
        root.present()?;
    }
    if svg.is_empty() {
        bail!("plotters wrote no SVG");
    }
    Ok(svg)
}
