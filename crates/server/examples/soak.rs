//! Soak test: the release server under mixed traffic for a while, its process sampled
//! every second.
//!
//! Run through `cargo xtask soak --mins N`, or directly (with the release binary built):
//! `cargo run --release -p inference-server --example soak -- --help`.
//!
//! The traffic mixes valid `/predict` and `/predict/batch` requests, invalid bodies,
//! oversized bodies, requests cancelled mid-flight (the client drops the request, or closes
//! the connection while sending the body) and bursts past the server's capacity, which is
//! set small on purpose. Every request must end in an outcome expected for its kind (see
//! `expected`); anything else (a reset, a timeout, a 5xx other than 503) is lost.
//!
//! Each second the server's resident memory, open file descriptors and threads are read
//! from `/proc`, and its queue depth from `GET /stats`. The run fails when a request was
//! lost or when a resource kept growing (see `check_growth` and `check_idle`).

mod support;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{ServerProcess, default_server_binary};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
#[command(about = "Mixed traffic against the release server, sampling its resources")]
struct Args {
    /// Seconds of traffic (at least 8, so that every quarter of the run has samples).
    #[arg(long, default_value_t = 60.0)]
    secs: f64,
    /// The server binary [default: `inference-server` in the folder above this example's].
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Directory holding the model's `model.toml` [default: models/example].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Client tasks sending the steady mix, each one request at a time.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests sent at once by each over-capacity burst (one burst every 2 seconds).
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Folder to write the samples to, as `soak.csv`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The server's capacity is set small, so that the steady mix and the bursts overflow it
/// and the overload paths are exercised all run long.
const MAX_CONCURRENT_REQUESTS: usize = 48;
const MAX_QUEUE_SIZE: usize = 64;
/// Small, so that oversized bodies are cheap to send many times.
const MAX_BODY_BYTES: usize = 64 * 1024;

const BURST_EVERY: Duration = Duration::from_secs(2);
/// A request not answered within this long is lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the queue and the connections get to settle once traffic stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Growth allowed between the second and the last quarter of the run. Memory may still
/// grow a little after warm-up (allocator arenas, latency histograms), so its bound is
/// relative; descriptors and threads follow the number of connections and workers, which
/// the traffic keeps constant, so theirs are small constants.
const RSS_GROWTH_FACTOR: f64 = 1.2;
const RSS_GROWTH_MB: f64 = 20.0;
const FD_GROWTH: f64 = 32.0;
const THREAD_GROWTH: f64 = 8.0;
/// Once traffic stops and the client's connections close, the server must come back to
/// within this many descriptors of what it held before traffic started.
const IDLE_FD_SLACK: u64 = 8;

/// What a request tries; each kind has its own expected answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Predict,
    Batch,
    Invalid,
    Oversized,
    /// A valid request whose future the client drops after a short random delay.
    Dropped,
    /// A connection closed by the client while sending the body.
    CutBody,
    /// A valid request sent as part of an over-capacity burst.
    Burst,
}

impl Kind {
    /// The steady mix: (kind, weight).
    const MIX: [(Kind, u32); 6] = [
        (Kind::Predict, 50),
        (Kind::Batch, 15),
        (Kind::Invalid, 10),
        (Kind::Oversized, 5),
        (Kind::Dropped, 12),
        (Kind::CutBody, 8),
    ];

    fn pick() -> Kind {
        let total: u32 = Self::MIX.iter().map(|(_, weight)| weight).sum();
        let mut ticket = fastrand::u32(..total);
        for (kind, weight) in Self::MIX {
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        unreachable!("the ticket is below the total weight")
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Predict => "predict",
            Kind::Batch => "batch",
            Kind::Invalid => "invalid",
            Kind::Oversized => "oversized",
            Kind::Dropped => "dropped",
            Kind::CutBody => "cut-body",
            Kind::Burst => "burst",
        }
    }
}

/// How one request ended, as the client saw it.
#[derive(Debug)]
enum Outcome {
    Status(u16),
    /// The client gave up on purpose.
    Cancelled,
    /// No answer: a connection error or a timeout.
    Failed(String),
}

/// Whether `status` is a right answer to a request of `kind`. Any inference request may
/// be turned away by admission control (429) or while the server is unable to serve
/// (503), whatever its body: admission happens before the body is read.
fn expected(kind: Kind, status: u16) -> bool {
    if matches!(status, 429 | 503) {
        return true;
    }
    match kind {
        Kind::Predict | Kind::Batch | Kind::Dropped | Kind::Burst => status == 200,
        Kind::Invalid => matches!(status, 400 | 422),
        Kind::Oversized => status == 413,
        Kind::CutBody => false,
    }
}

/// Counts per kind and outcome, and per reason for the lost requests.
#[derive(Debug, Default)]
struct Tally {
    counts: BTreeMap<(Kind, String), u64>,
    total: u64,
    lost: u64,
    lost_reasons: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, kind: Kind, outcome: Outcome) {
        self.total += 1;
        let (label, lost) = match outcome {
            Outcome::Status(status) if expected(kind, status) => (status.to_string(), None),
            Outcome::Status(status) => (
                format!("lost:{status}"),
                Some(format!("unexpected status {status}")),
            ),
            Outcome::Cancelled => ("cancelled".to_owned(), None),
            Outcome::Failed(why) => ("lost".to_owned(), Some(why)),
        };
        if let Some(why) = lost {
            self.lost += 1;
            *self
                .lost_reasons
                .entry(format!("{}: {why}", kind.name()))
                .or_default() += 1;
        }
        *self.counts.entry((kind, label)).or_default() += 1;
    }
}

type SharedTally = Arc<Mutex<Tally>>;

/// One reading of the server process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_mb: f64,
    fds: u64,
    threads: u64,
    /// None when `GET /stats` did not answer in time.
    queue: Option<u64>,
    requests: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.secs >= 8.0, "--secs must be at least 8");
    ensure!(args.clients > 0, "--clients must be positive");
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => default_server_binary()?,
    };
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example"));
    let envs = [
        (
            "INFERENCE_SERVER__MAX_CONCURRENT_REQUESTS",
            MAX_CONCURRENT_REQUESTS.to_string(),
        ),
        (
            "INFERENCE_BATCHING__MAX_QUEUE_SIZE",
            MAX_QUEUE_SIZE.to_string(),
        ),
        (
            "INFERENCE_SERVER__MAX_BODY_BYTES",
            MAX_BODY_BYTES.to_string(),
        ),
    ];
    let server = ServerProcess::start(&binary, &model_dir, &envs).await?;
    let idle = read_process(server.pid)?;
    println!(
        "soak: {:.0} s against {} (pid {}), {} clients + bursts of {} every {} s; \
         max_concurrent_requests {MAX_CONCURRENT_REQUESTS}, max_queue_size {MAX_QUEUE_SIZE}, \
         max_body_bytes {MAX_BODY_BYTES}; idle: {:.1} MB, {} fds, {} threads",
        args.secs,
        server.base(),
        server.pid,
        args.clients,
        args.burst,
        BURST_EVERY.as_secs(),
        idle.rss_mb,
        idle.fds,
        idle.threads,
    );

    let tally = SharedTally::default();
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(args.secs);
    let traffic = Traffic::new(&server.base())?;
    let mut workers = Vec::new();
    for _ in 0..args.clients {
        let (traffic, tally) = (traffic.clone(), Arc::clone(&tally));
        workers.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let kind = Kind::pick();
                let outcome = traffic.send(kind).await;
                tally.lock().unwrap().record(kind, outcome);
            }
        }));
    }
    workers.push(tokio::spawn(bursts(
        traffic.clone(),
        Arc::clone(&tally),
        args.burst,
        stop,
    )));

    let samples = sample_until(&server, &tally, started, stop).await?;
    for worker in workers {
        worker.await?;
    }
    // Closing the client's pooled connections lets the server's descriptors go back to idle.
    drop(traffic);
    let settled = settle(&server, idle.fds, started).await;

    if let Some(dir) = &args.out {
        write_csv(dir, &samples)?;
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    print_summary(&samples, &tally, &settled);
    let log = std::mem::take(&mut *server.log.lock().unwrap());
    if !log.is_empty() {
        println!("server stderr ({} lines), first ones:", log.len());
        for line in log.iter().take(10) {
            println!("  {line}");
        }
    }
    server
        .stop(SETTLE_TIMEOUT)
        .await
        .context("the server did not shut down cleanly")?;

    let mut failures = Vec::new();
    if tally.lost > 0 {
        failures.push(format!("{} request(s) lost", tally.lost));
    }
    failures.extend(check_growth(&samples));
    failures.extend(check_idle(&settled, idle.fds));
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    println!("soak passed");
    Ok(())
}

/// Sends requests of every kind; cheap to clone (the connection pools are shared).
#[derive(Clone)]
struct Traffic {
    client: reqwest::Client,
    /// Bursts keep no idle connections, so that between bursts the server holds only the
    /// steady clients' connections and its descriptor count stays comparable over the run.
    burst_client: reqwest::Client,
    base: String,
    /// The server's `host:port`, for hand-written requests.
    addr: String,
    oversized: Arc<String>,
}

impl Traffic {
    fn new(base: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let burst_client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(0)
            .build()?;
        // Valid JSON, twice the allowed size: only the size is wrong with it.
        let mut oversized = String::from(r#"{"inputs": [1.0"#);
        while oversized.len() < 2 * MAX_BODY_BYTES {
            oversized.push_str(", 1.0");
        }
        oversized.push_str("]}");
        Ok(Self {
            client,
            burst_client,
            base: base.to_owned(),
            addr: base.trim_start_matches("http://").to_owned(),
            oversized: Arc::new(oversized),
        })
    }

    async fn send(&self, kind: Kind) -> Outcome {
        match kind {
            Kind::Burst => {
                let request = self.burst_client.post(format!("{}/predict", self.base));
                answer(request.body(predict_body())).await
            }
            Kind::Predict => self.post("/predict", predict_body()).await,
            Kind::Batch => self.post("/predict/batch", batch_body()).await,
            Kind::Invalid => {
                let path = if fastrand::bool() {
                    "/predict"
                } else {
                    "/predict/batch"
                };
                self.post(path, invalid_body().to_owned()).await
            }
            Kind::Oversized => self.post("/predict", self.oversized.to_string()).await,
            Kind::Dropped => {
                let delay = Duration::from_micros(fastrand::u64(0..10_000));
                let request = if fastrand::bool() {
                    self.post("/predict", predict_body())
                } else {
                    self.post("/predict/batch", batch_body())
                };
                // The request future is dropped when the delay wins, closing its connection.
                tokio::time::timeout(delay, request)
                    .await
                    .unwrap_or(Outcome::Cancelled)
            }
            Kind::CutBody => self.cut_body().await,
        }
    }

    async fn post(&self, path: &str, body: String) -> Outcome {
        answer(self.client.post(format!("{}{path}", self.base)).body(body)).await
    }

    /// Announces a body, sends part of it, and closes the connection.
    async fn cut_body(&self) -> Outcome {
        let sent = async {
            let mut stream = tokio::net::TcpStream::connect(&self.addr).await?;
            let head = format!(
                "POST /predict HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
                 content-length: 4096\r\n\r\n{{\"inputs\": [",
                self.addr
            );
            stream.write_all(head.as_bytes()).await?;
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..20_000))).await;
            std::io::Result::Ok(())
        };
        match sent.await {
            Ok(()) => Outcome::Cancelled,
            Err(error) => Outcome::Failed(format!("cut-body connection: {error}")),
        }
    }
}

/// Sends a JSON body and reads the whole answer.
async fn answer(request: reqwest::RequestBuilder) -> Outcome {
    let sent = request
        .header("content-type", "application/json")
        .send()
        .await;
    let result = match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            response.bytes().await.map(|_| status)
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(status) => Outcome::Status(status),
        Err(error) if error.is_timeout() => Outcome::Failed("timed out".to_owned()),
        Err(error) => Outcome::Failed(error_chain(&error)),
    }
}

fn predict_body() -> String {
    let input = fastrand::f64() * 10.0 - 5.0;
    json!({ "inputs": [input], "priority": fastrand::u8(0..3) }).to_string()
}

fn batch_body() -> String {
    let rows: Vec<Value> = (0..fastrand::usize(1..=8))
        .map(|_| json!([fastrand::f64() * 10.0 - 5.0]))
        .collect();
    json!({ "inputs": rows }).to_string()
}

/// Bodies that are wrong in different ways: not JSON (400), or JSON that does not fit (422).
fn invalid_body() -> &'static str {
    const BODIES: [&str; 5] = [
        r#"{"inputs": [1.0,"#,
        r#"{"inputs": "seven"}"#,
        r#"{"priority": 1}"#,
        r#"{"inputs": [[1.0, 2.0, 3.0]]}"#,
        r#"[1.0]"#,
    ];
    BODIES[fastrand::usize(..BODIES.len())]
}

/// reqwest's error and its sources on one line: the sources say what the socket saw.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(line, ": {cause}");
        source = cause.source();
    }
    line
}

/// Every `BURST_EVERY`, `size` valid requests at once: far past the server's capacity.
async fn bursts(traffic: Traffic, tally: SharedTally, size: usize, stop: Instant) {
    let mut tick = tokio::time::interval(BURST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while Instant::now() < stop {
        tick.tick().await;
        let requests: Vec<_> = (0..size)
            .map(|_| {
                let traffic = traffic.clone();
                tokio::spawn(async move { traffic.send(Kind::Burst).await })
            })
            .collect();
        for request in requests {
            let outcome = match request.await {
                Ok(outcome) => outcome,
                Err(error) => Outcome::Failed(format!("burst task: {error}")),
            };
            tally.lock().unwrap().record(Kind::Burst, outcome);
        }
    }
}

/// RSS, descriptors and threads of `pid`, from `/proc` (queue and requests left empty).
fn read_process(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status: has the server exited?"))?;
    let field = |name: &str| -> Result<u64> {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let number = value.trim().trim_end_matches("kB").trim();
        Ok(number.parse()?)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample {
        secs: 0.0,
        rss_mb: field("VmRSS:")? as f64 / 1024.0,
        fds,
        threads: field("Threads:")?,
        queue: None,
        requests: 0,
    })
}

/// The default model's queue depth from `GET /stats`; None when it does not answer in time.
async fn queue_depth(client: &reqwest::Client, base: &str) -> Option<u64> {
    let response = client.get(format!("{base}/stats")).send().await.ok()?;
    let stats: Value = response.json().await.ok()?;
    stats["queue_size"].as_u64()
}

/// One sample per second until `stop`, a line printed every ten.
async fn sample_until(
    server: &ServerProcess,
    tally: &SharedTally,
    started: Instant,
    stop: Instant,
) -> Result<Vec<Sample>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut samples = Vec::new();
    while Instant::now() < stop {
        tick.tick().await;
        let mut sample = read_process(server.pid)?;
        sample.queue = queue_depth(&client, &server.base()).await;
        sample.secs = started.elapsed().as_secs_f64();
        let (requests, lost) = {
            let tally = tally.lock().unwrap();
            (tally.total, tally.lost)
        };
        sample.requests = requests;
        if samples.len() % 10 == 9 {
            println!(
                "t {:>5.0} s  rss {:>6.1} MB  fds {:>4}  threads {:>3}  queue {:>4}  \
                 requests {requests:>9}  lost {lost}",
                sample.secs,
                sample.rss_mb,
                sample.fds,
                sample.threads,
                sample.queue.map_or("-".to_owned(), |q| q.to_string()),
            );
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// The last sample taken after traffic stopped, and whether the queue emptied and the
/// descriptors came back to idle before `SETTLE_TIMEOUT`.
#[derive(Debug)]
struct Settled {
    last: Option<Sample>,
    seconds: f64,
}

async fn settle(server: &ServerProcess, idle_fds: u64, started: Instant) -> Settled {
    let client = reqwest::Client::new();
    let since = Instant::now();
    let mut last = None;
    while since.elapsed() < SETTLE_TIMEOUT {
        let Ok(mut sample) = read_process(server.pid) else {
            break;
        };
        sample.queue = queue_depth(&client, &server.base()).await;
        sample.secs = started.elapsed().as_secs_f64();
        last = Some(sample);
        // The one connection of this client stays open while it asks.
        if sample.queue == Some(0) && sample.fds <= idle_fds + 1 + IDLE_FD_SLACK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Settled {
        last,
        seconds: since.elapsed().as_secs_f64(),
    }
}

fn floor(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::INFINITY, f64::min)
}

/// Compares the floor (the smallest sample) of the last quarter of the run with that of
/// the second quarter (the first is warm-up). Bursts and in-flight requests add to a
/// resource for moments; what a leak adds stays, and raises the floor.
fn check_growth(samples: &[Sample]) -> Vec<String> {
    let quarter = samples.len() / 4;
    if quarter == 0 {
        return vec![format!("only {} samples", samples.len())];
    }
    let second = &samples[quarter..2 * quarter];
    let last = &samples[samples.len() - quarter..];
    let compare = |name: &str, value: fn(&Sample) -> f64, allowed: &dyn Fn(f64) -> f64| {
        let (before, after) = (
            floor(second.iter().map(value)),
            floor(last.iter().map(value)),
        );
        (after > allowed(before)).then(|| {
            format!(
                "{name} grew from a floor of {before:.1} to {after:.1} (allowed {:.1})",
                allowed(before)
            )
        })
    };
    [
        compare("RSS MB", |s| s.rss_mb, &|mb| {
            mb * RSS_GROWTH_FACTOR + RSS_GROWTH_MB
        }),
        compare("fds", |s| s.fds as f64, &|fds| fds + FD_GROWTH),
        compare("threads", |s| s.threads as f64, &|threads| {
            threads + THREAD_GROWTH
        }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// After traffic: the queue must be empty and the descriptors back near idle.
fn check_idle(settled: &Settled, idle_fds: u64) -> Vec<String> {
    let Some(last) = settled.last else {
        return vec!["the server could not be sampled after traffic stopped".to_owned()];
    };
    let mut failures = Vec::new();
    if last.queue != Some(0) {
        failures.push(format!(
            "the queue held {:?} rows {:.0} s after traffic stopped",
            last.queue, settled.seconds
        ));
    }
    if last.fds > idle_fds + 1 + IDLE_FD_SLACK {
        failures.push(format!(
            "{} fds open {:.0} s after traffic stopped, {idle_fds} before it started",
            last.fds, settled.seconds
        ));
    }
    failures
}

fn write_csv(dir: &Path, samples: &[Sample]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("secs,rss_mb,fds,threads,queue,requests\n");
    for s in samples {
        let queue = s.queue.map_or(String::new(), |q| q.to_string());
        let _ = writeln!(
            csv,
            "{:.1},{:.1},{},{},{queue},{}",
            s.secs, s.rss_mb, s.fds, s.threads, s.requests
        );
    }
    let path = dir.join("soak.csv");
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    println!("samples written to {}", path.display());
    Ok(())
}

fn print_summary(samples: &[Sample], tally: &Tally, settled: &Settled) {
    let Some((first, last)) = samples.first().zip(samples.last()) else {
        return;
    };
    println!();
    println!(
        "{} samples over {:.0} s; after traffic stopped ({:.1} s): {}",
        samples.len(),
        last.secs,
        settled.seconds,
        settled.last.map_or("no sample".to_owned(), |s| format!(
            "rss {:.1} MB, fds {}, threads {}, queue {:?}",
            s.rss_mb, s.fds, s.threads, s.queue
        )),
    );
    println!("|            |   first |     min |     max |    last |");
    println!("|------------|--------:|--------:|--------:|--------:|");
    let row = |name: &str, value: &dyn Fn(&Sample) -> Option<f64>| {
        let values: Vec<f64> = samples.iter().filter_map(value).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "| {name:<10} | {:>7} | {:>7} | {:>7} | {:>7} |",
            show(value(first)),
            show(values.first().map(|_| min)),
            show(values.first().map(|_| max)),
            show(value(last)),
        );
    };
    row("RSS MB", &|s| Some(s.rss_mb));
    row("fds", &|s| Some(s.fds as f64));
    row("threads", &|s| Some(s.threads as f64));
    row("queue", &|s| s.queue.map(|q| q as f64));
    let unanswered = samples.iter().filter(|s| s.queue.is_none()).count();
    if unanswered > 0 {
        println!("GET /stats did not answer within 5 s for {unanswered} sample(s)");
    }
    println!();
    println!("{} requests, {} lost", tally.total, tally.lost);
    let mut kinds: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    for ((kind, label), count) in &tally.counts {
        kinds
            .entry(*kind)
            .or_default()
            .push(format!("{label}: {count}"));
    }
    for (kind, outcomes) in kinds {
        println!("  {:<10} {}", kind.name(), outcomes.join("  "));
    }
    for (reason, count) in &tally.lost_reasons {
        println!("  lost {count:>6} x {reason}");
    }
}
