//! `cargo xtask check-ui`: the browser page (`GET /ui`) in Debian's headless Chromium,
//! driven through chromedriver by `clients/ui/check_ui.py` (selenium) against a server of
//! the whole repository; screenshots go to `target/ui/`.

use crate::clients::{ServerProcess, build_server, imports, run_client};
use crate::process::{self, Steps, workspace_root};
use crate::setup::{self, Pin};
use anyhow::{Result, ensure};
use std::path::PathBuf;
use std::process::Command;

const CHECK: &str = "clients/ui/check_ui.py";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// A picture of the ResNet-18 export's corpus, for the upload check.
const PICTURE: &str = "models/resnet18/images/gradient.png";

fn pins() -> [Pin; 2] {
    // pillow as the ResNet-18 export pins it, so neither replaces the other's.
    [Pin::new("selenium", "4.51.0"), Pin::new("pillow", "13.0.0")]
}

pub(crate) fn run() -> Result<()> {
    let root = workspace_root();
    let runtimes = setup::ensure_installed()?;
    let mut steps = Steps::new(5);
    steps.run(
        "install Debian's chromium and chromium-driver if missing",
        |bar| {
            process::ensure_debian_packages(
                &[CHROMIUM, CHROMEDRIVER],
                &["chromium", "chromium-driver"],
                bar,
            )
        },
    )?;
    steps.run(
        "install `selenium` and `pillow` into the setup venv if missing",
        |bar| {
            if imports(&runtimes.python, "selenium, PIL") {
                return Ok(());
            }
            setup::pip_install(&runtimes.python, &pins(), bar)
        },
    )?;
    let binary = steps.run("build the server", |_| build_server())?;
    let server = steps.run("start a server of the whole repository", |_| {
        ServerProcess::start(&binary, &root.join("models"), 0)
    })?;
    let out = target_dir().join("ui");
    steps.run("drive /ui in headless Chromium", |_| {
        let mut command = Command::new(&runtimes.python);
        command
            .arg(root.join(CHECK))
            .arg(&server.base_url)
            .arg(&out)
            .args([CHROMIUM, CHROMEDRIVER])
            .env("PYTHONIOENCODING", "utf-8");
        let picture = root.join(PICTURE);
        if picture.is_file() {
            command.arg(picture);
        }
        let output = run_client(&mut command)?;
        ensure!(
            output.contains("ui: every check passed"),
            "the browser check did not finish:\n{output}"
        );
        eprint!("{output}");
        Ok(())
    })?;
    eprintln!("screenshots in {}", out.display());
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
