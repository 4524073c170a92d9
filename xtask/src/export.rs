//! `cargo xtask export-models`: regenerates the example model files with the setup venv;
//! with `--resnet18`, generates the ResNet-18 model directory instead.

use crate::process::{Steps, format_duration, run_streamed, workspace_root};
use crate::setup::{self, Pin, Runtimes};
use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The exporter, relative to the workspace root; it writes next to itself by default.
const EXPORT_SCRIPT: &str = "models/example/export.py";
/// The ResNet-18 exporter; it writes to [`RESNET18_DIR`] by default.
const RESNET18_SCRIPT: &str = "scripts/export_resnet18.py";
/// Where the ResNet-18 export goes, relative to the workspace root (git-ignored: too big).
pub(crate) const RESNET18_DIR: &str = "models/resnet18";

/// Imports that only exporting needs, so `setup` leaves them out of the serving runtimes.
const EXPORT_IMPORTS: &str = "import numpy, onnx, safetensors";
/// Imports that only the ResNet-18 exporter needs on top of [`EXPORT_IMPORTS`].
const RESNET18_IMPORTS: &str = "import PIL, torchvision";

fn export_pins() -> Vec<Pin> {
    vec![Pin::new("onnx", "1.23.2"), Pin::new("safetensors", "0.8.0")]
}

/// torchvision 0.28 is the release built against torch 2.13.0; both are installed without
/// dependencies so that nothing can replace the torch that `setup` pinned.
fn resnet18_pins() -> Vec<Pin> {
    vec![
        Pin::new("torchvision", "0.28.0"),
        Pin::new("pillow", "13.0.0"),
    ]
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Where to write the files instead of the default folder (e.g. to compare a rerun).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Exports torchvision's ResNet-18 (seeded random weights) to `models/resnet18/`
    /// instead of the example model.
    #[arg(long)]
    resnet18: bool,
}

pub(crate) fn run(args: &ExportArgs) -> Result<()> {
    let runtimes = setup::ensure_installed()?;
    export(args, &runtimes)
}

/// Writes the ResNet-18 model folder to [`RESNET18_DIR`] with already installed runtimes.
pub(crate) fn export_resnet18(runtimes: &Runtimes) -> Result<()> {
    let args = ExportArgs {
        out_dir: None,
        resnet18: true,
    };
    export(&args, runtimes)
}

fn export(args: &ExportArgs, runtimes: &Runtimes) -> Result<()> {
    let script_path = if args.resnet18 {
        RESNET18_SCRIPT
    } else {
        EXPORT_SCRIPT
    };
    let script = workspace_root().join(script_path);
    ensure!(script.is_file(), "{} does not exist", script.display());
    let mut steps = Steps::new(if args.resnet18 { 3 } else { 2 });
    steps.run("install the export packages if missing", |bar| {
        if imports_work(&runtimes.python, EXPORT_IMPORTS) {
            return Ok(());
        }
        setup::pip_install(&runtimes.python, &export_pins(), bar)
    })?;
    if args.resnet18 {
        steps.run("install torchvision and pillow if missing", |bar| {
            if imports_work(&runtimes.python, RESNET18_IMPORTS) {
                return Ok(());
            }
            run_streamed(
                &mut setup::pip_install_no_deps(&runtimes.python, &resnet18_pins()),
                bar,
            )
        })?;
    }
    steps.run("run the exporter", |bar| {
        let mut command = Command::new(&runtimes.python);
        command
            .arg(&script)
            .args(&args.out_dir)
            .current_dir(workspace_root());
        run_streamed(&mut command, bar)
    })
}

pub(crate) fn imports_work(python: &Path, imports: &str) -> bool {
    Command::new(python)
        .args(["-c", imports])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Exports ResNet-18 when its folder has no `model.toml`: the full run's tests need it
/// (`REQUIRE_RESNET18`), and an existing export is kept, as exporting takes minutes.
pub(crate) fn ensure_resnet18(runtimes: &Runtimes) -> Result<()> {
    let manifest = workspace_root().join(RESNET18_DIR).join("model.toml");
    if manifest.is_file() {
        return Ok(());
    }
    eprintln!("==> export: {} is missing", manifest.display());
    let started = Instant::now();
    export_resnet18(runtimes).context("step `export ResNet-18` failed")?;
    eprintln!("<== export done in {}", format_duration(started.elapsed()));
    Ok(())
}
