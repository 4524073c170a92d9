//! Our server beside TorchServe 0.12, both serving the same TorchScript files.
//!
//! Run through `cargo xtask bench peers`, which installs TorchServe and its archiver into the
//! setup venv, builds this example with the release server (libtorch backend compiled in)
//! and passes both TorchServe commands here. The example model (`models/example/model.pt`)
//! and, when exported, ResNet-18 are archived with the handlers of `scripts/torchserve/`,
//! which read the same JSON bodies as our routes. Both servers batch alike: at most
//! 8 rows per pass, 5 ms of waiting for a batch to fill, 2 workers per model. For each
//! model and concurrency the same `oha` command drives TorchServe, then our server, moments
//! apart. Also measured: start to ready (exec until every model answers) and idle memory
//! (for TorchServe, its Java frontend and Python workers together).
//!
//! Everything listens on 127.0.0.1. TorchServe runs in a process group of its own, stopped
//! with `torchserve --stop` and then killed as a group when the run ends, fails or is
//! interrupted (Ctrl-C, SIGTERM).
//!
//! Writes `peers.json` and `peers.md` to `--out` (default `target/bench`).

mod support;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use clap::Parser;
use serde::Serialize;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{Oha, OhaRun, ServerProcess, default_server_binary};

/// Most rows per forward pass, on both servers.
const BATCH_SIZE: usize = 8;
/// How long a batch may wait to fill, on both servers.
const MAX_BATCH_DELAY_MS: u64 = 5;
/// Workers (TorchServe) or engine instances (ours) per model.
const WORKERS: usize = 2;
/// From exec until every model answers; TorchServe starts a JVM and imports torch in each
/// of its Python workers, which takes tens of seconds on a small machine.
const READY_WITHIN: Duration = Duration::from_secs(300);
/// How long `torchserve --stop` gets before the group is killed.
const STOP_WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug, Parser)]
#[command(about = "Our server beside TorchServe 0.12 under the same oha load")]
struct Args {
    /// Seconds of load per cell.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Comma-separated connection counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 32])]
    concurrency: Vec<usize>,
    /// Backend our server runs the models on; tch runs the same TorchScript files.
    #[arg(long, default_value = "tch")]
    backend: String,
    /// The model repository [default: models/ of this checkout].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The `oha` binary.
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// TorchServe's `torchserve` command.
    #[arg(long, default_value = "torchserve")]
    torchserve: PathBuf,
    /// TorchServe's `torch-model-archiver` command.
    #[arg(long, default_value = "torch-model-archiver")]
    torch_model_archiver: PathBuf,
    /// Folder for `peers.json` and `peers.md`.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
}

/// One model as both servers serve it, with the body both routes read.
struct Scenario {
    /// The model's name in TorchServe and the row label.
    name: &'static str,
    /// Our server's route.
    ours: &'static str,
    body: Vec<u8>,
}

impl Scenario {
    fn torchserve_path(&self) -> String {
        format!("/predictions/{}", self.name)
    }
}

#[derive(Debug, Serialize)]
struct Row {
    model: &'static str,
    concurrency: usize,
    ours: OhaRun,
    torchserve: OhaRun,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    secs: f64,
    batch_size: usize,
    max_batch_delay_ms: u64,
    workers: usize,
    ours_start_to_ready_ms: f64,
    torchserve_start_to_ready_ms: f64,
    ours_idle_rss_mib: f64,
    torchserve_idle_rss_mib: f64,
    torchserve_processes: usize,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.secs > 0.0, "--secs must be positive");
    // Whichever ends first, the other is dropped, and with it every process it started.
    tokio::select! {
        result = run(&args) => result,
        signal = interrupted() => {
            signal?;
            bail!("interrupted; TorchServe and our server were stopped")
        }
    }
}

async fn interrupted() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

async fn run(args: &Args) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| root.join("models"));
    let handlers = root.join("scripts/torchserve");
    let oha = Oha::new(&args.oha)?;

    let mut scenarios = vec![Scenario {
        name: "example",
        ours: "/predict",
        body: br#"{"inputs": 2}"#.to_vec(),
    }];
    let resnet_dir = model_dir.join("resnet18");
    if resnet_dir.join("model.toml").is_file() {
        // A 97x301 picture of 61 KB: resized, cropped and normalized like any photo.
        let picture = std::fs::read(resnet_dir.join("images/odd.png"))?;
        let text = base64::engine::general_purpose::STANDARD.encode(picture);
        scenarios.push(Scenario {
            name: "resnet18",
            ours: "/models/resnet18/predict",
            body: format!(r#"{{"inputs": "{text}"}}"#).into_bytes(),
        });
    } else {
        eprintln!("no models/resnet18/model.toml: the example model only");
    }

    // TorchServe's home: model store, config, logs, pid file (its TMPDIR).
    let home = tempfile::tempdir()?;
    let store = home.path().join("store");
    std::fs::create_dir(&store)?;
    for scenario in &scenarios {
        let (model, extra) = match scenario.name {
            "example" => (model_dir.join("example/model.pt"), None),
            _ => (
                resnet_dir.join("model.pt"),
                Some(resnet_dir.join("labels.txt")),
            ),
        };
        let handler = handlers.join(format!("{}_handler.py", scenario.name));
        archive(
            &args.torch_model_archiver,
            &store,
            scenario.name,
            &model,
            &handler,
            extra.as_deref(),
        )
        .await?;
    }

    // Ours first, then TorchServe, each timed from exec while the other is idle or absent.
    let started = Instant::now();
    let mut command = tokio::process::Command::new(default_server_binary()?);
    command
        .args([
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--host",
            "127.0.0.1",
            "--backend",
            &args.backend,
        ])
        .arg("--model-dir")
        .arg(&model_dir)
        .env("RUST_LOG", "warn,inference_server::serve=info")
        .env("INFERENCE_BATCHING__MAX_BATCH_SIZE", BATCH_SIZE.to_string())
        .env(
            "INFERENCE_BATCHING__MAX_QUEUE_DELAY_MS",
            MAX_BATCH_DELAY_MS.to_string(),
        )
        .env("INFERENCE_MODEL__INSTANCES", WORKERS.to_string());
    let ours = ServerProcess::spawn(command, "/health").await?;
    let routes: Vec<(String, &[u8])> = scenarios
        .iter()
        .map(|s| (format!("{}{}", ours.base(), s.ours), s.body.as_slice()))
        .collect();
    wait_answering(&routes, || Ok(())).await?;
    let ours_ready_after = started.elapsed();
    eprintln!("our server answers after {ours_ready_after:.1?}");

    let mut torchserve = TorchServe::start(&args.torchserve, home, &scenarios)?;
    let routes: Vec<(String, &[u8])> = scenarios
        .iter()
        .map(|s| {
            let url = format!("{}{}", torchserve.base, s.torchserve_path());
            (url, s.body.as_slice())
        })
        .collect();
    wait_answering(&routes, || torchserve.check_running()).await?;
    let torchserve_ready_after = torchserve.started.elapsed();
    eprintln!("TorchServe answers after {torchserve_ready_after:.1?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let ours_idle_rss = ours.rss_mib()?;
    let (torchserve_idle_rss, torchserve_processes) = torchserve.rss_mib()?;

    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for scenario in &scenarios {
        let body = scratch.path().join("body.json");
        std::fs::write(&body, &scenario.body)?;
        let ours_url = format!("{}{}", ours.base(), scenario.ours);
        let torchserve_url = format!("{}{}", torchserve.base, scenario.torchserve_path());
        // A short run of each first: connections, caches, allocators and JIT warm up.
        oha.run(&torchserve_url, 4, 1.0, &body).await?;
        oha.run(&ours_url, 4, 1.0, &body).await?;
        for &concurrency in &args.concurrency {
            let theirs = oha
                .run(&torchserve_url, concurrency, args.secs, &body)
                .await?;
            let mine = oha.run(&ours_url, concurrency, args.secs, &body).await?;
            eprintln!(
                "{} c={concurrency}: ours {:.0} req/s p50 {:.2} ms, TorchServe {:.0} req/s p50 {:.2} ms",
                scenario.name,
                mine.requests_per_s,
                mine.p50_ms,
                theirs.requests_per_s,
                theirs.p50_ms
            );
            rows.push(Row {
                model: scenario.name,
                concurrency,
                ours: mine,
                torchserve: theirs,
            });
        }
    }
    drop(torchserve);
    ours.stop(Duration::from_secs(10)).await?;

    let report = Report {
        backend: args.backend.clone(),
        secs: args.secs,
        batch_size: BATCH_SIZE,
        max_batch_delay_ms: MAX_BATCH_DELAY_MS,
        workers: WORKERS,
        ours_start_to_ready_ms: ours_ready_after.as_secs_f64() * 1e3,
        torchserve_start_to_ready_ms: torchserve_ready_after.as_secs_f64() * 1e3,
        ours_idle_rss_mib: ours_idle_rss,
        torchserve_idle_rss_mib: torchserve_idle_rss,
        torchserve_processes,
        rows,
    };
    let markdown = render(&report);
    println!("{markdown}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("peers.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("peers.md"), markdown)?;
    eprintln!("wrote {}", args.out.join("peers.{json,md}").display());
    Ok(())
}

/// Packs one TorchScript file and its handler into `STORE/NAME.mar`.
async fn archive(
    archiver: &Path,
    store: &Path,
    name: &str,
    model: &Path,
    handler: &Path,
    extra: Option<&Path>,
) -> Result<()> {
    let mut command = tokio::process::Command::new(archiver);
    command
        .args([
            "--model-name",
            name,
            "--version",
            "1.0",
            "--serialized-file",
        ])
        .arg(model)
        .arg("--handler")
        .arg(handler)
        .arg("--export-path")
        .arg(store)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(extra) = extra {
        command.arg("--extra-files").arg(extra);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .context("torch-model-archiver ran for more than 120 s")?
        .with_context(|| format!("cannot run {}", archiver.display()))?;
    ensure!(
        output.status.success(),
        "torch-model-archiver failed for {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Waits until every `(url, body)` answers a POST with 200, calling `running` between tries
/// so that a server that died is reported at once.
async fn wait_answering(
    routes: &[(String, &[u8])],
    mut running: impl FnMut() -> Result<()>,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let deadline = Instant::now() + READY_WITHIN;
    for (url, body) in routes {
        loop {
            let answer = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await;
            if answer.is_ok_and(|answer| answer.status() == 200) {
                break;
            }
            running()?;
            ensure!(
                Instant::now() < deadline,
                "{url} did not answer 200 within {READY_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// TorchServe in the foreground, in a process group of its own so that one signal reaches
/// its launcher, Java frontend and Python workers; stopped when dropped.
struct TorchServe {
    child: std::process::Child,
    /// The group's id: the launcher's pid.
    pgid: u32,
    binary: PathBuf,
    /// Its TMPDIR (where its pid file goes) and working directory (its logs); dropped after
    /// the processes are gone.
    home: tempfile::TempDir,
    /// `http://127.0.0.1:port` of the inference API.
    base: String,
    started: Instant,
}

impl TorchServe {
    /// Writes `config.properties` for the archives in `home/store` and starts TorchServe.
    fn start(binary: &Path, home: tempfile::TempDir, scenarios: &[Scenario]) -> Result<Self> {
        // Inference, management, metrics and the two gRPC ports, all held until all are
        // chosen, so that they differ.
        let listeners = (0..5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<Result<Vec<_>>>()?;
        drop(listeners);
        let mut models = serde_json::Map::new();
        for scenario in scenarios {
            models.insert(
                scenario.name.into(),
                serde_json::json!({"1.0": {
                    "defaultVersion": true,
                    "marName": format!("{}.mar", scenario.name),
                    "minWorkers": WORKERS,
                    "maxWorkers": WORKERS,
                    "batchSize": BATCH_SIZE,
                    "maxBatchDelay": MAX_BATCH_DELAY_MS,
                    "responseTimeout": 120,
                }}),
            );
        }
        let archives: Vec<String> = scenarios
            .iter()
            .map(|s| format!("{}.mar", s.name))
            .collect();
        let config = format!(
            "inference_address=http://127.0.0.1:{}\n\
             management_address=http://127.0.0.1:{}\n\
             metrics_address=http://127.0.0.1:{}\n\
             grpc_inference_address=127.0.0.1\n\
             grpc_management_address=127.0.0.1\n\
             grpc_inference_port={}\n\
             grpc_management_port={}\n\
             model_store={}\n\
             load_models={}\n\
             default_workers_per_model={WORKERS}\n\
             disable_token_authorization=true\n\
             disable_system_metrics=true\n\
             models={}\n",
            ports[0],
            ports[1],
            ports[2],
            ports[3],
            ports[4],
            home.path().join("store").display(),
            archives.join(","),
            serde_json::Value::Object(models),
        );
        let config_file = home.path().join("config.properties");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(home.path().join("torchserve.log"))?;
        let started = Instant::now();
        let child = std::process::Command::new(binary)
            .args(["--start", "--foreground", "--ncs", "--disable-token-auth"])
            .arg("--model-store")
            .arg(home.path().join("store"))
            .arg("--ts-config")
            .arg(&config_file)
            .env("TMPDIR", home.path())
            .current_dir(home.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            pgid: child.id(),
            child,
            binary: binary.to_path_buf(),
            home,
            base: format!("http://127.0.0.1:{}", ports[0]),
            started,
        })
    }

    /// An error with the end of TorchServe's log if its launcher has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(self.home.path().join("torchserve.log"))?;
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("TorchServe exited ({status}):\n{}", tail.join("\n"));
        }
        Ok(())
    }

    /// Resident memory of the Java frontend and Python workers, in MiB, and their count
    /// (the launcher that waits in the foreground is left out: `torchserve --start`
    /// without `--foreground` would not keep it).
    fn rss_mib(&self) -> Result<(f64, usize)> {
        let members: Vec<u32> = group_members(self.pgid)
            .into_iter()
            .filter(|&pid| pid != self.pgid)
            .collect();
        let mut total = 0.0;
        for &pid in &members {
            total += rss_mib(pid)?;
        }
        Ok((total, members.len()))
    }
}

impl Drop for TorchServe {
    fn drop(&mut self) {
        // Lets the frontend stop its workers; the group is killed after, or if it hangs.
        let _ = std::process::Command::new(&self.binary)
            .arg("--stop")
            .env("TMPDIR", self.home.path())
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_WITHIN;
        while !group_members(self.pgid).is_empty() && Instant::now() < deadline {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        if !group_members(self.pgid).is_empty() {
            eprintln!("TorchServe did not stop within {STOP_WITHIN:?}: killing its group");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pgid)])
                .status();
        }
        let _ = self.child.wait();
    }
}

/// The live (not zombie) processes of process group `pgid`, from `/proc/PID/stat`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pgid = pgid.to_string();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name in parentheses (which may hold spaces): state, ppid,
            // pgrp.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.as_str())
        })
        .collect()
}

/// Resident memory of one process, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no VmRSS line in /proc/PID/status")?
        .parse()?;
    Ok(kib / 1024.0)
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ours (backend {}) beside TorchServe 0.12, {} s per cell; both: batch {}, {} ms delay, {} workers per model\n",
        report.backend, report.secs, report.batch_size, report.max_batch_delay_ms, report.workers
    );
    let _ = writeln!(
        out,
        "| model | conc. | ours req/s | TorchServe req/s | ours ÷ TorchServe | ours p50 ms | TorchServe p50 ms | ours p99 ms | TorchServe p99 ms | ours errors | TorchServe errors |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &report.rows {
        let (ours, theirs) = (&row.ours, &row.torchserve);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            row.model,
            row.concurrency,
            ours.requests_per_s,
            theirs.requests_per_s,
            ours.requests_per_s / theirs.requests_per_s,
            ours.p50_ms,
            theirs.p50_ms,
            ours.p99_ms,
            theirs.p99_ms,
            ours.errors,
            theirs.errors
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "start to ready (exec until every model answers): ours {:.0} ms, TorchServe {:.0} ms",
        report.ours_start_to_ready_ms, report.torchserve_start_to_ready_ms
    );
    let _ = writeln!(
        out,
        "idle RSS: ours {:.1} MiB, TorchServe {:.1} MiB ({} processes: Java frontend and Python workers)",
        report.ours_idle_rss_mib, report.torchserve_idle_rss_mib, report.torchserve_processes
    );
    out
}
