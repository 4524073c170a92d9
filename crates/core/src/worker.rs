//! Runs a synchronous [`Backend`] on dedicated OS threads behind the async
//! [`InferenceEngine`] trait.
//!
//! Each worker thread owns its own backend instance, so backends whose forward pass needs
//! `&mut self` (an ONNX Runtime session) or whose tensors are not `Sync` (libtorch) fit
//! without locks or unsafe code, and a forward pass never blocks the async runtime.

use crate::engine::{EngineInfo, InferenceEngine, validate_batch};
use crate::error::EngineError;
use crate::model::Batch;
use async_trait::async_trait;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// A loaded model instance that computes synchronously on the calling thread.
pub trait Backend: Send + 'static {
    /// Computes one already-validated batch.
    fn forward(&mut self, batch: &Batch) -> Result<Batch, EngineError>;
}

/// Builds the backend instance for worker `index`; called again to replace an instance
/// after it panicked.
pub type BackendFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Backend>, EngineError> + Send + Sync>;

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Batch, EngineError>>,
}

/// An [`InferenceEngine`] backed by `info.instances` worker threads.
pub struct WorkerPool {
    info: EngineInfo,
    jobs: crossbeam_channel::Sender<Job>,
    health: Arc<PoolHealth>,
}

/// What the workers tell the pool about themselves.
#[derive(Debug, Default)]
struct PoolHealth {
    /// Workers holding a built instance.
    live: AtomicUsize,
    /// The last error of a rebuild that failed; cleared by the next rebuild that works.
    failure: Mutex<Option<String>>,
    /// Set when the pool is dropped: rebuilding stops.
    closed: std::sync::atomic::AtomicBool,
}

impl PoolHealth {
    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// First wait before building a failed instance again; it doubles up to [`MAX_REBUILD_DELAY`].
const FIRST_REBUILD_DELAY: Duration = Duration::from_millis(50);
const MAX_REBUILD_DELAY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.health.closed.store(true, Ordering::SeqCst);
    }
}

impl WorkerPool {
    /// Starts the workers and waits until every one has built its backend instance.
    /// Blocks the calling thread while models load; call it at startup.
    pub fn start(mut info: EngineInfo, factory: BackendFactory) -> Result<Self, EngineError> {
        info.instances = info.instances.max(1);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let health = Arc::new(PoolHealth::default());
        for index in 0..info.instances {
            let queue = queue.clone();
            let factory = Arc::clone(&factory);
            let ready = ready_tx.clone();
            let worker_health = Arc::clone(&health);
            let name = format!("{}-worker-{index}", info.backend);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let backend = match build_instance(&factory, index) {
                        Ok(backend) => {
                            worker_health.live.fetch_add(1, Ordering::SeqCst);
                            let _ = ready.send(Ok(()));
                            backend
                        }
                        Err(err) => {
                            let _ = ready.send(Err(err));
                            return;
                        }
                    };
                    drop(ready);
                    serve(backend, &queue, &factory, index, &worker_health);
                })
                .map_err(|e| EngineError::Load(format!("cannot start worker thread: {e}")))?;
        }
        drop(ready_tx);
        for _ in 0..info.instances {
            ready_rx
                .recv()
                .map_err(|_| EngineError::Load("a worker thread died while loading".into()))??;
        }
        Ok(Self { info, jobs, health })
    }
}

/// Builds an instance, turning a panic inside the backend's loader into an error.
fn build_instance(factory: &BackendFactory, index: usize) -> Result<Box<dyn Backend>, EngineError> {
    catch_unwind(AssertUnwindSafe(|| factory(index)))
        .unwrap_or_else(|panic| Err(EngineError::Load(panic_message(&*panic))))
}

fn serve(
    mut backend: Box<dyn Backend>,
    queue: &crossbeam_channel::Receiver<Job>,
    factory: &BackendFactory,
    index: usize,
    health: &PoolHealth,
) {
    for job in queue {
        // The caller went away (timeout or disconnect): do not compute for nobody.
        if job.reply.is_closed() {
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| backend.forward(&job.batch)));
        match outcome {
            Ok(result) => {
                let _ = job.reply.send(result);
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(worker = index, %message, "backend panicked; replacing instance");
                let _ = job.reply.send(Err(EngineError::Panicked(message)));
                // The instance may be left inconsistent by the unwind: build a fresh one.
                drop(backend);
                health.live.fetch_sub(1, Ordering::SeqCst);
                match rebuild(queue, factory, index, health) {
                    Some(fresh) => backend = fresh,
                    None => return,
                }
            }
        }
    }
}

/// Builds a replacement instance, retrying with backoff for as long as it fails. Meanwhile
/// this worker serves nothing; when no worker is live, queued jobs are answered
/// `Unavailable` instead of waiting. Returns `None` once the pool is gone.
fn rebuild(
    queue: &crossbeam_channel::Receiver<Job>,
    factory: &BackendFactory,
    index: usize,
    health: &PoolHealth,
) -> Option<Box<dyn Backend>> {
    let mut delay = FIRST_REBUILD_DELAY;
    loop {
        if health.closed.load(Ordering::SeqCst) {
            return None;
        }
        match build_instance(factory, index) {
            Ok(fresh) => {
                if health.live.fetch_add(1, Ordering::SeqCst) == 0 {
                    tracing::info!(worker = index, "instance rebuilt; the model serves again");
                }
                health.set_failure(None);
                return Some(fresh);
            }
            Err(err) => {
                tracing::error!(worker = index, %err, retry_in = ?delay, "cannot rebuild the instance");
                health.set_failure(Some(format!("an instance cannot be rebuilt: {err}")));
            }
        }
        let retry_at = std::time::Instant::now() + delay;
        while std::time::Instant::now() < retry_at {
            if health.live.load(Ordering::SeqCst) == 0 {
                loop {
                    match queue.try_recv() {
                        Ok(job) => {
                            let _ = job.reply.send(Err(unavailable(health)));
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        delay = (delay * 2).min(MAX_REBUILD_DELAY);
    }
}

fn unavailable(health: &PoolHealth) -> EngineError {
    EngineError::Unavailable(format!(
        "no instance of the model can serve: {}",
        health
            .failure()
            .unwrap_or_else(|| "every instance failed".into())
    ))
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
        self.health.live.load(Ordering::SeqCst)
    }

    fn instance_failure(&self) -> Option<String> {
        self.health.failure()
    }

    async fn infer(&self, batch: Batch) -> Result<Batch, EngineError> {
        validate_batch(&self.info.model, &batch)?;
        if self.live_instances() == 0 {
            return Err(unavailable(&self.health));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
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
