//! Listening and the server's life: accepting connections, serving them with the router,
//! and shutting down on a signal.

use crate::{AppState, Config, app};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Serves `state` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish within the configured drain timeout, and drains the queues.
pub async fn serve_until(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain = state.config().drain_timeout();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown signal received: draining in-flight requests");
        let _ = signalled_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let result = tokio::select! {
        joined = server => joined.map_err(std::io::Error::other)?,
        () = async {
            // Only a signalled shutdown starts the drain clock.
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(drain).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?drain, "drain timeout passed with requests still in flight");
            Ok(())
        }
    };
    state.shutdown().await;
    result
}

/// Listens at once, loads the repository's models in the background, and serves until
/// SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
    serve_until(listener, state, shutdown_signal()).await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
