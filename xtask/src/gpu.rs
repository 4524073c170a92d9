//! `cargo xtask gpu-check`: runs every backend's conformance suite on a CUDA GPU and prints
//! the per-batch timings that the suite measures.
//!
//! For each of tch, ort and candle it runs, with `CONFORMANCE_DEVICE=cuda`,
//! `cargo test --release -p inference-backend-<name> --features cuda --test conformance
//! -- --nocapture --test-threads 1`, goes on past a failing backend, and ends with one table.
//! What the CUDA builds need beyond `cargo xtask setup`:
//! - candle compiles its kernels with nvcc: the PyPI toolkit of `cargo xtask check-cuda`.
//! - candle links `-lcuda -lcublas -lcublasLt -lcurand -lnvrtc -lcudart`, but the PyPI wheels
//!   ship only versioned files (`libcublas.so.13`): a directory of unversioned links to the
//!   setup venv's CUDA libraries and the driver's `libcuda.so.1` is put on the link path
//!   through `CUDA_ROOT` (cudarc searches `$CUDA_ROOT/lib`; candle's kernel builder ignores it).
//! - ONNX Runtime's CUDA execution provider is only in the `onnxruntime-gpu` wheel, installed
//!   with `--no-deps` into its own directory; its provider library finds cuBLAS and cuDNN
//!   (not on any rpath) through `LD_LIBRARY_PATH` pointing at the setup venv's NVIDIA wheels.
//!
//! Everything builds into `target/gpu-check`, so the main build is untouched. Without
//! `nvidia-smi` it stops at once; `--dry-run` prints the plan instead.

use crate::cuda::{self, Toolkit};
use crate::process::{
    Steps, capture, display, format_duration, run_lines, run_streamed, workspace_root,
};
use crate::setup::{self, Pin, Runtimes};
use anyhow::{Context, Result, bail, ensure};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The backends in the order they run: tch and ort first, since candle's kernels take longest
/// to build and a failure there should not hide the others' results.
const BACKENDS: [&str; 3] = ["tch", "ort", "candle"];
/// A target directory of its own: the `cuda` features would otherwise rebuild the main one.
const TARGET_SUBDIR: &str = "gpu-check";
/// The GPU build of the ONNX Runtime release that setup installs (CUDA 13, like torch).
const ORT_GPU_PACKAGE: (&str, &str) = ("onnxruntime-gpu", "1.31.1");
/// Directories next to the setup venv in the runtime cache.
const ORT_GPU_DIR: &str = "ort-gpu";
const CUDA_LINK_DIR: &str = "cuda-link";
/// Written last, so its presence means the install completed.
const ORT_GPU_STAMP: &str = "gpu-check.stamp";
/// The environment variable the conformance suite reads its device from.
const DEVICE_VAR: &str = "CONFORMANCE_DEVICE";
/// The prefix of the suite's timing lines (`inference_core::conformance::TimingLine`).
const TIMING_PREFIX: &str = "conformance-timing ";
/// Where the driver's library may live when `ldconfig` does not list it; the toolkit stub
/// only serves the link, the driver's own file is loaded at run time.
const LIBCUDA_FALLBACKS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/local/nvidia/lib64/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/usr/local/cuda/lib64/stubs/libcuda.so",
];

#[derive(Debug, clap::Args)]
pub(crate) struct GpuCheckArgs {
    /// Prints every command and variable of the check instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// The GPU architecture candle's kernels are built for; default: what nvidia-smi reports.
    #[arg(long, env = "CUDA_COMPUTE_CAP", value_parser = cuda::parse_compute_cap)]
    compute_cap: Option<String>,
}

/// Where everything of the check lives, derived from the setup install.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    root: PathBuf,
    target_dir: PathBuf,
    /// `pip install --target` directory of `onnxruntime-gpu`.
    ort_gpu_dir: PathBuf,
    /// Root whose `lib/` holds the unversioned CUDA library links (`CUDA_ROOT`).
    link_root: PathBuf,
    /// The setup venv's NVIDIA wheel libraries (cuBLAS, cuRAND, NVRTC, cudart, cuDNN).
    cuda_lib_dirs: Vec<PathBuf>,
}

impl Layout {
    fn new(root: &Path, cache: &Path, runtimes: &Runtimes) -> Self {
        let site_packages = runtimes
            .libtorch
            .parent()
            .map_or_else(PathBuf::new, Path::to_path_buf);
        Self {
            root: root.to_path_buf(),
            target_dir: root.join("target").join(TARGET_SUBDIR),
            ort_gpu_dir: cache.join(ORT_GPU_DIR),
            link_root: cache.join(CUDA_LINK_DIR),
            cuda_lib_dirs: vec![
                site_packages.join("nvidia/cu13/lib"),
                site_packages.join("nvidia/cudnn/lib"),
            ],
        }
    }

    fn ort_gpu_dylib(&self) -> PathBuf {
        self.ort_gpu_dir
            .join("onnxruntime/capi")
            .join(format!("libonnxruntime.so.{}", ORT_GPU_PACKAGE.1))
    }

    fn ort_cuda_provider(&self) -> PathBuf {
        self.ort_gpu_dir
            .join("onnxruntime/capi/libonnxruntime_providers_cuda.so")
    }

    fn link_dir(&self) -> PathBuf {
        self.link_root.join("lib")
    }

    fn model_dir(&self) -> PathBuf {
        self.root.join("models/example")
    }
}

/// The unversioned names candle's link asks for, each with the file it points at.
fn link_plan(cuda_lib_dir: &Path, libcuda: &Path) -> Vec<(String, PathBuf)> {
    let versioned = [
        ("libcudart.so", "libcudart.so.13"),
        ("libcublas.so", "libcublas.so.13"),
        ("libcublasLt.so", "libcublasLt.so.13"),
        ("libcurand.so", "libcurand.so.10"),
        ("libnvrtc.so", "libnvrtc.so.13"),
    ];
    std::iter::once(("libcuda.so".to_owned(), libcuda.to_path_buf()))
        .chain(
            versioned
                .iter()
                .map(|(name, file)| ((*name).to_owned(), cuda_lib_dir.join(file))),
        )
        .collect()
}

/// (Re)creates the links of `plan` in `dir`; every target must exist.
fn make_links(dir: &Path, plan: &[(String, PathBuf)]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, target) in plan {
        ensure!(target.exists(), "{} does not exist", target.display());
        let link = dir.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))?;
    }
    Ok(())
}

/// The driver's `libcuda.so.1` from `ldconfig -p` output, else the first fallback that exists.
fn find_libcuda(ldconfig_output: &str, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let listed = ldconfig_output
        .lines()
        .filter(|line| line.trim_start().starts_with("libcuda.so.1 "))
        .filter(|line| line.contains("x86-64"))
        .filter_map(|line| line.split(" => ").nth(1))
        .map(|path| PathBuf::from(path.trim()));
    let fallbacks = LIBCUDA_FALLBACKS.iter().map(PathBuf::from);
    listed.chain(fallbacks).find(|path| exists(path))
}

/// `9.0` (nvidia-smi's `compute_cap` column) as `90`, the form candle's kernel builder reads.
fn compute_cap_from_smi(output: &str) -> Option<String> {
    let first = output
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())?;
    let (major, minor) = first.split_once('.')?;
    let cap = format!("{}{}", major.trim(), minor.trim());
    cuda::parse_compute_cap(&cap).ok()
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn strings(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `cargo test` of one backend's conformance suite with its CUDA code.
fn test_args(backend: &str, target_dir: &Path) -> Vec<OsString> {
    let package = format!("inference-backend-{backend}");
    let mut args = strings(&["test", "--release", "-p"]);
    args.push(package.into());
    args.extend(strings(&["--features", "cuda", "--test", "conformance"]));
    args.extend(["--target-dir".into(), target_dir.as_os_str().to_owned()]);
    args.extend(strings(&["--", "--nocapture", "--test-threads", "1"]));
    args
}

/// The tch example on device `cuda`: it loads only if libtorch's `Cuda::is_available()`.
fn tch_probe_args(target_dir: &Path, model_dir: &Path) -> Vec<OsString> {
    let mut args = strings(&[
        "run",
        "--release",
        "-p",
        "inference-backend-tch",
        "--features",
        "cuda",
        "--example",
        "tch_run_batch",
    ]);
    args.extend(["--target-dir".into(), target_dir.as_os_str().to_owned()]);
    args.push("--".into());
    args.push(model_dir.as_os_str().to_owned());
    args.push("cuda".into());
    args
}

/// One environment for every cargo command of the check, so nothing rebuilds between them:
/// check-cuda's (nvcc, the toolkit, LIBTORCH), the GPU ONNX Runtime, the link directory,
/// the CUDA libraries for the loader, and the device for the suite.
fn check_env(
    base: Vec<(&'static str, OsString)>,
    layout: &Layout,
    inherited_ld_path: Option<OsString>,
) -> Result<Vec<(&'static str, OsString)>> {
    let mut env: Vec<(&'static str, OsString)> = base
        .into_iter()
        .filter(|(name, _)| *name != "ORT_DYLIB_PATH")
        .collect();
    let ld_path = layout
        .cuda_lib_dirs
        .iter()
        .cloned()
        .chain(inherited_ld_path.iter().flat_map(std::env::split_paths));
    let ld_path = std::env::join_paths(ld_path).context("a CUDA lib dir cannot go on a path")?;
    env.extend([
        ("ORT_DYLIB_PATH", layout.ort_gpu_dylib().into_os_string()),
        ("CUDA_ROOT", layout.link_root.clone().into_os_string()),
        ("LD_LIBRARY_PATH", ld_path),
        (DEVICE_VAR, "cuda".into()),
    ]);
    Ok(env)
}

fn cargo_command(args: &[OsString], env: &[(&'static str, OsString)], root: &Path) -> Command {
    let mut command = Command::new(cargo());
    command
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(root);
    for name in cuda::OVERRIDING_VARS {
        command.env_remove(name);
    }
    command
}

/// One per-batch measurement read back from the suite's output.
#[derive(Debug, Clone, PartialEq)]
struct Timing {
    device: String,
    batch: usize,
    median_ms: f64,
    max_abs_error: String,
}

/// Parses `conformance-timing backend=.. device=.. batch=.. median_ms=.. runs=.. max_abs_error=..`.
fn parse_timing(line: &str) -> Option<(String, Timing)> {
    let rest = line.trim().strip_prefix(TIMING_PREFIX)?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    };
    let timing = Timing {
        device: field("device")?.to_owned(),
        batch: field("batch")?.parse().ok()?,
        median_ms: field("median_ms")?.parse().ok()?,
        max_abs_error: field("max_abs_error")?.to_owned(),
    };
    Some((field("backend")?.to_owned(), timing))
}

/// The counts of libtest's `test result: ok. 12 passed; 0 failed; ...` line.
fn parse_test_result(line: &str) -> Option<(usize, usize)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    };
    Some((count("passed")?, count("failed")?))
}

/// What happened to one backend.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    backend: String,
    /// Passed and failed test counts, if libtest got to report them.
    counts: Option<(usize, usize)>,
    success: bool,
    took: Duration,
    timings: Vec<Timing>,
    /// The last output line when the run failed (a build or load error names its cause).
    failure: Option<String>,
}

impl Outcome {
    fn from_run(backend: &str, success: bool, took: Duration, lines: &[String]) -> Self {
        let counts = lines.iter().rev().find_map(|line| parse_test_result(line));
        let timings = lines
            .iter()
            .filter_map(|line| parse_timing(line))
            .filter(|(name, _)| name == backend)
            .map(|(_, timing)| timing)
            .collect();
        let failure = (!success).then(|| first_panic_or_last(lines));
        Self {
            backend: backend.to_owned(),
            counts,
            success,
            took,
            timings,
            failure,
        }
    }

    fn status(&self) -> String {
        match (self.success, self.counts) {
            (true, Some((passed, _))) => format!("ok ({passed} passed)"),
            (true, None) => "ok".to_owned(),
            (false, Some((passed, failed))) => format!("FAILED ({passed} passed, {failed} failed)"),
            (false, None) => "FAILED (did not build or start)".to_owned(),
        }
    }
}

/// The first panic message (what a failing suite says first), else the last non-empty line.
fn first_panic_or_last(lines: &[String]) -> String {
    let mut lines_iter = lines.iter();
    if lines_iter.any(|line| line.contains("panicked at"))
        && let Some(message) = lines_iter.find(|line| !line.trim().is_empty())
    {
        return message.trim().to_owned();
    }
    lines
        .iter()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map_or_else(|| "no output".to_owned(), |line| line.trim().to_owned())
}

/// The table at the end: one row per backend and batch size, then the failures' causes.
fn render_summary(gpus: &str, tch_probe: &str, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## gpu-check summary\n");
    let _ = writeln!(out, "GPUs (nvidia-smi -L): {}", gpus.trim());
    let _ = writeln!(
        out,
        "tch Cuda::is_available (tch_run_batch on cuda): {tch_probe}\n"
    );
    let _ = writeln!(
        out,
        "| backend | status | took | device | batch | median infer ms | max abs error |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for outcome in outcomes {
        let (status, took) = (outcome.status(), format_duration(outcome.took));
        if outcome.timings.is_empty() {
            let _ = writeln!(
                out,
                "| {} | {status} | {took} | - | - | - | - |",
                outcome.backend
            );
        }
        for timing in &outcome.timings {
            let _ = writeln!(
                out,
                "| {} | {status} | {took} | {} | {} | {:.4} | {} |",
                outcome.backend,
                timing.device,
                timing.batch,
                timing.median_ms,
                timing.max_abs_error
            );
        }
    }
    for outcome in outcomes {
        if let Some(reason) = &outcome.failure {
            let _ = writeln!(out, "\n{}: {reason}", outcome.backend);
        }
    }
    out
}

/// Runs `command`, echoing its output as it comes, and returns its status and every line.
fn run_collecting(command: &mut Command) -> Result<(ExitStatus, Vec<String>)> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&kept);
    let status = run_lines(command, move |line| {
        eprintln!("{line}");
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    })?;
    let lines = std::mem::take(&mut *kept.lock().unwrap_or_else(PoisonError::into_inner));
    Ok((status, lines))
}

/// Installs `onnxruntime-gpu` into its own directory unless the stamp says it is there.
fn ensure_ort_gpu(layout: &Layout, python: &Path, bar: &indicatif::ProgressBar) -> Result<()> {
    let pin = Pin::new(ORT_GPU_PACKAGE.0, ORT_GPU_PACKAGE.1);
    let stamp = layout.ort_gpu_dir.join(ORT_GPU_STAMP);
    let current = fs::read_to_string(&stamp).is_ok_and(|text| text.trim() == pin.to_string());
    if current && layout.ort_gpu_dylib().is_file() && layout.ort_cuda_provider().is_file() {
        return Ok(());
    }
    // pip will not overwrite a target directory's packages; a partial install is discarded.
    if layout.ort_gpu_dir.exists() {
        fs::remove_dir_all(&layout.ort_gpu_dir)
            .with_context(|| format!("cannot remove {}", layout.ort_gpu_dir.display()))?;
    }
    run_streamed(&mut ort_gpu_install(python, &layout.ort_gpu_dir), bar)?;
    for file in [layout.ort_gpu_dylib(), layout.ort_cuda_provider()] {
        ensure!(
            file.is_file(),
            "the wheel did not install {}",
            file.display()
        );
    }
    fs::write(&stamp, format!("{pin}\n"))
        .with_context(|| format!("cannot write {}", stamp.display()))
}

fn ort_gpu_install(python: &Path, dir: &Path) -> Command {
    let pin = Pin::new(ORT_GPU_PACKAGE.0, ORT_GPU_PACKAGE.1);
    crate::setup::pip_install_into(python, dir, &[pin])
}

pub(crate) fn run(args: &GpuCheckArgs) -> Result<()> {
    if args.dry_run {
        return dry_run(args);
    }
    let started = Instant::now();
    // First, and in a second: there is no point building CUDA code for minutes without a GPU.
    let gpus = capture(Command::new("nvidia-smi").arg("-L")).map_err(|error| {
        anyhow::anyhow!(
            "no GPU here: `nvidia-smi -L` failed ({error:#}); gpu-check needs an NVIDIA GPU and \
             driver (`cargo xtask gpu-check --dry-run` prints the plan)"
        )
    })?;
    eprintln!("{}", gpus.trim());
    let compute_cap = match &args.compute_cap {
        Some(cap) => cap.clone(),
        None => {
            let smi = capture(
                Command::new("nvidia-smi")
                    .args(["--query-gpu=compute_cap", "--format=csv,noheader"]),
            )?;
            compute_cap_from_smi(&smi)
                .with_context(|| format!("nvidia-smi reported no compute capability: {smi}"))?
        }
    };
    let ldconfig = capture(Command::new("ldconfig").arg("-p")).unwrap_or_default();
    let libcuda = find_libcuda(&ldconfig, Path::exists)
        .context("the GPU driver's libcuda.so.1 is not in `ldconfig -p` nor a usual directory")?;

    let mut steps = Steps::new(4);
    let runtimes = steps.run("set up the ort and tch runtimes", |_| {
        setup::ensure_installed()
    })?;
    let toolkit_dir = cuda::toolkit_dir(&runtimes)?;
    let cache = toolkit_dir
        .parent()
        .context("the toolkit directory has no parent")?
        .to_path_buf();
    let layout = Layout::new(&workspace_root(), &cache, &runtimes);
    let toolkit = steps.run("install nvcc if missing", |bar| {
        cuda::ensure_toolkit(&toolkit_dir, &runtimes.python, bar)
    })?;
    steps.run("install onnxruntime-gpu if missing", |bar| {
        ensure_ort_gpu(&layout, &runtimes.python, bar)
    })?;
    steps.run("link the CUDA libraries for candle", |_| {
        let cuda_libs = layout.cuda_lib_dirs.first().context("no CUDA lib dir")?;
        make_links(&layout.link_dir(), &link_plan(cuda_libs, &libcuda))
    })?;
    let env = full_env(&toolkit, &runtimes, &layout, &compute_cap)?;
    for (name, value) in &env {
        eprintln!("env {name}={}", value.to_string_lossy());
    }

    let mut outcomes = Vec::new();
    for backend in BACKENDS {
        let mut command =
            cargo_command(&test_args(backend, &layout.target_dir), &env, &layout.root);
        eprintln!("==> {backend}: {}", display(&command));
        let begun = Instant::now();
        let (success, lines) = match run_collecting(&mut command) {
            Ok((status, lines)) => (status.success(), lines),
            Err(error) => (false, vec![format!("{error:#}")]),
        };
        let outcome = Outcome::from_run(backend, success, begun.elapsed(), &lines);
        eprintln!("<== {backend}: {}", outcome.status());
        outcomes.push(outcome);
    }
    let tch_probe = probe_tch(&layout, &env);
    let summary = render_summary(&gpus, &tch_probe, &outcomes);
    println!("\n{summary}");
    write_summary(&layout, &summary);
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| !outcome.success)
        .map(|outcome| outcome.backend.as_str())
        .collect();
    eprintln!("gpu-check took {}", format_duration(started.elapsed()));
    if !failed.is_empty() {
        bail!(
            "the conformance suite failed on cuda for: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn full_env(
    toolkit: &Toolkit,
    runtimes: &Runtimes,
    layout: &Layout,
    compute_cap: &str,
) -> Result<Vec<(&'static str, OsString)>> {
    let base = cuda::check_env(toolkit, runtimes, compute_cap, std::env::var_os("PATH"))?;
    check_env(base, layout, std::env::var_os("LD_LIBRARY_PATH"))
}

/// `cuda:N` as the tch example reports it, or why libtorch saw no CUDA device.
fn probe_tch(layout: &Layout, env: &[(&'static str, OsString)]) -> String {
    let args = tch_probe_args(&layout.target_dir, &layout.model_dir());
    let mut command = cargo_command(&args, env, &layout.root);
    eprintln!("==> tch CUDA probe: {}", display(&command));
    match run_collecting(&mut command) {
        Ok((status, lines)) if status.success() => {
            let device = lines.iter().find(|line| line.contains(" on tch ("));
            format!(
                "true: {}",
                device.map_or("(no device line)", |line| line.trim())
            )
        }
        Ok((_, lines)) => format!("false: {}", first_panic_or_last(&lines)),
        Err(error) => format!("unknown: {error:#}"),
    }
}

/// Keeps the table beside the build and, on a device machine, in `$OUT` so it comes back.
fn write_summary(layout: &Layout, summary: &str) {
    let mut places = vec![layout.target_dir.join("summary.md")];
    if let Some(out) = std::env::var_os("OUT").filter(|out| !out.is_empty()) {
        places.push(PathBuf::from(out).join("gpu-check-summary.md"));
    }
    for place in places {
        match fs::write(&place, summary) {
            Ok(()) => eprintln!("summary written to {}", place.display()),
            Err(error) => eprintln!("cannot write {}: {error}", place.display()),
        }
    }
}

/// The plan with this machine's paths, without installing, linking or building anything.
fn dry_run(args: &GpuCheckArgs) -> Result<()> {
    let runtimes = setup::installed()?;
    let toolkit_dir = cuda::toolkit_dir(&runtimes)?;
    let cache = toolkit_dir.parent().context("no cache directory")?;
    let layout = Layout::new(&workspace_root(), cache, &runtimes);
    let toolkit = Toolkit::in_dir(&toolkit_dir);
    let compute_cap = args.compute_cap.clone().unwrap_or_else(|| "90".to_owned());
    let ldconfig = capture(Command::new("ldconfig").arg("-p")).unwrap_or_default();
    let libcuda = find_libcuda(&ldconfig, Path::exists);
    println!("# gpu-check plan (dry run: nothing is installed, linked or built)");
    println!("1. nvidia-smi -L   (no GPU: stop here with \"no GPU here\")");
    println!(
        "   nvidia-smi --query-gpu=compute_cap --format=csv,noheader   (unless --compute-cap)"
    );
    println!("2. setup: runtimes in {}", cache.display());
    println!("3. nvcc: {}", toolkit.bin_dir().join("nvcc").display());
    println!(
        "4. {}   (unless {} has the stamp)",
        display(&ort_gpu_install(&runtimes.python, &layout.ort_gpu_dir)),
        layout.ort_gpu_dir.display()
    );
    let libcuda_shown =
        libcuda.unwrap_or_else(|| PathBuf::from("<libcuda.so.1 of the driver: none here>"));
    println!("5. links in {}:", layout.link_dir().display());
    let cuda_libs = layout.cuda_lib_dirs.first().context("no CUDA lib dir")?;
    for (name, target) in link_plan(cuda_libs, &libcuda_shown) {
        println!("   {name} -> {}", target.display());
    }
    let env = full_env(&toolkit, &runtimes, &layout, &compute_cap)?;
    println!("6. with these variables (compute capability {compute_cap} shown for an H100):");
    for (name, value) in &env {
        println!("   {name}={}", value.to_string_lossy());
    }
    for (index, backend) in BACKENDS.iter().enumerate() {
        let command = cargo_command(&test_args(backend, &layout.target_dir), &env, &layout.root);
        println!("{}. {}", 7 + index, display(&command));
    }
    let probe = tch_probe_args(&layout.target_dir, &layout.model_dir());
    let probe = cargo_command(&probe, &env, &layout.root);
    println!("{}. {}", 7 + BACKENDS.len(), display(&probe));
    println!(
        "{}. summary table on stdout, in {} and in $OUT/gpu-check-summary.md",
        8 + BACKENDS.len(),
        layout.target_dir.join("summary.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtimes_in(cache: &Path) -> Runtimes {
        let site = cache.join("venv/lib/python3.11/site-packages");
        Runtimes {
            python: cache.join("venv/bin/python"),
            libtorch: site.join("torch"),
            ort_dylib: site.join("onnxruntime/capi/libonnxruntime.so.1.31.1"),
        }
    }

    fn layout() -> Layout {
        let cache = Path::new("/cache");
        Layout::new(Path::new("/repo"), cache, &runtimes_in(cache))
    }

    fn value_of<'a>(env: &'a [(&str, OsString)], name: &str) -> Option<&'a OsString> {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    fn texts(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|arg| arg.to_str().unwrap()).collect()
    }

    #[test]
    fn layout_keeps_its_own_target_dir_and_cache_dirs() {
        let layout = layout();
        assert_eq!(layout.target_dir, Path::new("/repo/target/gpu-check"));
        assert_eq!(
            layout.ort_gpu_dylib(),
            Path::new("/cache/ort-gpu/onnxruntime/capi/libonnxruntime.so.1.31.1")
        );
        assert_eq!(layout.link_dir(), Path::new("/cache/cuda-link/lib"));
        let site = Path::new("/cache/venv/lib/python3.11/site-packages");
        assert_eq!(
            layout.cuda_lib_dirs,
            [site.join("nvidia/cu13/lib"), site.join("nvidia/cudnn/lib")]
        );
    }

    #[test]
    fn test_args_run_one_backends_suite_with_cuda_one_test_at_a_time() {
        let args = test_args("candle", Path::new("/repo/target/gpu-check"));
        assert_eq!(
            texts(&args),
            [
                "test",
                "--release",
                "-p",
                "inference-backend-candle",
                "--features",
                "cuda",
                "--test",
                "conformance",
                "--target-dir",
                "/repo/target/gpu-check",
                "--",
                "--nocapture",
                "--test-threads",
                "1"
            ]
        );
    }

    #[test]
    fn tch_probe_runs_the_example_on_cuda() {
        let args = tch_probe_args(Path::new("/t"), Path::new("/repo/models/example"));
        let args = texts(&args);
        assert!(args.contains(&"tch_run_batch") && args.contains(&"cuda"));
        assert!(
            args.ends_with(&["--", "/repo/models/example", "cuda"]),
            "{args:?}"
        );
    }

    #[test]
    fn env_swaps_in_the_gpu_onnx_runtime_and_asks_for_cuda() {
        let layout = layout();
        let base = vec![
            ("PATH", OsString::from("/toolkit/bin:/usr/bin")),
            ("LIBTORCH", OsString::from("/site/torch")),
            (
                "ORT_DYLIB_PATH",
                OsString::from("/site/cpu/libonnxruntime.so"),
            ),
        ];
        let env = check_env(base, &layout, Some("/usr/local/nvidia/lib64".into())).unwrap();
        let dylibs: Vec<_> = env
            .iter()
            .filter(|(name, _)| *name == "ORT_DYLIB_PATH")
            .collect();
        assert_eq!(dylibs.len(), 1, "{env:?}");
        assert_eq!(dylibs[0].1, layout.ort_gpu_dylib().as_os_str());
        assert_eq!(value_of(&env, DEVICE_VAR).unwrap(), "cuda");
        assert_eq!(
            value_of(&env, "CUDA_ROOT").unwrap(),
            Path::new("/cache/cuda-link").as_os_str()
        );
        assert_eq!(value_of(&env, "LIBTORCH").unwrap(), "/site/torch");
        let ld: Vec<PathBuf> =
            std::env::split_paths(value_of(&env, "LD_LIBRARY_PATH").unwrap()).collect();
        let mut expected = layout.cuda_lib_dirs.clone();
        expected.push("/usr/local/nvidia/lib64".into());
        assert_eq!(ld, expected);
    }

    #[test]
    fn commands_drop_the_variables_that_would_change_the_build() {
        let command = cargo_command(&[], &[], Path::new("/repo"));
        let removed: Vec<_> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for name in cuda::OVERRIDING_VARS {
            assert!(removed.iter().any(|removed| removed == name), "{removed:?}");
        }
    }

    #[test]
    fn link_plan_names_every_library_candles_link_asks_for() {
        let plan = link_plan(Path::new("/cu13/lib"), Path::new("/drv/libcuda.so.1"));
        let names: Vec<&str> = plan.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "libcuda.so",
                "libcudart.so",
                "libcublas.so",
                "libcublasLt.so",
                "libcurand.so",
                "libnvrtc.so"
            ]
        );
        assert_eq!(plan[0].1, Path::new("/drv/libcuda.so.1"));
        assert_eq!(plan[2].1, Path::new("/cu13/lib/libcublas.so.13"));
        assert_eq!(plan[4].1, Path::new("/cu13/lib/libcurand.so.10"));
    }

    #[test]
    fn make_links_replaces_old_links_and_refuses_missing_targets() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("libcublas.so.13");
        fs::write(&target, b"elf").unwrap();
        let links = dir.path().join("lib");
        let plan = vec![("libcublas.so".to_owned(), target.clone())];
        make_links(&links, &plan).unwrap();
        make_links(&links, &plan).unwrap();
        assert_eq!(fs::read_link(links.join("libcublas.so")).unwrap(), target);
        let missing = vec![("libcuda.so".to_owned(), dir.path().join("absent"))];
        let error = make_links(&links, &missing).unwrap_err().to_string();
        assert!(error.contains("absent"), "{error}");
    }

    #[test]
    fn libcuda_comes_from_ldconfig_then_the_fallbacks() {
        let ldconfig = "1234 libs found in cache `/etc/ld.so.cache'\n\
            \tlibcudart.so.13 (libc6,x86-64) => /usr/lib/libcudart.so.13\n\
            \tlibcuda.so.1 (libc6) => /usr/lib32/libcuda.so.1\n\
            \tlibcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1\n";
        assert_eq!(
            find_libcuda(ldconfig, |_| true),
            Some(PathBuf::from("/usr/local/nvidia/lib64/libcuda.so.1"))
        );
        let stub = Path::new("/usr/local/cuda/lib64/stubs/libcuda.so");
        assert_eq!(
            find_libcuda("", |path| path == stub),
            Some(stub.to_path_buf())
        );
        assert_eq!(find_libcuda(ldconfig, |_| false), None);
    }

    #[test]
    fn compute_cap_reads_nvidia_smi_csv() {
        assert_eq!(compute_cap_from_smi("9.0\n").as_deref(), Some("90"));
        assert_eq!(
            compute_cap_from_smi("\n12.0\n9.0\n").as_deref(),
            Some("120")
        );
        assert_eq!(compute_cap_from_smi("[N/A]"), None);
        assert_eq!(compute_cap_from_smi(""), None);
    }

    #[test]
    fn timing_lines_parse_back() {
        let line = "conformance-timing backend=ort device=cuda:0 batch=64 median_ms=0.1234 runs=5 \
                    max_abs_error=5.960464477539063e-8";
        let (backend, timing) = parse_timing(line).unwrap();
        assert_eq!(backend, "ort");
        assert_eq!(
            timing,
            Timing {
                device: "cuda:0".into(),
                batch: 64,
                median_ms: 0.1234,
                max_abs_error: "5.960464477539063e-8".into(),
            }
        );
        assert!(parse_timing("test golden_outputs_batch_of_1 ... ok").is_none());
        assert!(parse_timing("conformance-timing backend=ort batch=x").is_none());
    }

    #[test]
    fn test_result_counts_parse() {
        let ok = "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.52s";
        assert_eq!(parse_test_result(ok), Some((12, 0)));
        let failed =
            "test result: FAILED. 1 passed; 11 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_test_result(failed), Some((1, 11)));
        assert_eq!(parse_test_result("running 12 tests"), None);
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn outcome_keeps_its_own_timings_and_the_first_panic() {
        let output = lines(
            "running 12 tests\n\
             conformance-timing backend=candle device=cuda:0 batch=1 median_ms=0.05 runs=5 max_abs_error=0e0\n\
             conformance-timing backend=other device=cpu batch=1 median_ms=9 runs=5 max_abs_error=0e0\n\
             thread 'rejects_empty_batch' panicked at crates/core/src/conformance.rs:1:1:\n\
             a batch with zero rows was accepted\n\
             test result: FAILED. 11 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n",
        );
        let outcome = Outcome::from_run("candle", false, Duration::from_secs(3), &output);
        assert_eq!(outcome.counts, Some((11, 1)));
        assert_eq!(outcome.timings.len(), 1);
        assert_eq!(outcome.timings[0].device, "cuda:0");
        assert_eq!(
            outcome.failure.as_deref(),
            Some("a batch with zero rows was accepted")
        );
        assert_eq!(outcome.status(), "FAILED (11 passed, 1 failed)");
    }

    #[test]
    fn outcome_of_a_build_failure_names_the_last_line() {
        let output =
            lines("   Compiling cudarc\nerror: linking with `cc` failed: exit status: 1\n\n");
        let outcome = Outcome::from_run("candle", false, Duration::ZERO, &output);
        assert_eq!(outcome.counts, None);
        assert_eq!(outcome.status(), "FAILED (did not build or start)");
        assert_eq!(
            outcome.failure.as_deref(),
            Some("error: linking with `cc` failed: exit status: 1")
        );
    }

    #[test]
    fn summary_has_a_row_per_batch_and_one_per_backend_without_timings() {
        let passed = Outcome::from_run(
            "tch",
            true,
            Duration::from_secs(2),
            &lines(
                "conformance-timing backend=tch device=cuda:0 batch=1 median_ms=0.2 runs=5 max_abs_error=1e-7\n\
                 conformance-timing backend=tch device=cuda:0 batch=64 median_ms=0.3 runs=5 max_abs_error=2e-7\n\
                 test result: ok. 24 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
            ),
        );
        let failed = Outcome::from_run("ort", false, Duration::ZERO, &lines("error: no provider"));
        let summary = render_summary("GPU 0: NVIDIA H100", "true: cuda:0", &[passed, failed]);
        assert!(
            summary.contains("| tch | ok (24 passed) | 2.0s | cuda:0 | 64 | 0.3000 | 2e-7 |"),
            "{summary}"
        );
        assert!(
            summary.contains("| ort | FAILED (did not build or start) | 0.0s | - |"),
            "{summary}"
        );
        assert!(summary.contains("ort: error: no provider"), "{summary}");
        assert!(summary.contains("GPU 0: NVIDIA H100"));
    }
}
