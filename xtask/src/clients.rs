//! `cargo xtask check-clients`: runs the Python and JavaScript clients of the seed page,
//! unmodified, against the real server binary, so API changes that break them fail here;
//! then Triton's own Python clients (`tritonclient.http` and `.grpc`) against a server of
//! the whole repository (ResNet-18 too, once exported) on the KServe v2 protocol; last,
//! schemathesis against the server's own OpenAPI document (`/openapi.json`), on every
//! operation it lists.

use crate::process::{Steps, display, workspace_root};
use crate::setup::{self, Pin};
use anyhow::{Context, Result, bail, ensure};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const PYTHON_CLIENT: &str = "clients/seed/batch_client.py";
const JS_CLIENT: &str = "clients/seed/batch_client.js";
const TRITON_CHECK: &str = "clients/triton/check_v2.py";
/// Which 5xx answers schemathesis may see (the readiness probes' documented 503s).
const SCHEMATHESIS_CONFIG: &str = "clients/schemathesis.toml";

/// What schemathesis checks on every answer: no 5xx, and status, content type and body
/// as the document says for that operation.
const SCHEMATHESIS_CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// Examples per operation and phase: the run takes about 20 s against a debug build.
const SCHEMATHESIS_MAX_EXAMPLES: &str = "30";

/// The address both clients hard-code; replaced in memory only, the files stay verbatim.
const SEED_BASE_URL: &str = "http://localhost:8000";

/// How long the server may take to load the model and log its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one client run may take; both finish in seconds against a healthy server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the Python client's file as `__main__` with the base URL swapped in memory.
const PYTHON_WRAPPER: &str = r#"
import sys
path, seed_url, base_url = sys.argv[1:4]
with open(path, encoding="utf-8") as file:
    source = file.read()
exec(compile(source.replace(seed_url, base_url), path, "exec"), {"__name__": "__main__"})
"#;

/// Lines the Python client's own usage code prints when everything worked.
const PYTHON_SUCCESS_LINES: &[&str] = &["✅ Batch API is responsive", "Success Rate: 100.0%"];

/// Appended to the JavaScript client's source: drives the page's global `batchTester`.
const JS_DRIVER: &str = r#"
// Appended by `cargo xtask check-clients`.
if (typeof fetch !== 'function') {
  console.error('this Node.js has no global fetch: Node.js 18 or newer is needed');
  process.exit(2);
}
const connected = await batchTester.testBatchConnectivity();
const benchmark = await batchTester.benchmarkBatchPerformance(3);
const analysis = await batchTester.analyzeBatchConsistency(3);
const problems = [];
if (connected !== true) problems.push(`testBatchConnectivity() returned ${connected}`);
if (benchmark.failed !== 0 || benchmark.successful !== benchmark.iterations) {
  problems.push(`benchmark: ${benchmark.failed} of ${benchmark.iterations} runs failed`);
}
if (analysis.error) {
  problems.push(`consistency: ${analysis.error}`);
} else {
  if (analysis.successfulRuns !== analysis.totalRuns) {
    problems.push(`consistency: ${analysis.successfulRuns} of ${analysis.totalRuns} runs succeeded`);
  }
  if (!analysis.consistency.deterministic) problems.push('predictions are not deterministic');
  if (analysis.consistency.avgSuccessRate !== 100) {
    problems.push(`average success rate ${analysis.consistency.avgSuccessRate}%`);
  }
}
console.log(`connected: ${connected}; benchmark ${benchmark.successful}/${benchmark.iterations} ok; ` +
  `deterministic: ${analysis.consistency?.deterministic}`);
for (const problem of problems) console.error(`FAIL: ${problem}`);
process.exit(problems.length === 0 ? 0 : 1);
"#;

fn requests_pin() -> Pin {
    Pin::new("requests", "2.34.2")
}

fn tritonclient_pin() -> Pin {
    Pin::new("tritonclient[all]", "2.73.0")
}

const SCHEMATHESIS_VERSION: &str = "4.32.5";

fn schemathesis_pin() -> Pin {
    Pin::new("schemathesis", SCHEMATHESIS_VERSION)
}

pub(crate) fn run() -> Result<()> {
    let root = workspace_root();
    read_client(&root.join(PYTHON_CLIENT))?;
    let js_client = read_client(&root.join(JS_CLIENT))?;
    let node = node_version()?;
    let runtimes = setup::ensure_installed()?;
    let mut steps = Steps::new(11);
    steps.run("install `requests` into the setup venv if missing", |bar| {
        if imports_requests(&runtimes.python) {
            return Ok(());
        }
        setup::pip_install(&runtimes.python, &[requests_pin()], bar)
    })?;
    let binary = steps.run("build the server", |_| build_server())?;
    let example = root.join("models/example");
    let server = steps.run("start the server", |_| {
        ServerProcess::start(&binary, &example, 0)
    })?;
    steps.run("run the Python client", |_| {
        let mut command = Command::new(&runtimes.python);
        command
            .args(["-c", PYTHON_WRAPPER])
            .arg(root.join(PYTHON_CLIENT))
            .args([SEED_BASE_URL, &server.base_url])
            .env("PYTHONIOENCODING", "utf-8");
        let output = run_client(&mut command)?;
        check_python_output(&output)
    })?;
    steps.run(
        &format!("run the JavaScript client with node {node}"),
        |_| {
            let module = write_js_module(&js_client, &server.base_url)?;
            let mut command = Command::new("node");
            command.arg(&module);
            run_client(&mut command)
                .with_context(|| format!("the generated module is {}", module.display()))
                .map(drop)
        },
    )?;
    drop(server);
    steps.run(
        "install `tritonclient[all]` into the setup venv if missing",
        |bar| {
            if imports(&runtimes.python, "tritonclient.grpc, tritonclient.http") {
                return Ok(());
            }
            setup::pip_install(&runtimes.python, &[tritonclient_pin()], bar)
        },
    )?;
    let models = root.join("models");
    let grpc_port = free_port()?;
    let server = steps.run("start a server of the whole repository", |_| {
        ServerProcess::start(&binary, &models, grpc_port)
    })?;
    steps.run("run tritonclient.http and tritonclient.grpc", |_| {
        let http = server.base_url.trim_start_matches("http://").to_owned();
        let mut command = Command::new(&runtimes.python);
        command
            .arg(root.join(TRITON_CHECK))
            .args([http, format!("127.0.0.1:{grpc_port}")])
            .arg(&models);
        let output = run_client(&mut command)?;
        ensure!(
            output.contains("tritonclient: every check passed"),
            "the tritonclient check did not finish:\n{output}"
        );
        eprint!("{output}");
        Ok(())
    })?;
    drop(server);
    steps.run(
        &format!("install `schemathesis=={SCHEMATHESIS_VERSION}` into the setup venv if missing"),
        |bar| {
            if installed_version(&runtimes.python, "schemathesis").as_deref()
                == Some(SCHEMATHESIS_VERSION)
            {
                return Ok(());
            }
            setup::pip_install(&runtimes.python, &[schemathesis_pin()], bar)
        },
    )?;
    // A server of its own: schemathesis unloads and loads models as it explores.
    let server = steps.run("start the server for schemathesis", |_| {
        ServerProcess::start(&binary, &example, 0)
    })?;
    steps.run(
        "run schemathesis on every operation of /openapi.json",
        |_| {
            let mut command = schemathesis_command(
                &runtimes.python,
                &server.base_url,
                &root.join(SCHEMATHESIS_CONFIG),
            );
            let output = run_client(&mut command)?;
            eprintln!("{}", tail(&output, 12));
            Ok(())
        },
    )
    // `server` drops here (or at any `?` above), which kills the process.
}

/// `schemathesis run` against the live document: every operation, every phase, the checks
/// of [`SCHEMATHESIS_CHECKS`]; it exits nonzero on any failure.
fn schemathesis_command(python: &Path, base_url: &str, config: &Path) -> Command {
    let mut command = Command::new(python);
    command
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(config)
        .arg("run")
        .arg(format!("{base_url}/openapi.json"))
        .args(["--checks", SCHEMATHESIS_CHECKS])
        .args(["--max-examples", SCHEMATHESIS_MAX_EXAMPLES])
        .arg("--no-color")
        .env("PYTHONIOENCODING", "utf-8");
    command
}

/// The installed version of a distribution in the venv, if any.
fn installed_version(python: &Path, distribution: &str) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))",
            distribution,
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A port that was free a moment ago, for the gRPC listener (which, unlike HTTP, has no
/// "pick one" setting: 0 turns it off).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Reads a client and checks it still holds the address that gets replaced.
fn read_client(path: &Path) -> Result<String> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the client {}", path.display()))?;
    ensure!(
        source.matches(SEED_BASE_URL).count() == 1,
        "{} should name {SEED_BASE_URL} exactly once, as the seed page does",
        path.display()
    );
    Ok(source)
}

fn node_version() -> Result<String> {
    let output = Command::new("node").arg("--version").output();
    match output {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
        _ => bail!(
            "`node` was not found on PATH: install Node.js 18 or newer (it needs the global \
             `fetch`) to run the seed page's JavaScript client"
        ),
    }
}

fn imports_requests(python: &Path) -> bool {
    imports(python, "requests")
}

pub(crate) fn imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Builds the default-feature server binary (candle) and returns its path.
pub(crate) fn build_server() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "inference-server", "--bin"])
        .arg("inference-server")
        .current_dir(workspace_root());
    let line = display(&command);
    let status = command
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    ensure!(status.success(), "`{line}` failed ({status})");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let binary = target.join("debug").join("inference-server");
    ensure!(binary.is_file(), "no server binary at {}", binary.display());
    Ok(binary)
}

/// The server binary on a free port; killed when dropped, whatever happened meanwhile.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) base_url: String,
}

impl ServerProcess {
    /// Serves `model_dir`, with gRPC on `grpc_port` (0: off).
    pub(crate) fn start(binary: &Path, model_dir: &Path, grpc_port: u16) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0", "--grpc-port"])
            .arg(grpc_port.to_string())
            .arg("--model-dir")
            .arg(model_dir)
            .env("RUST_LOG", "info")
            // The log line is parsed: no colour codes, whatever the terminal.
            .env("NO_COLOR", "1")
            .env_remove("INFERENCE_SERVER__PORT")
            .env_remove("INFERENCE_SERVER__HOST")
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (address_tx, address_rx) = mpsc::channel();
        // Keeps reading after the address, so the server never blocks on a full pipe. The
        // server listens before its model has loaded: the clients start once it is ready.
        thread::spawn(move || {
            let mut seen = Vec::new();
            let mut address = None;
            let mut ready = false;
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(found) = listening_address(&line) {
                    address = Some(found);
                } else if line.contains("model ready") {
                    ready = true;
                } else if !sent {
                    // Only the lines before readiness can explain a failed start.
                    seen.push(line);
                }
                if ready
                    && !sent
                    && let Some(address) = address.clone()
                {
                    sent = true;
                    let _ = address_tx.send(Ok(address));
                }
            }
            let _ = address_tx.send(Err(seen.join("\n")));
        });
        let mut server = Self {
            child,
            base_url: String::new(),
        };
        server.base_url = match address_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(address)) => format!("http://{address}"),
            Ok(Err(log)) => bail!("the server exited before its model was ready:\n{log}"),
            Err(_) => bail!(
                "the server logged no `listening on` line within {}s",
                STARTUP_TIMEOUT.as_secs()
            ),
        };
        Ok(server)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ADDR` of a `listening on http://ADDR` log line.
fn listening_address(line: &str) -> Option<String> {
    let rest = line.split("listening on http://").nth(1)?;
    let address: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    (!address.is_empty()).then_some(address)
}

/// Runs a client to completion and returns its stdout; on failure the error holds the
/// tail of both streams.
pub(crate) fn run_client(command: &mut Command) -> Result<String> {
    let line = display(command);
    let mut child = command
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("reader thread panicked");
    let stderr = stderr.join().expect("reader thread panicked");
    let outcome = match status {
        Some(status) if status.success() => return Ok(stdout),
        Some(status) => format!("exited with {status}"),
        None => format!("was killed after {}s", CLIENT_TIMEOUT.as_secs()),
    };
    bail!(
        "the client {outcome}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
        tail(&stdout, 40),
        tail(&stderr, 40)
    )
}

fn collect(mut stream: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn check_python_output(stdout: &str) -> Result<()> {
    let missing: Vec<&str> = PYTHON_SUCCESS_LINES
        .iter()
        .copied()
        .filter(|expected| !stdout.contains(expected))
        .collect();
    ensure!(
        missing.is_empty(),
        "the Python client never printed {missing:?}\n--- stdout (tail) ---\n{}",
        tail(stdout, 40)
    );
    Ok(())
}

/// Writes the JavaScript client with its base URL replaced, plus the driver, as an ES
/// module under the target directory, where it stays for a look after a failure.
fn write_js_module(client: &str, base_url: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let dir = target.join("check-clients");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let module = dir.join("batch_client_check.mjs");
    let source = format!("{}\n{JS_DRIVER}", client.replace(SEED_BASE_URL, base_url));
    std::fs::write(&module, source)
        .with_context(|| format!("cannot write {}", module.display()))?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clients_name_the_seed_address_once() {
        let root = workspace_root();
        read_client(&root.join(PYTHON_CLIENT)).unwrap();
        read_client(&root.join(JS_CLIENT)).unwrap();
    }

    #[test]
    fn the_address_is_read_from_the_server_log_line() {
        let line = "2025-01-01T00:00:00Z  INFO inference_server: listening on \
                    http://127.0.0.1:40123 address=127.0.0.1:40123";
        assert_eq!(listening_address(line).as_deref(), Some("127.0.0.1:40123"));
        assert_eq!(listening_address("model warmed up"), None);
    }

    #[test]
    fn python_output_without_the_success_lines_fails() {
        let error = check_python_output("✅ Batch API is responsive\nSuccess Rate: 90.0%\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("Success Rate: 100.0%"), "{error}");
        let good = "✅ Batch API is responsive\n...\nSuccess Rate: 100.0%\n";
        check_python_output(good).unwrap();
    }

    #[test]
    fn schemathesis_runs_every_check_against_the_live_document() {
        let command = schemathesis_command(
            Path::new("/venv/bin/python"),
            "http://127.0.0.1:4000",
            Path::new("clients/schemathesis.toml"),
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].clone()
        };
        assert_eq!(after("run"), "http://127.0.0.1:4000/openapi.json");
        assert_eq!(after("--config-file"), "clients/schemathesis.toml");
        let checks = after("--checks");
        for check in [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
        ] {
            assert!(checks.split(',').any(|c| c == check), "{checks}");
        }
        assert!(after("--max-examples").parse::<u32>().unwrap() > 0);
        // No filter: every operation of the document is tested.
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--include") || a.starts_with("--exclude"))
        );
        assert!(
            workspace_root().join(SCHEMATHESIS_CONFIG).is_file(),
            "the configuration is committed"
        );
    }

    #[test]
    fn a_failing_client_reports_its_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo progress; echo broken >&2; exit 4"]);
        let error = run_client(&mut command).unwrap_err().to_string();
        assert!(
            error.contains("progress") && error.contains("broken"),
            "{error}"
        );
    }
}
