//! Listening and the server's life: accepting connections, serving them with the router,
//! and shutting down on a signal.
//!
//! The accept loop is our own, over hyper-util's `auto` connections (HTTP/1.1 and h2c on one
//! port), so that every connection has a watchdog that knows what it is doing: waiting for a
//! request head (`server.header_read_timeout_secs`, counted from its first byte, or from the
//! connection's start for its first request), idle between requests
//! (`server.keep_alive_timeout_secs`), or stuck writing to a client that stopped reading (cut
//! after the keep-alive timeout too). At most `server.max_connections` are open; past that
//! the loop stops accepting and the kernel's backlog holds newcomers.
//!
//! Shutdown, on the first SIGINT or SIGTERM: the draining flag is set at once (`/health` and
//! new inference requests answer 503), the listener closes (later connection attempts are
//! refused: nothing was sent, so nothing is lost), and every open connection finishes on
//! its own terms: an HTTP/1 connection is closed only after it answered a request with
//! `Connection: close` (every response carries it from now on), when its client closes it,
//! or when it stayed quiet for a moment, so a request already on its way is answered, not
//! reset. An HTTP/2 connection gets GOAWAY and finishes its streams. Once none is open, or at
//! `server.drain_timeout_secs` at the latest (what is left is then aborted), the model queues
//! drain within the time left and the server returns. A second signal exits at once.

use crate::{AppState, Config, app};
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Request, Response, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

/// How long an idle connection is kept once the drain started: long enough for a request
/// the client sent before it could know to arrive and be answered, short enough not to hold
/// the shutdown for clients that keep idle connections in a pool.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// How long a connection closing gracefully while idle (an HTTP/2 GOAWAY waiting for its
/// ping's answer, say) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `state` on `listener` until `shutdown` resolves, then drains as the module
/// documentation describes and returns within the configured drain timeout.
pub async fn serve_until(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let drain_timeout = state.config().drain_timeout();
    let shared = Arc::new(Shared::new(state.clone()));
    let slots = Arc::new(Semaphore::new(state.config().server.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut slot: Option<OwnedSemaphorePermit> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next() => report(joined),
            permit = Arc::clone(&slots).acquire_owned(), if slot.is_none() => slot = permit.ok(),
            accepted = listener.accept(), if slot.is_some() => match accepted {
                Ok((stream, _)) => {
                    let permit = slot.take();
                    connections.spawn(serve_connection(
                        stream,
                        Arc::clone(&shared),
                        drain_rx.clone(),
                        permit,
                    ));
                }
                Err(error) => accept_failed(error).await,
            },
        }
    }

    // Handshakes the kernel completed before the signal would be reset with the listener:
    // take them (slots permitting); their requests are answered like any other's.
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Ok((stream, _))) = listener.poll_accept(&mut cx) {
            let Some(permit) = slot
                .take()
                .or_else(|| Arc::clone(&slots).try_acquire_owned().ok())
            else {
                break;
            };
            connections.spawn(serve_connection(
                stream,
                Arc::clone(&shared),
                drain_rx.clone(),
                Some(permit),
            ));
        }
    }
    drop(listener);
    // Draining only now that the port is closed: no client that is told to reconnect
    // (`Connection: close`) can land in a backlog that is about to be reset.
    state.begin_drain();
    let _ = drain_tx.send(true);
    let deadline = Instant::now() + drain_timeout;
    tracing::info!(
        open_connections = connections.len(),
        ?drain_timeout,
        "shutdown signal received: no longer accepting, draining open connections"
    );
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(joined) = connections.join_next().await {
            report(joined);
        }
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            open_connections = connections.len(),
            ?drain_timeout,
            "drain timeout passed: closing the connections still open"
        );
        connections.shutdown().await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, state.shutdown()).await.is_err() {
        tracing::warn!(
            ?drain_timeout,
            "drain timeout passed with work still queued: leaving it"
        );
    }
    Ok(())
}

/// Listens at once, loads the repository's models in the background, and serves until
/// SIGINT or SIGTERM; a second signal during the drain exits the process at once with
/// 128 + the signal's number.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while the listener opens is not lost.
    let mut signals = Signals::new();
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let state = AppState::start(config)?;
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(
        address = %local,
        models = ?state.model_names(),
        default_model = state.default_model_name(),
        "listening on http://{local}"
    );
    let (first_tx, first_rx) = tokio::sync::watch::channel(false);
    let grpc = start_grpc(&state, first_rx.clone()).await?;
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(signal = first.name(), "signal received: shutting down");
        let _ = first_tx.send(true);
        let second = signals.next().await;
        tracing::warn!(
            signal = second.name(),
            "second signal during the drain: exiting at once"
        );
        crate::telemetry::finish();
        std::process::exit(second.exit_code());
    });
    let drain_timeout = state.config().drain_timeout();
    let mut first = first_rx;
    serve_until(listener, state, async move {
        let _ = first.wait_for(|&signalled| signalled).await;
    })
    .await?;
    if let Some(grpc) = grpc
        && tokio::time::timeout(drain_timeout, grpc).await.is_err()
    {
        tracing::warn!("drain timeout passed with gRPC calls still open: leaving them");
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Listens on `server.grpc_port` (unless it is 0) and serves the KServe v2 gRPC service
/// there until `signalled` turns true; the calls in progress then finish.
async fn start_grpc(
    state: &AppState,
    mut signalled: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let server = &state.config().server;
    if server.grpc_port == 0 {
        return Ok(None);
    }
    let addr = format!("{}:{}", server.host, server.grpc_port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {addr} (server.grpc_port): {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "gRPC listening on {local}");
    let state = state.clone();
    Ok(Some(tokio::spawn(async move {
        let shutdown = async move {
            let _ = signalled.wait_for(|&signalled| signalled).await;
        };
        if let Err(err) = crate::v2::grpc::serve(listener, state, shutdown).await {
            tracing::error!(%err, "the gRPC service stopped");
        }
    })))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    Signals::new().next().await;
}

/// A signal that stops the server.
#[derive(Debug, Clone, Copy)]
enum Caught {
    Interrupt,
    Terminate,
}

impl Caught {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The shell's convention: 128 + the signal's number.
    fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// SIGINT and SIGTERM listeners that stay registered, so that a second signal is seen.
#[derive(Debug)]
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Caught {
        async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(self.interrupt.as_mut()) => Caught::Interrupt,
            () = recv(self.terminate.as_mut()) => Caught::Terminate,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Caught {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        Caught::Interrupt
    }
}

/// What every connection shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    state: AppState,
    limits: Limits,
}

impl Shared {
    fn new(state: AppState) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The watchdog times request heads: hyper's own timer would also count the idle
        // time between requests, cutting keep-alive connections at the header timeout.
        builder.http1().header_read_timeout(None);
        Self {
            builder,
            router: app(state.clone()),
            limits: Limits::new(state.config()),
            state,
        }
    }
}

/// The connection timeouts, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: u64,
    keep_alive: u64,
    drain_quiet: u64,
}

impl Limits {
    fn new(config: &Config) -> Self {
        Self {
            header_read: millis(config.header_read_timeout()),
            keep_alive: millis(config.keep_alive_timeout()),
            // Half the drain at most, so that quiet connections close before its end.
            drain_quiet: millis(DRAIN_QUIET.min(config.drain_timeout() / 2)),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2)
}

/// Logs a connection task that panicked; one that was aborted at the drain's end is expected.
fn report(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "a connection task panicked");
    }
}

/// Errors of one incoming connection are its own; running out of file descriptors is not,
/// so wait a moment for connections to close rather than spin.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept connections");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection with its watchdog until it closes, is closed, or is aborted.
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
    _slot: Option<OwnedSemaphorePermit>,
) {
    let _open = OpenConnection::enter();
    // Responses are written whole: waiting to merge small segments only adds latency.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Metered {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = ConnectionService {
        router: shared.router.clone(),
        state: shared.state.clone(),
        activity: Arc::clone(&activity),
    };
    let connection = shared.builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut drain_since: Option<u64> = None;
    let mut closing_since: Option<u64> = None;
    loop {
        let now = activity.now();
        if drain_since.is_none() && *drain.borrow_and_update() {
            drain_since = Some(now);
        }
        // HTTP/2 says goodbye with GOAWAY, which no request can race.
        if drain_since.is_some() && activity.http2.load(Ordering::SeqCst) && closing_since.is_none()
        {
            connection.as_mut().graceful_shutdown();
            closing_since = Some(now);
        }
        let wake = match activity.check(now, &shared.limits, drain_since) {
            Check::Wait(until) => until,
            Check::Cut(reason) => {
                tracing::debug!(reason, "connection closed");
                return;
            }
            Check::Idle => match closing_since {
                None => {
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(now);
                    now + millis(CLOSE_GRACE)
                }
                Some(since) if now >= since + millis(CLOSE_GRACE) => return,
                Some(since) => since + millis(CLOSE_GRACE),
            },
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(activity.instant(wake)) => {}
            changed = drain.changed(), if drain_since.is_none() => {
                // The server is gone without a word: nothing to wait for.
                if changed.is_err() {
                    drain_since = Some(activity.now());
                }
            }
        }
    }
}

/// Connections being served, by every server in the process.
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// How many connections are open now; see [`crate::edge::handling_one_request`].
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(Ordering::Acquire)
}

/// One count in [`OPEN_CONNECTIONS`] while its connection is served.
struct OpenConnection;

impl OpenConnection {
    fn enter() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::AcqRel);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the watchdog decided.
#[derive(Debug, PartialEq)]
enum Check {
    /// Look again at this time (milliseconds since the connection started).
    Wait(u64),
    /// Quiet for long enough: close gracefully.
    Idle,
    /// A timeout passed in the middle of something: drop the connection.
    Cut(&'static str),
}

const NEVER: u64 = u64::MAX;

/// What a connection's watchdog knows, kept up to date by its IO and its requests. Times
/// are milliseconds since the connection started; `NEVER` is "not now".
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// The last byte read or written, or the last request's start or end.
    last_io: AtomicU64,
    /// The last request's start or end (an HTTP/2 connection is idle despite its pings).
    last_request: AtomicU64,
    /// When the first byte of a request head arrived with no request in progress.
    head_since: AtomicU64,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    http2: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_io: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            head_since: AtomicU64::new(NEVER),
            write_blocked_since: AtomicU64::new(NEVER),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        millis(self.started.elapsed())
    }

    fn instant(&self, at: u64) -> Instant {
        self.started + Duration::from_millis(at)
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NEVER, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.last_io.store(self.now(), Ordering::SeqCst);
                self.write_blocked_since.store(NEVER, Ordering::SeqCst);
            }
            Poll::Pending => {
                let _ = self.write_blocked_since.compare_exchange(
                    NEVER,
                    self.now(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            Poll::Ready(_) => {}
        }
    }

    fn request_started(&self, version: Version) {
        let now = self.now();
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::SeqCst);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NEVER, Ordering::SeqCst);
        self.last_io.store(now, Ordering::SeqCst);
        self.last_request.store(now, Ordering::SeqCst);
    }

    fn request_finished(&self) {
        let now = self.now();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.last_io.store(now, Ordering::SeqCst);
        self.last_request.store(now, Ordering::SeqCst);
    }

    /// Decides what to do with the connection at `now`; `drain_since` is when the drain
    /// started, if it did.
    fn check(&self, now: u64, limits: &Limits, drain_since: Option<u64>) -> Check {
        let mut wake = now.saturating_add(limits.keep_alive);
        let blocked = self.write_blocked_since.load(Ordering::SeqCst);
        if blocked != NEVER {
            let at = blocked.saturating_add(limits.keep_alive);
            if now >= at {
                return Check::Cut("the client stopped reading");
            }
            wake = wake.min(at);
        }
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Check::Wait(wake);
        }
        let http2 = self.http2.load(Ordering::SeqCst);
        let head = self.head_since.load(Ordering::SeqCst);
        if !http2 && head != NEVER {
            // A request is on its way: only the header timeout ends it, drain or not.
            let at = head.saturating_add(limits.header_read);
            if now >= at {
                return Check::Cut("header read timeout");
            }
            return Check::Wait(wake.min(at));
        }
        let quiet_since = if http2 {
            self.last_request.load(Ordering::SeqCst)
        } else {
            self.last_io.load(Ordering::SeqCst)
        };
        // The first request is expected within the header timeout of connecting.
        let limit = if self.requests.load(Ordering::SeqCst) == 0 {
            limits.header_read
        } else {
            limits.keep_alive
        };
        let mut at = quiet_since.saturating_add(limit);
        if let Some(drain) = drain_since {
            at = at.min(quiet_since.max(drain).saturating_add(limits.drain_quiet));
        }
        if now >= at {
            return Check::Idle;
        }
        Check::Wait(wake.min(at))
    }
}

/// A TCP stream that reports reads and writes to its connection's [`Activity`].
struct Metered {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, data);
        this.activity.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, data);
        this.activity.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: it counts the requests in progress and,
/// once the server drains, closes HTTP/1 connections after their response.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    state: AppState,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let version = request.version();
        self.activity.request_started(version);
        let in_flight = InFlight(Arc::clone(&self.activity));
        let router = self.router.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let Ok(mut response) = router.oneshot(request).await;
            if version < Version::HTTP_2 && state.is_draining() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A request in progress, until its response body is written or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that ends its request's [`InFlight`] when dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read: 10_000,
        keep_alive: 60_000,
        drain_quiet: 1_000,
    };

    fn after_one_request() -> Activity {
        let activity = Activity::new();
        activity.request_started(Version::HTTP_11);
        activity.request_finished();
        activity.last_io.store(0, Ordering::SeqCst);
        activity
    }

    #[test]
    fn a_new_connection_must_start_its_first_request_within_the_header_timeout() {
        let activity = Activity::new();
        assert_eq!(activity.check(0, &LIMITS, None), Check::Wait(10_000));
        assert_eq!(activity.check(10_000, &LIMITS, None), Check::Idle);
    }

    #[test]
    fn a_request_head_is_cut_at_the_header_timeout_from_its_first_byte_drain_or_not() {
        let activity = after_one_request();
        activity.head_since.store(30_000, Ordering::SeqCst);
        activity.last_io.store(39_000, Ordering::SeqCst);
        assert_eq!(
            activity.check(39_000, &LIMITS, Some(0)),
            Check::Wait(40_000)
        );
        assert_eq!(
            activity.check(40_000, &LIMITS, None),
            Check::Cut("header read timeout")
        );
    }

    #[test]
    fn an_idle_connection_is_kept_for_the_keep_alive_timeout_and_the_drain_quiet() {
        let activity = after_one_request();
        assert_eq!(activity.check(59_999, &LIMITS, None), Check::Wait(60_000));
        assert_eq!(activity.check(60_000, &LIMITS, None), Check::Idle);
        // Draining from 5 s: quiet for a second after the drain started, not before.
        assert_eq!(
            activity.check(5_500, &LIMITS, Some(5_000)),
            Check::Wait(6_000)
        );
        assert_eq!(activity.check(6_000, &LIMITS, Some(5_000)), Check::Idle);
    }

    #[test]
    fn nothing_is_closed_while_a_request_is_in_progress() {
        let activity = after_one_request();
        activity.request_started(Version::HTTP_11);
        assert!(matches!(
            activity.check(500_000, &LIMITS, Some(0)),
            Check::Wait(_)
        ));
    }

    #[test]
    fn a_client_that_stops_reading_is_cut_after_the_keep_alive_timeout() {
        let activity = after_one_request();
        activity.request_started(Version::HTTP_11);
        activity.write_blocked_since.store(1_000, Ordering::SeqCst);
        assert_eq!(activity.check(60_999, &LIMITS, None), Check::Wait(61_000));
        assert_eq!(
            activity.check(61_000, &LIMITS, None),
            Check::Cut("the client stopped reading")
        );
    }
}
