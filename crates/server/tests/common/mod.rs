//! Helpers shared by the server's integration tests.
#![allow(dead_code, unreachable_pub)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use inference_server::{AppState, Config, app};
use serde_json::Value;
use std::path::PathBuf;
use tower::ServiceExt;

pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example")
}

/// The golden outputs of the example model, keyed by the input value.
pub fn golden() -> Vec<(f64, Vec<f64>)> {
    #[derive(serde::Deserialize)]
    struct Golden {
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        input: Vec<f64>,
        output: Vec<f64>,
    }
    let text = std::fs::read_to_string(example_dir().join("golden.toml")).unwrap();
    let golden: Golden = toml::from_str(&text).unwrap();
    golden
        .cases
        .into_iter()
        .map(|c| (c.input[0], c.output))
        .collect()
}

pub fn golden_for(input: f64) -> Vec<f64> {
    golden()
        .into_iter()
        .find(|(x, _)| *x == input)
        .unwrap_or_else(|| panic!("no golden case for {input}"))
        .1
}

pub fn assert_close(actual: &Value, expected: &[f64]) {
    let actual: Vec<f64> = actual
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {actual}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= 1e-5, "{actual:?} vs {expected:?}");
    }
}

/// Little-endian FP32 contents (a v2 binary output, a gRPC raw output) as numbers.
pub fn f32s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

/// `values` are the example model's 3 outputs per row for `inputs`, within 1e-5 of golden.
pub fn assert_rows_close(values: &[f64], inputs: &[f64]) {
    assert_eq!(values.len(), 3 * inputs.len(), "{values:?}");
    for (row, input) in values.chunks(3).zip(inputs) {
        for (got, want) in row.iter().zip(golden_for(*input)) {
            assert!((got - want).abs() <= 1e-5, "{row:?} for input {input}");
        }
    }
}

/// The default configuration: the example model with the default backend.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.models.dir = example_dir();
    config
}

pub async fn example_state() -> AppState {
    AppState::from_config(test_config()).await.unwrap()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends one request through the router (no sockets).
pub async fn send(state: &AppState, request: Request<Body>) -> Reply {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// The server binary of this package.
pub const SERVER_BINARY: &str = env!("CARGO_BIN_EXE_inference-server");

/// The real binary serving the example model on a free port; killed if the test ends early.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// Every line the server has written to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the binary with `envs` (configuration variables), learns its port from the
    /// "listening on" line and waits until `/health` answers 200.
    pub fn start(envs: &[(&str, &str)]) -> Self {
        let example = example_dir().display().to_string();
        let args = ["--port", "0", "--grpc-port", "0", "--model-dir", &example];
        Self::start_with(&args, envs)
    }

    /// [`ServerProcess::start`] with these command-line arguments instead.
    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        use std::time::{Duration, Instant};
        let mut child = std::process::Command::new(SERVER_BINARY)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("INFERENCE_SERVER__PORT")
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
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
            .expect("the server logs its address")
            .parse()
            .expect("an address");
        let server = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        while blocking_status(server.addr, "/health") != 200 {
            assert!(
                Instant::now() < deadline,
                "the model never became ready: {:?}",
                server.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a one-off `GET` (0 when the server cannot be reached), without a runtime.
pub fn blocking_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return 0;
    }
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A plain HTTP/1.1 client on one TCP connection, so a test can tell every outcome apart:
/// a refused connection, a response, or a connection that ended without one.
pub struct RawConnection {
    pub stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(request).await
    }

    /// Reads one response (with a `Content-Length`); an end of stream before it is complete
    /// is `UnexpectedEof`.
    pub async fn response(&mut self) -> std::io::Result<RawResponse> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(response) = self.parse()? {
                return Ok(response);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the connection closed with {} bytes of a response",
                        self.buffer.len()
                    ),
                ));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn roundtrip(&mut self, request: &[u8]) -> std::io::Result<RawResponse> {
        self.send(request).await?;
        self.response().await
    }

    /// Whether the server closed the connection (end of stream or reset) within `limit`,
    /// reading and discarding whatever else arrives.
    pub async fn closed_within(&mut self, limit: std::time::Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(limit, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    fn parse(&mut self) -> std::io::Result<Option<RawResponse>> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buffer[..end]).map_err(|_| invalid("head"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| invalid("no content-length"))?;
        let total = end + 4 + length;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let body = self.buffer[end + 4..total].to_vec();
        self.buffer.drain(..total);
        Ok(Some(RawResponse {
            status,
            headers,
            body,
        }))
    }
}

/// A `POST` of a JSON body, as bytes on the wire.
pub fn raw_post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A `GET`, as bytes on the wire.
pub fn raw_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// An HTTP/2 connection with prior knowledge (h2c): the handle to send requests on, and
/// the task driving the connection (it ends when the connection does).
pub async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<axum::body::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    (client, tokio::spawn(connection))
}

/// A `POST` of a JSON body over HTTP/2: the status and the body.
pub async fn h2_post(
    client: &h2::client::SendRequest<axum::body::Bytes>,
    path: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), h2::Error> {
    let mut client = client.clone().ready().await?;
    let request = Request::post(format!("http://test{path}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false)?;
    stream.send_data(axum::body::Bytes::from(body.to_string()), true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes))
}
