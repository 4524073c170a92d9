//! Prometheus metrics: `GET /metrics` in the text format, through the `metrics` facade and
//! `metrics-exporter-prometheus`. The names are listed in the README.
//!
//! Requests are counted where they are answered (`crate::edge`, and the gRPC service through
//! [`record_grpc`]); the schedulers record batch sizes, queue waits and compute times
//! themselves (`inference_core::scheduler`); gauges that are a reading of the state (queue
//! rows, model states, memory) are set when scraped, so they are never stale.

mod sharded;

use crate::state::{AppState, ModelState};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets, in seconds: from a fast MLP's 100 µs to a long queue wait's 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Rows per engine batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// How often recorded histogram samples are folded into their buckets between scrapes, so
/// a server nobody scrapes does not keep every sample.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

const STATES: [(ModelState, &str); 4] = [
    (ModelState::Loading, "loading"),
    (ModelState::Ready, "ready"),
    (ModelState::Failed, "failed"),
    (ModelState::Unloading, "unloading"),
];

static EXPORTER: OnceLock<Option<Exporter>> = OnceLock::new();

/// The process's Prometheus exporter, behind the recorder that shards its histograms.
pub struct Exporter {
    handle: PrometheusHandle,
    recorder: &'static sharded::ShardingRecorder<PrometheusRecorder>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// The text format of every metric, with every sample recorded so far.
    pub fn render(&self) -> String {
        self.recorder.fold();
        self.handle.render()
    }

    fn run_upkeep(&self) {
        self.recorder.fold();
        self.handle.run_upkeep();
    }
}

/// Installs the Prometheus recorder as the process's global recorder, once; later calls
/// return the same exporter. Must run before the schedulers start: their metric handles are
/// taken when they start. `None` when an embedder installed a recorder of its own first.
pub fn install() -> Option<&'static Exporter> {
    EXPORTER
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("inference_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            let prometheus = match built {
                Ok(prometheus) => prometheus,
                Err(error) => {
                    tracing::warn!(%error, "metrics are off: cannot build the recorder");
                    return None;
                }
            };
            let handle = prometheus.handle();
            // Global for the life of the process, as a recorder installed by the exporter is.
            let recorder: &'static sharded::ShardingRecorder<PrometheusRecorder> =
                Box::leak(Box::new(sharded::ShardingRecorder::new(prometheus)));
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "metrics are off: another recorder is installed");
                return None;
            }
            describe();
            start_upkeep();
            Some(Exporter { handle, recorder })
        })
        .as_ref()
}

/// Folds recorded samples into their buckets every [`UPKEEP_INTERVAL`] on a thread of its
/// own. It first looks once the interval has passed, when [`install`] has long returned.
fn start_upkeep() {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(|| {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                if let Some(Some(exporter)) = EXPORTER.get() {
                    exporter.run_upkeep();
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no metrics upkeep thread: histograms fold at scrapes only");
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by route, method, status and model"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration, from the request's arrival to its response"
    );
    describe_gauge!("http_requests_in_flight", "HTTP requests being handled now");
    describe_counter!(
        "grpc_requests_total",
        "gRPC calls answered, by method, code and model"
    );
    describe_histogram!(
        "grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC call duration"
    );
    describe_gauge!(
        "inference_model_state",
        "1 for the state each model of the repository is in, 0 for the others"
    );
    describe_gauge!(
        "inference_queue_rows",
        "rows waiting in each model's queue, read at scrape time"
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "resident memory of the server process"
    );
    inference_core::scheduler::describe_metrics();
}

tokio::task_local! {
    /// The model a request was served by, noted when it is resolved (`note_model`).
    pub(crate) static SERVED_MODEL: RefCell<Option<String>>;
}

/// Records that the request being handled on this task is for `model` (its `model` label);
/// nothing outside a tracked request.
pub fn note_model(model: &str) {
    let _ = SERVED_MODEL.try_with(|served| {
        let mut served = served.borrow_mut();
        if served.as_deref() != Some(model) {
            *served = Some(model.to_owned());
        }
    });
}

/// Counts and times one gRPC call.
pub fn record_grpc(method: &'static str, code: tonic::Code, model: &str, took: Duration) {
    let code = format!("{code:?}");
    metrics::histogram!("grpc_request_duration_seconds", "method" => method, "code" => code.clone())
        .record(took.as_secs_f64());
    metrics::counter!("grpc_requests_total",
        "method" => method, "code" => code, "model" => model.to_owned())
    .increment(1);
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses(
        (status = 200, description = "Prometheus' text exposition format, version 0.0.4", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are off: the embedding program installed its own recorder", body = crate::openapi::Detail),
    )
)]
pub async fn scrape(State(state): State<AppState>) -> Response {
    let Some(exporter) = install() else {
        return crate::error::ApiError::NotFound(
            "metrics are off: the embedding program installed its own recorder".into(),
        )
        .into_response();
    };
    record_readings(&state);
    let mut response = exporter.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Sets the gauges that read the state: each model's state, its queue, the process's RSS,
/// the requests in progress.
fn record_readings(state: &AppState) {
    metrics::gauge!("http_requests_in_flight").set(crate::edge::requests_in_progress() as f64);
    for entry in state.entries() {
        for (model_state, label) in &STATES {
            let value = if entry.state == *model_state {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("inference_model_state", "model" => entry.name.clone(), "state" => *label)
                .set(value);
        }
        if let Some(handle) = &entry.handle {
            metrics::gauge!("inference_queue_rows", "model" => entry.name.clone())
                .set(handle.scheduler.queue_len() as f64);
        }
    }
    if let Some(bytes) = resident_memory_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(bytes as f64);
    }
}

/// The process's resident set size, from the `VmRSS` line of `/proc/self/status` (Linux,
/// in KiB whatever the page size); `None` elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc_and_plausible() {
        let bytes = resident_memory_bytes().expect("Linux has /proc/self/status");
        assert!(bytes > 1 << 20, "{bytes} bytes resident");
    }

    #[tokio::test]
    async fn a_noted_model_is_seen_only_inside_its_request() {
        note_model("outside");
        let seen = SERVED_MODEL
            .scope(RefCell::new(None), async {
                note_model("example");
                SERVED_MODEL.with(|served| served.borrow().clone())
            })
            .await;
        assert_eq!(seen.as_deref(), Some("example"));
    }
}
