//! Histograms whose samples each thread records into a shard of its own, folded into the
//! exporter's histograms before each scrape and at each upkeep.
//!
//! `metrics-exporter-prometheus` keeps one buffer of samples per histogram, shared by every
//! thread: each sample is an atomic increment and a write on cache lines the other threads
//! write too. A request records four samples, so two threads serving a small model passed
//! those lines back and forth on every request. A shard is written by the threads mapped to
//! it only, so with as many shards as busy threads the lines stay in one core's cache.

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::storage::AtomicBucket;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Shards per histogram; threads beyond this many share them, which is correct, only
/// slower.
const SHARDS: usize = 8;

/// A shard on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicBucket<f64>);

/// One histogram's shards, and the exporter's histogram they fold into.
struct ShardedHistogram {
    shards: [Shard; SHARDS],
    target: Histogram,
}

impl HistogramFn for ShardedHistogram {
    fn record(&self, value: f64) {
        self.shards[shard_of_this_thread()].0.push(value);
    }
}

impl ShardedHistogram {
    fn new(target: Histogram) -> Self {
        Self {
            shards: Default::default(),
            target,
        }
    }

    /// Moves every sample recorded so far into the exporter's histogram.
    fn fold(&self) {
        for shard in &self.shards {
            shard.0.clear_with(|values| {
                for &value in values {
                    self.target.record(value);
                }
            });
        }
    }
}

/// This thread's shard: threads take the shards in turn as they first record.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// A recorder that hands out sharded histograms over `inner`'s; counters, gauges and
/// descriptions go to `inner` unchanged.
pub(super) struct ShardingRecorder<R> {
    inner: R,
    histograms: Mutex<HashMap<Key, Arc<ShardedHistogram>>>,
}

impl<R> ShardingRecorder<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            histograms: Mutex::default(),
        }
    }

    /// Moves every histogram sample recorded so far into `inner`'s histograms.
    pub(super) fn fold(&self) {
        let histograms: Vec<Arc<ShardedHistogram>> = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for histogram in histograms {
            histogram.fold();
        }
    }
}

impl<R: Recorder> Recorder for ShardingRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let mut histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sharded = histograms.entry(key.clone()).or_insert_with(|| {
            Arc::new(ShardedHistogram::new(
                self.inner.register_histogram(key, metadata),
            ))
        });
        Histogram::from_arc(Arc::clone(sharded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// The value on the line that starts with `series` and a space.
    fn count_of(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))
            .map(|count| count.trim().parse().unwrap())
    }

    #[test]
    fn samples_from_many_threads_are_all_rendered_once_folded() {
        let prometheus = PrometheusBuilder::new().build_recorder();
        let handle = prometheus.handle();
        let recorder = ShardingRecorder::new(prometheus);
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let key = Key::from_name("wait_seconds");
        // More threads than shards: some share one.
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 3 {
                scope.spawn(|| {
                    let histogram = recorder.register_histogram(&key, &metadata);
                    for i in 0..1000 {
                        histogram.record(f64::from(i) / 1000.0);
                    }
                });
            }
        });
        // Registered, and nothing folded yet.
        assert_eq!(count_of(&handle.render(), "wait_seconds_count"), Some(0));
        recorder.fold();
        let rendered = handle.render();
        assert_eq!(
            count_of(&rendered, "wait_seconds_count"),
            Some(1000 * (SHARDS as u64 + 3)),
            "{rendered}"
        );
        // Folding again adds nothing: every sample was moved once.
        recorder.fold();
        assert_eq!(
            count_of(&handle.render(), "wait_seconds_count"),
            Some(1000 * (SHARDS as u64 + 3))
        );
    }

    #[test]
    fn one_key_is_one_histogram_however_often_it_is_registered() {
        let prometheus = PrometheusBuilder::new().build_recorder();
        let handle = prometheus.handle();
        let recorder = ShardingRecorder::new(prometheus);
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let key = Key::from_parts("took_seconds", vec![metrics::Label::new("route", "/a")]);
        recorder.register_histogram(&key, &metadata).record(1.0);
        recorder.register_histogram(&key, &metadata).record(2.0);
        recorder.fold();
        let rendered = handle.render();
        assert_eq!(
            count_of(&rendered, "took_seconds_count{route=\"/a\"}"),
            Some(2),
            "{rendered}"
        );
        assert!(
            rendered.contains("took_seconds_sum{route=\"/a\"} 3"),
            "{rendered}"
        );
    }
}
