use clap::Parser;
use inference_server::{Cli, Config};
use std::process::ExitCode;

// Request handling allocates many small, short-lived buffers on every worker thread; glibc's
// allocator spent about a tenth of the server's time on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    inference_server::allocator::configure();
    #[cfg(feature = "candle")]
    fix_candle_thread_count();
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

/// candle's CPU matmul looks up its thread count on every call: `RAYON_NUM_THREADS`, else
/// the physical core count, which it counts by reading `/proc/cpuinfo` anew each time. Setting the variable to that same count once
/// makes every lookup an environment read and changes nothing else.
#[cfg(feature = "candle")]
#[allow(unsafe_code)]
fn fix_candle_thread_count() {
    const VARIABLE: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(VARIABLE).is_none() {
        // SAFETY: the first statement of `main`, before any other thread exists, so
        // nothing can read the environment concurrently.
        unsafe { std::env::set_var(VARIABLE, num_cpus::get_physical().to_string()) };
    }
}
