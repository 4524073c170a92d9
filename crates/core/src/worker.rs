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
use std::sync::Arc;
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
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    /// Starts the workers and waits until every one has built its backend instance.
    /// Blocks the calling thread while models load; call it at startup.
    pub fn start(mut info: EngineInfo, factory: BackendFactory) -> Result<Self, EngineError> {
        info.instances = info.instances.max(1);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for index in 0..info.instances {
            let queue = queue.clone();
            let factory = Arc::clone(&factory);
            let ready = ready_tx.clone();
            let name = format!("{}-worker-{index}", info.backend);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let backend = match build_instance(&factory, index) {
                        Ok(backend) => {
                            let _ = ready.send(Ok(()));
                            backend
                        }
                        Err(err) => {
                            let _ = ready.send(Err(err));
                            return;
                        }
                    };
                    drop(ready);
                    serve(backend, &queue, &factory, index);
                })
                .map_err(|e| EngineError::Load(format!("cannot start worker thread: {e}")))?;
        }
        drop(ready_tx);
        for _ in 0..info.instances {
            ready_rx
                .recv()
                .map_err(|_| EngineError::Load("a worker thread died while loading".into()))??;
        }
        Ok(Self { info, jobs })
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
                match build_instance(factory, index) {
                    Ok(fresh) => backend = fresh,
                    Err(err) => {
                        tracing::error!(worker = index, %err, "cannot replace backend; worker stops");
                        return;
                    }
                }
            }
        }
    }
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

    async fn infer(&self, batch: Batch) -> Result<Batch, EngineError> {
        validate_batch(&self.info.model, &batch)?;
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
