//! # inference-core
//!
//! The backend-agnostic heart of the inference server: the [`InferenceEngine`] trait, tensors
//! and batches as plain owned data, typed errors, and the batching scheduler. It knows
//! nothing of HTTP, JSON or any backend library.

#[cfg(feature = "testing")]
pub mod conformance;
pub mod engine;
pub mod error;
pub mod model;
pub mod scheduler;
pub mod tensor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod worker;

pub use engine::{
    EngineInfo, EngineOptions, HealthReport, InferenceEngine, validate_batch, validate_samples,
};
pub use error::{EngineError, ErrorKind};
pub use model::{
    Batch, ManifestError, ModelBatching, ModelManifest, ModelSpec, Sample, TensorSpec,
};
pub use scheduler::{
    InferenceRequest, InferenceResponse, Scheduler, SchedulerConfig, SchedulerStats,
};
pub use tensor::{DType, Element, Tensor, TensorData, TensorError, bf16, f16};
pub use worker::{Backend, BackendFactory, INLINE_BELOW, WorkerPool, panic_message};
