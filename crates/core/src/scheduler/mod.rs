//! The dynamic-batching scheduler that sits in front of any [`InferenceEngine`].
//!
//! Rows (samples) of concurrent requests wait in one bounded priority queue. Each of
//! `instances` workers claims up to `max_batch_size` rows the moment its engine slot is
//! free, runs them as one engine batch and hands every row back to its request, so
//! while one batch runs the next is formed by another worker, and rows that arrive
//! meanwhile are never committed to a batch early (priority order stays exact). A request
//! larger than `max_batch_size` is split across batches and reassembled in order.
//!
//! Guarantees, each covered by `tests/scheduler_*.rs`:
//! - every sample is validated before it is queued, so a bad sample fails only its request;
//! - the queue holds at most `max_queue_size` rows; a request that does not fit is turned
//!   away at once with [`EngineError::Overloaded`]; one that could never fit (more rows
//!   than `max_queue_size`) is [`EngineError::InvalidBatch`], since retrying cannot help;
//! - higher priority first, FIFO within a level, and a waiting row gains one level per
//!   `priority_aging` so lower levels are never starved;
//! - rows of a request whose deadline passed or whose caller went away are removed and
//!   never computed afterwards;
//! - a backend error or panic fails only the requests whose own rows fail: a failed batch
//!   of several requests runs each request's rows again on their own, and a request that
//!   fails then fails whole (even rows that rode in other batches); the worker keeps serving;
//! - every accepted request gets exactly one answer.

mod observe;
mod queue;
mod stats;

pub use observe::describe_metrics;
pub use stats::SchedulerStats;

use crate::engine::{InferenceEngine, validate_samples};
use crate::error::EngineError;
use crate::model::{Batch, Sample};
use crate::worker::panic_message;
use observe::SchedulerMetrics;
use queue::{Claim, Claimed, Queue};
use stats::Counters;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How the scheduler batches and admits work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most rows in one engine batch (at least 1).
    pub max_batch_size: usize,
    /// How long a worker waits for a batch to fill, counted from its oldest row's enqueue.
    /// Zero: no timer, run whatever is queued.
    pub max_queue_delay: Duration,
    /// Most rows waiting at once (at least 1); beyond it requests are rejected.
    pub max_queue_size: usize,
    /// Deadline of requests that do not set their own `timeout`; `None`: no deadline.
    pub default_timeout: Option<Duration>,
    /// Engine batches run at once; 0 uses the engine's `info().instances`.
    pub instances: usize,
    /// How long a waiting row takes to gain one priority level. Zero disables aging.
    pub priority_aging: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 1024,
            default_timeout: None,
            instances: 0,
            priority_aging: Duration::from_secs(1),
        }
    }
}

/// One client request: one or more rows for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub samples: Vec<Sample>,
    /// Higher is served first.
    pub priority: i32,
    /// Deadline from submission; `None` uses the configured `default_timeout`.
    pub timeout: Option<Duration>,
}

impl InferenceRequest {
    /// A request of default priority without its own deadline.
    pub fn new(samples: Vec<Sample>) -> Self {
        Self {
            samples,
            priority: 0,
            timeout: None,
        }
    }
}

/// The outputs of a request, in the order of its samples, and where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceResponse {
    pub outputs: Vec<Sample>,
    /// From enqueue until its first engine batch started.
    pub queue_time: Duration,
    /// From the start of its first engine batch until the end of its last one.
    pub inference_time: Duration,
    /// From enqueue until the answer was ready.
    pub total_time: Duration,
    /// Per row: from enqueue until its engine batch finished.
    pub row_latencies: Vec<Duration>,
    /// Sizes of the engine batches its rows rode in, in the order they finished.
    pub engine_batch_sizes: Vec<usize>,
}

/// A handle to a running scheduler; cheap to clone. When the last clone is dropped the
/// scheduler stops accepting work and its workers exit once the queue is drained.
#[derive(Clone)]
pub struct Scheduler {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    workers: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("engine", &self.handle.shared.engine)
            .field("config", &self.handle.shared.config)
            .field("queue_len", &self.queue_len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Starts the workers on the current tokio runtime. `config.instances == 0` becomes
    /// the engine's instance count; `config()` reports the values in effect.
    pub fn start(engine: Arc<dyn InferenceEngine>, mut config: SchedulerConfig) -> Scheduler {
        if config.instances == 0 {
            config.instances = engine.info().instances;
        }
        config.instances = config.instances.max(1);
        config.max_batch_size = config.max_batch_size.max(1);
        config.max_queue_size = config.max_queue_size.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(config.priority_aging)),
            rows_available: Notify::new(),
            busy: AtomicUsize::new(0),
            counters: Mutex::new(Counters::default()),
            started: Instant::now(),
            next_request_id: AtomicU64::new(0),
            next_batch_id: AtomicU64::new(0),
            metrics: SchedulerMetrics::new(&engine.info().model.name),
            engine,
            config,
        });
        let workers = (0..shared.config.instances)
            .map(|_| tokio::spawn(Arc::clone(&shared).serve()))
            .collect();
        Scheduler {
            handle: Arc::new(Handle {
                shared,
                workers: tokio::sync::Mutex::new(workers),
            }),
        }
    }

    /// Queues the request's rows and waits for their outputs.
    ///
    /// Fails at once with `InvalidSample`/`InvalidBatch` (the request is malformed),
    /// `Overloaded` (the queue is full) or `Unavailable` (shut down); later with
    /// `DeadlineExceeded`, or the engine's error if a batch with its rows failed.
    /// Dropping the future withdraws the rows that have not run yet.
    pub async fn submit(
        &self,
        request: InferenceRequest,
    ) -> Result<InferenceResponse, EngineError> {
        self.submit_as(request, false).await
    }

    /// [`submit`](Self::submit) that runs the request's batch at once on the caller's task
    /// when an engine slot is free and no rows are queued, instead of handing it to a
    /// worker task and back: for a small model that hand-off (a wake, and often a second
    /// thread) costs more than the pass. Otherwise, or when the request has more rows than
    /// one batch holds, it is queued as by `submit`.
    ///
    /// For a caller that would gain nothing by waiting for rows to batch with: the
    /// scheduler waits for no batch to fill (`max_queue_delay` zero, so a worker would
    /// claim the rows at once and alone), or no other request can arrive before the answer
    /// (a server with this one request in progress).
    ///
    /// A batch run this way counts as a batch in the stats and metrics like any other and
    /// holds one of the `instances` engine slots while it runs: rows queued meanwhile wait
    /// for a free slot, and so batch together, as they would behind a worker's batch.
    pub async fn submit_inline(
        &self,
        request: InferenceRequest,
    ) -> Result<InferenceResponse, EngineError> {
        self.submit_as(request, true).await
    }

    async fn submit_as(
        &self,
        request: InferenceRequest,
        inline: bool,
    ) -> Result<InferenceResponse, EngineError> {
        let shared = &self.handle.shared;
        validate_samples(&shared.engine.info().model, &request.samples)?;
        let rows = request.samples.len();
        let capacity = shared.config.max_queue_size;
        if rows > capacity {
            return Err(EngineError::InvalidBatch(format!(
                "the request has {rows} samples but the queue holds at most {capacity}"
            )));
        }
        let enqueued = Instant::now();
        let timeout = request.timeout.or(shared.config.default_timeout);
        if inline
            && rows <= shared.config.max_batch_size
            && let Some(busy) = shared.claim_free_slot()
        {
            let deadline = timeout.and_then(|t| enqueued.checked_add(t));
            let ran = shared.run_inline(&request.samples, enqueued, deadline, timeout);
            let outcome = ran.await;
            drop(busy);
            return outcome;
        }
        let (reply, mut answer) = oneshot::channel();
        let pending = Arc::new(Pending {
            id: shared.next_request_id.fetch_add(1, Ordering::Relaxed),
            priority: request.priority,
            enqueued,
            deadline: timeout.and_then(|t| enqueued.checked_add(t)),
            timeout: timeout.unwrap_or_default(),
            progress: Mutex::new(Progress::new(rows, reply)),
        });
        {
            let mut queue = lock(&shared.queue);
            if queue.is_closed() {
                return Err(EngineError::Unavailable(
                    "the scheduler is shutting down".into(),
                ));
            }
            let queued = queue.rows();
            if queued + rows > capacity {
                drop(queue);
                return Err(shared.reject(queued));
            }
            queue.push(Arc::clone(&pending), request.samples);
        }
        shared.rows_available.notify_waiters();

        // Runs on every exit, including the caller dropping this future: rows not yet run
        // are withdrawn. A no-op once the request was answered.
        let _withdraw = WithdrawOnDrop {
            shared,
            request: &pending,
        };
        let outcome = match pending.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, &mut answer).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => {
                    // A worker may have answered in the same instant: whichever answer
                    // came first is in the channel now.
                    shared.finish(&pending, Ending::Expired);
                    answer.await
                }
            },
            None => answer.await,
        };
        outcome.unwrap_or_else(|_| {
            Err(EngineError::Unavailable(
                "the scheduler stopped before answering".into(),
            ))
        })
    }

    pub fn stats(&self) -> SchedulerStats {
        let shared = &self.handle.shared;
        let (queue_size, running) = {
            let queue = lock(&shared.queue);
            (queue.rows(), !queue.is_closed())
        };
        lock(&shared.counters).snapshot(shared.started.elapsed(), queue_size, running)
    }

    /// Rows waiting for a worker.
    pub fn queue_len(&self) -> usize {
        lock(&self.handle.shared.queue).rows()
    }

    pub fn engine(&self) -> &Arc<dyn InferenceEngine> {
        &self.handle.shared.engine
    }

    /// The configuration in effect (`instances` resolved, sizes at least 1).
    pub fn config(&self) -> &SchedulerConfig {
        &self.handle.shared.config
    }

    /// Stops accepting requests (new ones fail with `Unavailable`) and returns once every
    /// queued row has run and the workers have exited. Safe to call more than once.
    pub async fn shutdown(&self) {
        self.handle.shared.close();
        let mut workers = self.handle.workers.lock().await;
        for worker in workers.drain(..) {
            if let Err(err) = worker.await {
                tracing::error!(%err, "a scheduler worker ended abnormally");
            }
        }
    }
}

/// A request between submission and its answer, shared by the queue, the workers that
/// run its rows and the submitter.
struct Pending {
    /// Increasing with submission order: FIFO ties are broken by it.
    id: u64,
    priority: i32,
    enqueued: Instant,
    deadline: Option<Instant>,
    /// The timeout the deadline came from, for the error message.
    timeout: Duration,
    progress: Mutex<Progress>,
}

struct Progress {
    /// Taken by whoever answers; `None` means the request is settled.
    reply: Option<oneshot::Sender<Result<InferenceResponse, EngineError>>>,
    outputs: Vec<Option<Sample>>,
    row_latencies: Vec<Duration>,
    engine_batch_sizes: Vec<usize>,
    last_batch: Option<u64>,
    rows_done: usize,
    first_batch_start: Option<Instant>,
    last_batch_end: Option<Instant>,
}

impl Progress {
    fn new(rows: usize, reply: oneshot::Sender<Result<InferenceResponse, EngineError>>) -> Self {
        Self {
            reply: Some(reply),
            outputs: vec![None; rows],
            row_latencies: vec![Duration::ZERO; rows],
            engine_batch_sizes: Vec::new(),
            last_batch: None,
            rows_done: 0,
            first_batch_start: None,
            last_batch_end: None,
        }
    }
}

impl Pending {
    fn is_settled(&self) -> bool {
        lock(&self.progress).reply.is_none()
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }
}

/// Why a request ends without outputs.
enum Ending {
    Expired,
    Cancelled,
    /// A batch with its rows failed, or its worker stopped.
    Failed(EngineError),
}

/// State shared by the handle and the workers.
struct Shared {
    engine: Arc<dyn InferenceEngine>,
    config: SchedulerConfig,
    queue: Mutex<Queue>,
    /// Woken when rows are queued or the queue closes.
    rows_available: Notify,
    /// Batches claimed and not yet finished: by workers (from their first claimed row)
    /// and run inline by [`Scheduler::submit_inline`]. Raised only under the queue lock,
    /// so an empty queue with nothing busy means no accepted request is waiting.
    busy: AtomicUsize,
    counters: Mutex<Counters>,
    started: Instant,
    next_request_id: AtomicU64,
    next_batch_id: AtomicU64,
    metrics: SchedulerMetrics,
}

impl Shared {
    fn close(&self) {
        lock(&self.queue).close();
        self.rows_available.notify_waiters();
    }

    /// Counts a rejection and estimates, from measured batch times, when the queued rows
    /// will have drained.
    fn reject(&self, queued: usize) -> EngineError {
        let mut counters = lock(&self.counters);
        counters.rejected += 1;
        self.metrics.rejected();
        let per_round = self.config.max_batch_size * self.config.instances;
        let rounds = u32::try_from(queued.div_ceil(per_round).max(1)).unwrap_or(u32::MAX);
        // Before any batch was measured there is nothing to estimate from: one second.
        let retry_after = counters
            .average_inference_time()
            .map_or(Duration::from_secs(1), |batch| batch.saturating_mul(rounds));
        EngineError::Overloaded {
            queued,
            capacity: self.config.max_queue_size,
            retry_after,
        }
    }

    /// Answers a request with an error unless it was already answered; returns whether
    /// this call answered it. Its rows still waiting are withdrawn.
    fn finish(&self, request: &Pending, ending: Ending) -> bool {
        let Some(reply) = lock(&request.progress).reply.take() else {
            return false;
        };
        lock(&self.queue).remove(request.priority, request.id);
        let error = {
            let mut counters = lock(&self.counters);
            match ending {
                Ending::Cancelled => {
                    counters.cancelled += 1;
                    return true;
                }
                Ending::Expired => {
                    counters.expired += 1;
                    self.metrics.expired();
                    counters.requests_failed += 1;
                    EngineError::DeadlineExceeded(request.timeout)
                }
                Ending::Failed(error) => {
                    counters.requests_failed += 1;
                    error
                }
            }
        };
        let _ = reply.send(Err(error));
        true
    }

    async fn serve(self: Arc<Self>) {
        loop {
            let mut batch = BatchGuard {
                shared: &self,
                claimed: Claimed::default(),
            };
            if !self.next_batch(&mut batch.claimed).await {
                return;
            }
            // Counted busy by `next_batch` when it claimed the first row.
            let _busy = Busy(&self.busy);
            self.run(&mut batch.claimed).await;
        }
    }

    /// Takes an engine slot for an inline batch when one is free, nothing is queued and
    /// the queue is open.
    fn claim_free_slot(&self) -> Option<InlineSlot<'_>> {
        let queue = lock(&self.queue);
        if queue.is_closed() || queue.rows() > 0 {
            return None;
        }
        let slots = self.config.instances;
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
                (busy < slots).then_some(busy + 1)
            })
            .ok()?;
        Some(InlineSlot(self))
    }

    /// Runs one request's rows as a batch on the caller's task and answers it; see
    /// [`Scheduler::submit_inline`]. Same accounting as a worker's batch.
    async fn run_inline(
        &self,
        samples: &[Sample],
        enqueued: Instant,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<InferenceResponse, EngineError> {
        let size = samples.len();
        // Counts the request as cancelled if the caller stops waiting for the engine.
        let mut waiting = CancelOnDrop {
            counters: &self.counters,
            armed: true,
        };
        let started = Instant::now();
        let mut computing = std::pin::pin!(self.stack_and_infer(samples));
        // A pass the engine runs on this thread is done at the first poll: it needs no
        // timer (making one costs a clone of the runtime's handle, shared by every thread).
        let first = std::future::poll_fn(|cx| Poll::Ready(computing.as_mut().poll(cx))).await;
        let outcome = match (first, deadline) {
            (Poll::Ready(outputs), _) => Ok(outputs),
            (Poll::Pending, Some(deadline)) => tokio::time::timeout_at(deadline, computing).await,
            (Poll::Pending, None) => Ok(computing.await),
        };
        waiting.armed = false;
        let finished = Instant::now();
        let took = finished - started;
        let mut counters = lock(&self.counters);
        match outcome {
            Ok(Ok(outputs)) => {
                let response = InferenceResponse {
                    outputs,
                    queue_time: started - enqueued,
                    inference_time: took,
                    total_time: enqueued.elapsed(),
                    row_latencies: vec![finished - enqueued; size],
                    engine_batch_sizes: vec![size],
                };
                counters.record_batch(size, took);
                counters.record_row_latencies(&response.row_latencies);
                counters.record_success(response.queue_time, response.total_time);
                drop(counters);
                self.next_batch_id.fetch_add(1, Ordering::Relaxed);
                self.metrics.batch(size, took);
                self.metrics.queued(response.queue_time);
                Ok(response)
            }
            Ok(Err(error)) => {
                counters.errors += 1;
                counters.requests_failed += 1;
                drop(counters);
                self.metrics.batch_failed();
                tracing::error!(%error, rows = size, "engine batch failed");
                Err(error)
            }
            Err(_elapsed) => {
                counters.expired += 1;
                counters.requests_failed += 1;
                drop(counters);
                self.metrics.expired();
                Err(EngineError::DeadlineExceeded(timeout.unwrap_or_default()))
            }
        }
    }

    /// Claims the next batch: waits for a first row, then, when `max_queue_delay` is set,
    /// up to that long after the oldest claimed row's enqueue for the batch to fill.
    /// Returns false, with nothing claimed, once the queue is closed and empty.
    async fn next_batch(&self, claimed: &mut Claimed) -> bool {
        let max_rows = self.config.max_batch_size;
        loop {
            // Registered before looking at the queue, so a push in between is not missed.
            let notified = self.rows_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let now = Instant::now();
            let (claim, closed, queue_empty) = {
                let mut queue = lock(&self.queue);
                let had_rows = !claimed.is_empty();
                // An inline batch holds one of the engine slots: while every slot is taken,
                // rows stay queued (and batch together) until one frees.
                let slot_free =
                    had_rows || self.busy.load(Ordering::Acquire) < self.config.instances;
                let claim = if slot_free {
                    queue.claim(claimed, max_rows, now)
                } else {
                    Claim::default()
                };
                if !had_rows && !claimed.is_empty() {
                    self.busy.fetch_add(1, Ordering::AcqRel);
                }
                (claim, queue.is_closed(), queue.rows() == 0)
            };
            for request in &claim.expired {
                self.finish(request, Ending::Expired);
            }
            if claimed.is_empty() {
                if closed && queue_empty {
                    return false;
                }
            } else {
                let fill_until = claimed
                    .oldest()
                    .and_then(|oldest| oldest.checked_add(self.config.max_queue_delay))
                    .unwrap_or(now);
                let dispatch = claimed.len() >= max_rows
                    || claim.blocked
                    || closed
                    || self.config.max_queue_delay.is_zero()
                    || now >= fill_until;
                if dispatch {
                    return true;
                }
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(fill_until) => {}
                }
                continue;
            }
            notified.await;
        }
    }

    /// Runs one claimed batch and answers for each of its rows; leaves `claimed` empty.
    async fn run(&self, claimed: &mut Claimed) {
        // Rows whose request was answered meanwhile (cancelled, failed elsewhere) or whose
        // deadline passed while the batch filled are not computed.
        let now = Instant::now();
        let mut expired = Vec::new();
        claimed.retain(|row| {
            if row.request.is_settled() {
                return false;
            }
            if row.request.is_expired(now) {
                expired.push(Arc::clone(&row.request));
                return false;
            }
            true
        });
        for request in &expired {
            self.finish(request, Ending::Expired);
        }
        if claimed.is_empty() {
            return;
        }

        let size = claimed.len();
        let batch_id = self.next_batch_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = self.stack_and_infer(&claimed.samples).await;
        let run = BatchRun {
            id: batch_id,
            size,
            started,
            finished: Instant::now(),
        };

        match outcome {
            Ok(outputs) => {
                lock(&self.counters).record_batch(size, run.finished - run.started);
                self.metrics.batch(size, run.finished - run.started);
                for (row, output) in claimed.rows.iter().zip(outputs) {
                    self.deliver(&row.request, row.index, output, &run);
                }
            }
            Err(error) => {
                lock(&self.counters).errors += 1;
                self.metrics.batch_failed();
                let requests = claimed.requests();
                if requests.len() > 1 && error.kind() != crate::ErrorKind::Unavailable {
                    // One request's rows may be what breaks the batch: retry each request's
                    // rows on their own so only the culprit fails.
                    tracing::warn!(%error, rows = size, requests = requests.len(),
                        "engine batch failed; retrying each request's rows alone");
                    for request in requests {
                        self.run_alone(claimed, &request).await;
                    }
                } else {
                    tracing::error!(%error, rows = size, "engine batch failed");
                    for request in requests {
                        self.finish(&request, Ending::Failed(error.clone()));
                    }
                }
            }
        }
        claimed.samples.clear();
        claimed.rows.clear();
    }

    /// Runs the rows of `request` held in `claimed` as a batch of their own, after the
    /// batch they rode in failed; answers for them either way.
    async fn run_alone(&self, claimed: &Claimed, request: &Arc<Pending>) {
        if request.is_settled() {
            return;
        }
        let (rows, samples): (Vec<&queue::RowRef>, Vec<Sample>) = claimed
            .rows
            .iter()
            .zip(&claimed.samples)
            .filter(|(row, _)| Arc::ptr_eq(&row.request, request))
            .map(|(row, sample)| (row, sample.clone()))
            .unzip();
        let started = Instant::now();
        let outcome = self.stack_and_infer(&samples).await;
        let run = BatchRun {
            id: self.next_batch_id.fetch_add(1, Ordering::Relaxed),
            size: samples.len(),
            started,
            finished: Instant::now(),
        };
        match outcome {
            Ok(outputs) => {
                lock(&self.counters).record_batch(run.size, run.finished - run.started);
                self.metrics.batch(run.size, run.finished - run.started);
                for (row, output) in rows.iter().zip(outputs) {
                    self.deliver(&row.request, row.index, output, &run);
                }
            }
            Err(error) => {
                lock(&self.counters).errors += 1;
                self.metrics.batch_failed();
                tracing::error!(%error, rows = run.size, "engine batch failed on its own");
                self.finish(request, Ending::Failed(error));
            }
        }
    }

    async fn stack_and_infer(&self, samples: &[Sample]) -> Result<Vec<Sample>, EngineError> {
        match Batch::stack(samples) {
            Ok(batch) => self.infer(batch, samples.len()).await,
            Err(err) => Err(EngineError::Backend(format!(
                "cannot stack the batch: {err}"
            ))),
        }
    }

    /// Runs the engine, turning a panic in any engine's `infer` into this batch's error so
    /// that the worker survives. Polled in place: a task of its own per batch cost a
    /// scheduling round trip on every batch.
    async fn infer(&self, batch: Batch, size: usize) -> Result<Vec<Sample>, EngineError> {
        let mut inference = self.engine.infer(batch);
        let output = std::future::poll_fn(|cx| {
            catch_unwind(AssertUnwindSafe(|| inference.as_mut().poll(cx))).unwrap_or_else(|panic| {
                Poll::Ready(Err(EngineError::Panicked(panic_message(&*panic))))
            })
        })
        .await?;
        if output.size != size {
            return Err(EngineError::Backend(format!(
                "the engine returned {} rows for a batch of {size}",
                output.size
            )));
        }
        let rows = output.unstack().map_err(|err| {
            EngineError::Backend(format!("the engine returned a malformed batch: {err}"))
        })?;
        if rows.len() != size {
            return Err(EngineError::Backend(format!(
                "the engine returned {} rows for a batch of {size}",
                rows.len()
            )));
        }
        Ok(rows)
    }

    /// Stores one computed row; answers the request when it was its last.
    fn deliver(&self, request: &Pending, index: usize, output: Sample, run: &BatchRun) {
        let (reply, response) = {
            let mut progress = lock(&request.progress);
            if progress.reply.is_none() {
                return;
            }
            progress.outputs[index] = Some(output);
            progress.row_latencies[index] = run.finished - request.enqueued;
            progress.rows_done += 1;
            if progress.last_batch != Some(run.id) {
                progress.last_batch = Some(run.id);
                progress.engine_batch_sizes.push(run.size);
            }
            let first_start = progress
                .first_batch_start
                .map_or(run.started, |start| start.min(run.started));
            let last_end = progress
                .last_batch_end
                .map_or(run.finished, |end| end.max(run.finished));
            progress.first_batch_start = Some(first_start);
            progress.last_batch_end = Some(last_end);
            if progress.rows_done < progress.outputs.len() {
                return;
            }
            let Some(reply) = progress.reply.take() else {
                return;
            };
            let response = InferenceResponse {
                outputs: progress.outputs.drain(..).flatten().collect(),
                queue_time: first_start - request.enqueued,
                inference_time: last_end - first_start,
                total_time: request.enqueued.elapsed(),
                row_latencies: std::mem::take(&mut progress.row_latencies),
                engine_batch_sizes: std::mem::take(&mut progress.engine_batch_sizes),
            };
            (reply, response)
        };
        {
            let mut counters = lock(&self.counters);
            counters.record_row_latencies(&response.row_latencies);
            counters.record_success(response.queue_time, response.total_time);
        }
        self.metrics.queued(response.queue_time);
        let _ = reply.send(Ok(response));
    }
}

/// One engine batch as it ran.
struct BatchRun {
    id: u64,
    size: usize,
    started: Instant,
    finished: Instant,
}

/// Fails the requests of a claimed batch if its worker stops before answering them (a bug
/// or the runtime shutting down), so that no accepted request waits forever. A batch that
/// ran to the end leaves nothing claimed, and this does nothing.
struct BatchGuard<'a> {
    shared: &'a Shared,
    claimed: Claimed,
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        for request in self.claimed.requests() {
            self.shared.finish(
                &request,
                Ending::Failed(EngineError::Unavailable(
                    "the scheduler worker stopped".into(),
                )),
            );
        }
    }
}

/// One count in [`Shared::busy`], given back when dropped.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The count in [`Shared::busy`] of an inline batch. Given back when dropped (also when
/// the caller stops waiting), with a wake for the workers when rows are queued: they left
/// them there because every engine slot was taken. (A worker's own slot needs no wake: the
/// worker that frees it claims next.) With nothing queued there is no one to wake, and
/// under load a wake per inline batch would cost a worker task's poll each time.
struct InlineSlot<'a>(&'a Shared);

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        // Read after the release: a worker that saw every slot taken registered for the
        // wake before it looked, and the rows it left are still queued now.
        if lock(&self.0.queue).rows() > 0 {
            self.0.rows_available.notify_waiters();
        }
    }
}

/// Counts an inline request as cancelled when its caller drops it before its answer.
struct CancelOnDrop<'a> {
    counters: &'a Mutex<Counters>,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.counters).cancelled += 1;
        }
    }
}

/// Withdraws a request when its submitter stops waiting for it.
struct WithdrawOnDrop<'a> {
    shared: &'a Shared,
    request: &'a Pending,
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.finish(self.request, Ending::Cancelled);
    }
}

/// Locks a mutex, going on after a panic elsewhere left it poisoned: every critical
/// section here leaves the data consistent before anything can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
