use clap::Parser;
use inference_server::{Cli, Config};
use std::process::ExitCode;

// Request handling allocates many small, short-lived buffers on every worker thread; glibc's
// allocator spent about a tenth of the server's time on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    inference_server::telemetry::init(&config.log);
    for name in inference_server::config::ignored_environment() {
        tracing::warn!(variable = %name, "not configuration (those are INFERENCE_<SECTION>__<KEY>): ignored");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(inference_server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain joined, never a backtrace.
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
