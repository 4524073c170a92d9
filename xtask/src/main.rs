//! Developer chores that `cargo test` alone cannot do: `cargo xtask <command>`.
//!
//! Each subcommand lives in its own module and exposes one `run` function; adding a
//! command means adding a module, a `Task` variant and one match arm.

mod bench;
mod clients;
mod cluster;
mod cuda;
mod export;
mod fuzz;
mod gpu;
mod images;
mod peers;
mod process;
mod setup;
mod soak;
mod test;
mod ui_check;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(about = "Development tasks for the inference server workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Installs the libtorch and ONNX Runtime libraries into a cache outside the repo.
    Setup,
    /// Prints `export` lines that point builds at the installed runtimes.
    Env,
    /// Checks formatting and lints, then runs every test with every backend.
    Test(test::TestArgs),
    /// Regenerates the example model files with the setup venv's Python.
    ExportModels(export::ExportArgs),
    /// Benchmarks in release mode, e.g. `bench batching`: merged versus unmerged batching.
    Bench(bench::BenchArgs),
    /// Runs mixed traffic against the release server for `--mins N` and fails on a lost
    /// request or a resource (memory, descriptors, threads, queue) that keeps growing.
    Soak(soak::SoakArgs),
    /// Runs the seed page's Python and JavaScript clients, unmodified, against the server.
    CheckClients,
    /// Drives the browser page (`/ui`) in headless Chromium; screenshots in `target/ui/`.
    CheckUi,
    /// Replicas behind HAProxy through a rolling restart and a crash, under load.
    Cluster(cluster::ClusterArgs),
    /// Proves that every backend's CUDA code compiles, with nvcc from PyPI and no GPU (slow).
    CheckCuda(cuda::CheckCudaArgs),
    /// Runs every backend's conformance suite on a CUDA GPU and prints per-batch timings.
    GpuCheck(gpu::GpuCheckArgs),
    /// Fuzzes the parsers of client bytes (AFL++ on stable), e.g. `fuzz --secs 60` per target.
    Fuzz(fuzz::FuzzArgs),
    /// Builds the images of deploy/docker/ (buildah) and checks each under podman.
    Images(images::ImagesArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole context chain; no backtrace, whatever RUST_BACKTRACE says.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Env => setup::print_env(),
        Task::Test(args) => test::run(&args),
        Task::ExportModels(args) => export::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Soak(args) => soak::run(&args),
        Task::CheckClients => clients::run(),
        Task::CheckUi => ui_check::run(),
        Task::Cluster(args) => cluster::run(&args),
        Task::CheckCuda(args) => cuda::run(&args),
        Task::GpuCheck(args) => gpu::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Images(args) => images::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
