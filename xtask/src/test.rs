//! `cargo xtask test`: formatting, lints and tests, with every backend that builds here.

use crate::export;
use crate::process::{format_duration, workspace_root};
use crate::setup::{self, Runtimes};
use anyhow::{Context, Result, bail};
use std::process::Command;
use std::time::{Duration, Instant};

/// Server features that compile in the backends needing runtime libraries. `--all-features`
/// is never used: the `cuda` features need a CUDA toolkit that CI machines lack.
const BACKEND_FEATURES: &[&str] = &["inference-server/ort", "inference-server/tch"];

/// Crates that cannot build or test without the runtimes; `--quick` leaves them out.
const RUNTIME_CRATES: &[&str] = &["inference-backend-ort", "inference-backend-tch"];

/// Set by users of the pip build of tch; it would make torch-sys ignore `LIBTORCH`.
const CONFLICTING_VARS: &[&str] = &["LIBTORCH_USE_PYTORCH"];

/// Makes the ResNet-18 tests fail instead of skipping when the model is not exported
/// (read by `inference_core::conformance::resnet18_manifest`).
const REQUIRE_RESNET18: (&str, &str) = ("REQUIRE_RESNET18", "1");

#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Skips runtime setup, the ort/tch backends and fuzzing: candle only, nothing to download.
    #[arg(long)]
    quick: bool,
}

/// One cargo invocation of the test run.
#[derive(Debug, PartialEq, Eq)]
struct CargoStep {
    name: &'static str,
    args: Vec<String>,
    /// Environment variables set for this step only.
    env: Vec<(&'static str, &'static str)>,
}

impl CargoStep {
    fn new(name: &'static str, args: &[&str]) -> Self {
        Self::around(name, args, &[], &[])
    }

    /// `head`, then the package selection, then `tail`.
    fn around(name: &'static str, head: &[&str], selection: &[String], tail: &[&str]) -> Self {
        let head = head.iter().map(|arg| (*arg).to_owned());
        let tail = tail.iter().map(|arg| (*arg).to_owned());
        Self {
            name,
            args: head.chain(selection.iter().cloned()).chain(tail).collect(),
            env: Vec::new(),
        }
    }
}

/// Which crates and features clippy and the tests cover.
fn package_selection(quick: bool) -> Vec<String> {
    let mut args = vec!["--workspace".to_owned()];
    if quick {
        for krate in RUNTIME_CRATES {
            args.extend(["--exclude".to_owned(), (*krate).to_owned()]);
        }
    } else if !BACKEND_FEATURES.is_empty() {
        args.extend(["--features".to_owned(), BACKEND_FEATURES.join(",")]);
    }
    args
}

fn plan(quick: bool) -> Vec<CargoStep> {
    let selection = package_selection(quick);
    let lint_tail = ["--all-targets", "--", "-D", "warnings"];
    let mut test = CargoStep::around("test", &["test"], &selection, &[]);
    // The full run exports ResNet-18 first (`ensure_resnet18`), so a skip would hide a bug.
    if !quick {
        test.env.push(REQUIRE_RESNET18);
    }
    vec![
        CargoStep::new("fmt", &["fmt", "--all", "--", "--check"]),
        CargoStep::around("clippy", &["clippy"], &selection, &lint_tail),
        test,
    ]
}

pub(crate) fn run(args: &TestArgs) -> Result<()> {
    let steps = plan(args.quick);
    let mut commands = cargo_commands(&steps);
    if !args.quick {
        let runtimes = timed_setup()?;
        for command in &mut commands {
            point_at_runtimes(command, &runtimes);
        }
        for (name, value) in runtimes.build_env() {
            eprintln!("env {name}={}", value.display());
        }
        export::ensure_resnet18(&runtimes)?;
    }
    let mut timings = run_steps(&steps, &mut commands)?;
    if !args.quick {
        crate::clients::run().context("step `check-clients` failed")?;
        crate::ui_check::run().context("step `check-ui` failed")?;
    }
    timings.push(soak_step()?);
    if !args.quick {
        timings.push(fuzz_step()?);
    }
    for (name, took) in timings {
        eprintln!("  {name:<7} {}", format_duration(took));
    }
    eprintln!("all {} steps passed", steps.len());
    Ok(())
}

/// Minutes of the soak every test run includes: every kind of traffic, a dozen bursts past
/// capacity and enough samples per quarter to compare, in about half a minute.
const SOAK_MINS: f64 = 0.5;

/// A bounded `cargo xtask soak` (release server, candle only), timed like the cargo steps.
fn soak_step() -> Result<(&'static str, Duration)> {
    eprintln!("==> soak: {SOAK_MINS} min of mixed traffic against the release server");
    let started = Instant::now();
    let args = crate::soak::SoakArgs {
        mins: SOAK_MINS,
        out: None,
    };
    crate::soak::run(&args).context("step `soak` failed")?;
    let took = started.elapsed();
    eprintln!("<== soak passed in {}", format_duration(took));
    Ok(("soak", took))
}

/// Seconds each fuzz target runs in a full test run: the committed corpus replays and the
/// fuzzers mutate past it, in about a minute for the three targets.
const FUZZ_SECS: u64 = 20;

/// A bounded `cargo xtask fuzz` (every target), timed like the cargo steps. `--quick` leaves
/// it out: it installs cargo-afl, which builds AFL++ from source.
fn fuzz_step() -> Result<(&'static str, Duration)> {
    eprintln!("==> fuzz: {FUZZ_SECS}s per target, from the committed corpus");
    let started = Instant::now();
    let args = crate::fuzz::FuzzArgs::every_target(FUZZ_SECS);
    crate::fuzz::run(&args).context("step `fuzz` failed")?;
    let took = started.elapsed();
    eprintln!("<== fuzz passed in {}", format_duration(took));
    Ok(("fuzz", took))
}

fn cargo_commands(steps: &[CargoStep]) -> Vec<Command> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    steps
        .iter()
        .map(|step| {
            let mut command = Command::new(&cargo);
            command
                .args(&step.args)
                .envs(step.env.iter().copied())
                .current_dir(&root);
            command
        })
        .collect()
}

fn timed_setup() -> Result<Runtimes> {
    eprintln!("==> setup: runtimes for the ort and tch backends");
    let started = Instant::now();
    let runtimes = setup::ensure_installed().context("step `setup` failed")?;
    eprintln!("<== setup done in {}", format_duration(started.elapsed()));
    Ok(runtimes)
}

/// The same variables on every step, so cargo never rebuilds torch-sys between them.
fn point_at_runtimes(command: &mut Command, runtimes: &Runtimes) {
    for (name, value) in runtimes.build_env() {
        command.env(name, value);
    }
    for name in CONFLICTING_VARS {
        command.env_remove(name);
    }
}

/// Runs the steps in order and stops at the first failure.
fn run_steps(
    steps: &[CargoStep],
    commands: &mut [Command],
) -> Result<Vec<(&'static str, Duration)>> {
    let mut timings = Vec::with_capacity(steps.len());
    for (index, (step, command)) in steps.iter().zip(commands).enumerate() {
        let line = format!("cargo {}", step.args.join(" "));
        eprintln!("==> [{}/{}] {}: {line}", index + 1, steps.len(), step.name);
        let started = Instant::now();
        let status = command.status();
        let took = started.elapsed();
        match status {
            Ok(status) if status.success() => {
                eprintln!("<== {} passed in {}", step.name, format_duration(took));
                timings.push((step.name, took));
            }
            Ok(status) => bail!(
                "step `{}` failed ({status}) after {}: {line}",
                step.name,
                format_duration(took)
            ),
            Err(error) => bail!("step `{}` could not start `{line}`: {error}", step.name),
        }
    }
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of<'a>(steps: &'a [CargoStep], name: &str) -> &'a [String] {
        &steps.iter().find(|step| step.name == name).unwrap().args
    }

    #[test]
    fn full_plan_checks_format_lints_and_tests_in_order() {
        let names: Vec<&str> = plan(false).iter().map(|step| step.name).collect();
        assert_eq!(names, ["fmt", "clippy", "test"]);
    }

    #[test]
    fn full_plan_enables_the_backend_features_but_never_all_features() {
        let steps = plan(false);
        let features = BACKEND_FEATURES.join(",");
        for name in ["clippy", "test"] {
            let args = args_of(&steps, name);
            assert!(args.contains(&"--workspace".to_owned()), "{args:?}");
            assert!(args.contains(&features), "{args:?}");
        }
        assert!(
            steps
                .iter()
                .all(|step| !step.args.contains(&"--all-features".to_owned()))
        );
    }

    #[test]
    fn clippy_denies_warnings_on_all_targets() {
        let steps = plan(false);
        let clippy = args_of(&steps, "clippy").join(" ");
        assert!(clippy.contains("--all-targets"), "{clippy}");
        assert!(clippy.ends_with("-- -D warnings"), "{clippy}");
    }

    #[test]
    fn only_the_full_test_step_requires_the_resnet18_export() {
        let full = plan(false);
        for step in &full {
            let required = step.env.contains(&REQUIRE_RESNET18);
            assert_eq!(required, step.name == "test", "{step:?}");
        }
        assert!(plan(true).iter().all(|step| step.env.is_empty()));
        let commands = cargo_commands(&full);
        let test = commands.last().unwrap();
        let envs: Vec<_> = test.get_envs().collect();
        let (name, value) = REQUIRE_RESNET18;
        assert!(
            envs.contains(&(name.as_ref(), Some(value.as_ref()))),
            "{envs:?}"
        );
    }

    #[test]
    fn quick_plan_leaves_out_the_runtime_crates_and_features() {
        let steps = plan(true);
        for name in ["clippy", "test"] {
            let args = args_of(&steps, name).join(" ");
            assert!(!args.contains("--features"), "{args}");
            for krate in RUNTIME_CRATES {
                assert!(args.contains(&format!("--exclude {krate}")), "{args}");
            }
        }
    }

    #[test]
    fn steps_get_the_runtime_paths_and_lose_conflicting_variables() {
        let runtimes = Runtimes {
            python: "/venv/bin/python".into(),
            libtorch: "/site/torch".into(),
            ort_dylib: "/site/onnxruntime/capi/libonnxruntime.so".into(),
        };
        let mut command = Command::new("cargo");
        point_at_runtimes(&mut command, &runtimes);
        let envs: Vec<(String, Option<String>)> = command
            .get_envs()
            .map(|(name, value)| {
                let value = value.map(|value| value.to_string_lossy().into_owned());
                (name.to_string_lossy().into_owned(), value)
            })
            .collect();
        assert!(envs.contains(&("LIBTORCH".into(), Some("/site/torch".into()))));
        let dylib = Some("/site/onnxruntime/capi/libonnxruntime.so".into());
        assert!(envs.contains(&("ORT_DYLIB_PATH".into(), dylib)));
        assert!(
            envs.contains(&("LIBTORCH_USE_PYTORCH".into(), None)),
            "{envs:?}"
        );
    }

    #[test]
    fn run_steps_stops_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("third-ran");
        let steps = [
            CargoStep::new("first", &[]),
            CargoStep::new("second", &[]),
            CargoStep::new("third", &[]),
        ];
        let mut third = Command::new("touch");
        third.arg(&marker);
        let mut commands = [Command::new("true"), Command::new("false"), third];
        let error = run_steps(&steps, &mut commands).unwrap_err().to_string();
        assert!(error.starts_with("step `second` failed"), "{error}");
        assert!(!marker.exists(), "the step after the failure ran");
    }

    #[test]
    fn run_steps_times_every_passing_step() {
        let steps = [CargoStep::new("only", &[])];
        let timings = run_steps(&steps, &mut [Command::new("true")]).unwrap();
        assert_eq!(timings.len(), 1);
        assert_eq!(timings[0].0, "only");
    }
}
