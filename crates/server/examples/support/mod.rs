//! What the HTTP load examples share: the release server binary as a child process.
// Each example uses part of it.
#![allow(dead_code)]

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
    /// What the server wrote to stderr beyond its startup lines (request logging is off,
    /// so these are warnings and errors).
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `binary` on port 0 with `envs` set, learns the port from its "listening on"
    /// line and waits until `/health` answers 200.
    pub(crate) async fn start(
        binary: &Path,
        model_dir: &Path,
        envs: &[(&str, String)],
    ) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["--port", "0", "--model-dir"])
            .arg(model_dir)
            // One line per request would cost the server more than the requests do.
            .env("RUST_LOG", "warn,inference_server::serve=info")
            .envs(envs.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr is piped")?).lines();
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
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let health = client.get(format!("http://{addr}/health")).send().await;
            if health.is_ok_and(|response| response.status() == 200) {
                break;
            }
            ensure!(Instant::now() < deadline, "the model never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            pid,
            addr,
            log,
        })
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
