//! `cargo xtask bench <name>`: benchmarks, kept out of `cargo test` because they take
//! seconds per case and their numbers depend on the machine.

use crate::process::{display, workspace_root};
use anyhow::{Context, Result, bail};
use std::process::Command;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Requests/s and p50/p99 latency of POST /predict with the scheduler merging rows
    /// into one forward pass versus one row per pass (release build, candle backend).
    Batching(BatchingArgs),
    /// In-process forward passes per second of one model (default: ResNet-18, exported
    /// when missing) on every backend, per batch size (release build, all backends).
    Engines(EnginesArgs),
    /// Requests/s and p50/p99 of the served routes under `oha` at several concurrencies,
    /// each beside a bare axum floor measured moments apart; start to ready and idle RSS.
    Http(HttpArgs),
    /// Our server beside TorchServe 0.12 (installed into the setup venv) on the same
    /// TorchScript files, under the same oha load, alternating; start to ready, idle RSS.
    Peers(crate::peers::PeersArgs),
    /// Requests/s answered 200 by POST /predict under open-loop load at 0.5x, 1x, 2x and
    /// 4x the measured closed-loop capacity (release build of the server binary).
    Goodput(GoodputArgs),
}

/// Flags left unset take the example's defaults.
#[derive(Debug, Default, clap::Args)]
struct HttpArgs {
    /// Seconds of load per cell [example default: 5].
    #[arg(long)]
    secs: Option<f64>,
    /// Turns per cell of the server, the floor and the baseline [example default: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Comma-separated connection counts [example default: 1,16,32,64].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Backend of the served models; ort and tch build the server with every backend
    /// [example default: candle].
    #[arg(long)]
    backend: Option<String>,
    /// Folder for `http.json`, `http.md` and `http.svg` [example default: target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Another build of the server, measured in every cell beside this one (before and
    /// after a change, in one run).
    #[arg(long, value_name = "BINARY")]
    baseline: Option<std::path::PathBuf>,
}

impl HttpArgs {
    fn forwarded(&self, oha: &std::path::Path) -> Result<Vec<String>> {
        let mut args = vec!["--oha".to_string(), oha.display().to_string()];
        if let Some(secs) = self.secs {
            args.extend(["--secs".to_string(), secs.to_string()]);
        }
        if let Some(rounds) = self.rounds {
            args.extend(["--rounds".to_string(), rounds.to_string()]);
        }
        if !self.concurrency.is_empty() {
            let counts: Vec<String> = self.concurrency.iter().map(usize::to_string).collect();
            args.extend(["--concurrency".to_string(), counts.join(",")]);
        }
        if let Some(backend) = &self.backend {
            args.extend(["--backend".to_string(), backend.clone()]);
        }
        if let Some(dir) = &self.out {
            let dir = std::path::absolute(dir)?;
            args.extend(["--out".to_string(), dir.display().to_string()]);
        }
        if let Some(binary) = &self.baseline {
            let binary = std::path::absolute(binary)?;
            args.extend(["--baseline".to_string(), binary.display().to_string()]);
        }
        Ok(args)
    }

    /// Whether the server needs the libtorch and ONNX Runtime backends compiled in.
    fn needs_runtimes(&self) -> bool {
        self.backend.as_deref().is_some_and(|b| b != "candle")
    }
}

/// Flags left unset take the example's defaults.
#[derive(Debug, Default, clap::Args)]
struct GoodputArgs {
    /// Seconds of open-loop load per level [example default: 10].
    #[arg(long)]
    secs: Option<f64>,
    /// Keep-alive connections of the open-loop generator [example default: 2000].
    #[arg(long)]
    connections: Option<usize>,
    /// Folder to write `goodput.json` to.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
}

impl GoodputArgs {
    fn forwarded(&self) -> Result<Vec<String>> {
        let mut args = Vec::new();
        if let Some(secs) = self.secs {
            args.extend(["--secs".to_string(), secs.to_string()]);
        }
        if let Some(connections) = self.connections {
            args.extend(["--connections".to_string(), connections.to_string()]);
        }
        if let Some(dir) = &self.out {
            // The example runs from the workspace root, not from where xtask was called.
            let dir = std::path::absolute(dir)?;
            args.extend(["--out".to_string(), dir.display().to_string()]);
        }
        Ok(args)
    }
}

/// Flags left unset take the example's defaults.
#[derive(Debug, Default, clap::Args)]
struct EnginesArgs {
    /// The model repository [example default: models/ of this checkout].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<std::path::PathBuf>,
    /// Comma-separated model folders of the repository [example default: example,resnet18;
    /// resnet18 is exported first when the default repository is used].
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Comma-separated batch sizes for every model [example default: 1,8,32,64; resnet18:
    /// 1,8,32].
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Comma-separated intra-op thread counts [example default: 1 and all cores].
    #[arg(long, value_delimiter = ',')]
    intra_op_threads: Vec<usize>,
    /// Seconds of measured passes per cell, warmup excluded [example default: 1].
    #[arg(long)]
    seconds: Option<f64>,
    /// Measured passes per cell at the most [example default: 1000].
    #[arg(long)]
    max_passes: Option<usize>,
    /// Folder for `engines.json`, `engines.md` and `engines.svg` [example default:
    /// target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
}

impl EnginesArgs {
    fn forwarded(&self) -> Result<Vec<String>> {
        let mut args = Vec::new();
        let list = |values: &[usize]| {
            let values: Vec<String> = values.iter().map(usize::to_string).collect();
            values.join(",")
        };
        // The example runs from the workspace root, not from where xtask was called.
        if let Some(dir) = &self.model_dir {
            let dir = std::path::absolute(dir)?;
            args.extend(["--model-dir".to_string(), dir.display().to_string()]);
        }
        if !self.models.is_empty() {
            args.extend(["--models".to_string(), self.models.join(",")]);
        }
        if !self.batch_sizes.is_empty() {
            args.extend(["--batch-sizes".to_string(), list(&self.batch_sizes)]);
        }
        if !self.intra_op_threads.is_empty() {
            args.extend([
                "--intra-op-threads".to_string(),
                list(&self.intra_op_threads),
            ]);
        }
        if let Some(seconds) = self.seconds {
            args.extend(["--seconds".to_string(), seconds.to_string()]);
        }
        if let Some(passes) = self.max_passes {
            args.extend(["--max-passes".to_string(), passes.to_string()]);
        }
        if let Some(dir) = &self.out {
            let dir = std::path::absolute(dir)?;
            args.extend(["--out".to_string(), dir.display().to_string()]);
        }
        Ok(args)
    }

    /// Whether the run includes the repository's ResNet-18, which is then exported first.
    fn wants_resnet18(&self) -> bool {
        self.model_dir.is_none()
            && (self.models.is_empty() || self.models.iter().any(|m| m == "resnet18"))
    }
}

/// Flags left unset take the example's defaults, so they are written down in one place.
#[derive(Debug, Default, clap::Args)]
struct BatchingArgs {
    /// Seconds measured per cell [example default: 3].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before measuring [example default: 0.5].
    #[arg(long)]
    warmup: Option<f64>,
    /// Comma-separated client counts [example default: 1,16,64].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Engine workers, each with its own model instance [example default: 1].
    #[arg(long)]
    instances: Option<usize>,
    /// Most rows per forward pass when merging [example default: 32, the server's].
    #[arg(long)]
    max_batch_size: Option<usize>,
}

impl BatchingArgs {
    /// The example's command line: only the flags that were given.
    fn forwarded(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                args.extend([format!("--{name}"), value]);
            }
        };
        flag("duration", self.duration.map(|v| v.to_string()));
        flag("warmup", self.warmup.map(|v| v.to_string()));
        let concurrency: Vec<String> = self.concurrency.iter().map(usize::to_string).collect();
        flag(
            "concurrency",
            (!concurrency.is_empty()).then(|| concurrency.join(",")),
        );
        flag("instances", self.instances.map(|v| v.to_string()));
        flag("max-batch-size", self.max_batch_size.map(|v| v.to_string()));
        args
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Batching(batching) => run_example("bench_batching", &batching.forwarded(), None),
        Bench::Engines(engines) => {
            let runtimes = crate::setup::ensure_installed()?;
            if engines.wants_resnet18() {
                crate::export::ensure_resnet18(&runtimes)?;
            }
            run_example("bench_engines", &engines.forwarded()?, Some(&runtimes))
        }
        Bench::Http(http) => {
            // ResNet-18 is exported with the managed Python environment whatever the backend.
            let runtimes = crate::setup::ensure_installed()?;
            crate::export::ensure_resnet18(&runtimes)?;
            let linked = http.needs_runtimes().then_some(&runtimes);
            let oha = ensure_oha()?;
            build_release(&["bench_http", "http_floor"], linked)?;
            run_example("bench_http", &http.forwarded(&oha)?, linked)
        }
        Bench::Peers(peers) => crate::peers::run(peers, &ensure_oha()?),
        Bench::Goodput(goodput) => {
            build_release_server("bench_goodput")?;
            run_example("bench_goodput", &goodput.forwarded()?, None)
        }
    }
}

/// Builds the release `inference-server` binary that a load example starts as a child
/// process (it finds the binary next to its own folder), in one invocation with the
/// example: both then share one feature set, and `run_example` has nothing left to build.
pub(crate) fn build_release_server(example: &str) -> Result<()> {
    build_release(&[example], None)
}

/// Builds the release server binary and `examples` in one invocation (one feature set);
/// with `runtimes`, every backend is compiled in.
pub(crate) fn build_release(
    examples: &[&str],
    runtimes: Option<&crate::setup::Runtimes>,
) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "-p", "inference-server"])
        .args(["--bin", "inference-server"]);
    for example in examples {
        command.args(["--example", example]);
    }
    if let Some(runtimes) = runtimes {
        command.args(["--features", "ort,tch"]);
        command.envs(runtimes.build_env());
    }
    command.current_dir(workspace_root());
    run_to_end(&mut command)
}

/// The `oha` load generator: on the `PATH`, else in cargo's bin folder, else installed
/// from crates.io (a few minutes, once).
pub(crate) fn ensure_oha() -> Result<std::path::PathBuf> {
    let found = |path: &std::path::Path| {
        Command::new(path)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let on_path = std::path::PathBuf::from("oha");
    if found(&on_path) {
        return Ok(on_path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let installed = cargo_home.join("bin/oha");
    if !found(&installed) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run_to_end(Command::new(cargo).args([
            "install",
            "oha",
            "--version",
            OHA_VERSION,
            "--locked",
        ]))?;
    }
    Ok(installed)
}

/// The load generator's version, pinned so that figures from different days compare.
const OHA_VERSION: &str = "1.16.0";

/// Builds and runs a server example in release mode, its output straight to the terminal;
/// with `runtimes`, every backend is compiled in.
pub(crate) fn run_example(
    example: &str,
    args: &[String],
    runtimes: Option<&crate::setup::Runtimes>,
) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["run", "--release", "-p", "inference-server"]);
    if let Some(runtimes) = runtimes {
        command.args(["--features", "ort,tch"]);
        command.envs(runtimes.build_env());
    }
    command
        .args(["--example", example, "--"])
        .args(args)
        .current_dir(workspace_root());
    // candle counts the cores anew on every matmul unless this is set; the server binary
    // sets it at start, so in-process figures are taken the same way.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        command.env("RAYON_NUM_THREADS", cores.to_string());
    }
    run_to_end(&mut command)
}

/// Runs `command` with its output straight to the terminal; fails on a non-zero exit.
fn run_to_end(command: &mut Command) -> Result<()> {
    let line = display(command);
    eprintln!("==> {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_are_left_to_the_example() {
        assert!(BatchingArgs::default().forwarded().is_empty());
        assert!(EnginesArgs::default().forwarded().unwrap().is_empty());
        assert!(GoodputArgs::default().forwarded().unwrap().is_empty());
    }

    #[test]
    fn http_flags_are_forwarded_after_the_oha_binary() {
        let oha = std::path::Path::new("/opt/oha");
        assert_eq!(
            HttpArgs::default().forwarded(oha).unwrap(),
            ["--oha", "/opt/oha"]
        );
        let args = HttpArgs {
            secs: Some(6.0),
            rounds: Some(2),
            concurrency: vec![1, 32],
            ..HttpArgs::default()
        };
        assert_eq!(
            args.forwarded(oha).unwrap(),
            [
                "--oha",
                "/opt/oha",
                "--secs",
                "6",
                "--rounds",
                "2",
                "--concurrency",
                "1,32"
            ]
        );
    }

    #[test]
    fn goodput_flags_are_forwarded_with_an_absolute_out_dir() {
        let args = GoodputArgs {
            secs: Some(2.5),
            connections: Some(100),
            out: Some("results".into()),
        };
        let forwarded = args.forwarded().unwrap();
        assert_eq!(
            forwarded[..5],
            ["--secs", "2.5", "--connections", "100", "--out"]
        );
        assert!(
            std::path::Path::new(&forwarded[5]).is_absolute(),
            "{forwarded:?}"
        );
    }

    #[test]
    fn engine_flags_are_forwarded_with_absolute_folders() {
        let args = EnginesArgs {
            model_dir: Some("repo".into()),
            models: vec!["example".into(), "resnet18".into()],
            batch_sizes: vec![1, 4],
            intra_op_threads: vec![1, 2],
            seconds: Some(0.5),
            max_passes: Some(50),
            out: Some("results".into()),
        };
        let forwarded = args.forwarded().unwrap();
        assert_eq!(forwarded[0], "--model-dir");
        assert_eq!(
            forwarded[2..13],
            [
                "--models",
                "example,resnet18",
                "--batch-sizes",
                "1,4",
                "--intra-op-threads",
                "1,2",
                "--seconds",
                "0.5",
                "--max-passes",
                "50",
                "--out"
            ]
        );
        for dir in [&forwarded[1], &forwarded[13]] {
            assert!(std::path::Path::new(dir).is_absolute(), "{forwarded:?}");
        }
        assert_eq!(forwarded.len(), 14);
    }

    #[test]
    fn engines_export_resnet18_only_for_the_default_repository() {
        assert!(EnginesArgs::default().wants_resnet18());
        let example_only = EnginesArgs {
            models: vec!["example".into()],
            ..EnginesArgs::default()
        };
        assert!(!example_only.wants_resnet18());
        let elsewhere = EnginesArgs {
            model_dir: Some("repo".into()),
            ..EnginesArgs::default()
        };
        assert!(!elsewhere.wants_resnet18());
    }

    #[test]
    fn given_flags_are_forwarded_with_their_values() {
        let args = BatchingArgs {
            duration: Some(1.5),
            concurrency: vec![2, 8],
            instances: Some(2),
            ..BatchingArgs::default()
        };
        assert_eq!(
            args.forwarded(),
            [
                "--duration",
                "1.5",
                "--concurrency",
                "2,8",
                "--instances",
                "2"
            ]
        );
    }
}
