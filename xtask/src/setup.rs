//! `cargo xtask setup`: installs the libtorch and ONNX Runtime libraries from PyPI into a
//! Python venv in a cache outside the repo, so that neither build ever downloads anything.

use crate::process::{Steps, capture, run_streamed};
use anyhow::{Context, Result, bail, ensure};
use indicatif::ProgressBar;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyTorch release that `tch` 0.26 is built against.
const TORCH_VERSION: &str = "2.13.0";
/// The ONNX Runtime release that the `ort` backend loads at run time (and, as
/// `onnxruntime-gpu`, the one gpu-check installs).
pub(crate) const ORT_VERSION: &str = "1.31.1";
/// Overrides the cache directory (default `~/.cache/inference-server`).
const RUNTIME_DIR_VAR: &str = "INFERENCE_RUNTIME_DIR";
/// Written last, so its presence means the install completed.
const STAMP_FILE: &str = "setup.stamp";
const STAMP_HEADER: &str =
    "# written by `cargo xtask setup`; delete this file to force a reinstall";

/// Prints each pinned package's installed version, in the stamp's `name==version` format,
/// after importing it so a broken install fails here rather than in a build.
const VERIFY_SCRIPT: &str = "\
import importlib.metadata as metadata
import onnxruntime, torch
for name in ('torch', 'onnxruntime'):
    print(f'{name}=={metadata.version(name)}')
";

/// One exactly pinned Python package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pin {
    name: String,
    version: String,
}

impl Pin {
    pub(crate) fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }

    fn parse(line: &str) -> Result<Self> {
        let (name, version) = line
            .split_once("==")
            .with_context(|| format!("expected `name==version`, got `{line}`"))?;
        let (name, version) = (name.trim(), version.trim());
        ensure!(
            !name.is_empty() && !version.is_empty(),
            "expected `name==version`, got `{line}`"
        );
        Ok(Self::new(name, version))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=={}", self.name, self.version)
    }
}

fn runtime_pins() -> Vec<Pin> {
    vec![
        Pin::new("torch", TORCH_VERSION),
        Pin::new("onnxruntime", ORT_VERSION),
    ]
}

/// Reads `name==version` lines, skipping blank lines and `#` comments.
fn parse_pins(text: &str) -> Result<Vec<Pin>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(Pin::parse)
        .collect()
}

fn render_stamp(pins: &[Pin]) -> String {
    let lines: Vec<String> = pins.iter().map(Pin::to_string).collect();
    format!("{STAMP_HEADER}\n{}\n", lines.join("\n"))
}

/// Whether two pin lists name the same packages at the same versions, in any order.
fn same_pins(left: &[Pin], right: &[Pin]) -> bool {
    let (mut left, mut right) = (left.to_vec(), right.to_vec());
    left.sort();
    right.sort();
    left == right
}

fn stamp_is_current(stamp: &str) -> bool {
    parse_pins(stamp).is_ok_and(|pins| same_pins(&pins, &runtime_pins()))
}

/// Where the installed runtimes live; found on disk without starting Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Runtimes {
    /// The venv's interpreter.
    pub(crate) python: PathBuf,
    /// `<site-packages>/torch`, which holds `include/` and `lib/`: what `LIBTORCH` expects.
    pub(crate) libtorch: PathBuf,
    /// The ONNX Runtime shared library that `ORT_DYLIB_PATH` names.
    pub(crate) ort_dylib: PathBuf,
}

impl Runtimes {
    /// Finds the runtimes inside `venv` and checks that their key files exist.
    pub(crate) fn discover(venv: &Path) -> Result<Self> {
        let python = venv.join("bin").join("python");
        ensure!(python.is_file(), "no Python at {}", python.display());
        let site_packages = site_packages(venv)?;
        let runtimes = Self {
            python,
            libtorch: site_packages.join("torch"),
            ort_dylib: site_packages
                .join("onnxruntime")
                .join("capi")
                .join(format!("libonnxruntime.so.{ORT_VERSION}")),
        };
        runtimes.check_key_files()?;
        Ok(runtimes)
    }

    /// The directory holding `libtorch*.so`, which binaries find through their rpath.
    pub(crate) fn torch_lib_dir(&self) -> PathBuf {
        self.libtorch.join("lib")
    }

    /// The variables that let `tch` and `ort` build and load against these runtimes.
    pub(crate) fn build_env(&self) -> [(&'static str, &Path); 2] {
        [
            ("LIBTORCH", self.libtorch.as_path()),
            ("ORT_DYLIB_PATH", self.ort_dylib.as_path()),
        ]
    }

    fn check_key_files(&self) -> Result<()> {
        let key_files = [
            self.libtorch.join("include").join("torch"),
            self.torch_lib_dir().join("libtorch_cpu.so"),
            self.ort_dylib.clone(),
        ];
        match key_files.iter().find(|path| !path.exists()) {
            Some(missing) => bail!("missing {}", missing.display()),
            None => Ok(()),
        }
    }
}

/// The venv's `lib/python3.X/site-packages` that holds torch.
fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    let mut candidates: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("python"))
        })
        .map(|path| path.join("site-packages"))
        .filter(|path| path.join("torch").is_dir())
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!("no site-packages with torch under {}", lib.display()),
        several => bail!("several site-packages with torch: {several:?}"),
    }
}

/// The cache directory: `$INFERENCE_RUNTIME_DIR`, else `~/.cache/inference-server`.
fn runtime_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_VAR).filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .with_context(|| format!("neither {RUNTIME_DIR_VAR} nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache").join("inference-server"))
}

/// The runtimes of a completed install, or `None` if setup has to run.
fn completed_install(dir: &Path) -> Option<Runtimes> {
    let stamp = fs::read_to_string(dir.join(STAMP_FILE)).ok()?;
    if !stamp_is_current(&stamp) {
        return None;
    }
    Runtimes::discover(&dir.join("venv")).ok()
}

/// `cargo xtask setup`: installs if needed, then prints where everything is.
pub(crate) fn run() -> Result<Runtimes> {
    let runtimes = ensure_installed()?;
    println!("python          {}", runtimes.python.display());
    println!("LIBTORCH        {}", runtimes.libtorch.display());
    println!("torch lib dir   {}", runtimes.torch_lib_dir().display());
    println!("ORT_DYLIB_PATH  {}", runtimes.ort_dylib.display());
    Ok(runtimes)
}

/// Returns at once when the stamp matches and the key files exist, else installs.
pub(crate) fn ensure_installed() -> Result<Runtimes> {
    let dir = runtime_dir()?;
    if let Some(runtimes) = completed_install(&dir) {
        eprintln!("runtimes up to date in {}", dir.display());
        return Ok(runtimes);
    }
    eprintln!("installing runtimes into {}", dir.display());
    install(&dir).with_context(|| format!("setting up runtimes in {} failed", dir.display()))
}

/// The runtimes of a completed install; never installs anything.
pub(crate) fn installed() -> Result<Runtimes> {
    let dir = runtime_dir()?;
    completed_install(&dir).with_context(|| {
        format!(
            "no completed runtime install in {}: run `cargo xtask setup`",
            dir.display()
        )
    })
}

fn install(dir: &Path) -> Result<Runtimes> {
    let venv = dir.join("venv");
    let pins = runtime_pins();
    let mut steps = Steps::new(4);
    let python = steps.run("create the venv if missing", |_| create_venv(&venv))?;
    steps.run("pip install torch and onnxruntime", |bar| {
        pip_install(&python, &pins, bar)
    })?;
    let installed = steps.run("verify the imports", |_| verify(&python, &pins))?;
    steps.run("find the libraries and write the stamp", |_| {
        let runtimes = Runtimes::discover(&venv)?;
        let stamp = dir.join(STAMP_FILE);
        fs::write(&stamp, render_stamp(&installed))
            .with_context(|| format!("cannot write {}", stamp.display()))?;
        Ok(runtimes)
    })
}

/// Creates the venv unless a usable one exists (e.g. one installed by hand); returns its Python.
fn create_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin").join("python");
    if python.is_file() {
        return Ok(python);
    }
    fs::create_dir_all(venv).with_context(|| format!("cannot create {}", venv.display()))?;
    capture(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    Ok(python)
}

/// Installs `pins` with the venv's pip, streaming pip's output; a no-op if already satisfied.
pub(crate) fn pip_install(python: &Path, pins: &[Pin], bar: &ProgressBar) -> Result<()> {
    let mut command = Command::new(python);
    command
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args(pins.iter().map(Pin::to_string));
    run_streamed(&mut command, bar)
}

/// `pip install --no-deps --target DIR PINS`: packages unpacked into a folder of their own,
/// exactly at the pinned versions (no dependency may pull a newer release in).
pub(crate) fn pip_install_into(python: &Path, dir: &Path, pins: &[Pin]) -> Command {
    let mut command = pip_install_no_deps(python, pins);
    command.arg("--target").arg(dir);
    command
}

/// `pip install --no-deps PINS` into the venv itself: exactly the pinned versions, so no
/// dependency can replace the pinned torch.
pub(crate) fn pip_install_no_deps(python: &Path, pins: &[Pin]) -> Command {
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .args(pins.iter().map(Pin::to_string));
    command
}

/// Imports the packages and returns their installed versions, which must equal `pins`.
fn verify(python: &Path, pins: &[Pin]) -> Result<Vec<Pin>> {
    let printed = capture(Command::new(python).args(["-c", VERIFY_SCRIPT]))?;
    let installed = parse_pins(&printed).context("unexpected output from the import check")?;
    ensure!(
        same_pins(&installed, pins),
        "installed {installed:?}, but setup pins {pins:?}"
    );
    Ok(installed)
}

/// `cargo xtask env`: `export` lines for a shell, e.g. `eval "$(cargo xtask env)"`.
pub(crate) fn print_env() -> Result<()> {
    let runtimes = installed()?;
    for (name, value) in runtimes.build_env() {
        println!("export {name}={}", shell_quote(&value.to_string_lossy()));
    }
    Ok(())
}

/// Single-quotes `value` for POSIX shells.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// Lays out the files that `Runtimes::discover` looks for, as pip would.
    fn fake_venv(python_dir: &str) -> TempDir {
        let root = tempfile::tempdir().unwrap();
        lay_out_venv(root.path(), python_dir);
        root
    }

    fn lay_out_venv(venv: &Path, python_dir: &str) {
        let site = venv.join("lib").join(python_dir).join("site-packages");
        let files = [
            venv.join("bin/python"),
            site.join("torch/lib/libtorch_cpu.so"),
            site.join(format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}")),
        ];
        for file in files {
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, b"").unwrap();
        }
        fs::create_dir_all(site.join("torch/include/torch")).unwrap();
    }

    fn stamp_text() -> String {
        render_stamp(&runtime_pins())
    }

    #[test]
    fn rendered_stamp_parses_back_to_the_pins() {
        assert_eq!(parse_pins(&stamp_text()).unwrap(), runtime_pins());
        assert!(stamp_is_current(&stamp_text()));
    }

    #[test]
    fn stamp_order_and_blank_lines_do_not_matter() {
        let stamp = format!("\n  onnxruntime=={ORT_VERSION}\n\ntorch == {TORCH_VERSION}\n");
        assert!(stamp_is_current(&stamp));
    }

    #[test]
    fn stamp_with_another_version_is_stale() {
        let stamp = format!("torch==2.12.0\nonnxruntime=={ORT_VERSION}\n");
        assert!(!stamp_is_current(&stamp));
    }

    #[test]
    fn stamp_missing_a_package_is_stale() {
        assert!(!stamp_is_current(&format!("torch=={TORCH_VERSION}\n")));
        assert!(!stamp_is_current(""));
    }

    #[test]
    fn malformed_stamp_line_is_an_error() {
        let error = parse_pins("torch 2.13.0").unwrap_err().to_string();
        assert!(error.contains("torch 2.13.0"), "{error}");
        assert!(parse_pins("==2.13.0").is_err());
        assert!(!stamp_is_current("torch 2.13.0\nonnxruntime 1.31.1"));
    }

    #[test]
    fn discover_finds_the_libraries_in_site_packages() {
        let venv = fake_venv("python3.11");
        let runtimes = Runtimes::discover(venv.path()).unwrap();
        let site = venv.path().join("lib/python3.11/site-packages");
        assert_eq!(runtimes.python, venv.path().join("bin/python"));
        assert_eq!(runtimes.libtorch, site.join("torch"));
        assert_eq!(runtimes.torch_lib_dir(), site.join("torch/lib"));
        assert_eq!(
            runtimes.ort_dylib,
            site.join(format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"))
        );
        let env: Vec<&str> = runtimes.build_env().iter().map(|(name, _)| *name).collect();
        assert_eq!(env, ["LIBTORCH", "ORT_DYLIB_PATH"]);
    }

    #[test]
    fn discover_ignores_site_packages_without_torch() {
        let venv = fake_venv("python3.12");
        fs::create_dir_all(venv.path().join("lib/python3.9/site-packages")).unwrap();
        assert!(Runtimes::discover(venv.path()).is_ok());
    }

    #[test]
    fn discover_reports_a_missing_key_file() {
        let venv = fake_venv("python3.11");
        let dylib = format!(
            "lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"
        );
        fs::remove_file(venv.path().join(dylib)).unwrap();
        let error = Runtimes::discover(venv.path()).unwrap_err().to_string();
        assert!(error.contains("libonnxruntime.so"), "{error}");
    }

    #[test]
    fn discover_fails_without_a_venv() {
        let empty = tempfile::tempdir().unwrap();
        assert!(Runtimes::discover(empty.path()).is_err());
    }

    #[test]
    fn completed_install_needs_both_stamp_and_files() {
        let dir = tempfile::tempdir().unwrap();
        lay_out_venv(&dir.path().join("venv"), "python3.11");
        assert!(completed_install(dir.path()).is_none(), "no stamp yet");
        fs::write(dir.path().join(STAMP_FILE), stamp_text()).unwrap();
        assert!(completed_install(dir.path()).is_some());
        fs::remove_dir_all(dir.path().join("venv/lib")).unwrap();
        assert!(completed_install(dir.path()).is_none(), "files gone");
    }

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
