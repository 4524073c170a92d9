//! The backend-agnostic engine trait every backend implements and the server consumes.

use crate::error::EngineError;
use crate::model::{Batch, ModelSpec, Sample};
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// What an engine is: which backend and device serve which model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// `candle`, `ort`, `tch`, or a test engine's name.
    pub backend: String,
    /// The device the forward pass runs on, e.g. `cpu` or `cuda:0`.
    pub device: String,
    pub model: ModelSpec,
    /// How many forward passes can run at once (worker threads / sessions).
    pub instances: usize,
}

/// The result of a health probe.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    /// Wall time of the probe's forward pass.
    pub probe_time: Duration,
    /// Why the engine is unhealthy, when it is.
    pub error: Option<String>,
}

/// An inference engine: a loaded model that turns a batch of inputs into a batch of outputs.
///
/// Object safe: the server holds it as `Arc<dyn InferenceEngine>`. Implementations must not
/// block the async runtime in `infer` for long; [`crate::worker::WorkerPool`] runs a
/// synchronous [`crate::worker::Backend`] on dedicated threads, and only passes shorter
/// than [`crate::worker::INLINE_BELOW`] on the caller's thread.
#[async_trait]
pub trait InferenceEngine: Send + Sync + std::fmt::Debug {
    fn info(&self) -> &EngineInfo;

    /// Runs one forward pass. Every row of `batch` must already fit the model's inputs;
    /// the output batch has the same size, one tensor per model output.
    async fn infer(&self, batch: Batch) -> Result<Batch, EngineError>;

    /// Runs a zero batch through the model once, so the first real request does not pay
    /// for lazy initialisation. Returns the time it took.
    async fn warmup(&self) -> Result<Duration, EngineError> {
        let started = Instant::now();
        let batch = Batch::stack(&[self.info().model.zero_sample()])?;
        self.infer(batch).await?;
        Ok(started.elapsed())
    }

    /// How many instances can run a batch now: fewer than `info().instances` while some
    /// are being rebuilt after a failure, 0 when none can serve.
    fn live_instances(&self) -> usize {
        self.info().instances
    }

    /// Why instances are missing, while some are.
    fn instance_failure(&self) -> Option<String> {
        None
    }

    /// Probes the engine with one zero sample.
    async fn health(&self) -> HealthReport {
        let started = Instant::now();
        let outcome = self.warmup().await;
        HealthReport {
            healthy: outcome.is_ok(),
            probe_time: started.elapsed(),
            error: outcome.err().map(|e| e.to_string()),
        }
    }
}

/// Checks each sample against the model and returns the first failure with its index.
pub fn validate_samples(spec: &ModelSpec, samples: &[Sample]) -> Result<(), EngineError> {
    if samples.is_empty() {
        return Err(EngineError::InvalidBatch("the batch is empty".into()));
    }
    samples.iter().enumerate().try_for_each(|(index, sample)| {
        spec.check_sample(sample)
            .map_err(|reason| EngineError::InvalidSample { index, reason })
    })
}

/// Checks a stacked batch against the model: tensor count, types and per-row shapes.
pub fn validate_batch(spec: &ModelSpec, batch: &Batch) -> Result<(), EngineError> {
    if batch.size == 0 {
        return Err(EngineError::InvalidBatch("the batch is empty".into()));
    }
    if batch.tensors.len() != spec.inputs.len() {
        return Err(EngineError::InvalidBatch(format!(
            "model '{}' takes {} input(s), got {}",
            spec.name,
            spec.inputs.len(),
            batch.tensors.len()
        )));
    }
    for (input, tensor) in spec.inputs.iter().zip(&batch.tensors) {
        let row_shape = match tensor.shape().split_first() {
            Some((&rows, rest)) if rows == batch.size => rest,
            _ => {
                return Err(EngineError::InvalidBatch(format!(
                    "input '{}' has shape {:?}, expected a leading batch dimension of {}",
                    input.name,
                    tensor.shape(),
                    batch.size
                )));
            }
        };
        input
            .check_parts(tensor.dtype(), row_shape)
            .map_err(EngineError::InvalidBatch)?;
    }
    Ok(())
}

/// How a backend should load a model: the part of the configuration every backend reads.
/// Fields a backend has no use for are ignored by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// `cpu`, `cuda` (or `cuda:N`), or `auto` (CUDA when available, else CPU).
    pub device: String,
    /// Worker threads, each with its own model instance (ORT sessions are not shareable).
    pub instances: usize,
    /// Threads a single forward pass may use; `None` leaves the library's default.
    pub intra_op_threads: Option<usize>,
    /// Path of a runtime shared library to load (ONNX Runtime's `libonnxruntime.so`): where
    /// the library lives is a fact of the machine, not of a model.
    pub runtime_library: Option<std::path::PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            instances: 1,
            intra_op_threads: None,
            runtime_library: None,
        }
    }
}
