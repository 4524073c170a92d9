//! Logging: a `RUST_LOG`-style filter, text or JSON lines on stderr. The one line per
//! request is written by `crate::edge`.

use crate::config::LogConfig;
use std::io::IsTerminal;
use std::sync::Mutex;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` wins over the configured filter. Lines go
/// to stderr from a thread of their own, so a request never waits on a write: under load
/// that thread writes many lines per system call; call [`finish`] before the process
/// exits, or the lines still queued are lost. A second call (tests start several servers in one process)
/// keeps the first subscriber.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.filter.as_str()));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // A full queue slows the logging threads down rather than losing lines.
        .lossy(false)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only help a person at a terminal; in files and collectors they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let installed = if config.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        *lock_writer() = Some(guard);
    }
}

/// Writes every queued line and stops the log thread; later lines are dropped.
pub fn finish() {
    drop(lock_writer().take());
}

/// The log thread's handle: dropping it writes what is queued and joins the thread.
static LOG_WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

fn lock_writer() -> std::sync::MutexGuard<'static, Option<WorkerGuard>> {
    LOG_WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
