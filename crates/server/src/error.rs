//! The one error type of the HTTP layer and the one place that maps errors to status codes.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inference_core::{EngineError, ErrorKind};
use serde_json::json;
use std::time::Duration;

/// An error answered as `{"detail": ...}` with its status code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (400).
    #[error("{0}")]
    MalformedJson(String),
    /// A path segment that cannot be read, such as one that is not UTF-8 (400).
    #[error("{0}")]
    BadPath(String),
    /// The body is not JSON by its content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// JSON that does not fit the endpoint or the model (422).
    #[error("{0}")]
    Unprocessable(String),
    /// Several reasons, one per failed sample (422 with a list under `detail`).
    #[error("{}", .0.join("; "))]
    UnprocessableList(Vec<String>),
    /// Body or batch larger than configured (413).
    #[error("{0}")]
    TooLarge(String),
    /// No API key, or not a valid one, on a closed route (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Unknown model or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The queue is full (429 with `Retry-After`).
    #[error("{detail}")]
    Overloaded {
        detail: String,
        retry_after: Duration,
    },
    /// The request's deadline passed (504).
    #[error("{0}")]
    Timeout(String),
    /// The client did not send its body in time (408).
    #[error("{0}")]
    BodyTimeout(String),
    /// The backend failed (500).
    #[error("{0}")]
    Internal(String),
    /// No model ready, or shutting down (503).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadPath(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) | ApiError::UnprocessableList(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let detail = err.to_string();
        match (err.kind(), err) {
            (_, EngineError::Overloaded { retry_after, .. }) => ApiError::Overloaded {
                detail,
                retry_after,
            },
            (ErrorKind::InvalidInput, _) => ApiError::Unprocessable(detail),
            (ErrorKind::DeadlineExceeded, _) => ApiError::Timeout(detail),
            (ErrorKind::Unavailable, _) => ApiError::Unavailable(detail),
            (ErrorKind::Overloaded, _) => ApiError::Overloaded {
                detail,
                retry_after: Duration::from_secs(1),
            },
            (ErrorKind::Backend | ErrorKind::Load, _) => ApiError::Internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::UnprocessableList(reasons) => json!({ "detail": reasons }),
            other => json!({ "detail": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Overloaded { retry_after, .. } = &self {
            // Whole seconds, rounded up so clients never retry too early.
            let seconds = retry_after.as_secs_f64().ceil().max(1.0);
            if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.0}")) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_their_documented_status() {
        let cases = [
            (
                EngineError::InvalidSample {
                    index: 0,
                    reason: "x".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                EngineError::Backend("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                EngineError::Panicked("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                EngineError::Unavailable("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                EngineError::DeadlineExceeded(Duration::from_secs(1)),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                EngineError::Overloaded {
                    queued: 1,
                    capacity: 1,
                    retry_after: Duration::from_millis(1500),
                },
                StatusCode::TOO_MANY_REQUESTS,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::from(err).status(), status);
        }
    }

    #[test]
    fn overloaded_carries_retry_after_in_whole_seconds() {
        let response = ApiError::Overloaded {
            detail: "full".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
