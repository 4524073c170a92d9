//! Counters and timings of a scheduler, kept under one lock and read as a snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How many recent request latencies the percentiles are computed over.
const LATENCY_WINDOW: usize = 1024;

/// A snapshot of what a scheduler has done since it started. Every time is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerStats {
    /// Requests answered with their outputs.
    pub requests_processed: u64,
    /// Accepted requests answered with an error: backend error or panic in one of their
    /// batches, deadline passed, or the scheduler stopped. Cancelled ones are not counted.
    pub requests_failed: u64,
    /// Rows computed by engine batches that succeeded.
    pub rows_processed: u64,
    /// Engine batches that succeeded.
    pub batches_processed: u64,
    /// Mean rows per successful engine batch.
    pub average_batch_size: f64,
    pub max_batch_size_seen: usize,
    /// Engine batches that failed (backend error or panic).
    pub errors: u64,
    /// Requests turned away because the queue was full.
    pub rejected: u64,
    /// Requests whose deadline passed before they were served.
    pub expired: u64,
    /// Requests whose caller went away before they were served.
    pub cancelled: u64,
    /// Rows waiting now.
    pub queue_size: usize,
    /// Whether the scheduler accepts new requests.
    pub running: bool,
    /// Mean time from enqueue to the start of a request's first engine batch.
    pub average_queue_time_ms: f64,
    /// Mean duration of one successful engine batch.
    pub average_inference_time_ms: f64,
    /// Mean time from a row's enqueue to the end of its engine batch.
    pub average_row_latency_ms: f64,
    /// Successful requests per second since start.
    pub requests_per_second: f64,
    /// Computed rows per second since start.
    pub rows_per_second: f64,
    /// Percentiles of successful requests' total time over the most recent ones.
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    /// Successful engine batches by size.
    pub batch_size_histogram: BTreeMap<usize, u64>,
    pub uptime: Duration,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests_processed: u64,
    pub(super) requests_failed: u64,
    pub(super) rows_processed: u64,
    pub(super) batches_processed: u64,
    pub(super) max_batch_size_seen: usize,
    pub(super) errors: u64,
    pub(super) rejected: u64,
    pub(super) expired: u64,
    pub(super) cancelled: u64,
    queue_time_total: Duration,
    inference_time_total: Duration,
    row_latency_total: Duration,
    rows_answered: u64,
    recent_latencies: VecDeque<Duration>,
    histogram: BTreeMap<usize, u64>,
}

impl Counters {
    pub(super) fn record_batch(&mut self, size: usize, took: Duration) {
        self.batches_processed += 1;
        self.rows_processed += size as u64;
        self.max_batch_size_seen = self.max_batch_size_seen.max(size);
        self.inference_time_total += took;
        *self.histogram.entry(size).or_default() += 1;
    }

    pub(super) fn record_row_latencies(&mut self, latencies: &[Duration]) {
        self.rows_answered += latencies.len() as u64;
        self.row_latency_total += latencies.iter().sum::<Duration>();
    }

    pub(super) fn record_success(&mut self, queue_time: Duration, total_time: Duration) {
        self.requests_processed += 1;
        self.queue_time_total += queue_time;
        if self.recent_latencies.len() == LATENCY_WINDOW {
            self.recent_latencies.pop_front();
        }
        self.recent_latencies.push_back(total_time);
    }

    /// Mean engine batch time, once at least one batch was measured.
    pub(super) fn average_inference_time(&self) -> Option<Duration> {
        u32::try_from(self.batches_processed)
            .ok()
            .filter(|&n| n > 0)
            .map(|n| self.inference_time_total / n)
    }

    pub(super) fn snapshot(
        &self,
        uptime: Duration,
        queue_size: usize,
        running: bool,
    ) -> SchedulerStats {
        let mut latencies: Vec<Duration> = self.recent_latencies.iter().copied().collect();
        latencies.sort_unstable();
        let seconds = uptime.as_secs_f64();
        let per_second = |count: u64| {
            if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            }
        };
        SchedulerStats {
            requests_processed: self.requests_processed,
            requests_failed: self.requests_failed,
            rows_processed: self.rows_processed,
            batches_processed: self.batches_processed,
            average_batch_size: ratio(self.rows_processed as f64, self.batches_processed),
            max_batch_size_seen: self.max_batch_size_seen,
            errors: self.errors,
            rejected: self.rejected,
            expired: self.expired,
            cancelled: self.cancelled,
            queue_size,
            running,
            average_queue_time_ms: ratio(millis(self.queue_time_total), self.requests_processed),
            average_inference_time_ms: ratio(
                millis(self.inference_time_total),
                self.batches_processed,
            ),
            average_row_latency_ms: ratio(millis(self.row_latency_total), self.rows_answered),
            requests_per_second: per_second(self.requests_processed),
            rows_per_second: per_second(self.rows_processed),
            latency_p50_ms: percentile(&latencies, 0.50),
            latency_p95_ms: percentile(&latencies, 0.95),
            latency_p99_ms: percentile(&latencies, 0.99),
            batch_size_histogram: self.histogram.clone(),
            uptime,
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn ratio(total: f64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}

/// Nearest-rank percentile of sorted values, in milliseconds; 0 when there are none.
fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    millis(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn latency_window_is_bounded() {
        let mut counters = Counters::default();
        for i in 0..(LATENCY_WINDOW as u64 + 10) {
            counters.record_success(Duration::ZERO, Duration::from_millis(i));
        }
        assert_eq!(counters.recent_latencies.len(), LATENCY_WINDOW);
        let stats = counters.snapshot(Duration::from_secs(1), 0, true);
        // The 10 oldest (0..10 ms) fell out of the window.
        assert_eq!(stats.latency_p50_ms, (10 + LATENCY_WINDOW / 2 - 1) as f64);
        assert_eq!(stats.requests_per_second, (LATENCY_WINDOW + 10) as f64);
    }
}
