//! Where the server runs a request's batch: on the handler's own task when the model has no
//! queue delay, through the queue (to be batched with others) when it has one and another
//! request is in progress. A test binary of its own: the count of requests in progress is
//! the process's, and tests running beside this one would change it.

mod common;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, StatusCode};
use common::*;
use hyper::body::Frame;
use inference_core::InferenceEngine;
use inference_core::testing::FakeEngine;
use inference_server::{AppState, Config};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::oneshot;

/// A request body that arrives only once its gate opens.
struct GatedBody {
    gate: Option<oneshot::Receiver<()>>,
    data: Option<Bytes>,
}

impl HttpBody for GatedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(gate) = self.gate.as_mut() {
            let _ = ready!(Pin::new(gate).poll(cx));
            self.gate = None;
        }
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }
}

fn gated_predict(value: u32) -> (oneshot::Sender<()>, Request<Body>) {
    let (open, gate) = oneshot::channel();
    let body = GatedBody {
        gate: Some(gate),
        data: Some(Bytes::from(format!(r#"{{"inputs": {value}}}"#))),
    };
    let request = Request::post("/predict")
        .header("content-type", "application/json")
        .body(Body::new(body))
        .unwrap();
    (open, request)
}

fn state_with(engine: &Arc<FakeEngine>, queue_delay_ms: f64) -> AppState {
    let mut config = Config::default();
    config.batching.max_queue_delay_ms = queue_delay_ms;
    AppState::new(config, vec![Arc::clone(engine) as Arc<dyn InferenceEngine>])
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gave up waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Request 1 is in progress (its body still on its way) when request 2 arrives with the
/// engine idle; then request 1's body comes. Returns the engine's batches.
async fn two_overlapping_requests(queue_delay_ms: f64) -> Vec<Vec<f32>> {
    let engine = Arc::new(FakeEngine::new());
    let state = state_with(&engine, queue_delay_ms);
    let (open, first) = gated_predict(1);
    let first = {
        let state = state.clone();
        tokio::spawn(async move { send(&state, first).await })
    };
    until("the first request is in progress", || {
        inference_server::edge::requests_in_progress() == 1
    })
    .await;
    let second = {
        let state = state.clone();
        tokio::spawn(async move { send(&state, post_json("/predict", r#"{"inputs": 2}"#)).await })
    };
    until("the second request is in progress or computed", || {
        inference_server::edge::requests_in_progress() == 2 || !engine.batches().is_empty()
    })
    .await;
    // Time for its handler to reach the scheduler (a queued row is claimed by the worker at
    // once, and then waits there for the delay, so the queue's length does not show it).
    tokio::time::sleep(Duration::from_millis(20)).await;
    open.send(()).unwrap();
    for reply in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    engine.batches()
}

#[tokio::test]
async fn requests_run_inline_without_a_queue_delay_and_wait_to_batch_with_one() {
    // No delay: a worker would run the second request at once and alone, so its handler
    // does, and the first runs when its body has come.
    assert_eq!(
        two_overlapping_requests(0.0).await,
        vec![vec![2.0], vec![1.0]]
    );
    // A delay: with another request in progress, the second waits in the queue for rows
    // to batch with, and the first one's row joins it.
    assert_eq!(two_overlapping_requests(300.0).await, vec![vec![2.0, 1.0]]);
}
