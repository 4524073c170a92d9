//! The forward-pass probe behind `/health`'s `test_inference_ms`: at most one at a time per
//! model, at most one per [`PROBE_INTERVAL`], bounded by [`PROBE_TIMEOUT`], and never on the
//! path of a `/health` call, which reads the latest result and returns at once.

use inference_core::InferenceEngine;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How old a probe result may be before a `/health` call starts a fresh one.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a probe may take before it counts as failed (a hung backend).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub healthy: bool,
    pub took: Duration,
    pub error: Option<String>,
    pub at: Instant,
}

/// The latest probe of one model, shared by every `/health` call.
#[derive(Debug, Default)]
pub struct Probe {
    state: Mutex<ProbeState>,
}

#[derive(Debug, Default)]
struct ProbeState {
    latest: Option<ProbeResult>,
    running: bool,
}

impl Probe {
    /// A probe whose first result is the model's warmup.
    pub fn seeded(warmup: Duration) -> Self {
        let probe = Self::default();
        probe.record(ProbeResult {
            healthy: true,
            took: warmup,
            error: None,
            at: Instant::now(),
        });
        probe
    }

    /// The latest result; starts a fresh probe in the background when it is older than
    /// [`PROBE_INTERVAL`] and none is running. Must be called inside a Tokio runtime.
    pub fn latest(self: &Arc<Self>, engine: &Arc<dyn InferenceEngine>) -> Option<ProbeResult> {
        let mut state = self.lock();
        let stale = state
            .latest
            .as_ref()
            .is_none_or(|r| r.at.elapsed() >= PROBE_INTERVAL);
        if stale && !state.running {
            state.running = true;
            let (probe, engine) = (Arc::clone(self), Arc::clone(engine));
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match tokio::time::timeout(PROBE_TIMEOUT, engine.health()).await {
                    Ok(report) => ProbeResult {
                        healthy: report.healthy,
                        took: report.probe_time,
                        error: report.error,
                        at: Instant::now(),
                    },
                    Err(_) => ProbeResult {
                        healthy: false,
                        took: started.elapsed(),
                        error: Some(format!(
                            "the probe's forward pass took longer than {PROBE_TIMEOUT:?}"
                        )),
                        at: Instant::now(),
                    },
                };
                probe.record(result);
            });
        }
        state.latest.clone()
    }

    fn record(&self, result: ProbeResult) {
        let mut state = self.lock();
        state.latest = Some(result);
        state.running = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference_core::testing::FakeEngine;

    #[tokio::test(start_paused = true)]
    async fn probes_run_once_per_interval_and_a_hung_engine_fails_the_probe() {
        let fake = Arc::new(FakeEngine::new());
        let engine: Arc<dyn InferenceEngine> = Arc::clone(&fake) as _;
        let probe = Arc::new(Probe::seeded(Duration::from_millis(3)));
        // Fresh: reading it runs nothing.
        for _ in 0..100 {
            assert!(probe.latest(&engine).unwrap().healthy);
        }
        tokio::task::yield_now().await;
        assert!(fake.batches().is_empty());

        // Stale, and the engine hangs: one probe starts, however many calls read it.
        tokio::time::advance(PROBE_INTERVAL).await;
        fake.hold();
        for _ in 0..100 {
            assert!(
                probe.latest(&engine).unwrap().healthy,
                "the old result stands"
            );
        }
        fake.wait_for_batches(1).await;
        tokio::time::sleep(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        let failed = probe.latest(&engine).unwrap();
        assert!(!failed.healthy);
        assert!(failed.error.unwrap().contains("longer than"));
        assert_eq!(fake.batches().len(), 1, "one probe at a time");
    }
}
