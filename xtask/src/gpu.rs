//! `cargo xtask gpu-check`: runs every backend's conformance suite on a CUDA GPU and writes
//! a report of the suite's per-batch timings.
//!
//! What the CUDA builds need beyond `cargo xtask setup` and check-cuda's nvcc: candle links
//! `-lcuda -lcublas ...` but the PyPI wheels ship only versioned files, so unversioned links
//! go in `$CUDA_ROOT/lib`; ONNX Runtime's CUDA provider is only in the `onnxruntime-gpu`
//! wheel, and finds cuBLAS and cuDNN (on no rpath) through `LD_LIBRARY_PATH`.

use crate::cuda;
use crate::process::{
    Steps, capture, display, format_duration, run_lines, run_streamed, workspace_root,
};
use crate::setup::{self, ORT_VERSION, Pin, Runtimes};
use anyhow::{Context, Result, bail, ensure};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// candle last: its kernels take longest to build, and its failure should not hide the others.
const BACKENDS: [&str; 3] = ["tch", "ort", "candle"];
/// Under `target/`, holds the build (the `cuda` features would otherwise rebuild the main
/// one) and, unless `--out` says otherwise, the report.
const TARGET_SUBDIR: &str = "gpu-check";
const TIMING_PREFIX: &str = "conformance-timing ";
/// How much of a failed suite's output the report keeps; its log has all of it.
const FAILURE_TAIL: usize = 20;
/// Where drivers and container runtimes put the driver's library; a toolkit's stub serves
/// the link as well, since the loader finds the driver's own file at run time.
const LIBCUDA: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/usr/local/nvidia/lib64/libcuda.so.1",
    "/usr/lib/wsl/lib/libcuda.so.1",
    "/usr/local/cuda/lib64/stubs/libcuda.so",
];

#[derive(Debug, clap::Args)]
pub(crate) struct GpuCheckArgs {
    /// The GPU architecture candle's kernels are built for [default: what nvidia-smi reports].
    #[arg(long, env = "CUDA_COMPUTE_CAP", value_parser = cuda::parse_compute_cap)]
    compute_cap: Option<String>,
    /// Where the report and each backend's log go [default: target/gpu-check].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The check's directories beside the setup venv, in the runtime cache.
#[derive(Debug)]
struct Layout {
    /// `pip install --target` directory of `onnxruntime-gpu`.
    ort_gpu_dir: PathBuf,
    ort_gpu_dylib: PathBuf,
    /// `CUDA_ROOT`: its `lib/` holds the unversioned links.
    link_root: PathBuf,
    /// The setup venv's NVIDIA wheel libraries: CUDA 13 first, then cuDNN.
    cuda_lib_dirs: [PathBuf; 2],
}

impl Layout {
    fn new(cache: &Path, runtimes: &Runtimes) -> Self {
        let nvidia = runtimes.libtorch.with_file_name("nvidia");
        let ort_gpu_dir = cache.join("ort-gpu");
        let dylib = format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
        Self {
            ort_gpu_dylib: ort_gpu_dir.join(dylib),
            ort_gpu_dir,
            link_root: cache.join("cuda-link"),
            cuda_lib_dirs: ["cu13", "cudnn"].map(|lib| nvidia.join(lib).join("lib")),
        }
    }

    /// check-cuda's variables (nvcc, the toolkit, the runtimes) with the GPU ONNX Runtime
    /// in place of the CPU one, the links, the CUDA libraries for the loader, and the device.
    fn env(
        &self,
        base: Vec<(&'static str, OsString)>,
        inherited_ld_path: Option<OsString>,
    ) -> Result<Vec<(&'static str, OsString)>> {
        let mut env: Vec<_> = base
            .into_iter()
            .filter(|(name, _)| *name != "ORT_DYLIB_PATH")
            .collect();
        let ld_path = self.cuda_lib_dirs.iter().cloned();
        let ld_path = ld_path.chain(inherited_ld_path.iter().flat_map(std::env::split_paths));
        env.extend([
            ("ORT_DYLIB_PATH", self.ort_gpu_dylib.clone().into()),
            ("CUDA_ROOT", self.link_root.clone().into()),
            ("LD_LIBRARY_PATH", std::env::join_paths(ld_path)?),
            ("CONFORMANCE_DEVICE", "cuda".into()),
        ]);
        Ok(env)
    }

    /// Installs `onnxruntime-gpu` unless its files are there: the version is in the
    /// library's name, so no stamp is needed.
    fn ensure_ort_gpu(&self, python: &Path, bar: &indicatif::ProgressBar) -> Result<()> {
        let provider = self
            .ort_gpu_dylib
            .with_file_name("libonnxruntime_providers_cuda.so");
        let files = [&self.ort_gpu_dylib, &provider];
        if files.iter().all(|file| file.is_file()) {
            return Ok(());
        }
        // pip will not overwrite a target directory's packages; a partial install is discarded.
        if self.ort_gpu_dir.exists() {
            fs::remove_dir_all(&self.ort_gpu_dir)
                .with_context(|| format!("cannot remove {}", self.ort_gpu_dir.display()))?;
        }
        let pin = [Pin::new("onnxruntime-gpu", ORT_VERSION)];
        run_streamed(
            &mut setup::pip_install_into(python, &self.ort_gpu_dir, &pin),
            bar,
        )?;
        match files.iter().find(|file| !file.is_file()) {
            Some(missing) => bail!("the wheel did not install {}", missing.display()),
            None => Ok(()),
        }
    }
}

/// Links the unversioned names candle's link asks for to the wheels' versioned files and
/// the driver's library, replacing older links; every target must exist.
fn link_cuda_libs(dir: &Path, cuda_lib_dir: &Path, libcuda: &Path) -> Result<()> {
    let versioned = [
        ("libcudart.so", "libcudart.so.13"),
        ("libcublas.so", "libcublas.so.13"),
        ("libcublasLt.so", "libcublasLt.so.13"),
        ("libcurand.so", "libcurand.so.10"),
        ("libnvrtc.so", "libnvrtc.so.13"),
    ];
    let links = versioned.map(|(name, file)| (name, cuda_lib_dir.join(file)));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, target) in std::iter::once(("libcuda.so", libcuda.to_path_buf())).chain(links) {
        ensure!(target.exists(), "{} does not exist", target.display());
        let link = dir.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))?;
    }
    Ok(())
}

/// `cargo test` of one backend's conformance suite with its CUDA code.
fn test_command(backend: &str, target_dir: &Path, env: &[(&str, OsString)]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    let package = format!("inference-backend-{backend}");
    command
        .args(["test", "--release", "-p", &package, "--features", "cuda"])
        .args(["--test", "conformance", "--target-dir"])
        .arg(target_dir)
        .args(["--", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().cloned())
        .current_dir(workspace_root());
    for name in cuda::OVERRIDING_VARS {
        command.env_remove(name);
    }
    command
}

/// One suite's run: `failure` is `None` when libtest exited with success.
#[derive(Debug)]
struct Outcome {
    backend: &'static str,
    failure: Option<String>,
    took: Duration,
    lines: Vec<String>,
}

/// Runs one suite, echoing its output as it comes and keeping every line.
fn run_suite(backend: &'static str, mut command: Command) -> Outcome {
    eprintln!("==> {backend}: {}", display(&command));
    let (sender, received) = mpsc::channel();
    let begun = Instant::now();
    let status = run_lines(&mut command, move |line| {
        eprintln!("{line}");
        let _ = sender.send(line);
    });
    let mut lines: Vec<String> = received.try_iter().collect();
    let failure = match status {
        Ok(status) if status.success() => None,
        Ok(status) => Some(status.to_string()),
        Err(error) => {
            lines.push(format!("{error:#}"));
            Some("did not start".to_owned())
        }
    };
    let took = begun.elapsed();
    Outcome {
        backend,
        failure,
        took,
        lines,
    }
}

/// A section per backend with its timing lines and, if it failed, the end of its output.
fn render_report(gpus: &str, compute_cap: &str, outcomes: &[Outcome]) -> String {
    let mut report = format!(
        "# gpu-check\n\n{}\n\ncompute capability {compute_cap}\n",
        gpus.trim()
    );
    for outcome in outcomes {
        let (backend, lines) = (outcome.backend, &outcome.lines);
        let took = format_duration(outcome.took);
        let result = match &outcome.failure {
            None => format!("ok in {took}"),
            Some(failure) => format!("FAILED ({failure}) in {took}; the end of {backend}.log"),
        };
        let _ = writeln!(report, "\n## {backend}: {result}\n\n```text");
        let timings = lines
            .iter()
            .map(|line| line.trim())
            .filter(|line| line.starts_with(TIMING_PREFIX));
        let tail = match outcome.failure {
            Some(_) => &lines[lines.len().saturating_sub(FAILURE_TAIL)..],
            None => &[],
        };
        for line in timings.chain(tail.iter().map(String::as_str)) {
            let _ = writeln!(report, "{line}");
        }
        report.push_str("```\n");
    }
    report
}

pub(crate) fn run(args: &GpuCheckArgs) -> Result<()> {
    let started = Instant::now();
    // First, and in a second: there is no point building CUDA code for minutes without a GPU.
    let gpus = capture(Command::new("nvidia-smi").arg("-L"))
        .context("no GPU here: gpu-check needs an NVIDIA GPU and its driver")?;
    let libcuda = LIBCUDA.iter().map(Path::new).find(|path| path.exists());
    let libcuda = libcuda.with_context(|| format!("no libcuda.so in any of {LIBCUDA:?}"))?;
    let target_dir = workspace_root().join("target").join(TARGET_SUBDIR);
    let out = args.out.clone().unwrap_or_else(|| target_dir.clone());
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut steps = Steps::new(4);
    let runtimes = steps.run("set up the ort and tch runtimes", |_| {
        setup::ensure_installed()
    })?;
    let toolkit_dir = cuda::toolkit_dir(&runtimes)?;
    let layout = Layout::new(toolkit_dir.parent().context("no runtime cache")?, &runtimes);
    let toolkit = steps.run("install nvcc if missing", |bar| {
        cuda::ensure_toolkit(&toolkit_dir, &runtimes.python, bar)
    })?;
    steps.run("install onnxruntime-gpu if missing", |bar| {
        layout.ensure_ort_gpu(&runtimes.python, bar)
    })?;
    steps.run("link the CUDA libraries for candle", |_| {
        link_cuda_libs(
            &layout.link_root.join("lib"),
            &layout.cuda_lib_dirs[0],
            libcuda,
        )
    })?;
    let compute_cap = args.compute_cap.as_deref();
    let path = std::env::var_os("PATH");
    let mut base = cuda::check_env(&toolkit, &runtimes, compute_cap.unwrap_or(""), path)?;
    // Without one, candle's kernel builder asks nvidia-smi for this GPU's compute capability.
    base.retain(|(name, _)| compute_cap.is_some() || *name != "CUDA_COMPUTE_CAP");
    let env = layout.env(base, std::env::var_os("LD_LIBRARY_PATH"))?;
    for (name, value) in &env {
        eprintln!("env {name}={}", value.to_string_lossy());
    }

    let mut outcomes = Vec::new();
    for backend in BACKENDS {
        let outcome = run_suite(backend, test_command(backend, &target_dir, &env));
        let log = out.join(format!("{backend}.log"));
        fs::write(&log, outcome.lines.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", log.display()))?;
        outcomes.push(outcome);
    }
    let report = render_report(
        &gpus,
        compute_cap.unwrap_or("as nvidia-smi reports"),
        &outcomes,
    );
    println!("\n{report}");
    let report_path = out.join("report.md");
    fs::write(&report_path, &report)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    eprintln!(
        "report in {}; gpu-check took {}",
        report_path.display(),
        format_duration(started.elapsed())
    );
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.failure.is_some())
        .map(|outcome| outcome.backend)
        .collect();
    ensure!(
        failed.is_empty(),
        "the suite failed on cuda for: {}",
        failed.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_swaps_in_the_pinned_gpu_onnx_runtime_and_asks_for_cuda() {
        let site = Path::new("/cache/venv/lib/python3.11/site-packages");
        let runtimes = Runtimes {
            python: "/cache/venv/bin/python".into(),
            libtorch: site.join("torch"),
            ort_dylib: site.join("onnxruntime/capi/libonnxruntime.so"),
        };
        let base = [
            "LIBTORCH=/site/torch",
            "ORT_DYLIB_PATH=/site/cpu/libonnxruntime.so",
        ];
        let base = base.map(|pair| pair.split_once('=').unwrap());
        let base = base
            .map(|(name, value)| (name, OsString::from(value)))
            .to_vec();
        let layout = Layout::new(Path::new("/cache"), &runtimes);
        let env = layout.env(base, Some("/usr/lib/x".into())).unwrap();
        let env: Vec<String> = env
            .iter()
            .map(|(name, value)| format!("{name}={}", value.to_string_lossy()))
            .collect();
        let ort = format!("/cache/ort-gpu/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
        let nvidia = site.join("nvidia");
        let ld = format!(
            "{}:{}:/usr/lib/x",
            nvidia.join("cu13/lib").display(),
            nvidia.join("cudnn/lib").display()
        );
        let expected = [
            "LIBTORCH=/site/torch".to_owned(),
            format!("ORT_DYLIB_PATH={ort}"),
            "CUDA_ROOT=/cache/cuda-link".to_owned(),
            format!("LD_LIBRARY_PATH={ld}"),
            "CONFORMANCE_DEVICE=cuda".to_owned(),
        ];
        assert_eq!(env, expected);
    }

    #[test]
    fn test_command_runs_one_suite_with_cuda_one_test_at_a_time() {
        let command = test_command("candle", Path::new("/t"), &[("CUDA_ROOT", "/l".into())]);
        let line = display(&command);
        let args = " test --release -p inference-backend-candle --features cuda --test conformance \
                    --target-dir /t -- --nocapture --test-threads 1";
        assert!(line.ends_with(args), "{line}");
        let envs: Vec<_> = command.get_envs().collect();
        assert!(
            envs.contains(&("CUDA_ROOT".as_ref(), Some("/l".as_ref()))),
            "{envs:?}"
        );
        for name in cuda::OVERRIDING_VARS {
            assert!(envs.contains(&(name.as_ref(), None)), "{name} is inherited");
        }
    }

    #[test]
    fn cuda_libs_get_unversioned_links_and_missing_targets_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (libs, links) = (dir.path().join("cu13"), dir.path().join("lib"));
        fs::create_dir_all(&libs).unwrap();
        let libcuda = dir.path().join("libcuda.so.1");
        fs::write(&libcuda, b"elf").unwrap();
        for name in [
            "libcudart.so.13",
            "libcublas.so.13",
            "libcublasLt.so.13",
            "libnvrtc.so.13",
        ] {
            fs::write(libs.join(name), b"elf").unwrap();
        }
        let error = link_cuda_libs(&links, &libs, &libcuda).unwrap_err();
        assert!(error.to_string().contains("libcurand.so.10"), "{error}");
        fs::write(libs.join("libcurand.so.10"), b"elf").unwrap();
        link_cuda_libs(&links, &libs, &libcuda).unwrap();
        link_cuda_libs(&links, &libs, &libcuda).unwrap();
        let link = |name: &str| fs::read_link(links.join(name)).unwrap();
        assert_eq!(link("libcuda.so"), libcuda);
        assert_eq!(link("libcublasLt.so"), libs.join("libcublasLt.so.13"));
        assert_eq!(link("libcurand.so"), libs.join("libcurand.so.10"));
        assert_eq!(fs::read_dir(&links).unwrap().count(), 6);
    }

    #[test]
    fn report_keeps_every_timing_line_and_the_end_of_a_failed_output() {
        let timing = "conformance-timing backend=tch device=cuda:0 batch=64 median_ms=0.2000";
        let lines = [
            "running 12 tests",
            &format!("  {timing}"),
            "test result: ok.",
        ];
        let passed = Outcome {
            backend: "tch",
            failure: None,
            took: Duration::from_secs(2),
            lines: lines.map(str::to_owned).to_vec(),
        };
        let failed = Outcome {
            backend: "ort",
            failure: Some("exit status: 101".into()),
            took: Duration::ZERO,
            lines: (0..50).map(|n| format!("line {n}")).collect(),
        };
        let report = render_report("GPU 0: NVIDIA H100\n", "90", &[passed, failed]);
        assert!(report.starts_with("# gpu-check\n\nGPU 0: NVIDIA H100\n\ncompute capability 90\n"));
        let tch = format!("\n## tch: ok in 2.0s\n\n```text\n{timing}\n```\n");
        let ort =
            "\n## ort: FAILED (exit status: 101) in 0.0s; the end of ort.log\n\n```text\nline 30\n";
        assert!(report.contains(&tch) && report.contains(ort), "{report}");
        assert!(report.ends_with("line 49\n```\n"), "{report}");
        assert!(!report.contains("running 12 tests") && !report.contains("line 29\n"));
    }
}
