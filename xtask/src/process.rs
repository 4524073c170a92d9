//! Running child processes and showing progress: shared by every subcommand.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The workspace root, so that commands behave the same from any working directory.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A shell-like rendering of a command, for progress lines and error messages.
pub(crate) fn display(command: &Command) -> String {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .get_args()
        .map(OsStr::to_string_lossy)
        .fold(program, |line, arg| format!("{line} {arg}"))
}

/// Runs `command` and returns its stdout; stderr is kept for the error message.
pub(crate) fn capture(command: &mut Command) -> Result<String> {
    let line = display(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{line}` failed ({}): {}", output.status, stderr.trim());
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

/// Runs `command`, echoing its output above the spinner so both stay readable.
pub(crate) fn run_streamed(command: &mut Command, bar: &ProgressBar) -> Result<()> {
    let line = display(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_bar = bar.clone();
    let stderr_echo = thread::spawn(move || echo_lines(stderr, &stderr_bar));
    echo_lines(child.stdout.take().expect("stdout is piped"), bar);
    // The echo thread only ends when the pipe closes; a panic there would be a bug in it.
    stderr_echo.join().expect("stderr echo thread panicked");
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn echo_lines(stream: impl Read, bar: &ProgressBar) {
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        // A hidden bar (no terminal) drops `println`, so print directly instead.
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(format!("  {line}"));
        }
    }
}

/// Numbered steps, each shown as a spinner that ends with its duration.
#[derive(Debug)]
pub(crate) struct Steps {
    total: usize,
    started: usize,
}

impl Steps {
    pub(crate) fn new(total: usize) -> Self {
        Self { total, started: 0 }
    }

    /// Runs one step; `work` gets the spinner to print child output through.
    pub(crate) fn run<T>(
        &mut self,
        title: &str,
        work: impl FnOnce(&ProgressBar) -> Result<T>,
    ) -> Result<T> {
        self.started += 1;
        let bar = spinner(format!("[{}/{}]", self.started, self.total), title);
        let started = Instant::now();
        let result = work(&bar);
        let elapsed = format_duration(started.elapsed());
        match &result {
            Ok(_) => finish(&bar, format!("{title}: done in {elapsed}")),
            Err(_) => finish(&bar, format!("{title}: FAILED after {elapsed}")),
        }
        result
    }
}

fn spinner(prefix: String, title: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
                .expect("the spinner template is valid"),
        )
        .with_prefix(prefix)
        .with_message(title.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn finish(bar: &ProgressBar, message: String) {
    if bar.is_hidden() {
        eprintln!("{} {message}", bar.prefix());
    }
    bar.set_style(ProgressStyle::with_template("{prefix} {msg}").expect("the template is valid"));
    bar.finish_with_message(message);
}

/// Seconds with one decimal: precise enough for steps that take from 0.1 s to minutes.
pub(crate) fn format_duration(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_joins_program_and_arguments() {
        let mut command = Command::new("cargo");
        command.args(["fmt", "--all"]);
        assert_eq!(display(&command), "cargo fmt --all");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn capture_reports_the_failing_command() {
        let error = capture(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("sh -c"), "{error}");
        assert!(error.contains("oops"), "{error}");
    }

    #[test]
    fn format_duration_keeps_one_decimal() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
    }
}
