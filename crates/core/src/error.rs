//! Errors of engines and the scheduler, typed so the server can map each to one status.

use std::time::Duration;

/// A coarse class of error, so that callers (and the conformance suite) can check that
/// every backend reports the same kind of failure for the same cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is wrong (shape, type, count): the client must change it.
    InvalidInput,
    /// The backend failed while computing.
    Backend,
    /// The engine cannot serve now (not loaded, shut down, runtime missing).
    Unavailable,
    /// The queue is full; try again later.
    Overloaded,
    /// The request's deadline passed before it was served.
    DeadlineExceeded,
    /// The model or its runtime could not be loaded.
    Load,
}

/// Everything that can go wrong between a request and its outputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("sample {index}: {reason}")]
    InvalidSample { index: usize, reason: String },
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("backend failed: {0}")]
    Backend(String),
    #[error("backend panicked: {0}")]
    Panicked(String),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("queue is full ({queued} of {capacity} rows queued)")]
    Overloaded {
        queued: usize,
        capacity: usize,
        retry_after: Duration,
    },
    #[error("deadline of {0:?} passed before the request was served")]
    DeadlineExceeded(Duration),
    #[error("cannot load model: {0}")]
    Load(String),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidSample { .. } | EngineError::InvalidBatch(_) => {
                ErrorKind::InvalidInput
            }
            EngineError::Backend(_) | EngineError::Panicked(_) => ErrorKind::Backend,
            EngineError::Unavailable(_) => ErrorKind::Unavailable,
            EngineError::Overloaded { .. } => ErrorKind::Overloaded,
            EngineError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            EngineError::Load(_) => ErrorKind::Load,
        }
    }
}

impl From<crate::tensor::TensorError> for EngineError {
    fn from(err: crate::tensor::TensorError) -> Self {
        EngineError::InvalidBatch(err.to_string())
    }
}
