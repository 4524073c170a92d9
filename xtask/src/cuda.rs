//! `cargo xtask check-cuda`: proves that every `cuda` code path compiles on a machine
//! without a GPU or a system CUDA toolkit.
//!
//! ort and tch need nothing at build time for CUDA, but candle does: cudarc's build script
//! asks `nvcc --version` for the CUDA release, and candle-kernels compiles its `.cu` kernels
//! with nvcc for one compute capability (normally read from `nvidia-smi`). NVIDIA publishes
//! nvcc and its headers as PyPI wheels, so the toolkit comes from the same registry as the
//! runtimes, into its own directory next to the setup venv.

use crate::process::{Steps, capture, format_duration, run_streamed, workspace_root};
use crate::setup::{self, Pin, Runtimes};
use anyhow::{Context, Result, ensure};
use indicatif::ProgressBar;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The CUDA release of torch's CUDA wheels (nvidia-cuda-runtime 13.0.96 for torch 2.13.0).
const CUDA_RELEASE: (u32, u32) = (13, 0);
/// The toolkit directory's name, next to the setup venv in the runtime cache.
const TOOLKIT_DIR: &str = "cuda-toolkit";
/// Where the wheels put the toolkit (`bin/`, `include/`, `nvvm/`) inside a pip target.
const TOOLKIT_ROOT: &str = "nvidia/cu13";
/// Written last, so its presence means the install completed.
const STAMP_FILE: &str = "check-cuda.stamp";
const STAMP_HEADER: &str =
    "# written by `cargo xtask check-cuda`; delete this file to force a reinstall";
/// A target directory of its own: the CUDA features would otherwise rebuild the main one.
const TARGET_SUBDIR: &str = "cuda-check";
/// Every backend with its CUDA code; `--workspace` also checks the backends' own tests.
const FEATURES: &str = "inference-server/ort,inference-server/tch,inference-server/cuda";
/// Would change which toolkit or CUDA release the build scripts pick, and so what is checked.
pub(crate) const OVERRIDING_VARS: &[&str] = &["CUDARC_CUDA_VERSION", "LIBTORCH_USE_PYTORCH"];

/// nvcc, its compiler back end and headers, all of one CUDA release. Installed without
/// dependency resolution, which would pull the newest `nvidia-nvvm` whatever nvcc's release.
fn toolkit_pins() -> Vec<Pin> {
    vec![
        Pin::new("nvidia-cuda-nvcc", "13.0.88"),
        Pin::new("nvidia-nvvm", "13.0.88"),
        Pin::new("nvidia-cuda-crt", "13.0.88"),
        // thrust and cub, which candle's sort and MoE kernels include.
        Pin::new("nvidia-cuda-cccl", "13.0.85"),
        // cuda_runtime.h and friends.
        Pin::new("nvidia-cuda-runtime", "13.0.96"),
    ]
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckCudaArgs {
    /// The GPU architecture candle's kernels are compiled for (no nvidia-smi to ask here).
    #[arg(long, env = "CUDA_COMPUTE_CAP", default_value = "90", value_parser = parse_compute_cap)]
    compute_cap: String,
}

/// Accepts the forms that candle's kernel builder (cudaforge) reads: `90`, `90a`, `100f`.
/// Checked here so a typo fails at once, not minutes into the build.
pub(crate) fn parse_compute_cap(value: &str) -> Result<String, String> {
    let digits = value.strip_suffix(['a', 'f']).unwrap_or(value);
    if (2..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected a compute capability like 90 or 90a, got `{value}`"
        ))
    }
}

/// The toolkit that the build scripts use, found inside its pip target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Toolkit {
    /// `CUDA_HOME`: holds `bin/nvcc`, `include/` and `nvvm/`.
    root: PathBuf,
}

impl Toolkit {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            root: dir.join(TOOLKIT_ROOT),
        }
    }

    pub(crate) fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    fn nvcc(&self) -> PathBuf {
        self.bin_dir().join("nvcc")
    }
}

pub(crate) fn run(args: &CheckCudaArgs) -> Result<()> {
    let started = Instant::now();
    let mut steps = Steps::new(3);
    let runtimes = steps.run("set up the ort and tch runtimes", |_| {
        setup::ensure_installed()
    })?;
    let toolkit = steps.run("install nvcc if missing", |bar| {
        ensure_toolkit(&toolkit_dir(&runtimes)?, &runtimes.python, bar)
    })?;
    let env = check_env(
        &toolkit,
        &runtimes,
        &args.compute_cap,
        std::env::var_os("PATH"),
    )?;
    for (name, value) in &env {
        eprintln!("env {name}={}", value.to_string_lossy());
    }
    let target_dir = workspace_root().join("target").join(TARGET_SUBDIR);
    steps.run("cargo clippy with every backend's CUDA code", |bar| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(clippy_args(&target_dir))
            .envs(env.iter().cloned())
            .current_dir(workspace_root());
        for name in OVERRIDING_VARS {
            command.env_remove(name);
        }
        run_streamed(&mut command, bar)
    })?;
    eprintln!(
        "checked the workspace (all targets) with features {FEATURES}: candle, ort and tch \
         CUDA code compile and pass clippy; candle's kernels built by nvcc {}.{} for \
         compute capability {} in {}",
        CUDA_RELEASE.0,
        CUDA_RELEASE.1,
        args.compute_cap,
        format_duration(started.elapsed()),
    );
    Ok(())
}

/// Next to the setup venv: `<runtime cache>/venv/bin/python` gives `<runtime cache>`.
pub(crate) fn toolkit_dir(runtimes: &Runtimes) -> Result<PathBuf> {
    let cache = runtimes
        .python
        .ancestors()
        .nth(3)
        .with_context(|| format!("no cache directory above {}", runtimes.python.display()))?;
    Ok(cache.join(TOOLKIT_DIR))
}

/// Returns at once when the stamp matches and nvcc exists, else installs afresh.
pub(crate) fn ensure_toolkit(dir: &Path, python: &Path, bar: &ProgressBar) -> Result<Toolkit> {
    let toolkit = Toolkit::in_dir(dir);
    let stamp = fs::read_to_string(dir.join(STAMP_FILE)).unwrap_or_default();
    if stamp_is_current(&stamp) && toolkit.nvcc().is_file() {
        return Ok(toolkit);
    }
    // pip will not overwrite a target directory's packages; a partial install is discarded.
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let mut command = crate::setup::pip_install_into(python, dir, &toolkit_pins());
    run_streamed(&mut command, bar)?;
    let printed = capture(Command::new(toolkit.nvcc()).arg("--version"))?;
    let release = nvcc_release(&printed)
        .with_context(|| format!("no release in `nvcc --version` output: {printed}"))?;
    ensure!(
        release == CUDA_RELEASE,
        "installed nvcc is CUDA {}.{}, expected {}.{}",
        release.0,
        release.1,
        CUDA_RELEASE.0,
        CUDA_RELEASE.1
    );
    let stamp = dir.join(STAMP_FILE);
    fs::write(&stamp, render_stamp(&toolkit_pins()))
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(toolkit)
}

fn render_stamp(pins: &[Pin]) -> String {
    let lines: Vec<String> = pins.iter().map(Pin::to_string).collect();
    format!("{STAMP_HEADER}\n{}\n", lines.join("\n"))
}

/// Exactly what this version of xtask would write; any difference means reinstall.
fn stamp_is_current(stamp: &str) -> bool {
    stamp == render_stamp(&toolkit_pins())
}

/// The `major.minor` of a `nvcc --version` line like `Cuda compilation tools, release 13.0, V13.0.88`.
fn nvcc_release(version_output: &str) -> Option<(u32, u32)> {
    let line = version_output
        .lines()
        .find(|line| line.contains("release "))?;
    let release = line.split("release ").nth(1)?.split(',').next()?;
    let (major, minor) = release.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The variables of the check: the toolkit's nvcc first on `PATH` (cudarc runs plain
/// `nvcc`), the toolkit for candle's kernel builder, and the ort/tch runtimes.
pub(crate) fn check_env(
    toolkit: &Toolkit,
    runtimes: &Runtimes,
    compute_cap: &str,
    inherited_path: Option<OsString>,
) -> Result<Vec<(&'static str, OsString)>> {
    let bin_dir = toolkit.bin_dir();
    let path = std::iter::once(bin_dir.clone())
        .chain(inherited_path.iter().flat_map(std::env::split_paths));
    let path = std::env::join_paths(path)
        .with_context(|| format!("{} cannot go on PATH", bin_dir.display()))?;
    let mut env = vec![
        ("PATH", path),
        ("NVCC", toolkit.nvcc().into()),
        ("CUDA_HOME", toolkit.root.clone().into()),
        ("CUDA_COMPUTE_CAP", compute_cap.into()),
    ];
    env.extend(
        runtimes
            .build_env()
            .into_iter()
            .map(|(name, value)| (name, value.as_os_str().to_owned())),
    );
    Ok(env)
}

fn clippy_args(target_dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        FEATURES,
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend(["--target-dir".into(), target_dir.as_os_str().to_owned()]);
    args.extend(["--", "-D", "warnings"].map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtimes_in(cache: &Path) -> Runtimes {
        let site = cache.join("venv/lib/python3.11/site-packages");
        Runtimes {
            python: cache.join("venv/bin/python"),
            libtorch: site.join("torch"),
            ort_dylib: site.join("onnxruntime/capi/libonnxruntime.so"),
        }
    }

    fn value_of<'a>(env: &'a [(&str, OsString)], name: &str) -> &'a OsString {
        &env.iter().find(|(key, _)| *key == name).unwrap().1
    }

    #[test]
    fn nvcc_release_reads_the_version_banner() {
        let banner = "nvcc: NVIDIA (R) Cuda compiler driver\n\
                      Copyright (c) 2005-2025 NVIDIA Corporation\n\
                      Built on Wed_Aug_20_01:58:59_PM_PDT_2025\n\
                      Cuda compilation tools, release 13.0, V13.0.88\n\
                      Build cuda_13.0.r13.0/compiler.36424714_0\n";
        assert_eq!(nvcc_release(banner), Some((13, 0)));
        assert_eq!(
            nvcc_release("Cuda compilation tools, release 12.9, V12.9.41"),
            Some((12, 9))
        );
    }

    #[test]
    fn nvcc_release_rejects_output_without_a_release() {
        assert_eq!(nvcc_release(""), None);
        assert_eq!(nvcc_release("nvcc: command not found"), None);
        assert_eq!(nvcc_release("release thirteen, V13"), None);
    }

    #[test]
    fn compute_cap_accepts_what_the_kernel_builder_does() {
        for good in ["90", "80", "90a", "100f", "120"] {
            assert_eq!(parse_compute_cap(good).as_deref(), Ok(good));
        }
        for bad in ["", "9", "9.0", "sm_90", "90b", "90aa", "1000", "a90"] {
            assert!(parse_compute_cap(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn stamp_is_current_only_for_these_pins() {
        assert!(stamp_is_current(&render_stamp(&toolkit_pins())));
        assert!(!stamp_is_current(""));
        let mut other = toolkit_pins();
        other[0] = Pin::new("nvidia-cuda-nvcc", "13.5.37");
        assert!(!stamp_is_current(&render_stamp(&other)));
    }

    #[test]
    fn toolkit_pins_share_the_cuda_release() {
        let release = format!("=={}.{}.", CUDA_RELEASE.0, CUDA_RELEASE.1);
        for pin in toolkit_pins() {
            assert!(pin.to_string().contains(&release), "{pin}");
        }
    }

    #[test]
    fn toolkit_lives_next_to_the_setup_venv() {
        let cache = Path::new("/cache/inference-server");
        let dir = toolkit_dir(&runtimes_in(cache)).unwrap();
        assert_eq!(dir, cache.join(TOOLKIT_DIR));
        assert_eq!(
            Toolkit::in_dir(&dir).nvcc(),
            cache.join("cuda-toolkit/nvidia/cu13/bin/nvcc")
        );
    }

    #[test]
    fn check_env_puts_nvcc_first_on_path_and_keeps_the_rest() {
        let cache = Path::new("/cache");
        let toolkit = Toolkit::in_dir(&cache.join(TOOLKIT_DIR));
        let env = check_env(
            &toolkit,
            &runtimes_in(cache),
            "90",
            Some("/usr/bin:/bin".into()),
        )
        .unwrap();
        let path: Vec<PathBuf> = std::env::split_paths(value_of(&env, "PATH")).collect();
        assert_eq!(path, [toolkit.bin_dir(), "/usr/bin".into(), "/bin".into()]);
        assert_eq!(value_of(&env, "NVCC"), toolkit.nvcc().as_os_str());
        assert_eq!(value_of(&env, "CUDA_HOME"), toolkit.root.as_os_str());
        assert_eq!(value_of(&env, "CUDA_COMPUTE_CAP"), "90");
        assert_eq!(
            value_of(&env, "LIBTORCH"),
            runtimes_in(cache).libtorch.as_os_str()
        );
        assert!(env.iter().any(|(name, _)| *name == "ORT_DYLIB_PATH"));
    }

    #[test]
    fn check_env_without_an_inherited_path_has_only_nvcc() {
        let toolkit = Toolkit::in_dir(Path::new("/cache/cuda-toolkit"));
        let env = check_env(&toolkit, &runtimes_in(Path::new("/cache")), "90", None).unwrap();
        assert_eq!(value_of(&env, "PATH"), toolkit.bin_dir().as_os_str());
    }

    #[test]
    fn clippy_covers_every_backend_with_cuda_and_denies_warnings() {
        let args = clippy_args(Path::new("/repo/target/cuda-check"));
        let args: Vec<&str> = args.iter().map(|arg| arg.to_str().unwrap()).collect();
        let features = args[args.iter().position(|arg| *arg == "--features").unwrap() + 1];
        for feature in ["ort", "tch", "cuda"] {
            assert!(
                features
                    .split(',')
                    .any(|f| f == format!("inference-server/{feature}")),
                "{features}"
            );
        }
        assert!(args.contains(&"--workspace") && args.contains(&"--all-targets"));
        assert!(!args.contains(&"--all-features"));
        assert!(args.ends_with(&["--", "-D", "warnings"]));
        let target = args.iter().position(|arg| *arg == "--target-dir").unwrap();
        assert_eq!(args[target + 1], "/repo/target/cuda-check");
    }
}
