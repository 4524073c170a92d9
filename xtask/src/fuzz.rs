//! `cargo xtask fuzz`: runs the coverage-guided fuzz targets of `fuzz/` (AFL++ through
//! afl.rs, which builds on the stable toolchain) from their committed corpus for a bounded
//! time, and fails when a target crashed or hung.

use crate::process::{capture, display, format_duration, workspace_root};
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The cargo-afl release installed when it is missing. The `afl` crate in fuzz/Cargo.toml
/// is pinned to the same version: it links the AFL++ runtime that this release builds.
const CARGO_AFL_VERSION: &str = "0.18.2";

/// One binary in fuzz/src/bin and one seed corpus in fuzz/corpus per target.
const TARGETS: &[&str] = &["json_sample", "seed_bodies", "image", "v2_binary"];

/// Makes afl-fuzz run unattended on any machine: no screen, no CPU frequency or core dump
/// settings to fix first, and no failure when every core is already bound to a fuzzer. An
/// input counts as a hang only when it runs past 5 s, not AFL's default 1 s: a large
/// picture that decodes in 0.3 s took over 1 s on a machine busy compiling.
const AFL_ENV: &[(&str, &str)] = &[
    ("AFL_NO_UI", "1"),
    ("AFL_SKIP_CPUFREQ", "1"),
    ("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1"),
    ("AFL_TRY_AFFINITY", "1"),
    ("AFL_HANG_TMOUT", "5000"),
];

#[derive(Debug, clap::Args)]
pub(crate) struct FuzzArgs {
    /// Seconds of fuzzing for each target; the targets run one after the other, so all
    /// four take about 4 x N seconds, plus the build.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Fuzzes only this target.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: Option<String>,
}

impl FuzzArgs {
    /// Every target for `secs` seconds each, as `cargo xtask test` runs them.
    pub(crate) fn every_target(secs: u64) -> Self {
        Self { secs, target: None }
    }
}

pub(crate) fn run(args: &FuzzArgs) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let dir = workspace_root().join("fuzz");
    let target_dir = dir.join("target");
    ensure_cargo_afl(&cargo)?;
    build(&cargo, &dir, &target_dir)?;
    let targets: Vec<&str> = match &args.target {
        Some(name) => vec![name.as_str()],
        None => TARGETS.to_vec(),
    };
    let mut findings = Vec::new();
    for target in targets {
        findings.extend(fuzz(&cargo, &dir, &target_dir, target, args.secs)?);
    }
    if !findings.is_empty() {
        for path in &findings {
            eprintln!("  {}", path.display());
        }
        bail!(
            "the fuzzers found {} crashing or hanging input(s); replay one with \
             `fuzz/target/release/<target> < <input>` and add it to \
             crates/server/tests/fuzz_regressions.rs",
            findings.len()
        );
    }
    Ok(())
}

fn ensure_cargo_afl(cargo: &OsString) -> Result<()> {
    let version = capture(Command::new(cargo).args(["afl", "--version"])).unwrap_or_default();
    // `cargo-afl 0.18.2 (AFL++ version 4.40c)`
    if version.split_whitespace().nth(1) == Some(CARGO_AFL_VERSION) {
        return Ok(());
    }
    let mut install = Command::new(cargo);
    install.args([
        "install",
        "cargo-afl",
        "--version",
        CARGO_AFL_VERSION,
        "--locked",
    ]);
    eprintln!("==> {} (also builds AFL++)", display(&install));
    run_status(&mut install)
}

fn build(cargo: &OsString, dir: &Path, target_dir: &Path) -> Result<()> {
    let mut command = Command::new(cargo);
    command
        .args(["afl", "build", "--release", "--bins"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(dir);
    eprintln!("==> {}", display(&command));
    run_status(&mut command)
}

fn run_status(command: &mut Command) -> Result<()> {
    let line = display(command);
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Fuzzes one target for `secs` seconds from its committed corpus into a fresh output
/// folder, prints one line of figures, and returns its crashing and hanging inputs.
fn fuzz(
    cargo: &OsString,
    dir: &Path,
    target_dir: &Path,
    target: &str,
    secs: u64,
) -> Result<Vec<PathBuf>> {
    let out = target_dir.join("afl").join(target);
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("cannot remove {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // afl-fuzz prints a line per queue entry without its screen: that goes to a log.
    let log_path = out.join("afl-fuzz.log");
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(cargo);
    command
        .arg("afl")
        .arg("fuzz")
        .args(["-V", &secs.to_string(), "-i"])
        .arg(dir.join("corpus").join(target))
        .arg("-o")
        .arg(&out)
        .arg(target_dir.join("release").join(target))
        .envs(AFL_ENV.iter().copied())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(dir);
    let line = display(&command);
    eprintln!("==> {target}: {line}");
    let started = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!(
            "`{line}` failed ({status}); its output is in {}",
            log_path.display()
        );
    }
    // `default` is the name of the one (main) fuzzer instance.
    let instance = out.join("default");
    let stats_path = instance.join("fuzzer_stats");
    let stats = std::fs::read_to_string(&stats_path)
        .with_context(|| format!("cannot read {}", stats_path.display()))?;
    let number = |key: &str| stat(&stats, key).unwrap_or_default();
    let findings: Vec<PathBuf> = ["crashes", "hangs"]
        .iter()
        .flat_map(|kind| saved_inputs(&instance.join(kind)))
        .collect();
    println!(
        "{target}: {} execs in {}s ({} in all), corpus {} ({} new), {} of {} edges, \
         {} crashes, {} hangs",
        number("execs_done"),
        number("run_time"),
        format_duration(started.elapsed()),
        number("corpus_count"),
        number("corpus_found"),
        number("edges_found"),
        number("total_edges"),
        number("saved_crashes"),
        number("saved_hangs"),
    );
    Ok(findings)
}

/// One number of a `fuzzer_stats` file, whose lines read `name : value`.
fn stat(stats: &str, key: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim().parse().ok())?
    })
}

/// The inputs afl-fuzz saved in a `crashes` or `hangs` folder (each named `id:...`, next
/// to a README).
fn saved_inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut inputs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("id:"))
        })
        .collect();
    inputs.sort();
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_read_by_name() {
        let stats = "start_time        : 1795979782\nexecs_done        : 885091\n\
                     bitmap_cvg        : 30.68%\nsaved_crashes     : 2\n";
        assert_eq!(stat(stats, "execs_done"), Some(885_091));
        assert_eq!(stat(stats, "saved_crashes"), Some(2));
        assert_eq!(stat(stats, "bitmap_cvg"), None);
        assert_eq!(stat(stats, "saved_hangs"), None);
    }

    #[test]
    fn only_saved_inputs_are_findings() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["README.txt", "id:000001,sig:06", "id:000000,sig:06"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let names: Vec<String> = saved_inputs(dir.path())
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["id:000000,sig:06", "id:000001,sig:06"]);
        assert!(saved_inputs(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn every_target_has_a_binary_and_a_corpus() {
        let fuzz = workspace_root().join("fuzz");
        for target in TARGETS {
            let binary = fuzz.join("src/bin").join(format!("{target}.rs"));
            assert!(binary.is_file(), "{}", binary.display());
            let corpus = fuzz.join("corpus").join(target);
            assert!(corpus.read_dir().unwrap().next().is_some(), "{target}");
        }
    }

    #[test]
    fn the_afl_crate_is_pinned_to_the_installed_cargo_afl() {
        let manifest = std::fs::read_to_string(workspace_root().join("fuzz/Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("afl = \"={CARGO_AFL_VERSION}\"")),
            "fuzz/Cargo.toml must pin afl to {CARGO_AFL_VERSION}"
        );
    }
}
