//! Running child processes and showing progress: shared by every subcommand.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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

/// Runs `command` to completion, handing every line of its stdout and stderr to `on_line`
/// as it comes (from two reader threads), and returns its exit status.
pub(crate) fn run_lines<F>(command: &mut Command, on_line: F) -> Result<ExitStatus>
where
    F: Fn(String) + Clone + Send + 'static,
{
    let line = display(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_handler = on_line.clone();
    let stderr_reader = thread::spawn(move || for_each_line(stderr, &stderr_handler));
    for_each_line(child.stdout.take().expect("stdout is piped"), &on_line);
    // The reader thread only ends when the pipe closes; a panic there would be a bug in it.
    stderr_reader.join().expect("stderr reader thread panicked");
    child
        .wait()
        .with_context(|| format!("cannot wait for `{line}`"))
}

fn for_each_line(stream: impl Read, on_line: &impl Fn(String)) {
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .for_each(on_line);
}

/// Runs `command`, echoing its output above the spinner so both stay readable.
pub(crate) fn run_streamed(command: &mut Command, bar: &ProgressBar) -> Result<()> {
    let bar_for_lines = bar.clone();
    let status = run_lines(command, move |line| {
        // A hidden bar (no terminal) drops `println`, so print directly instead.
        if bar_for_lines.is_hidden() {
            eprintln!("{line}");
        } else {
            bar_for_lines.println(format!("  {line}"));
        }
    })?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(command));
    }
    Ok(())
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

/// Installs Debian `packages` (as root, `apt-get`) unless every one of `binaries` exists.
pub(crate) fn ensure_debian_packages(
    binaries: &[&str],
    packages: &[&str],
    bar: &ProgressBar,
) -> Result<()> {
    if binaries.iter().all(|binary| Path::new(binary).is_file()) {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    anyhow::ensure!(
        root,
        "{} missing: install them with `sudo apt-get install {}`, then run this again",
        binaries.join(" or "),
        packages.join(" ")
    );
    let install = [&["install", "-y", "-qq"][..], packages].concat();
    for args in [&["update", "-qq"][..], &install] {
        let mut command = Command::new("apt-get");
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_streamed(&mut command, bar)
            .with_context(|| format!("apt-get {} failed", args.join(" ")))?;
    }
    Ok(())
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
    fn run_lines_hands_over_both_streams_and_the_status() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        let status = run_lines(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 4"]),
            move |line| sink.lock().unwrap().push(line),
        )
        .unwrap();
        assert_eq!(status.code(), Some(4));
        let mut lines = seen.lock().unwrap().clone();
        lines.sort();
        assert_eq!(lines, ["err", "out"]);
    }

    #[test]
    fn run_streamed_fails_on_a_non_zero_exit() {
        let bar = ProgressBar::hidden();
        assert!(run_streamed(Command::new("true").arg("ignored"), &bar).is_ok());
        let error = run_streamed(Command::new("sh").args(["-c", "exit 2"]), &bar).unwrap_err();
        assert!(error.to_string().contains("failed"), "{error}");
    }

    #[test]
    fn format_duration_keeps_one_decimal() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
    }
}
