//! Scale-out on loopback: replicas of the release server behind HAProxy, under oha's load,
//! survive a rolling restart and a crash.
//!
//! Run through `cargo xtask cluster` (which installs HAProxy and oha when missing), or
//! directly: `cargo run --release -p inference-server --example cluster -- --help`.
//!
//! HAProxy checks `/health/ready` every 200 ms, takes a replica out after one failed check
//! and back after two good ones, and retries a request on another replica when a connection
//! fails, a response is empty or a replica answers 503 (a draining one refuses new work).
//! Two events, each under its own oha run so each has its own count:
//! 1. rolling restart: every replica in turn gets SIGTERM, drains, exits and starts again on
//!    its port, and is ready before the next one stops. Target: no failed request.
//! 2. crash: one replica gets SIGKILL and comes back 3 s later. Target: at most as many
//!    failures as requests that replica can have had in flight (the load's connections).
//!
//! Every process it starts is stopped at the end, whatever happened.

mod support;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Oha, OhaRun, ServerProcess, default_server_binary};
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
#[command(about = "Replicas behind HAProxy through a rolling restart and a crash")]
struct Args {
    /// Replicas behind the load balancer.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Connections of the load.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The `oha` binary.
    #[arg(long, value_name = "PATH")]
    oha: PathBuf,
    /// The `haproxy` binary.
    #[arg(long, value_name = "PATH", default_value = "haproxy")]
    haproxy: PathBuf,
    /// The server binary [default: `inference-server` in the folder above this example's].
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
}

/// How long a replica may take to drain and exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(40);
/// How long HAProxy needs to see a restarted replica ready twice (rise 2, inter 200 ms),
/// with a margin.
const MARKED_UP: Duration = Duration::from_millis(1000);
/// Load before and after each event.
const QUIET: Duration = Duration::from_secs(2);
/// How long the crashed replica stays down.
const DOWN_FOR: Duration = Duration::from_secs(3);

const BODY: &str = r#"{"inputs": 1.0}"#;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One replica on its own fixed port (HAProxy's configuration names it).
async fn start_replica(binary: &Path, port: u16) -> Result<ServerProcess> {
    let mut command = Command::new(binary);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--grpc-port", "0", "--model-dir", "models/example"])
        .env("RUST_LOG", "warn,inference_server::serve=info")
        .env("INFERENCE_SERVER__DRAIN_TIMEOUT_SECS", "10");
    ServerProcess::spawn(command, "/health/ready")
        .await
        .with_context(|| format!("the replica on port {port} did not start"))
}

fn haproxy_config(front: u16, ports: &[u16]) -> String {
    let servers: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("    server replica{i} 127.0.0.1:{port} check\n"))
        .collect();
    format!(
        "global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    option http-buffer-request
    retry-on conn-failure empty-response response-timeout 503
frontend front
    bind 127.0.0.1:{front}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}"
    )
}

/// HAProxy in the foreground; killed when dropped.
async fn start_haproxy(binary: &Path, config: &Path, front: u16) -> Result<Child> {
    let child = Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let ready = client
            .get(format!("http://127.0.0.1:{front}/health/ready"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("HAProxy did not route to a ready replica within 10 s")
}

fn row(event: &str, run: &OhaRun) -> String {
    let statuses: Vec<String> = run
        .statuses
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    format!(
        "| {event} | {} | {} | {} | {:.0} | {:.2} | {} |",
        run.ok + run.errors,
        run.ok,
        run.errors,
        run.requests_per_s,
        run.p99_ms,
        statuses.join(", ")
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.replicas >= 2, "--replicas must be at least 2");
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => default_server_binary()?,
    };
    let oha = Oha::new(&args.oha)?;
    let ports = (0..args.replicas)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let mut replicas = Vec::new();
    for &port in &ports {
        replicas.push(Some(start_replica(&binary, port).await?));
    }
    let front = free_port()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(front, &ports))?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, BODY)?;
    let _haproxy = start_haproxy(&args.haproxy, &config, front).await?;
    let url = format!("http://127.0.0.1:{front}/predict");
    eprintln!(
        "{} replicas on ports {ports:?} behind HAProxy on {front}, {} connections",
        args.replicas, args.concurrency
    );

    // 1. Rolling restart, under one oha run long enough for every replica's turn.
    let per_replica = Duration::from_millis(1500) + MARKED_UP;
    let rolling_secs = (QUIET * 2 + per_replica * args.replicas as u32).as_secs_f64();
    let load = {
        let (oha, url, body) = (oha.clone(), url.clone(), body.clone());
        let concurrency = args.concurrency;
        tokio::spawn(async move { oha.run(&url, concurrency, rolling_secs, &body).await })
    };
    tokio::time::sleep(QUIET).await;
    for (i, &port) in ports.iter().enumerate() {
        let replica = replicas[i].take().context("the replica is running")?;
        replica
            .stop(STOP_WITHIN)
            .await
            .with_context(|| format!("replica {i} on SIGTERM"))?;
        replicas[i] = Some(start_replica(&binary, port).await?);
        eprintln!("replica {i} restarted");
        tokio::time::sleep(MARKED_UP).await;
    }
    let rolling = load.await??;

    // 2. A crash: SIGKILL, down for a while, back.
    let crash_secs = (QUIET * 2 + DOWN_FOR + MARKED_UP).as_secs_f64();
    let load = {
        let (oha, url, body) = (oha.clone(), url.clone(), body.clone());
        let concurrency = args.concurrency;
        tokio::spawn(async move { oha.run(&url, concurrency, crash_secs, &body).await })
    };
    tokio::time::sleep(QUIET).await;
    let victim = replicas[0].take().context("the replica is running")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim.pid.to_string()])
        .status()?;
    ensure!(killed.success(), "cannot kill replica 0");
    drop(victim);
    eprintln!("replica 0 killed");
    tokio::time::sleep(DOWN_FOR).await;
    replicas[0] = Some(start_replica(&binary, ports[0]).await?);
    eprintln!("replica 0 restarted");
    let crash = load.await??;

    println!("| event | sent | 200 | failed | req/s | p99 ms | answers |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!("{}", row("rolling restart (SIGTERM each)", &rolling));
    println!("{}", row("crash (SIGKILL one, back after 3 s)", &crash));

    for replica in replicas.into_iter().flatten() {
        replica.stop(STOP_WITHIN).await?;
    }
    let mut missed = Vec::new();
    if rolling.errors > 0 {
        missed.push(format!(
            "the rolling restart failed {} requests (target 0)",
            rolling.errors
        ));
    }
    if crash.errors > args.concurrency as u64 {
        missed.push(format!(
            "the crash failed {} requests, more than the {} the replica can have had in flight",
            crash.errors, args.concurrency
        ));
    }
    if !missed.is_empty() {
        bail!("{}", missed.join("; "));
    }
    println!("both targets met");
    Ok(())
}
