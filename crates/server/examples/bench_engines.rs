//! Forward passes in-process through `InferenceEngine` (no HTTP, no scheduler): every
//! backend compiled in × model × intra-op thread count × batch size. Per cell: the median
//! and p99 time of one forward pass, samples (rows) per second, and peak resident memory;
//! per backend × model × threads: the load time and the resident memory after load.
//!
//! Run through `cargo xtask bench engines`, or directly:
//! `cargo run --release -p inference-server --features ort,tch --example bench_engines -- --help`.
//! Writes `engines.json`, `engines.md` (also printed) and `engines.svg` (samples/s by batch
//! size, one line per backend and thread count, one panel per model) to `--out`.
//!
//! Each backend × model × threads runs in a child process of this example (the same binary
//! with `--child`): libtorch's thread count is process-wide, a load in a fresh process
//! includes the runtime's own start, and the memory figures then belong to that one engine.
//! A cell is a warmup, not measured (at least two passes, more until a tenth of `--seconds`
//! has passed), then passes for `--seconds` or `--max-passes`, whichever comes first (at
//! least one): a cell takes about 1.1 × `--seconds`, or three passes when one pass takes
//! longer. Passes run one after another on seeded random inputs, each timed from `infer` to
//! its answer.

mod support;

// The server's allocator with the server's settings (`main.rs`): an engine's speed depends on
// how its activations' memory comes back, so in-process figures are taken the same way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use inference_core::{Batch, DType, EngineOptions, InferenceEngine, ModelManifest, Sample, Tensor};
use inference_server::backends;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "In-process forward passes of every model on every compiled backend")]
struct Args {
    /// The model repository [default: models/ of this checkout].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Comma-separated model folders of the repository [default: example,resnet18, where
    /// resnet18 is skipped with a note while it is not exported].
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Comma-separated batch sizes, for every model [default: 1,8,32,64; resnet18: 1,8,32].
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Comma-separated intra-op thread counts [default: 1 and every core this process may
    /// use (std::thread::available_parallelism)].
    #[arg(long, value_delimiter = ',')]
    intra_op_threads: Vec<usize>,
    /// Seconds of measured passes per cell, warmup not included.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Measured passes per cell at the most.
    #[arg(long, default_value_t = 1000)]
    max_passes: usize,
    /// Folder for `engines.json`, `engines.md` and `engines.svg`.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
    /// Internal: run one group (JSON) in this process and print its events on stdout.
    #[arg(long, hide = true, value_name = "JSON")]
    child: Option<String>,
}

/// Batch sizes of a model when `--batch-sizes` is not given.
const DEFAULT_BATCH_SIZES: &[usize] = &[1, 8, 32, 64];
/// ResNet-18 stops at 32, the server's default `max_batch_size`: 64 images per pass would
/// add the slowest cells of the run without telling more.
const RESNET18_BATCH_SIZES: &[usize] = &[1, 8, 32];
/// Warmup passes per cell at the least: the first pays for lazy initialisation (kernels,
/// allocators, a new input shape), and TorchScript's profiling executor optimizes the graph
/// for a shape only on its second run.
const WARMUP_PASSES: usize = 2;
/// The warmup goes on until this fraction of `--seconds` has passed.
const WARMUP_FRACTION: f64 = 0.1;
/// Prefix of the child's event lines, so that whatever a runtime library prints to stdout
/// is not taken for one.
const EVENT_PREFIX: &str = "bench_engines event: ";

/// One child process: a backend, a model and a thread count, over every batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    backend: String,
    model: String,
    dir: PathBuf,
    intra_op_threads: usize,
    batch_sizes: Vec<usize>,
    seconds: f64,
    max_passes: usize,
}

/// What a child reports, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Loaded(Loaded),
    Cell(Cell),
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Loaded {
    /// `backends::load` in a fresh process: the runtime's initialisation and the model.
    load_s: f64,
    /// VmRSS of the child before the load.
    rss_before_load_mib: f64,
    /// VmRSS of the child right after the load.
    rss_after_load_mib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cell {
    batch_size: usize,
    warmup_passes: usize,
    passes: usize,
    median_ms: f64,
    /// Nearest-rank 99th percentile: the slowest pass when fewer than 100 ran.
    p99_ms: f64,
    /// Rows of every measured pass over the time they took together.
    samples_per_s: f64,
    /// VmHWM of the child over this cell (warmup included), reset at its start.
    peak_rss_mib: f64,
    /// Whether the high-water mark could be reset; when not, it covers the whole child.
    peak_rss_reset: bool,
}

#[derive(Debug, Serialize)]
struct GroupReport {
    model: String,
    backend: String,
    intra_op_threads: usize,
    loaded: Option<Loaded>,
    cells: Vec<Cell>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    available_parallelism: usize,
    cpu: Option<String>,
    seconds_per_cell: f64,
    max_passes: usize,
    warmup: String,
    memory: String,
    skipped: Vec<String>,
    total_s: f64,
    groups: Vec<GroupReport>,
}

fn main() -> Result<()> {
    // SAFETY: before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        support::configure_like_the_server();
    }
    let args = Args::parse();
    if let Some(group) = &args.child {
        return child(serde_json::from_str(group).context("--child takes a group as JSON")?);
    }
    ensure!(
        args.seconds > 0.0 && args.seconds.is_finite(),
        "--seconds must be positive"
    );
    ensure!(args.max_passes > 0, "--max-passes must be positive");
    ensure!(
        args.batch_sizes.iter().all(|&size| size > 0),
        "--batch-sizes must be positive"
    );
    ensure!(
        args.intra_op_threads.iter().all(|&n| n > 0),
        "--intra-op-threads must be positive"
    );
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut threads = if args.intra_op_threads.is_empty() {
        vec![1, cores]
    } else {
        args.intra_op_threads.clone()
    };
    threads.sort_unstable();
    threads.dedup();

    let repository = args
        .model_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let (models, skipped) = models(&args, &repository)?;
    ensure!(!models.is_empty(), "no model to run");
    for note in &skipped {
        eprintln!("{note}");
    }

    let mut groups = Vec::new();
    for (name, dir, sizes) in &models {
        for backend in backends::COMPILED {
            for &n in &threads {
                groups.push(Group {
                    backend: (*backend).to_string(),
                    model: name.clone(),
                    dir: dir.clone(),
                    intra_op_threads: n,
                    batch_sizes: sizes.clone(),
                    seconds: args.seconds,
                    max_passes: args.max_passes,
                });
            }
        }
    }
    let cells: usize = groups.iter().map(|g| g.batch_sizes.len()).sum();
    let bar = ProgressBar::new(cells as u64).with_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} cells  {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let exe = std::env::current_exe()?;
    let mut reports = Vec::new();
    for group in &groups {
        bar.set_message(format!(
            "{} on {}, {}",
            group.model,
            group.backend,
            threads_label(group.intra_op_threads)
        ));
        let report = run_group(&exe, group, &bar)?;
        if let Some(error) = &report.error {
            bar.println(format!(
                "{} on {} ({}): {error}",
                group.model,
                group.backend,
                threads_label(group.intra_op_threads)
            ));
        }
        reports.push(report);
    }
    bar.finish_and_clear();

    let report = Report {
        available_parallelism: cores,
        cpu: cpu_model(),
        seconds_per_cell: args.seconds,
        max_passes: args.max_passes,
        warmup: format!(
            "not measured: at least {WARMUP_PASSES} passes per cell, more until \
             {WARMUP_FRACTION} × its seconds had passed"
        ),
        memory: "one child process per backend × model × threads; rss_before_load_mib and \
                 rss_after_load_mib are its VmRSS before and after the load, peak_rss_mib its \
                 VmHWM over the cell (warmup included), reset at the cell's start by writing 5 \
                 to /proc/self/clear_refs"
            .to_string(),
        skipped,
        total_s: started.elapsed().as_secs_f64(),
        groups: reports,
    };
    let markdown = markdown(&report);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(
        args.out.join("engines.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("engines.md"), &markdown)?;
    std::fs::write(args.out.join("engines.svg"), chart(&report)?)?;
    print!("{markdown}");
    eprintln!(
        "wrote {} in {:.0} s",
        args.out.join("engines.{json,md,svg}").display(),
        report.total_s
    );
    Ok(())
}

/// The models to run, each with its folder and batch sizes, and notes on those skipped.
type Models = Vec<(String, PathBuf, Vec<usize>)>;

fn models(args: &Args, repository: &Path) -> Result<(Models, Vec<String>)> {
    let defaulted = args.models.is_empty();
    let names = if defaulted {
        vec!["example".to_string(), "resnet18".to_string()]
    } else {
        args.models.clone()
    };
    let mut models = Vec::new();
    let mut skipped = Vec::new();
    for name in names {
        let dir = repository.join(&name);
        if defaulted && name == "resnet18" && !dir.join("model.toml").is_file() {
            skipped.push(format!(
                "resnet18 skipped: {} is not exported (cargo xtask export-models --resnet18)",
                dir.display()
            ));
            continue;
        }
        ModelManifest::load(&dir).with_context(|| format!("no model in {}", dir.display()))?;
        let mut sizes = if !args.batch_sizes.is_empty() {
            args.batch_sizes.clone()
        } else if name == "resnet18" {
            RESNET18_BATCH_SIZES.to_vec()
        } else {
            DEFAULT_BATCH_SIZES.to_vec()
        };
        // Smallest first: a cell's peak RSS then counts what smaller cells left behind.
        sizes.sort_unstable();
        sizes.dedup();
        models.push((name, dir, sizes));
    }
    Ok((models, skipped))
}

/// Runs `group` in a child process, one tick of `bar` per cell it reports.
fn run_group(exe: &Path, group: &Group, bar: &ProgressBar) -> Result<GroupReport> {
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(serde_json::to_string(group)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    // Read on a thread of its own, so that a chatty runtime cannot fill the pipe and stall.
    let mut stderr = child.stderr.take().context("stderr is piped")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut report = GroupReport {
        model: group.model.clone(),
        backend: group.backend.clone(),
        intra_op_threads: group.intra_op_threads,
        loaded: None,
        cells: Vec::new(),
        error: None,
    };
    let stdout = BufReader::new(child.stdout.take().context("stdout is piped")?);
    for line in stdout.lines() {
        let line = line?;
        let Some(event) = line.strip_prefix(EVENT_PREFIX) else {
            continue;
        };
        match serde_json::from_str(event).context("a child's event is not valid JSON")? {
            Event::Loaded(loaded) => report.loaded = Some(loaded),
            Event::Cell(cell) => {
                report.cells.push(cell);
                bar.inc(1);
            }
            Event::Failed { error } => report.error = Some(error),
        }
    }
    let status = child.wait()?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() && report.error.is_none() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        report.error = Some(format!(
            "the child exited with {status}: {}",
            tail.join(" / ")
        ));
    }
    bar.inc((group.batch_sizes.len() - report.cells.len()) as u64);
    Ok(report)
}

fn emit(event: &Event) -> Result<()> {
    println!("{EVENT_PREFIX}{}", serde_json::to_string(event)?);
    Ok(())
}

/// The child: loads one engine, then measures every batch size in turn.
fn child(group: Group) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let manifest = ModelManifest::load(&group.dir)?;
    let options = EngineOptions {
        intra_op_threads: Some(group.intra_op_threads),
        ..EngineOptions::default()
    };
    let rss_before_load_mib = status_mib("VmRSS")?;
    let started = Instant::now();
    let engine =
        match runtime.block_on(async { backends::load(&group.backend, &manifest, &options) }) {
            Ok(engine) => engine,
            Err(error) => {
                return emit(&Event::Failed {
                    error: format!("cannot load: {error}"),
                });
            }
        };
    let load_s = started.elapsed().as_secs_f64();
    emit(&Event::Loaded(Loaded {
        load_s,
        rss_before_load_mib,
        rss_after_load_mib: status_mib("VmRSS")?,
    }))?;
    let budget = Duration::from_secs_f64(group.seconds);
    for &size in &group.batch_sizes {
        let batch = input_batch(engine.as_ref(), size)?;
        let peak_rss_reset = reset_peak_rss();
        let passes =
            match runtime.block_on(measure(engine.as_ref(), &batch, budget, group.max_passes)) {
                Ok(passes) => passes,
                Err(error) => {
                    return emit(&Event::Failed {
                        error: format!("batch {size}: {error:#}"),
                    });
                }
            };
        let total: Duration = passes.times.iter().sum();
        emit(&Event::Cell(Cell {
            batch_size: size,
            warmup_passes: passes.warmup,
            passes: passes.times.len(),
            median_ms: ms(percentile(&passes.times, 0.5)),
            p99_ms: ms(percentile(&passes.times, 0.99)),
            samples_per_s: (size * passes.times.len()) as f64 / total.as_secs_f64(),
            peak_rss_mib: status_mib("VmHWM")?,
            peak_rss_reset,
        }))?;
    }
    Ok(())
}

/// `size` rows of seeded random inputs (zeros for inputs that are not f32).
fn input_batch(engine: &dyn InferenceEngine, size: usize) -> Result<Batch> {
    let mut rng = fastrand::Rng::with_seed(0);
    let rows: Vec<Sample> = (0..size)
        .map(|_| {
            let tensors = engine
                .info()
                .model
                .inputs
                .iter()
                .map(|spec| {
                    let zeros = spec.zeros();
                    if spec.dtype != DType::F32 {
                        return Ok(zeros);
                    }
                    let shape = zeros.shape().to_vec();
                    let values = (0..zeros.element_count())
                        .map(|_| rng.f32() * 2.0 - 1.0)
                        .collect();
                    Ok(Tensor::from_f32(shape, values)?)
                })
                .collect::<Result<_>>()?;
            Ok(Sample { tensors })
        })
        .collect::<Result<_>>()?;
    Ok(Batch::stack(&rows)?)
}

struct Passes {
    warmup: usize,
    /// Measured pass times, sorted.
    times: Vec<Duration>,
}

async fn measure(
    engine: &dyn InferenceEngine,
    batch: &Batch,
    budget: Duration,
    max_passes: usize,
) -> Result<Passes> {
    let started = Instant::now();
    let mut warmup = 0;
    while warmup < WARMUP_PASSES
        || (warmup < max_passes && started.elapsed() < budget.mul_f64(WARMUP_FRACTION))
    {
        engine.infer(batch.clone()).await?;
        warmup += 1;
    }
    let started = Instant::now();
    let mut times = Vec::new();
    while times.is_empty() || (times.len() < max_passes && started.elapsed() < budget) {
        let pass = Instant::now();
        engine.infer(batch.clone()).await?;
        times.push(pass.elapsed());
    }
    times.sort_unstable();
    Ok(Passes { warmup, times })
}

/// Nearest rank of sorted `times`.
fn percentile(times: &[Duration], p: f64) -> Duration {
    let rank = (p * times.len() as f64).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A `kB` line of this process's `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no {field} line in /proc/self/status"))?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Resets VmHWM to the current VmRSS (Linux 4.0 and later); false where it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Forward passes in-process through `InferenceEngine`, {} cores available{}. Per cell \
         a warmup ({}), then {} s or {} passes, whichever came first.\n",
        report.available_parallelism,
        report
            .cpu
            .as_ref()
            .map_or(String::new(), |cpu| format!(" ({cpu})")),
        report.warmup,
        report.seconds_per_cell,
        report.max_passes,
    );
    let _ = writeln!(
        out,
        "| model | backend | threads | load ms | RSS at start MiB | RSS after load MiB | batch | median ms | p99 ms | passes | samples/s | peak RSS MiB |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut unreset = false;
    for group in &report.groups {
        let head = format!(
            "| {} | {} | {} |",
            group.model, group.backend, group.intra_op_threads
        );
        let loaded = group.loaded.as_ref().map_or("| | |".to_string(), |l| {
            format!(
                "{} | {:.0} | {:.0} |",
                significant(l.load_s * 1e3),
                l.rss_before_load_mib,
                l.rss_after_load_mib
            )
        });
        for cell in &group.cells {
            unreset |= !cell.peak_rss_reset;
            let _ = writeln!(
                out,
                "{head} {loaded} {} | {} | {} | {} | {} | {:.0} |",
                cell.batch_size,
                significant(cell.median_ms),
                significant(cell.p99_ms),
                cell.passes,
                significant(cell.samples_per_s),
                cell.peak_rss_mib
            );
        }
        if let Some(error) = &group.error {
            let _ = writeln!(
                out,
                "{head} {loaded} {} | | | | | |",
                error.replace('|', "\\|").replace('\n', " ")
            );
        }
    }
    let _ = writeln!(
        out,
        "\nload ms: `backends::load` in a fresh process, the runtime's own initialisation \
         included. median and p99 of one forward pass, from `infer` to its answer (p99 by \
         nearest rank: the slowest pass when fewer than 100 ran); samples/s: the rows of every \
         measured pass over their summed time. Memory: each backend × model × threads runs in \
         a child process of its own. RSS at start and after load: its VmRSS before and after \
         the load (at start, the binary with every runtime library mapped); peak RSS: its VmHWM \
         over the cell, warmup included, reset at the cell's start through \
         /proc/self/clear_refs, so it counts the loaded model and what earlier, smaller cells \
         of that process left resident."
    );
    if unreset {
        let _ = writeln!(
            out,
            "\nThe high-water mark could not be reset here: peak RSS covers the whole child \
             process."
        );
    }
    for note in &report.skipped {
        let _ = writeln!(out, "\n{note}.");
    }
    out
}

/// Three significant digits, without a fractional part beyond them.
fn significant(value: f64) -> String {
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else if value >= 1.0 {
        2
    } else {
        3
    };
    format!("{value:.digits$}")
}

/// samples/s by batch size, one panel per model, one line per backend and thread count
/// (solid: the most threads; dashed: fewer).
fn chart(report: &Report) -> Result<String> {
    use plotters::element::DashedPathElement;
    use plotters::prelude::*;

    let mut models: Vec<&str> = Vec::new();
    for group in &report.groups {
        if !group.cells.is_empty() && !models.contains(&group.model.as_str()) {
            models.push(&group.model);
        }
    }
    let mut threads: Vec<usize> = report.groups.iter().map(|g| g.intra_op_threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let most_threads = threads.last().copied().unwrap_or(1);
    let backends: Vec<&str> = {
        let mut names: Vec<&str> = Vec::new();
        for group in &report.groups {
            if !names.contains(&group.backend.as_str()) {
                names.push(&group.backend);
            }
        }
        names
    };
    let panels = models.len().max(1);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (560 * panels as u32, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        if models.is_empty() {
            root.draw(&Text::new(
                "no measurements",
                (20, 20),
                ("sans-serif", 16).into_font(),
            ))?;
        }
        for (area, model) in root.split_evenly((1, panels)).iter().zip(&models) {
            let groups: Vec<&GroupReport> =
                report.groups.iter().filter(|g| g.model == *model).collect();
            let cells = groups.iter().flat_map(|g| &g.cells);
            let sizes: Vec<f64> = {
                let mut sizes: Vec<usize> = cells.clone().map(|c| c.batch_size).collect();
                sizes.sort_unstable();
                sizes.dedup();
                sizes.into_iter().map(|s| s as f64).collect()
            };
            let (low, high) = cells.fold((f64::INFINITY, 0.0_f64), |(low, high), c| {
                (low.min(c.samples_per_s), high.max(c.samples_per_s))
            });
            let mut chart = support::chart::log_log(
                area,
                &support::chart::Axes {
                    caption: format!("{model}: samples/s by batch size"),
                    x_points: sizes,
                    y_extent: (low, high),
                    x_desc: "batch size (rows per pass)",
                    y_desc: "samples/s (rows / measured time)",
                    y_label: &|v| compact(*v),
                },
            )?;
            for group in groups {
                if group.cells.is_empty() {
                    continue;
                }
                let index = backends
                    .iter()
                    .position(|b| *b == group.backend)
                    .unwrap_or(0);
                let color = support::chart::LINE_COLORS[index % support::chart::LINE_COLORS.len()]
                    .to_rgba();
                let style = color.stroke_width(2);
                let points: Vec<(f64, f64)> = group
                    .cells
                    .iter()
                    .map(|c| (c.batch_size as f64, c.samples_per_s))
                    .collect();
                let label = format!(
                    "{}, {}",
                    group.backend,
                    threads_label(group.intra_op_threads)
                );
                let series = if group.intra_op_threads == most_threads {
                    chart.draw_series(LineSeries::new(points.clone(), style))?
                } else {
                    chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?
                };
                let dashed = group.intra_op_threads != most_threads;
                series.label(label).legend(move |(x, y)| {
                    // A dash longer than the sample line draws it solid.
                    let (dash, gap) = if dashed { (6, 4) } else { (40, 4) };
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], dash, gap, style)
                });
                chart.draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 3, color.filled())),
                )?;
            }
            support::chart::legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        root.present()?;
    }
    if svg.is_empty() {
        bail!("plotters wrote no SVG");
    }
    Ok(svg)
}

fn threads_label(n: usize) -> String {
    if n == 1 {
        "1 thread".to_string()
    } else {
        format!("{n} threads")
    }
}

/// 1234567 as `1.23M`, for the axis.
fn compact(value: f64) -> String {
    let (scaled, unit) = if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let digits = significant(scaled);
    let digits = if digits.contains('.') {
        digits.trim_end_matches('0').trim_end_matches('.')
    } else {
        &digits
    };
    format!("{digits}{unit}")
}
