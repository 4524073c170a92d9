//! `cargo xtask bench <name>`: benchmarks, kept out of `cargo test` because they take
//! seconds per case and their numbers depend on the machine.

use crate::process::{display, workspace_root};
use anyhow::{Context, Result, bail};
use std::process::Command;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Requests/s and p50/p99 latency of POST /predict with the scheduler merging rows
    /// into one forward pass versus one row per pass (release build, candle backend).
    Batching(BatchingArgs),
}

/// Flags left unset take the example's defaults, so they are written down in one place.
#[derive(Debug, Default, clap::Args)]
struct BatchingArgs {
    /// Seconds measured per cell [example default: 3].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before measuring [example default: 0.5].
    #[arg(long)]
    warmup: Option<f64>,
    /// Comma-separated client counts [example default: 1,16,64].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Engine workers, each with its own model instance [example default: 1].
    #[arg(long)]
    instances: Option<usize>,
    /// Most rows per forward pass when merging [example default: 32, the server's].
    #[arg(long)]
    max_batch_size: Option<usize>,
}

impl BatchingArgs {
    /// The example's command line: only the flags that were given.
    fn forwarded(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                args.extend([format!("--{name}"), value]);
            }
        };
        flag("duration", self.duration.map(|v| v.to_string()));
        flag("warmup", self.warmup.map(|v| v.to_string()));
        let concurrency: Vec<String> = self.concurrency.iter().map(usize::to_string).collect();
        flag(
            "concurrency",
            (!concurrency.is_empty()).then(|| concurrency.join(",")),
        );
        flag("instances", self.instances.map(|v| v.to_string()));
        flag("max-batch-size", self.max_batch_size.map(|v| v.to_string()));
        args
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Batching(batching) => run_example("bench_batching", &batching.forwarded()),
    }
}

/// Builds and runs a server example in release mode, its output straight to the terminal.
fn run_example(example: &str, args: &[String]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["run", "--release", "-p", "inference-server", "--example"])
        .arg(example)
        .arg("--")
        .args(args)
        .current_dir(workspace_root());
    let line = display(&command);
    eprintln!("==> {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_are_left_to_the_example() {
        assert!(BatchingArgs::default().forwarded().is_empty());
    }

    #[test]
    fn given_flags_are_forwarded_with_their_values() {
        let args = BatchingArgs {
            duration: Some(1.5),
            concurrency: vec![2, 8],
            instances: Some(2),
            ..BatchingArgs::default()
        };
        assert_eq!(
            args.forwarded(),
            [
                "--duration",
                "1.5",
                "--concurrency",
                "2,8",
                "--instances",
                "2"
            ]
        );
    }
}
