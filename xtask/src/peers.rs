//! `cargo xtask bench peers`: installs TorchServe into the setup venv (and a JDK from
//! Debian's packages when no `java` is present), then runs the `bench_peers` example, which
//! serves the same TorchScript files on TorchServe and on our server under one oha load.

use crate::process::{Steps, run_streamed};
use crate::setup::{self, Pin, Runtimes};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Flags left unset take the example's defaults.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct PeersArgs {
    /// Seconds of load per cell [example default: 5].
    #[arg(long)]
    secs: Option<f64>,
    /// Comma-separated connection counts [example default: 1,16,32].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Folder for `peers.json` and `peers.md` [example default: target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// TorchServe 0.12 and its archiver, with the few packages they import that the venv
/// lacks (installed without dependencies so that the pinned torch stays).
fn torchserve_pins() -> Vec<Pin> {
    vec![
        Pin::new("torchserve", "0.12.0"),
        Pin::new("torch-model-archiver", "0.12.0"),
        Pin::new("psutil", "7.1.3"),
        Pin::new("packaging", "25.0"),
        Pin::new("pyyaml", "6.0.3"),
        Pin::new("wheel", "0.45.1"),
        Pin::new("enum-compat", "0.0.3"),
    ]
}

const TORCHSERVE_IMPORTS: &str = "import ts, model_archiver, psutil, yaml, PIL, torchvision";

pub(crate) fn run(args: &PeersArgs, oha: &std::path::Path) -> Result<()> {
    let runtimes = setup::ensure_installed()?;
    crate::export::ensure_resnet18(&runtimes)?;
    let mut steps = Steps::new(2);
    steps.run("install TorchServe into the setup venv if missing", |bar| {
        if crate::export::imports_work(&runtimes.python, TORCHSERVE_IMPORTS) {
            return Ok(());
        }
        run_streamed(
            &mut setup::pip_install_no_deps(&runtimes.python, &torchserve_pins()),
            bar,
        )
    })?;
    steps.run("install a JDK if no java is present", |bar| {
        if Command::new("java").arg("-version").output().is_ok() {
            return Ok(());
        }
        run_streamed(Command::new("apt-get").arg("update"), bar)?;
        run_streamed(
            Command::new("apt-get").args(["install", "-y", "openjdk-17-jre-headless"]),
            bar,
        )
    })?;
    crate::bench::build_release(&["bench_peers"], Some(&runtimes))?;
    crate::bench::run_example(
        "bench_peers",
        &forwarded(args, oha, &runtimes)?,
        Some(&runtimes),
    )
}

fn forwarded(args: &PeersArgs, oha: &std::path::Path, runtimes: &Runtimes) -> Result<Vec<String>> {
    let bin = runtimes
        .python
        .parent()
        .context("the venv's python has no folder")?;
    let mut forwarded = vec![
        "--oha".to_string(),
        oha.display().to_string(),
        "--torchserve".to_string(),
        bin.join("torchserve").display().to_string(),
        "--torch-model-archiver".to_string(),
        bin.join("torch-model-archiver").display().to_string(),
    ];
    if let Some(secs) = args.secs {
        forwarded.extend(["--secs".to_string(), secs.to_string()]);
    }
    if !args.concurrency.is_empty() {
        let counts: Vec<String> = args.concurrency.iter().map(usize::to_string).collect();
        forwarded.extend(["--concurrency".to_string(), counts.join(",")]);
    }
    if let Some(dir) = &args.out {
        let dir = std::path::absolute(dir)?;
        forwarded.extend(["--out".to_string(), dir.display().to_string()]);
    }
    Ok(forwarded)
}
