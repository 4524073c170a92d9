//! Runs a synchronous [`Backend`] behind the async [`InferenceEngine`] trait.
//!
//! The pool holds `instances` backend instances, each in a slot of its own, and as many
//! worker threads. A slow forward pass (a ResNet) is handed to a worker thread, so it
//! never blocks the async runtime; backends whose forward pass needs `&mut self` (an ONNX
//! Runtime session) or whose tensors are not `Sync` (libtorch) fit without unsafe code,
//! since an instance is only ever used by whoever holds its slot.
//!
//! A pass that recently took less than [`INLINE_BELOW`] on a CPU runs on the calling
//! thread instead: for a small model the two thread hops (there and back) cost more than
//! the pass itself. At most [`inline_limit`] passes run inline at once in the process, so
//! a backend that hangs inline can hold at most that many runtime threads, never all.

use crate::engine::{EngineInfo, InferenceEngine, validate_batch};
use crate::error::EngineError;
use crate::model::Batch;
use async_trait::async_trait;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A loaded model instance that computes synchronously on the calling thread.
pub trait Backend: Send + 'static {
    /// Computes one already-validated batch.
    fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError>;
}

/// Builds the backend instance for worker `index`; called again to replace an instance
/// after it panicked.
pub type BackendFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Backend>, EngineError> + Send + Sync>;

/// Passes that recently took less than this run on the calling thread (see the module
/// documentation); tokio asks that a task not block much longer between awaits.
pub const INLINE_BELOW: Duration = Duration::from_micros(100);

/// Most passes running inline at once in the process: one fewer than the cores, at least 1.
/// Counted once: `available_parallelism` reads cgroup files on every call, which cost 15%
/// of the server's CPU when it was asked on every request.
pub fn inline_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    })
}

static INLINE_RUNNING: AtomicUsize = AtomicUsize::new(0);

enum Message {
    Job(Job),
    /// Instance `slot` panicked on a caller's thread: build it again.
    Rebuild(usize),
}

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Batch, EngineError>>,
}

/// One instance; `None` while it is being rebuilt.
type Slot = Mutex<Option<Box<dyn Backend>>>;
/// A held slot: its instance is the holder's alone.
type SlotGuard<'a> = MutexGuard<'a, Option<Box<dyn Backend>>>;

/// An [`InferenceEngine`] backed by `info.instances` instances and worker threads.
pub struct WorkerPool {
    info: EngineInfo,
    jobs: crossbeam_channel::Sender<Message>,
    shared: Arc<Shared>,
    /// Whether a short pass may run on the caller's thread (CPU devices only: a GPU
    /// context may be bound to the thread that made it).
    inline: bool,
}

/// What the pool's callers and worker threads share.
struct Shared {
    slots: Vec<Slot>,
    factory: BackendFactory,
    /// Instances built and in their slots.
    live: AtomicUsize,
    /// The last error of a rebuild that failed; cleared by the next rebuild that works.
    failure: Mutex<Option<String>>,
    /// Set when the pool is dropped: rebuilding stops.
    closed: AtomicBool,
    /// A moving average of recent forward passes, in nanoseconds; `u64::MAX` before the
    /// first.
    recent_pass_nanos: AtomicU64,
}

impl Shared {
    fn set_failure(&self, failure: Option<String>) {
        *lock(&self.failure) = failure;
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn record_pass(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX - 1);
        let recent = self.recent_pass_nanos.load(Ordering::Relaxed);
        let next = if recent == u64::MAX {
            took
        } else {
            (recent / 8).saturating_mul(7).saturating_add(took / 8)
        };
        self.recent_pass_nanos.store(next, Ordering::Relaxed);
    }

    /// Why no instance can serve, once none is live and rebuilding one has failed. While
    /// the first rebuild after a panic is still under way callers wait for it instead.
    fn outage(&self) -> Option<EngineError> {
        if self.live.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.failure().map(|failure| {
            EngineError::Unavailable(format!("no instance of the model can serve: {failure}"))
        })
    }

    /// A slot holding an instance, as [`Shared::acquire`] with `wait`; while every
    /// instance is being rebuilt and no rebuild has failed yet, it waits for one.
    fn acquire_or_wait(&self, preferred: usize) -> Result<(usize, SlotGuard<'_>), EngineError> {
        loop {
            if let Some(held) = self.acquire(preferred, true) {
                return Ok(held);
            }
            if let Some(outage) = self.outage() {
                return Err(outage);
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(EngineError::Unavailable(
                    "the model is being unloaded".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recent_pass(&self) -> Option<Duration> {
        let nanos = self.recent_pass_nanos.load(Ordering::Relaxed);
        (nanos != u64::MAX).then(|| Duration::from_nanos(nanos))
    }

    /// A slot that holds an instance, starting from `preferred`: a free one, else (with
    /// `wait`) the first to come free. `None` when no slot holds an instance (or, without
    /// `wait`, none is free).
    fn acquire(&self, preferred: usize, wait: bool) -> Option<(usize, SlotGuard<'_>)> {
        let count = self.slots.len();
        let order = (0..count).map(|k| (preferred + k) % count);
        for index in order.clone() {
            let guard = match self.slots[index].try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            if guard.is_some() {
                return Some((index, guard));
            }
        }
        if !wait {
            return None;
        }
        order
            .map(|index| (index, lock(&self.slots[index])))
            .find(|(_, guard)| guard.is_some())
    }

    /// Runs `batch` on the instance in `guard`. After a panic the instance is dropped (the
    /// unwind may have left it inconsistent) and `rebuild(slot)` is called.
    fn forward(
        &self,
        slot: usize,
        mut guard: SlotGuard<'_>,
        batch: &Batch,
        rebuild: impl FnOnce(usize),
    ) -> Result<Batch, EngineError> {
        let Some(backend) = guard.as_mut() else {
            return Err(EngineError::Unavailable(
                "the instance is being rebuilt".into(),
            ));
        };
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| backend.forward(batch))) {
            Ok(result) => {
                self.record_pass(started.elapsed());
                result
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(slot, %message, "backend panicked; replacing instance");
                *guard = None;
                self.live.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
                rebuild(slot);
                Err(EngineError::Panicked(message))
            }
        }
    }
}

/// First wait before building a failed instance again; it doubles up to [`MAX_REBUILD_DELAY`].
const FIRST_REBUILD_DELAY: Duration = Duration::from_millis(50);
const MAX_REBUILD_DELAY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("info", &self.info)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

impl WorkerPool {
    /// Builds every instance (one per worker thread, in parallel) and starts the workers.
    /// Blocks the calling thread while models load; call it at startup.
    pub fn start(mut info: EngineInfo, factory: BackendFactory) -> Result<Self, EngineError> {
        info.instances = info.instances.max(1);
        let (jobs, queue) = crossbeam_channel::unbounded::<Message>();
        let shared = Arc::new(Shared {
            slots: (0..info.instances).map(|_| Mutex::new(None)).collect(),
            factory,
            live: AtomicUsize::new(0),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
            recent_pass_nanos: AtomicU64::new(u64::MAX),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for index in 0..info.instances {
            let queue = queue.clone();
            let ready = ready_tx.clone();
            let worker_shared = Arc::clone(&shared);
            let name = format!("{}-worker-{index}", info.backend);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    match build_instance(&worker_shared.factory, index) {
                        Ok(backend) => {
                            *lock(&worker_shared.slots[index]) = Some(backend);
                            worker_shared.live.fetch_add(1, Ordering::SeqCst);
                            let _ = ready.send(Ok(()));
                        }
                        Err(err) => {
                            let _ = ready.send(Err(err));
                            return;
                        }
                    }
                    drop(ready);
                    serve(&worker_shared, &queue, index);
                })
                .map_err(|e| EngineError::Load(format!("cannot start worker thread: {e}")))?;
        }
        drop(ready_tx);
        for _ in 0..info.instances {
            ready_rx
                .recv()
                .map_err(|_| EngineError::Load("a worker thread died while loading".into()))??;
        }
        let inline = info.device == "cpu";
        Ok(Self {
            info,
            jobs,
            shared,
            inline,
        })
    }

    /// Runs `batch` on the calling thread if its passes are short, an instance is free and
    /// the process runs fewer than [`inline_limit`] passes inline; `None` otherwise.
    fn try_inline(&self, batch: &Batch) -> Option<Result<Batch, EngineError>> {
        if !self.inline || self.shared.recent_pass()? >= INLINE_BELOW {
            return None;
        }
        let running = INLINE_RUNNING.fetch_add(1, Ordering::SeqCst);
        let _release = ReleaseInline;
        if running >= inline_limit() {
            return None;
        }
        let (slot, guard) = self.shared.acquire(0, false)?;
        Some(self.shared.forward(slot, guard, batch, |slot| {
            // A worker thread builds it; this thread goes back to the runtime.
            let _ = self.jobs.send(Message::Rebuild(slot));
        }))
    }
}

/// Gives back the inline place taken in `try_inline`, however it ends.
struct ReleaseInline;

impl Drop for ReleaseInline {
    fn drop(&mut self) {
        INLINE_RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Builds an instance, turning a panic inside the backend's loader into an error.
fn build_instance(factory: &BackendFactory, index: usize) -> Result<Box<dyn Backend>, EngineError> {
    catch_unwind(AssertUnwindSafe(|| factory(index)))
        .unwrap_or_else(|panic| Err(EngineError::Load(panic_message(&*panic))))
}

fn serve(shared: &Shared, queue: &crossbeam_channel::Receiver<Message>, index: usize) {
    let mut rebuilds = Vec::new();
    for message in queue {
        match message {
            Message::Rebuild(slot) => rebuilds.push(slot),
            Message::Job(job) => {
                // The caller went away (timeout or disconnect): do not compute for nobody.
                if job.reply.is_closed() {
                    continue;
                }
                let result = shared.acquire_or_wait(index).and_then(|(slot, guard)| {
                    shared.forward(slot, guard, &job.batch, |slot| rebuilds.push(slot))
                });
                let _ = job.reply.send(result);
            }
        }
        while let Some(slot) = rebuilds.pop() {
            if !rebuild(shared, queue, slot, &mut rebuilds) {
                return;
            }
        }
    }
}

/// Builds a replacement for instance `slot`, retrying with backoff for as long as it fails.
/// Meanwhile this worker serves nothing; when no instance is live, queued jobs are answered
/// `Unavailable` instead of waiting (rebuild requests met meanwhile go to `rebuilds`).
/// Returns false once the pool is gone.
fn rebuild(
    shared: &Shared,
    queue: &crossbeam_channel::Receiver<Message>,
    slot: usize,
    rebuilds: &mut Vec<usize>,
) -> bool {
    let mut delay = FIRST_REBUILD_DELAY;
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return false;
        }
        match build_instance(&shared.factory, slot) {
            Ok(fresh) => {
                *lock(&shared.slots[slot]) = Some(fresh);
                if shared.live.fetch_add(1, Ordering::SeqCst) == 0 {
                    tracing::info!(slot, "instance rebuilt; the model serves again");
                }
                shared.set_failure(None);
                return true;
            }
            Err(err) => {
                tracing::error!(slot, %err, retry_in = ?delay, "cannot rebuild the instance");
                shared.set_failure(Some(format!("an instance cannot be rebuilt: {err}")));
            }
        }
        let retry_at = Instant::now() + delay;
        while Instant::now() < retry_at {
            if shared.live.load(Ordering::SeqCst) == 0 {
                loop {
                    match queue.try_recv() {
                        Ok(Message::Job(job)) => {
                            let _ = job.reply.send(Err(unavailable(shared)));
                        }
                        Ok(Message::Rebuild(other)) => rebuilds.push(other),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        delay = (delay * 2).min(MAX_REBUILD_DELAY);
    }
}

fn unavailable(shared: &Shared) -> EngineError {
    EngineError::Unavailable(format!(
        "no instance of the model can serve: {}",
        shared
            .failure()
            .unwrap_or_else(|| "every instance failed".into())
    ))
}

/// Locks a mutex, going on after a panic elsewhere left it poisoned: backends run under
/// `catch_unwind`, so no critical section here is left half done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The text of a caught panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[async_trait]
impl InferenceEngine for WorkerPool {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn live_instances(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    fn instance_failure(&self) -> Option<String> {
        self.shared.failure()
    }

    async fn infer(&self, batch: Batch) -> Result<Batch, EngineError> {
        validate_batch(&self.info.model, &batch)?;
        if let Some(outage) = self.shared.outage() {
            return Err(outage);
        }
        if let Some(result) = self.try_inline(&batch) {
            return result;
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Message::Job(Job { batch, reply }))
            .map_err(|_| EngineError::Unavailable("every worker has stopped".into()))?;
        answer
            .await
            .map_err(|_| EngineError::Unavailable("the worker stopped before answering".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorSpec;
    use crate::model::{ModelSpec, Sample};
    use crate::tensor::{DType, Tensor};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Doubles its input; panics when it sees a negative first element.
    struct Doubler;

    impl Backend for Doubler {
        fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
            let values = batch.tensors[0].as_f32().unwrap();
            assert!(values[0] >= 0.0, "negative input");
            let doubled = values.iter().map(|v| v * 2.0).collect();
            Ok(Batch {
                size: batch.size,
                tensors: vec![Tensor::from_f32(
                    batch.tensors[0].shape().to_vec(),
                    doubled,
                )?],
            })
        }
    }

    fn info(instances: usize) -> EngineInfo {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![1],
        };
        EngineInfo {
            backend: "test".into(),
            device: "cpu".into(),
            model: ModelSpec {
                name: "doubler".into(),
                version: "1".into(),
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
            instances,
        }
    }

    fn batch(values: &[f32]) -> Batch {
        let samples: Vec<Sample> = values
            .iter()
            .map(|&v| Sample::new(vec![Tensor::from_f32(vec![1], vec![v]).unwrap()]))
            .collect();
        Batch::stack(&samples).unwrap()
    }

    #[tokio::test]
    async fn a_panic_fails_one_batch_and_the_worker_keeps_serving() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&builds);
        let factory: BackendFactory = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Doubler) as Box<dyn Backend>)
        });
        let pool = WorkerPool::start(info(1), factory).unwrap();
        let err = pool.infer(batch(&[-1.0])).await.unwrap_err();
        assert!(matches!(err, EngineError::Panicked(ref m) if m.contains("negative")));
        let out = pool.infer(batch(&[1.0, 2.0])).await.unwrap();
        assert_eq!(out.tensors[0].as_f32().unwrap(), &[2.0, 4.0]);
        assert_eq!(
            builds.load(Ordering::SeqCst),
            2,
            "instance was rebuilt once"
        );
    }

    #[tokio::test]
    async fn a_request_during_a_slow_rebuild_waits_for_it_instead_of_failing() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&builds);
        let factory: BackendFactory = Arc::new(move |_| {
            if counter.fetch_add(1, Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(Box::new(Doubler) as Box<dyn Backend>)
        });
        let pool = WorkerPool::start(info(1), factory).unwrap();
        assert!(matches!(
            pool.infer(batch(&[-1.0])).await,
            Err(EngineError::Panicked(_))
        ));
        // The replacement is still being built: no instance is live, none has failed.
        assert_eq!(pool.live_instances(), 0);
        let out = pool.infer(batch(&[3.0])).await.unwrap();
        assert_eq!(out.tensors[0].as_f32().unwrap(), &[6.0]);
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_worker_that_cannot_be_rebuilt_fails_fast_then_serves_again_once_it_can() {
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let builds = Arc::clone(&broken);
        let factory: BackendFactory = Arc::new(move |_| {
            if builds.load(Ordering::SeqCst) {
                Err(EngineError::Load("device lost".into()))
            } else {
                Ok(Box::new(Doubler) as Box<dyn Backend>)
            }
        });
        let pool = WorkerPool::start(info(1), factory).unwrap();
        assert_eq!(pool.live_instances(), 1);
        broken.store(true, Ordering::SeqCst);
        assert!(matches!(
            pool.infer(batch(&[-1.0])).await,
            Err(EngineError::Panicked(_))
        ));
        // The replacement fails to build: no live instance, and requests fail at once.
        while pool.instance_failure().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.live_instances(), 0);
        let err = pool.infer(batch(&[1.0])).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
        assert!(err.to_string().contains("device lost"), "{err}");
        // Once building works again the worker comes back by itself.
        broken.store(false, Ordering::SeqCst);
        while pool.live_instances() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.instance_failure(), None);
        let out = pool.infer(batch(&[1.0])).await.unwrap();
        assert_eq!(out.tensors[0].as_f32().unwrap(), &[2.0]);
    }

    /// Doubles its input like [`Doubler`], after `pause`, noting the thread it ran on.
    struct Recorder {
        pause: Duration,
        threads: Arc<Mutex<Vec<String>>>,
    }

    impl Backend for Recorder {
        fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError> {
            std::thread::sleep(self.pause);
            let name = std::thread::current().name().unwrap_or("").to_string();
            lock(&self.threads).push(name);
            Doubler.forward(batch)
        }
    }

    fn recording_pool(pause: Duration, device: &str) -> (WorkerPool, Arc<Mutex<Vec<String>>>) {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&threads);
        let factory: BackendFactory = Arc::new(move |_| {
            Ok(Box::new(Recorder {
                pause,
                threads: Arc::clone(&seen),
            }) as Box<dyn Backend>)
        });
        let mut info = info(1);
        info.device = device.into();
        (WorkerPool::start(info, factory).unwrap(), threads)
    }

    #[tokio::test]
    async fn short_passes_run_on_the_calling_thread_once_measured() {
        let (pool, threads) = recording_pool(Duration::ZERO, "cpu");
        for _ in 0..50 {
            let out = pool.infer(batch(&[1.0])).await.unwrap();
            assert_eq!(out.tensors[0].as_f32().unwrap(), &[2.0]);
        }
        let threads = lock(&threads).clone();
        // Unmeasured, the first pass goes to the worker thread; other tests may hold the
        // process's inline places now and then, so not every later pass need run inline.
        assert_eq!(threads[0], "test-worker-0");
        assert!(
            threads[1..].iter().any(|name| name != "test-worker-0"),
            "no pass ran inline: {threads:?}"
        );
    }

    #[tokio::test]
    async fn long_passes_stay_on_the_worker_thread() {
        let (pool, threads) = recording_pool(INLINE_BELOW * 2, "cpu");
        for _ in 0..5 {
            pool.infer(batch(&[1.0])).await.unwrap();
        }
        let threads = lock(&threads).clone();
        assert!(
            threads.iter().all(|name| name == "test-worker-0"),
            "{threads:?}"
        );
    }

    #[tokio::test]
    async fn a_gpu_pool_never_runs_inline() {
        let (pool, threads) = recording_pool(Duration::ZERO, "cuda:0");
        for _ in 0..20 {
            pool.infer(batch(&[1.0])).await.unwrap();
        }
        assert!(lock(&threads).iter().all(|name| name == "test-worker-0"));
    }

    #[tokio::test]
    async fn an_inline_panic_is_rebuilt_by_a_worker_and_serving_goes_on() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&builds);
        let factory: BackendFactory = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Doubler) as Box<dyn Backend>)
        });
        let mut info = info(1);
        info.device = "cpu".into();
        let pool = WorkerPool::start(info, factory).unwrap();
        for _ in 0..10 {
            pool.infer(batch(&[1.0])).await.unwrap();
        }
        let err = pool.infer(batch(&[-1.0])).await.unwrap_err();
        assert!(matches!(err, EngineError::Panicked(ref m) if m.contains("negative")));
        while pool.live_instances() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            builds.load(Ordering::SeqCst),
            2,
            "instance was rebuilt once"
        );
        let out = pool.infer(batch(&[3.0])).await.unwrap();
        assert_eq!(out.tensors[0].as_f32().unwrap(), &[6.0]);
    }

    #[tokio::test]
    async fn load_errors_surface_from_start() {
        let factory: BackendFactory =
            Arc::new(|_| Err(EngineError::Load("weights missing".into())));
        let err = WorkerPool::start(info(2), factory).unwrap_err();
        assert_eq!(err, EngineError::Load("weights missing".into()));
    }

    #[tokio::test]
    async fn malformed_batches_are_rejected_before_the_worker() {
        let factory: BackendFactory = Arc::new(|_| Ok(Box::new(Doubler) as Box<dyn Backend>));
        let pool = WorkerPool::start(info(1), factory).unwrap();
        let wrong = Batch {
            size: 1,
            tensors: vec![Tensor::from_f32(vec![1, 2], vec![1.0, 2.0]).unwrap()],
        };
        assert_eq!(
            pool.infer(wrong).await.unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        assert!(pool.health().await.healthy);
    }
}
