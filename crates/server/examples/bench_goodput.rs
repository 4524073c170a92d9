//! Goodput under overload: how many `POST /predict` requests per second are answered 200
//! when the load offered is a multiple of what the server can serve.
//!
//! Run through `cargo xtask bench goodput`, or directly (with the release binary built):
//! `cargo run --release -p inference-server --example bench_goodput -- --help`.
//!
//! Each level first measures the closed-loop capacity: a few connections, each sending its
//! next request as soon as the last is answered. Measured again right before every level,
//! not once for all: on a shared machine the speed drifts by tens of percent over a minute,
//! and a capacity from a minute earlier would make that drift look like the server's doing.
//! The level then offers a multiple of that capacity open-loop: a request is due every
//! 1/rate seconds whatever the answers, and goes out on the first keep-alive connection of
//! a fixed set to be free; a request that no connection was free to send within a
//! millisecond of its due time is dropped by the client and counted apart. Latency counts
//! from the moment a request was due, so a generator falling behind shows in it.
//!
//! The server is the release binary, started on a free port with the `INFERENCE_…`
//! variables of this process, so admission settings can be compared from the outside.

mod support;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{ServerProcess, default_server_binary};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(about = "Goodput of POST /predict at multiples of the measured capacity")]
struct Args {
    /// Seconds of open-loop load per level.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Keep-alive connections of the open-loop generator.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Load levels, as multiples of the measured capacity.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 1.0, 2.0, 4.0])]
    levels: Vec<f64>,
    /// Connections of the closed-loop capacity measurement.
    #[arg(long, default_value_t = 64)]
    capacity_connections: usize,
    /// Seconds of the closed-loop capacity measurement (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    capacity_secs: f64,
    /// The server binary [default: `inference-server` in the folder above this example's].
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Directory holding the model's `model.toml` [default: models/example].
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Folder to write the results to, as `goodput.json`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// How long answers may still come in after a level's last request was due.
const GRACE: Duration = Duration::from_secs(10);

type Connection = SendRequest<Full<Bytes>>;

/// Opens one keep-alive HTTP/1 connection, driven by its own task.
async fn connect(addr: &str) -> Result<Connection> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one `POST /predict` with a random input and reads the whole answer.
async fn predict(connection: &mut Connection, addr: &str) -> Result<u16, hyper::Error> {
    let input = fastrand::f64() * 10.0 - 5.0;
    let request = hyper::Request::post("/predict")
        .header(HOST, addr)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"inputs": [{input}]}}"#
        ))))
        .expect("the request is well-formed");
    connection.ready().await?;
    let response = connection.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// The answers of one level, as they come in.
#[derive(Debug, Default)]
struct Answers {
    ok_latencies: Vec<Duration>,
    too_many: u64,
    unavailable: u64,
    other: u64,
    /// Connection errors: the request got no answer.
    errors: u64,
    first_error: Option<String>,
    /// Connections opened again after one closed or failed.
    reconnects: u64,
}

/// What one level measured, per second of the level.
#[derive(Debug)]
struct Level {
    multiple: f64,
    /// The closed-loop capacity measured right before this level.
    capacity: f64,
    offered: f64,
    sent: f64,
    ok: f64,
    too_many: f64,
    unavailable: f64,
    other: f64,
    dropped: f64,
    errors: u64,
    first_error: Option<String>,
    unanswered: u64,
    reconnects: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    goodput_ratio: f64,
}

impl Level {
    fn to_json(&self) -> Value {
        json!({
            "multiple": self.multiple,
            "capacity_rps": self.capacity,
            "offered_rps": self.offered,
            "sent_rps": self.sent,
            "ok_rps": self.ok,
            "too_many_requests_rps": self.too_many,
            "unavailable_rps": self.unavailable,
            "other_rps": self.other,
            "client_dropped_rps": self.dropped,
            "errors": self.errors,
            "first_error": self.first_error,
            "unanswered": self.unanswered,
            "reconnects": self.reconnects,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "goodput_ratio": self.goodput_ratio,
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.secs > 0.0 && args.capacity_secs > 0.0,
        "--secs and --capacity-secs must be positive"
    );
    ensure!(
        args.connections > 0 && args.capacity_connections > 0,
        "connection counts must be positive"
    );
    ensure!(
        args.levels.iter().all(|level| *level > 0.0),
        "--levels must be positive multiples"
    );
    check_fd_limit(args.connections)?;
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => default_server_binary()?,
    };
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/example"));
    let server = ServerProcess::start(&binary, &model_dir, &[]).await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "goodput of POST /predict on {} (model {}); generator and server share this \
         machine's {cores} core(s)",
        server.addr,
        model_dir.display()
    );

    let mut levels = Vec::new();
    for &multiple in &args.levels {
        wait_for_empty_queue(&server.addr).await?;
        let capacity =
            capacity(&server.addr, args.capacity_connections, args.capacity_secs).await?;
        ensure!(
            capacity > 0.0,
            "no request was answered 200 in the capacity run"
        );
        println!(
            "closed-loop capacity: {capacity:.0} req/s answered 200 ({} connections, {:.1} s)",
            args.capacity_connections, args.capacity_secs
        );
        wait_for_empty_queue(&server.addr).await?;
        let level = open_loop(
            &server.addr,
            args.connections,
            multiple,
            capacity,
            args.secs,
        )
        .await?;
        println!(
            "  {multiple}x: offered {:.0}/s, 200 {:.0}/s, 429 {:.0}/s, client-dropped {:.0}/s",
            level.offered, level.ok, level.too_many, level.dropped
        );
        if let Some(error) = &level.first_error {
            println!(
                "    {} connection error(s), the first: {error}",
                level.errors
            );
        }
        levels.push(level);
    }
    print_table(&levels);
    if let Some(dir) = &args.out {
        let report = json!({
            "capacity_connections": args.capacity_connections,
            "connections": args.connections,
            "secs_per_level": args.secs,
            "cores": cores,
            "levels": levels.iter().map(Level::to_json).collect::<Vec<_>>(),
        });
        std::fs::create_dir_all(dir)?;
        let path = dir.join("goodput.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    let log = std::mem::take(&mut *server.log.lock().unwrap());
    if !log.is_empty() {
        println!("server stderr ({} lines), first ones:", log.len());
        for line in log.iter().take(10) {
            println!("  {line}");
        }
    }
    server.stop(Duration::from_secs(40)).await
}

/// Fails early, with the remedy, when this process may not open enough connections.
fn check_fd_limit(connections: usize) -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: Option<usize> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok());
    if let Some(soft) = soft {
        ensure!(
            connections + 256 <= soft,
            "{connections} connections need more descriptors than the limit of {soft}: \
             raise it (`ulimit -n {}`) or pass fewer --connections",
            connections + 256
        );
    }
    Ok(())
}

/// Requests per second answered 200 by `connections` clients sending back to back.
async fn capacity(addr: &str, connections: usize, secs: f64) -> Result<f64> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(secs);
    let mut clients = JoinSet::new();
    for _ in 0..connections {
        let addr = addr.to_owned();
        clients.spawn(async move {
            let mut connection = connect(&addr).await?;
            let mut ok = 0u64;
            while Instant::now() < end {
                let status = predict(&mut connection, &addr).await?;
                let now = Instant::now();
                if status == 200 && now >= start && now <= end {
                    ok += 1;
                }
            }
            anyhow::Ok(ok)
        });
    }
    let mut ok = 0;
    while let Some(client) = clients.join_next().await {
        ok += client?.context("a capacity connection failed")?;
    }
    Ok(ok as f64 / secs)
}

/// How late a due request may still be sent: one that no connection was free to send
/// within this much of its due time is dropped by the client.
const LATE: Duration = Duration::from_millis(1);

/// Offers `multiple × capacity` requests per second for `secs` seconds, open loop.
///
/// Request `i` is due at `i / rate` seconds. Each connection has a task of its own that
/// takes the next due request (waiting for its time if it is early), sends it and reads the
/// answer; requests that became more than [`LATE`] overdue while every connection was busy
/// are skipped and counted as dropped. A task per connection rather than per request keeps
/// the generator's own cost per request at that of the capacity run: it shares the cores
/// with the server.
async fn open_loop(
    addr: &str,
    connections: usize,
    multiple: f64,
    capacity: f64,
    secs: f64,
) -> Result<Level> {
    let mut connecting = JoinSet::new();
    for _ in 0..connections {
        let addr = addr.to_owned();
        connecting.spawn(async move { connect(&addr).await });
    }
    let mut opened = Vec::with_capacity(connections);
    while let Some(connection) = connecting.join_next().await {
        opened.push(connection?.context("cannot open the generator's connections")?);
    }

    let rate = multiple * capacity;
    let schedule = Arc::new(Schedule {
        start: Instant::now(),
        rate,
        total: (rate * secs).round() as u64,
        next: AtomicU64::new(0),
    });
    let answers = Arc::new(Mutex::new(Answers::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut clients = JoinSet::new();
    for connection in opened {
        clients.spawn(client(
            connection,
            addr.to_owned(),
            Arc::clone(&schedule),
            Arc::clone(&answers),
            Arc::clone(&in_flight),
        ));
    }
    let end = schedule.start + Duration::from_secs_f64(secs);
    let sent = match tokio::time::timeout_at((end + GRACE).into(), async {
        let mut sent = 0;
        while let Some(client) = clients.join_next().await {
            sent += client?;
        }
        anyhow::Ok(sent)
    })
    .await
    {
        Ok(sent) => sent?,
        Err(_late) => {
            // Answers still missing after the grace period: count what was sent so far.
            clients.abort_all();
            schedule.sent()
        }
    };
    let unanswered = in_flight.load(Ordering::SeqCst);

    let mut answers = std::mem::take(&mut *answers.lock().unwrap());
    answers.ok_latencies.sort_unstable();
    let per_second = |count: u64| count as f64 / secs;
    let ok = per_second(answers.ok_latencies.len() as u64);
    Ok(Level {
        multiple,
        capacity,
        offered: rate,
        sent: per_second(sent),
        ok,
        too_many: per_second(answers.too_many),
        unavailable: per_second(answers.unavailable),
        other: per_second(answers.other),
        dropped: per_second(schedule.total.saturating_sub(sent)),
        errors: answers.errors,
        first_error: answers.first_error.take(),
        unanswered,
        reconnects: answers.reconnects,
        p50_ms: percentile_ms(&answers.ok_latencies, 50.0),
        p99_ms: percentile_ms(&answers.ok_latencies, 99.0),
        goodput_ratio: ok / capacity,
    })
}

/// When each request of a level is due, and which is next.
struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
    /// The next request no connection has taken.
    next: AtomicU64,
}

impl Schedule {
    /// When the next request to send is due, skipping those more than [`LATE`] overdue;
    /// `None` once every request of the level was taken or skipped.
    fn take(&self) -> Option<Instant> {
        let overdue = self.start.elapsed().saturating_sub(LATE).as_secs_f64() * self.rate;
        self.next.fetch_max(overdue as u64, Ordering::SeqCst);
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        (index < self.total).then(|| self.start + Duration::from_secs_f64(index as f64 / self.rate))
    }

    /// Requests taken so far (an upper bound of those sent, for an aborted level).
    fn sent(&self) -> u64 {
        self.next.load(Ordering::SeqCst).min(self.total)
    }
}

/// One connection's share of a level: sends the requests it takes from `schedule` one
/// after the other, records their answers, and returns how many it sent.
async fn client(
    mut connection: Connection,
    addr: String,
    schedule: Arc<Schedule>,
    answers: Arc<Mutex<Answers>>,
    in_flight: Arc<AtomicU64>,
) -> u64 {
    let mut sent = 0;
    while let Some(due) = schedule.take() {
        tokio::time::sleep_until(due.into()).await;
        if connection.is_closed() {
            match connect(&addr).await {
                Ok(fresh) => {
                    connection = fresh;
                    answers.lock().unwrap().reconnects += 1;
                }
                Err(_) => continue,
            }
        }
        sent += 1;
        in_flight.fetch_add(1, Ordering::SeqCst);
        let result = predict(&mut connection, &addr).await;
        let latency = due.elapsed();
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut answers = answers.lock().unwrap();
        match result {
            Ok(200) => answers.ok_latencies.push(latency),
            Ok(429) => answers.too_many += 1,
            Ok(503) => answers.unavailable += 1,
            Ok(_) => answers.other += 1,
            Err(error) => {
                answers.errors += 1;
                answers
                    .first_error
                    .get_or_insert_with(|| error_chain(&error));
            }
        }
    }
    sent
}

/// An error and its sources on one line: the sources say what the socket saw.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

/// Waits until the server's queue is empty, so that a level does not inherit the last
/// one's backlog.
async fn wait_for_empty_queue(addr: &str) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats: Value = client
            .get(format!("http://{addr}/stats"))
            .send()
            .await?
            .json()
            .await?;
        if stats["queue_size"].as_u64() == Some(0) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the queue did not empty within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nearest-rank percentile of sorted `latencies`; None when there are none.
fn percentile_ms(latencies: &[Duration], percent: f64) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    let rank = (percent / 100.0 * latencies.len() as f64).ceil() as usize;
    Some(latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0)
}

fn print_table(levels: &[Level]) {
    let ms = |value: Option<f64>| value.map_or("-".to_owned(), |ms| format!("{ms:.1}"));
    println!();
    println!(
        "| load | capacity/s | offered/s | sent/s |  200/s |  429/s |  503/s | other/s | errors | \
         unanswered | client-dropped/s | p50 ms (200) | p99 ms (200) | goodput/capacity |"
    );
    println!(
        "|-----:|-----------:|----------:|-------:|-------:|-------:|-------:|--------:|-------:|\
         -----------:|-----------------:|-------------:|-------------:|-----------------:|"
    );
    for level in levels {
        println!(
            "| {:>3}x | {:>10.0} | {:>9.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>7.0} | {:>6} | \
             {:>10} | {:>16.0} | {:>12} | {:>12} | {:>16.2} |",
            level.multiple,
            level.capacity,
            level.offered,
            level.sent,
            level.ok,
            level.too_many,
            level.unavailable,
            level.other,
            level.errors,
            level.unanswered,
            level.dropped,
            ms(level.p50_ms),
            ms(level.p99_ms),
            level.goodput_ratio,
        );
    }
}
