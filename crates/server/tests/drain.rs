//! Shutdown under load: the real binary, a load loop on many keep-alive connections, a
//! signal in the middle, and every request accounted for: answered 200, or refused cleanly
//! (503, or a connection refused before anything was sent), never broken.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent keep-alive connections of the load loop.
const CONNECTIONS: usize = 32;
/// How long the load runs before the signal.
const LOAD_BEFORE_SIGNAL: Duration = Duration::from_millis(1500);
const DRAIN_TIMEOUT_SECS: u64 = 10;

/// What the load loop saw, request by request.
#[derive(Debug, Default)]
struct Tally {
    /// Requests written to a connection.
    sent: AtomicU64,
    ok: AtomicU64,
    /// 200 answers received after the signal was sent.
    ok_after_signal: AtomicU64,
    /// 503 answers (the server drains).
    unavailable: AtomicU64,
    /// Connections refused after the signal: nothing was sent on them.
    connect_refused: AtomicU64,
    /// Requests written whose connection ended without an answer.
    broken: AtomicU64,
    /// Responses after the signal that announced `Connection: close`.
    closes_after_signal: AtomicU64,
    /// Anything else, described.
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    fn note(&self, what: String) {
        let mut unexpected = self.unexpected.lock().unwrap();
        if unexpected.len() < 20 {
            unexpected.push(what);
        }
    }
}

/// Sends `/predict` requests back to back on one keep-alive connection, reconnecting when
/// the server closes it, until `stop`.
async fn load_worker(
    addr: std::net::SocketAddr,
    index: usize,
    tally: Arc<Tally>,
    signalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let request = raw_post("/predict", &format!(r#"{{"inputs": {}}}"#, index % 5 + 1));
    let mut connection: Option<RawConnection> = None;
    while !stop.load(Ordering::SeqCst) {
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match RawConnection::connect(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(error) => {
                    if error.kind() == std::io::ErrorKind::ConnectionRefused
                        && signalled.load(Ordering::SeqCst)
                    {
                        tally.connect_refused.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tally.note(format!("connect: {error}"));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        tally.sent.fetch_add(1, Ordering::SeqCst);
        let answer = conn.roundtrip(&request).await;
        // The flag is set before the signal is sent: an answer that shows the drain arrives
        // after it, though its request may have been sent before.
        let after_signal = signalled.load(Ordering::SeqCst);
        match answer {
            Ok(response) => {
                match response.status {
                    200 => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                        if after_signal {
                            tally.ok_after_signal.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    503 => {
                        tally.unavailable.fetch_add(1, Ordering::SeqCst);
                        if !after_signal {
                            tally.note("503 before the signal".into());
                        }
                        if !response.closes() {
                            tally.note("a 503 without Connection: close".into());
                        }
                    }
                    status => tally.note(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&response.body)
                    )),
                }
                if response.closes() {
                    connection = None;
                    if after_signal {
                        tally.closes_after_signal.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tally.note("Connection: close before the signal".into());
                    }
                }
            }
            Err(error) => {
                tally.broken.fetch_add(1, Ordering::SeqCst);
                tally.note(format!("broken (after signal: {after_signal}): {error}"));
                connection = None;
            }
        }
    }
}

/// Runs the load, sends `signal` in the middle, and checks the accounting and the exit.
async fn drain_under_load(signal: &'static str) {
    let drain_timeout = DRAIN_TIMEOUT_SECS.to_string();
    let server = tokio::task::spawn_blocking(move || {
        ServerProcess::start(&[("INFERENCE_SERVER__DRAIN_TIMEOUT_SECS", &drain_timeout)])
    })
    .await
    .unwrap();
    let addr = server.addr;
    // A probe on its own keep-alive connection, idle while the load runs.
    let mut probe = RawConnection::connect(addr).await.unwrap();
    let ready = probe.roundtrip(&raw_get("/health")).await.unwrap();
    assert_eq!(ready.status, 200);

    let tally = Arc::new(Tally::default());
    let signalled = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|index| {
            tokio::spawn(load_worker(
                addr,
                index,
                Arc::clone(&tally),
                Arc::clone(&signalled),
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(LOAD_BEFORE_SIGNAL).await;
    let ok_before_signal = Tally::count(&tally.ok);
    assert!(
        ok_before_signal > 0,
        "no request was answered before the signal"
    );

    signalled.store(true, Ordering::SeqCst);
    let signalled_at = Instant::now();
    server.signal(signal);
    // Readiness flips first; an idle connection still takes a request sent just now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = probe.roundtrip(&raw_get("/health")).await;
    let mut server = server;
    let (server, status) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(DRAIN_TIMEOUT_SECS + 5));
        (server, status)
    })
    .await
    .unwrap();
    let exited_after = signalled_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("a load worker hangs")
            .unwrap();
    }

    let sent = Tally::count(&tally.sent);
    let ok = Tally::count(&tally.ok);
    let unavailable = Tally::count(&tally.unavailable);
    let broken = Tally::count(&tally.broken);
    eprintln!(
        "SIG{signal} under load ({CONNECTIONS} connections): sent {sent}, 200 {ok} ({} after the \
         signal), 503 {unavailable}, broken {broken}; connections refused after the signal {}; \
         responses with Connection: close after the signal {}; exited {:.3} s after the signal \
         (drain_timeout {DRAIN_TIMEOUT_SECS} s) with {status:?}",
        Tally::count(&tally.ok_after_signal),
        Tally::count(&tally.connect_refused),
        Tally::count(&tally.closes_after_signal),
        exited_after.as_secs_f64(),
    );
    let unexpected = tally.unexpected.lock().unwrap().clone();
    let status =
        status.unwrap_or_else(|| panic!("still running {exited_after:?} after SIG{signal}"));
    assert!(
        status.success(),
        "exit status {status:?}: {:?}",
        server.log.lock().unwrap()
    );
    assert!(exited_after < Duration::from_secs(DRAIN_TIMEOUT_SECS));
    assert_eq!(broken, 0, "requests broken: {unexpected:#?}");
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert_eq!(
        sent,
        ok + unavailable,
        "every request sent is accounted for"
    );
    assert!(
        unavailable + Tally::count(&tally.connect_refused) > 0,
        "the signal did not land while the load ran"
    );
    // Each keep-alive connection ended with a response saying so.
    assert!(Tally::count(&tally.closes_after_signal) >= CONNECTIONS as u64);
    let health = health.expect("the idle probe connection was cut during the drain");
    assert_eq!(health.status, 503, "readiness after the signal");
    assert!(health.closes(), "{:?}", health.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_or_cleanly_refuses_every_request() {
    drain_under_load("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_under_load_answers_or_cleanly_refuses_every_request() {
    drain_under_load("INT").await;
}

/// Headers and part of a body: the request is admitted and waits for the rest for ever.
async fn hanging_request(addr: std::net::SocketAddr) -> RawConnection {
    let mut connection = RawConnection::connect(addr).await.unwrap();
    connection
        .send(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"inputs\": ",
        )
        .await
        .unwrap();
    // Let the server read the head and start on the body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    connection
}

#[tokio::test]
async fn a_hanging_request_holds_the_exit_no_longer_than_the_drain_timeout() {
    let mut server = tokio::task::spawn_blocking(|| {
        ServerProcess::start(&[("INFERENCE_SERVER__DRAIN_TIMEOUT_SECS", "1")])
    })
    .await
    .unwrap();
    let mut hanging = hanging_request(server.addr).await;
    // And a request head that never ends.
    let mut half_head = RawConnection::connect(server.addr).await.unwrap();
    half_head.send(b"GET /health HTTP/1.1\r\nHo").await.unwrap();

    let signalled_at = Instant::now();
    server.signal("TERM");
    let (server, status) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(5));
        (server, status)
    })
    .await
    .unwrap();
    let exited_after = signalled_at.elapsed();
    eprintln!(
        "with a hanging request: exited {:.3} s after SIGTERM (drain_timeout 1 s) with {status:?}",
        exited_after.as_secs_f64()
    );
    let status = status.expect("the server did not exit");
    assert!(
        status.success(),
        "{status:?}: {:?}",
        server.log.lock().unwrap()
    );
    // It waited for the drain (the request might have finished), then no longer.
    assert!(
        exited_after >= Duration::from_millis(900),
        "{exited_after:?}"
    );
    assert!(exited_after < Duration::from_secs(2), "{exited_after:?}");
    assert!(hanging.closed_within(Duration::from_secs(1)).await);
    assert!(half_head.closed_within(Duration::from_secs(1)).await);
    assert!(server.log_contains("drain timeout passed"));
}

#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let mut server = tokio::task::spawn_blocking(|| {
        ServerProcess::start(&[("INFERENCE_SERVER__DRAIN_TIMEOUT_SECS", "30")])
    })
    .await
    .unwrap();
    let _hanging = hanging_request(server.addr).await;
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the drain should wait for the hanging request"
    );
    let second_at = Instant::now();
    server.signal("INT");
    let (server, status) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(5));
        (server, status)
    })
    .await
    .unwrap();
    let exited_after = second_at.elapsed();
    eprintln!(
        "second signal: exited {:.3} s after it with {status:?}",
        exited_after.as_secs_f64()
    );
    let status = status.expect("the second signal did not stop the server");
    assert_eq!(status.code(), Some(130), "128 + SIGINT");
    assert!(exited_after < Duration::from_secs(1), "{exited_after:?}");
    assert!(server.log_contains("second signal"));
}

#[tokio::test]
async fn an_http2_connection_is_sent_away_at_once_and_does_not_hold_the_drain() {
    let mut server = tokio::task::spawn_blocking(|| {
        ServerProcess::start(&[("INFERENCE_SERVER__DRAIN_TIMEOUT_SECS", "10")])
    })
    .await
    .unwrap();
    let (client, connection) = h2_connect(server.addr).await;
    let (status, _) = h2_post(&client, "/predict", r#"{"inputs": 1}"#)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The client keeps its connection open; GOAWAY ends it without waiting for it to idle.
    let signalled_at = Instant::now();
    server.signal("TERM");
    let (_server, status) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(5));
        (server, status)
    })
    .await
    .unwrap();
    let exited_after = signalled_at.elapsed();
    eprintln!(
        "an open HTTP/2 connection: exited {:.3} s after SIGTERM",
        exited_after.as_secs_f64()
    );
    assert!(status.expect("no exit").success());
    assert!(
        exited_after < Duration::from_millis(900),
        "{exited_after:?}"
    );
    assert!(
        connection.is_finished(),
        "the connection outlived the server"
    );
}
