use clap::Parser;
use inference_server::{Cli, Config};
use std::process::ExitCode;

// Request handling allocates many small, short-lived buffers on every worker thread; glibc's
// allocator spent about a tenth of the server's time on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    inference_server::allocator::configure();
    // SAFETY: the first statements of `main`, before any other thread exists.
    #[cfg(feature = "candle")]
    #[allow(unsafe_code)]
    unsafe {
        inference_server::backends::fix_candle_thread_count();
    }
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
            inference_server::telemetry::finish();
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(inference_server::run(config));
    inference_server::telemetry::finish();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain joined, never a backtrace.
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
