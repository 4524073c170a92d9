//! The errors of the KServe v2 protocol, as causes rather than status codes, so the REST
//! routes and a gRPC service map the same cause to their own code.

use inference_core::{EngineError, ErrorKind};
use std::time::Duration;

/// Why a v2 request failed, as a sentence for a person; each variant is one status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum V2Error {
    /// The request is malformed or does not fit the model (400).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The queue is full; retry after the delay (429).
    #[error("{detail}")]
    Overloaded {
        detail: String,
        retry_after: Duration,
    },
    /// The request's timeout passed before it was served (504).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The model or the server cannot serve now: loading, failed, draining (503).
    #[error("{0}")]
    Unavailable(String),
    /// The backend failed, or its outputs cannot be answered (500).
    #[error("{0}")]
    Internal(String),
}

impl V2Error {
    pub fn bad_request(message: impl Into<String>) -> Self {
        V2Error::BadRequest(message.into())
    }
}

impl From<EngineError> for V2Error {
    fn from(err: EngineError) -> Self {
        let detail = err.to_string();
        match (err.kind(), err) {
            (_, EngineError::Overloaded { retry_after, .. }) => V2Error::Overloaded {
                detail,
                retry_after,
            },
            (ErrorKind::InvalidInput, _) => V2Error::BadRequest(detail),
            (ErrorKind::DeadlineExceeded, _) => V2Error::DeadlineExceeded(detail),
            (ErrorKind::Unavailable, _) => V2Error::Unavailable(detail),
            (ErrorKind::Overloaded, _) => V2Error::Overloaded {
                detail,
                retry_after: Duration::from_secs(1),
            },
            (ErrorKind::Backend | ErrorKind::Load, _) => V2Error::Internal(detail),
        }
    }
}

impl From<crate::error::ApiError> for V2Error {
    /// The repository's lookups answer in the seed routes' terms: the same class here, by
    /// status, so a variant added there cannot be missed.
    fn from(err: crate::error::ApiError) -> Self {
        use axum::http::StatusCode;
        let detail = err.to_string();
        if let crate::error::ApiError::Overloaded { retry_after, .. } = err {
            return V2Error::Overloaded {
                detail,
                retry_after,
            };
        }
        match err.status() {
            StatusCode::NOT_FOUND => V2Error::NotFound(detail),
            StatusCode::SERVICE_UNAVAILABLE => V2Error::Unavailable(detail),
            StatusCode::GATEWAY_TIMEOUT => V2Error::DeadlineExceeded(detail),
            StatusCode::TOO_MANY_REQUESTS => V2Error::Overloaded {
                detail,
                retry_after: Duration::from_secs(1),
            },
            status if status.is_server_error() => V2Error::Internal(detail),
            _ => V2Error::BadRequest(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_class() {
        let invalid = EngineError::InvalidBatch("the batch is empty".into());
        assert!(matches!(V2Error::from(invalid), V2Error::BadRequest(_)));
        let full = EngineError::Overloaded {
            queued: 4,
            capacity: 4,
            retry_after: Duration::from_millis(300),
        };
        assert!(matches!(
            V2Error::from(full),
            V2Error::Overloaded { retry_after, .. } if retry_after == Duration::from_millis(300)
        ));
        let down = EngineError::Unavailable("closed".into());
        assert!(matches!(V2Error::from(down), V2Error::Unavailable(_)));
        let failed = EngineError::Backend("boom".into());
        assert_eq!(
            V2Error::from(failed),
            V2Error::Internal("backend failed: boom".into())
        );
        let late = EngineError::DeadlineExceeded(Duration::from_secs(1));
        assert!(matches!(V2Error::from(late), V2Error::DeadlineExceeded(_)));
    }
}
