//! What the benchmark examples share: the release server binary as a child process, and
//! the charts' axes and colours (`chart`).
// Each example uses part of it.
#![allow(dead_code)]

pub(crate) mod chart;

/// The server's process settings, for a benchmark that runs engines in-process: its
/// allocator's options and candle's thread count (see `main.rs` of the server).
///
/// # Safety
///
/// It sets an environment variable: call it before the process starts any other thread.
#[allow(unsafe_code)]
pub(crate) unsafe fn configure_like_the_server() {
    inference_server::allocator::configure();
    #[cfg(feature = "candle")]
    // SAFETY: the caller's promise that no other thread exists yet.
    unsafe {
        inference_server::backends::fix_candle_thread_count();
    }
}

use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The release server binary running as a child process on a free port.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) pid: u32,
    /// `host:port`.
    pub(crate) addr: String,
    /// What the server wrote to stderr beyond its startup lines, its one line per request
    /// left out: warnings, errors and what it logs of its own life.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    /// From the start of the process until its ready path first answered 200.
    pub(crate) ready_after: Duration,
}

impl ServerProcess {
    /// Starts `binary` on port 0 with `envs` set, learns the port from its "listening on"
    /// line and waits until `/health` answers 200.
    pub(crate) async fn start(
        binary: &Path,
        model_dir: &Path,
        envs: &[(&str, String)],
    ) -> Result<Self> {
        let mut command = Command::new(binary);
        command
            .args(["--port", "0", "--grpc-port", "0", "--model-dir"])
            .arg(model_dir)
            // One line per request would cost the server more than the requests do.
            .env("RUST_LOG", "warn,inference_server::serve=info")
            .envs(envs.iter().map(|(name, value)| (name, value)));
        Self::spawn(command, "/health").await
    }

    /// Starts `command`, which must log `listening on http://ADDR` on stderr, and waits
    /// until `ready_path` answers 200.
    pub(crate) async fn spawn(mut command: Command, ready_path: &str) -> Result<Self> {
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let pid = child.id().context("the server exited at once")?;
        let mut lines =
            BufReader::with_capacity(1 << 16, child.stderr.take().context("stderr is piped")?)
                .lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    return Ok(addr);
                }
                log.lock().unwrap().push(line);
            }
            bail!("the server exited: {:?}", log.lock().unwrap())
        })
        .await
        .context("the server did not log its address within 60 s")??;
        let sink = Arc::clone(&log);
        let mut stderr = lines.into_inner();
        tokio::spawn(async move {
            // This process shares the cores with the server under load, and the server
            // writes a line per request at the default filter (tens of thousands a
            // second): each line is looked at in place, without a `String` of its own.
            let request_line = memchr::memmem::Finder::new("inference_server::request");
            let mut line = Vec::with_capacity(512);
            loop {
                line.clear();
                match stderr.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // Request lines would pile up by the million under load; warnings and
                // errors are what a run reports.
                if request_line.find(&line).is_none() {
                    let text = String::from_utf8_lossy(&line);
                    sink.lock().unwrap().push(text.trim_end().to_string());
                }
            }
        });
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let health = client
                .get(format!("http://{addr}{ready_path}"))
                .send()
                .await;
            if health.is_ok_and(|response| response.status() == 200) {
                break;
            }
            ensure!(Instant::now() < deadline, "the model never became ready");
            // Often enough to time a start of a few tens of milliseconds.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Self {
            child,
            pid,
            addr,
            log,
            ready_after: started.elapsed(),
        })
    }

    /// Resident memory now, in MiB.
    pub(crate) fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("no VmRSS line in /proc/PID/status")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    /// Moves every thread of the process onto `cpus` (a `taskset` list such as `1-3`).
    /// Threads started later inherit the mask of the thread that starts them.
    pub(crate) fn pin(&self, cpus: &str) -> Result<()> {
        let pid = self.pid.to_string();
        let status = std::process::Command::new("taskset")
            .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid])
            .stdout(Stdio::null())
            .status()
            .context("cannot run taskset")?;
        ensure!(
            status.success(),
            "taskset could not pin process {pid} to {cpus}"
        );
        Ok(())
    }

    /// `http://host:port`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits, at most `within`, for a clean exit.
    pub(crate) async fn stop(mut self, within: Duration) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        ensure!(status.success(), "cannot signal the server");
        let exit = tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("the server did not exit within {within:?} of SIGTERM"))??;
        ensure!(exit.success(), "the server exited with {exit}");
        Ok(())
    }
}

/// Whether `taskset` (util-linux) is there to pin processes to CPUs.
pub(crate) fn can_pin() -> bool {
    std::process::Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `inference-server` in the target folder above this example's.
pub(crate) fn default_server_binary() -> Result<PathBuf> {
    let example = std::env::current_exe()?;
    let profile_dir = example
        .parent()
        .and_then(Path::parent)
        .context("this example is not inside a target folder")?;
    let binary = profile_dir.join("inference-server");
    ensure!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --release -p inference-server`, or pass --server",
        binary.display()
    );
    Ok(binary)
}

/// Another example of this build, in the same folder as the running one.
pub(crate) fn sibling_example(name: &str) -> Result<PathBuf> {
    let example = std::env::current_exe()?;
    let binary = example
        .parent()
        .context("this example has no folder")?
        .join(name);
    ensure!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --release -p inference-server --example {name}`",
        binary.display()
    );
    Ok(binary)
}

/// The `oha` load generator, read through its JSON output.
#[derive(Debug, Clone)]
pub(crate) struct Oha {
    binary: PathBuf,
    /// The CPUs it runs on (a `taskset` list), or wherever the kernel puts it.
    cpus: Option<String>,
}

/// One `oha` run: closed loop, keep-alive, a fixed number of connections.
#[derive(Debug, serde::Serialize)]
pub(crate) struct OhaRun {
    pub(crate) requests_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Answers with a 2xx status.
    pub(crate) ok: u64,
    /// Answers with any other status, and requests that got no answer.
    pub(crate) errors: u64,
    pub(crate) statuses: std::collections::BTreeMap<String, u64>,
}

impl OhaRun {
    /// One figure from rounds of equal length: requests/s their mean (all requests over all
    /// the time), p50 and p99 the median of the rounds' (a round that fell in a slow or
    /// fast spell of the machine moves it no further than its neighbours), counts summed.
    pub(crate) fn combine(rounds: Vec<OhaRun>) -> Result<OhaRun> {
        ensure!(!rounds.is_empty(), "no rounds to combine");
        let median = |pick: fn(&OhaRun) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            if values.len() % 2 == 1 {
                values[middle]
            } else {
                (values[middle - 1] + values[middle]) / 2.0
            }
        };
        let mut statuses = std::collections::BTreeMap::new();
        for round in &rounds {
            for (status, count) in &round.statuses {
                *statuses.entry(status.clone()).or_insert(0) += count;
            }
        }
        Ok(OhaRun {
            requests_per_s: rounds.iter().map(|r| r.requests_per_s).sum::<f64>()
                / rounds.len() as f64,
            p50_ms: median(|r| r.p50_ms),
            p99_ms: median(|r| r.p99_ms),
            ok: rounds.iter().map(|r| r.ok).sum(),
            errors: rounds.iter().map(|r| r.errors).sum(),
            statuses,
        })
    }
}

impl Oha {
    pub(crate) fn new(binary: &Path) -> Result<Self> {
        let version = std::process::Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (cargo install oha, or pass --oha)",
                    binary.display()
                )
            })?;
        ensure!(
            version.status.success(),
            "{} --version failed",
            binary.display()
        );
        Ok(Self {
            binary: binary.to_path_buf(),
            cpus: None,
        })
    }

    /// The same load generator, run on `cpus` only (a `taskset` list such as `0`).
    pub(crate) fn pinned(&self, cpus: &str) -> Self {
        Self {
            binary: self.binary.clone(),
            cpus: Some(cpus.to_string()),
        }
    }

    /// POSTs the JSON in `body` to `url` from `connections` connections for `secs` seconds;
    /// requests still running at the end are waited for, not counted as errors.
    pub(crate) async fn run(
        &self,
        url: &str,
        connections: usize,
        secs: f64,
        body: &Path,
    ) -> Result<OhaRun> {
        self.run_with_headers(url, connections, secs, body, &[])
            .await
    }

    /// As [`Oha::run`], with extra request headers (`Name: value`).
    pub(crate) async fn run_with_headers(
        &self,
        url: &str,
        connections: usize,
        secs: f64,
        body: &Path,
        headers: &[String],
    ) -> Result<OhaRun> {
        let mut command = match &self.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        for header in headers {
            command.args(["-H", header]);
        }
        let output = command
            .args(["--no-tui", "--output-format", "json", "-w"])
            // Whole milliseconds: oha refuses a duration written with more digits than it
            // can hold (a third of 5 s, say).
            .args(["-z", &format!("{}ms", (secs * 1e3).round() as u64)])
            .args(["-c", &connections.to_string()])
            .args(["-m", "POST", "-T", "application/json", "-D"])
            .arg(body)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run oha")?;
        ensure!(
            output.status.success(),
            "oha failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("oha printed no JSON")?;
        Self::parse(&report)
    }

    fn parse(report: &serde_json::Value) -> Result<OhaRun> {
        let number = |pointer: &str| {
            report
                .pointer(pointer)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("oha's JSON has no number at {pointer}"))
        };
        let mut statuses = std::collections::BTreeMap::new();
        let mut ok = 0;
        let mut errors = 0;
        if let Some(codes) = report["statusCodeDistribution"].as_object() {
            for (code, count) in codes {
                let count = count.as_u64().unwrap_or(0);
                if code.starts_with('2') {
                    ok += count;
                } else {
                    errors += count;
                }
                statuses.insert(code.clone(), count);
            }
        }
        if let Some(failures) = report["errorDistribution"].as_object() {
            for (error, count) in failures {
                let count = count.as_u64().unwrap_or(0);
                errors += count;
                statuses.insert(error.clone(), count);
            }
        }
        Ok(OhaRun {
            requests_per_s: number("/summary/requestsPerSec")?,
            p50_ms: number("/latencyPercentiles/p50")? * 1e3,
            p99_ms: number("/latencyPercentiles/p99")? * 1e3,
            ok,
            errors,
            statuses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(requests_per_s: f64, p50_ms: f64, p99_ms: f64, errors: u64) -> OhaRun {
        let mut statuses = std::collections::BTreeMap::new();
        statuses.insert("200".to_string(), 100);
        if errors > 0 {
            statuses.insert("503".to_string(), errors);
        }
        OhaRun {
            requests_per_s,
            p50_ms,
            p99_ms,
            ok: 100,
            errors,
            statuses,
        }
    }

    #[test]
    fn rounds_combine_into_their_mean_rate_median_latencies_and_summed_counts() {
        let combined = OhaRun::combine(vec![
            round(900.0, 0.050, 0.2, 0),
            round(1200.0, 0.100, 0.9, 3),
            round(1200.0, 0.090, 0.3, 1),
        ])
        .unwrap();
        assert_eq!(combined.requests_per_s, 1100.0);
        assert_eq!((combined.p50_ms, combined.p99_ms), (0.090, 0.3));
        assert_eq!((combined.ok, combined.errors), (300, 4));
        assert_eq!(combined.statuses["200"], 300);
        assert_eq!(combined.statuses["503"], 4);
    }

    #[test]
    fn an_even_number_of_rounds_takes_the_middle_two_and_none_is_refused() {
        let combined = OhaRun::combine(vec![
            round(1.0, 0.4, 1.0, 0),
            round(1.0, 0.1, 4.0, 0),
            round(1.0, 0.2, 2.0, 0),
            round(1.0, 0.3, 3.0, 0),
        ])
        .unwrap();
        assert!((combined.p50_ms - 0.25).abs() < 1e-12, "{combined:?}");
        assert!((combined.p99_ms - 2.5).abs() < 1e-12, "{combined:?}");
        assert!(OhaRun::combine(Vec::new()).is_err());
    }
}
