//! Slow and hostile clients against the real binary: trickled request heads, idle
//! keep-alive connections, more connections than allowed, slowloris next to a normal client,
//! a client that never reads its answers; and the well-behaved side of the same machinery:
//! HTTP/1.1 pipelining and HTTP/2 with prior knowledge (h2c).

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(envs: &'static [(&'static str, &'static str)]) -> ServerProcess {
    tokio::task::spawn_blocking(move || ServerProcess::start(envs))
        .await
        .unwrap()
}

fn predict(input: u32) -> Vec<u8> {
    raw_post("/predict", &format!(r#"{{"inputs": {input}}}"#))
}

/// Connects and writes `head` one byte every `every`, until the server closes the
/// connection or `stop` passes; returns how long after the first byte it was closed, if it
/// was.
async fn trickle(
    addr: std::net::SocketAddr,
    head: &'static [u8],
    every: Duration,
    stop: Duration,
) -> Option<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let writing = async {
        for byte in head {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    };
    let closed = async {
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = writing => None,
        elapsed = closed => Some(elapsed),
        () = tokio::time::sleep(stop) => None,
    }
}

const SLOW_HEAD: &[u8] =
    b"GET /health HTTP/1.1\r\nHost: test\r\nUser-Agent: a very slow client indeed\r\n\r\n";

#[tokio::test]
async fn a_request_head_trickled_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let server = start(&[("INFERENCE_SERVER__HEADER_READ_TIMEOUT_SECS", "1")]).await;
    // Bytes keep coming (the whole head would take 25 s), yet the head is late.
    let closed = trickle(
        server.addr,
        SLOW_HEAD,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .await;
    eprintln!("a head trickled every 300 ms: cut after {closed:?} (header_read_timeout 1 s)");
    let closed = closed.expect("the trickling connection was held");
    assert!(closed >= Duration::from_millis(900), "{closed:?}");
    assert!(closed < Duration::from_millis(2500), "{closed:?}");
    // One byte every 2 s, the pace of the original report: cut before the second byte.
    let closed = trickle(
        server.addr,
        SLOW_HEAD,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .await
    .expect("the trickling connection was held");
    assert!(closed < Duration::from_millis(2500), "{closed:?}");
    assert_eq!(blocking_status(server.addr, "/health"), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout_only() {
    let server = start(&[
        ("INFERENCE_SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
        ("INFERENCE_SERVER__KEEP_ALIVE_TIMEOUT_SECS", "2"),
    ])
    .await;
    let mut connection = RawConnection::connect(server.addr).await.unwrap();
    assert_eq!(connection.roundtrip(&predict(1)).await.unwrap().status, 200);
    // Idle longer than the header timeout: the header timer does not run between requests.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = connection.roundtrip(&predict(2)).await.unwrap();
    assert_eq!(second.status, 200);
    assert!(!second.closes());
    // The keep-alive timeout counts from the last response, not the first.
    let idle_from = Instant::now();
    let closed = connection.closed_within(Duration::from_secs(5)).await;
    let idle = idle_from.elapsed();
    eprintln!("an idle keep-alive connection: closed after {idle:?} (keep_alive_timeout 2 s)");
    assert!(closed, "the idle connection was kept");
    assert!(idle >= Duration::from_millis(1800), "{idle:?}");
    assert!(idle < Duration::from_millis(3500), "{idle:?}");
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let server = start(&[("INFERENCE_SERVER__MAX_CONNECTIONS", "2")]).await;
    let mut first = RawConnection::connect(server.addr).await.unwrap();
    let mut second = RawConnection::connect(server.addr).await.unwrap();
    assert_eq!(
        first.roundtrip(&raw_get("/health")).await.unwrap().status,
        200
    );
    assert_eq!(
        second.roundtrip(&raw_get("/health")).await.unwrap().status,
        200
    );
    // The kernel completes the handshake; the server does not take the connection.
    let mut third = RawConnection::connect(server.addr).await.unwrap();
    third.send(&predict(3)).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(700), third.response()).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    drop(first);
    let waited = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), third.response())
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert_eq!(response.status, 200);
    eprintln!(
        "max_connections 2: the third connection was served {:?} after one closed",
        waited.elapsed()
    );
    // The second connection still works.
    assert_eq!(second.roundtrip(&predict(4)).await.unwrap().status, 200);
}

/// Sequential `/predict` latencies on one keep-alive connection, sorted.
async fn latencies(connection: &mut RawConnection, count: u32) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in 0..count {
        let started = Instant::now();
        let response = connection.roundtrip(&predict(i % 5 + 1)).await.unwrap();
        assert_eq!(response.status, 200);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

/// Latencies of `/predict` on a fresh connection each (connecting included), sorted.
async fn fresh_latencies(addr: std::net::SocketAddr, count: u32) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in 0..count {
        let started = Instant::now();
        let mut connection = RawConnection::connect(addr).await.unwrap();
        let response = connection.roundtrip(&predict(i % 5 + 1)).await.unwrap();
        assert_eq!(response.status, 200);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_slow_normal_clients_and_is_cut_at_the_header_timeout() {
    const SLOW_CONNECTIONS: usize = 200;
    let server = start(&[("INFERENCE_SERVER__HEADER_READ_TIMEOUT_SECS", "3")]).await;
    let mut normal = RawConnection::connect(server.addr).await.unwrap();
    latencies(&mut normal, 20).await;
    let before = latencies(&mut normal, 50).await;
    let fresh_before = fresh_latencies(server.addr, 10).await;

    let slow: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|_| {
            tokio::spawn(trickle(
                server.addr,
                SLOW_HEAD,
                Duration::from_secs(1),
                Duration::from_secs(8),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let during = latencies(&mut normal, 50).await;
    let fresh_during = fresh_latencies(server.addr, 10).await;
    let mut cut = Vec::new();
    for task in slow {
        cut.push(task.await.unwrap());
    }
    let held = cut.iter().filter(|c| c.is_none()).count();
    let latest_cut = cut.iter().flatten().max().copied();
    eprintln!(
        "slowloris ({SLOW_CONNECTIONS} connections, a header byte a second): /predict median \
         {:?} (p90 {:?}) before, {:?} (p90 {:?}) during; on fresh connections {:?} before, {:?} \
         during; slow connections cut by {latest_cut:?} (header_read_timeout 3 s), {held} held",
        median(&before),
        before[before.len() * 9 / 10],
        median(&during),
        during[during.len() * 9 / 10],
        median(&fresh_before),
        median(&fresh_during),
    );
    let floor = Duration::from_millis(3);
    assert!(median(&during) <= 10 * median(&before).max(floor));
    assert!(median(&fresh_during) <= 10 * median(&fresh_before).max(floor));
    assert_eq!(held, 0, "slow connections held past the header timeout");
    assert!(
        latest_cut.unwrap() < Duration::from_secs(5),
        "{latest_cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_does_not_grow_the_servers_memory() {
    const READERLESS: usize = 4;
    let server = start(&[]).await;
    let mut normal = RawConnection::connect(server.addr).await.unwrap();
    latencies(&mut normal, 50).await;
    // 16 KiB requests, pipelined as fast as the server lets them in, never reading.
    let padding = " ".repeat(16 * 1024);
    let request = raw_post("/predict", &format!(r#"{{"inputs": 1{padding}}}"#));
    let rss_before = server.rss_kib();
    let writers: Vec<_> = (0..READERLESS)
        .map(|_| {
            let request = request.clone();
            let addr = server.addr;
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                let mut written = 0usize;
                while let Ok(Ok(())) =
                    tokio::time::timeout_at(deadline, stream.write_all(&request)).await
                {
                    written += request.len();
                }
                (stream, written)
            })
        })
        .collect();
    let mut connections = Vec::new();
    let mut written = 0;
    for writer in writers {
        let (stream, bytes) = writer.await.unwrap();
        written += bytes;
        connections.push(stream);
    }
    let rss_during = server.rss_kib();
    // Others are still served while those connections sit there.
    let response = tokio::time::timeout(Duration::from_secs(5), normal.roundtrip(&predict(2)))
        .await
        .expect("a normal client is not served")
        .unwrap();
    assert_eq!(response.status, 200);
    let rss_after = server.rss_kib();
    eprintln!(
        "{READERLESS} clients pipelining 16 KiB requests for 2 s without reading: {} MiB \
         written; server RSS {} MiB before, {} MiB with them connected, {} MiB after a normal \
         request",
        written / (1024 * 1024),
        rss_before / 1024,
        rss_during / 1024,
        rss_after / 1024,
    );
    assert!(written > 0);
    let growth_kib = rss_during.saturating_sub(rss_before);
    assert!(
        growth_kib < 64 * 1024,
        "RSS grew by {} MiB",
        growth_kib / 1024
    );
    drop(connections);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_keep_alive_timeout() {
    const REQUESTS: usize = 200;
    let server = start(&[
        ("INFERENCE_SERVER__KEEP_ALIVE_TIMEOUT_SECS", "1"),
        ("RUST_LOG", "info,inference_server::serve=debug"),
    ])
    .await;
    // Answers of about 100 KiB each, to a client with a small receive buffer.
    let inputs: Vec<u32> = (0..1000).map(|i| i % 5 + 1).collect();
    let request = raw_post(
        "/predict/batch",
        &serde_json::json!({ "inputs": inputs }).to_string(),
    );
    let mut normal = RawConnection::connect(server.addr).await.unwrap();
    let answer = normal.roundtrip(&request).await.unwrap();
    assert_eq!(answer.status, 200);
    let answer_bytes = answer.body.len();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        for _ in 0..REQUESTS {
            if writer.write_all(&request).await.is_err() {
                break;
            }
        }
        writer
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.log_contains("the client stopped reading") {
        assert!(
            Instant::now() < deadline,
            "a connection whose client stopped reading was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut received = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    eprintln!(
        "a client that stopped reading: cut with {} KiB of {REQUESTS} answers of {} KiB read \
         (keep_alive_timeout 1 s)",
        received / 1024,
        answer_bytes / 1024
    );
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(received < REQUESTS * answer_bytes / 2, "{received} bytes");
    drop(writing);
    // Others are served as before.
    let mut other = RawConnection::connect(server.addr).await.unwrap();
    assert_eq!(other.roundtrip(&predict(1)).await.unwrap().status, 200);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let server = start(&[]).await;
    let mut connection = RawConnection::connect(server.addr).await.unwrap();
    let inputs: Vec<u32> = (0..12).map(|i| i % 5 + 1).collect();
    let mut burst = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        burst.extend(predict(*input));
        if i == 5 {
            burst.extend(raw_get("/health"));
        }
    }
    connection.send(&burst).await.unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let response = connection.response().await.unwrap();
        assert_eq!(response.status, 200);
        assert_close(&response.json()["result"], &golden_for(f64::from(*input)));
        if i == 5 {
            let health = connection.response().await.unwrap();
            assert_eq!(health.status, 200);
            assert!(
                health.json().get("healthy").is_some(),
                "{:?}",
                health.json()
            );
        }
    }
}

#[tokio::test]
async fn http2_with_prior_knowledge_serves_concurrent_streams_on_one_connection() {
    let server = start(&[]).await;
    let (client, _connection) = h2_connect(server.addr).await;
    let streams: Vec<_> = (0..20u32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let input = i % 5 + 1;
                let answer = h2_post(&client, "/predict", &format!(r#"{{"inputs": {input}}}"#))
                    .await
                    .unwrap();
                (input, answer)
            })
        })
        .collect();
    for stream in streams {
        let (input, (status, body)) = stream.await.unwrap();
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_close(&body["result"], &golden_for(f64::from(input)));
    }
}
