//! What a scheduler reports through the `metrics` facade, labelled with its model's name.
//! Handles are taken once, when the scheduler starts: recording is an atomic update, and
//! nothing at all when the program installed no recorder.

use metrics::{Counter, Histogram, Unit, describe_counter, describe_histogram};
use std::time::Duration;

#[derive(Debug)]
pub(super) struct SchedulerMetrics {
    batch_size: Histogram,
    compute_seconds: Histogram,
    queue_seconds: Histogram,
    requests_rejected: Counter,
    requests_expired: Counter,
    batches_failed: Counter,
}

impl SchedulerMetrics {
    pub(super) fn new(model: &str) -> Self {
        let model = model.to_owned();
        Self {
            batch_size: metrics::histogram!("inference_batch_size", "model" => model.clone()),
            compute_seconds: metrics::histogram!("inference_compute_duration_seconds", "model" => model.clone()),
            queue_seconds: metrics::histogram!("inference_queue_duration_seconds", "model" => model.clone()),
            requests_rejected: metrics::counter!("inference_requests_rejected_total", "model" => model.clone()),
            requests_expired: metrics::counter!("inference_requests_expired_total", "model" => model.clone()),
            batches_failed: metrics::counter!("inference_batches_failed_total", "model" => model),
        }
    }

    /// One engine batch that ran to the end.
    pub(super) fn batch(&self, rows: usize, took: Duration) {
        self.batch_size.record(rows as f64);
        self.compute_seconds.record(took.as_secs_f64());
    }

    pub(super) fn batch_failed(&self) {
        self.batches_failed.increment(1);
    }

    /// One answered request's wait, from its enqueue to its first row's batch.
    pub(super) fn queued(&self, wait: Duration) {
        self.queue_seconds.record(wait.as_secs_f64());
    }

    pub(super) fn rejected(&self) {
        self.requests_rejected.increment(1);
    }

    pub(super) fn expired(&self) {
        self.requests_expired.increment(1);
    }
}

/// Describes the scheduler's metrics to the installed recorder (their help text).
pub fn describe_metrics() {
    describe_histogram!(
        "inference_batch_size",
        "rows in each engine batch (a forward pass), by model"
    );
    describe_histogram!(
        "inference_compute_duration_seconds",
        Unit::Seconds,
        "duration of each engine batch's forward pass, by model"
    );
    describe_histogram!(
        "inference_queue_duration_seconds",
        Unit::Seconds,
        "time each answered request waited in the queue for its first batch, by model"
    );
    describe_counter!(
        "inference_requests_rejected_total",
        "requests turned away because the queue was full, by model"
    );
    describe_counter!(
        "inference_requests_expired_total",
        "requests whose deadline passed before they were served, by model"
    );
    describe_counter!(
        "inference_batches_failed_total",
        "engine batches that failed (an error or a panic in the backend), by model"
    );
}
