//! End-to-end: the real binary on port 0, spoken to over HTTP.

mod common;

use common::*;
use inference_server::backends;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

/// A server process that is killed if the test ends early.
struct Server {
    child: Child,
    base: String,
    /// Every line the server has written to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(["--port", "0", "--grpc-port", "0"]);
    if !args.contains(&"--model-dir") {
        command.arg("--model-dir").arg(example_dir());
    }
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("INFERENCE_SERVER__PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts the binary, learns its port from the "listening on" line, and waits until its
/// models are ready (`/health` answers 200).
fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let server = start_listening(args, envs);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if http_get(&server.base, "/health").0 == 200 {
            return server;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the model never became ready: {:?}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking GET without an HTTP client runtime, usable from sync and async tests alike:
/// the status code (0 when unreachable) and the body.
fn http_get(base: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return (0, String::new());
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Starts the binary and waits only for its "listening on" line: models load afterwards.
fn start_listening(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut command = command(args);
    command.envs(envs.iter().copied());
    let mut child = command.spawn().expect("server starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                let _ = tx.send(addr);
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server logs its address");
    Server {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

async fn example_batch(base: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/examples/batch"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_binary_serves_http_and_exits_zero_on_sigterm() {
    let mut server = start(&[], &[]);
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body = example_batch(&server.base).await;
    for (i, row) in body["response"]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_close(row, &golden_for((i + 1) as f64));
    }
    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn every_compiled_backend_gives_the_same_predictions() {
    for backend in backends::COMPILED {
        let server = start(&["--backend", backend], &[]);
        let body = example_batch(&server.base).await;
        let predictions = body["response"]["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 5, "{backend}");
        for (i, row) in predictions.iter().enumerate() {
            assert_close(row, &golden_for((i + 1) as f64));
        }
        assert_eq!(body["response"]["metadata"]["backend"], *backend);
        let health: Value = reqwest::get(format!("{}/health", server.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["checks"]["backend"], *backend);
    }
}

/// Runs the binary expecting it to refuse to start; returns its stderr.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut command = command(args);
    command.envs(envs.iter().copied());
    let output = command.output().unwrap();
    assert!(
        !output.status.success(),
        "the server should refuse to start"
    );
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one error line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    error_lines[0].to_string()
}

#[test]
fn an_unknown_backend_exits_with_one_line_naming_the_compiled_list() {
    let line = refused(&["--backend", "tensorflow"], &[]);
    assert!(line.contains("model.backend"), "{line}");
    assert!(line.contains(&backends::COMPILED.join(", ")), "{line}");
}

#[test]
fn ort_without_its_library_is_a_failed_model_naming_the_fix() {
    let envs = [
        ("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"),
        ("INFERENCE_RUNTIME_DIR", "/nonexistent"),
    ];
    if !backends::COMPILED.contains(&"ort") {
        let line = refused(&["--backend", "ort"], &envs);
        assert!(line.contains("--features ort"), "{line}");
        return;
    }
    // The server keeps listening; the model reports why it failed, in one sentence.
    let server = start_listening(&["--backend", "ort"], &envs);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let model = loop {
        let models: Value = serde_json::from_str(&http_get(&server.base, "/models").1).unwrap();
        let model = models["models"][0].clone();
        if model["state"] != "loading" {
            break model;
        }
        assert!(std::time::Instant::now() < deadline, "still loading");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(model["state"], "failed", "{model}");
    let error = model["error"].as_str().unwrap();
    assert!(error.contains("cargo xtask setup"), "{error}");
    assert!(error.contains("/nonexistent/libonnxruntime.so"), "{error}");
    assert!(!error.contains('\n'), "{error}");
    assert_eq!(http_get(&server.base, "/health").0, 503);
}

#[test]
fn a_missing_model_directory_exits_with_one_line() {
    let line = refused(&["--model-dir", "/nonexistent/model"], &[]);
    assert!(line.contains("/nonexistent/model"), "{line}");
}

#[tokio::test]
async fn sixty_four_concurrent_clients_are_merged_into_batches_and_all_answered() {
    let server = start(&[], &[]);
    let client = reqwest::Client::new();
    let golden = golden();
    let mut tasks = Vec::new();
    for client_index in 0..64 {
        let client = client.clone();
        let base = server.base.clone();
        let golden = golden.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                let (input, expected) = &golden[(client_index + round) % golden.len()];
                let response = client
                    .post(format!("{base}/predict"))
                    .json(&serde_json::json!({ "inputs": input }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.unwrap();
                assert_close(&body["result"], expected);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats: Value = reqwest::get(format!("{}/stats", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests_processed"], 320);
    assert!(
        stats["max_batch_size_seen"].as_u64().unwrap() > 1,
        "no batch merged concurrent requests: {stats}"
    );
    assert!(
        stats["average_batch_size"].as_f64().unwrap() > 1.0,
        "{stats}"
    );
}

#[tokio::test]
async fn json_logs_carry_one_line_per_request_with_its_fields() {
    let mut server = start(&["--log-format", "json"], &[]);
    let response = reqwest::Client::new()
        .post(format!("{}/predict", server.base))
        .header("x-request-id", "e2e-log-check")
        .json(&serde_json::json!({"inputs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    server.child.wait().unwrap();
    // The reader thread sees end of file once the process is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = server
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("e2e-log-check"))
            .cloned();
        match found {
            Some(line) => break line,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            None => panic!("no request line in {:?}", server.log.lock().unwrap()),
        }
    };
    let record: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["method"], "POST");
    assert_eq!(record["route"], "/predict");
    assert_eq!(record["status"], 200);
    let latency_ms = record["latency_ms"].as_f64().unwrap();
    assert!(latency_ms >= 0.0);
    // Whole microseconds, not the float's every digit.
    assert_eq!((latency_ms * 1000.0).round() / 1000.0, latency_ms, "{line}");
    assert_eq!(record["request_id"], "e2e-log-check");
}
