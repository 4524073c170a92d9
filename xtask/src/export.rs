//! `cargo xtask export-models`: regenerates the example model files with the setup venv.

use crate::process::{Steps, run_streamed, workspace_root};
use crate::setup::{self, Pin};
use anyhow::{Result, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The exporter, relative to the workspace root; it writes next to itself by default.
const EXPORT_SCRIPT: &str = "models/example/export.py";

/// Imports that only exporting needs, so `setup` leaves them out of the serving runtimes.
const EXPORT_IMPORTS: &str = "import numpy, onnx, safetensors";

fn export_pins() -> Vec<Pin> {
    vec![Pin::new("onnx", "1.23.2"), Pin::new("safetensors", "0.8.0")]
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Where to write the files instead of next to the script (e.g. to compare a rerun).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub(crate) fn run(args: &ExportArgs) -> Result<()> {
    let script = workspace_root().join(EXPORT_SCRIPT);
    ensure!(script.is_file(), "{} does not exist", script.display());
    let runtimes = setup::ensure_installed()?;
    let mut steps = Steps::new(2);
    steps.run("install the export packages if missing", |bar| {
        if imports_work(&runtimes.python) {
            return Ok(());
        }
        setup::pip_install(&runtimes.python, &export_pins(), bar)
    })?;
    steps.run("run the exporter", |bar| {
        let mut command = Command::new(&runtimes.python);
        command
            .arg(&script)
            .args(&args.out_dir)
            .current_dir(workspace_root());
        run_streamed(&mut command, bar)
    })
}

fn imports_work(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", EXPORT_IMPORTS])
        .output()
        .is_ok_and(|output| output.status.success())
}
