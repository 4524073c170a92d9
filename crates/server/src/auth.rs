//! API keys (`server.api_keys`) and CORS (`server.cors_allowed_origins`).
//!
//! Closed by default: with any key configured every route needs one, except the few a load
//! balancer, a scraper or a reader of the docs calls without credentials (`is_open`). A new
//! route is therefore protected without anyone remembering to protect it.

use crate::error::ApiError;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// Paths answered without a key: liveness, readiness, health, metrics, the API's docs and
/// the browser page's static files (the page asks for the key and sends it itself).
pub fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/health/live" | "/health/ready" | "/metrics" | "/openapi.json"
    ) || ["/docs", "/ui"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
        || path.starts_with("/v2/health/")
}

/// Whether `headers` carry `Authorization: Bearer <key>` with one of `keys`.
pub fn bearer_matches(headers: &HeaderMap, keys: &[String]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    presented_key(value.as_bytes()).is_some_and(|key| key_matches(key, keys))
}

/// The key of a `Bearer <key>` credential (the scheme is case-insensitive, RFC 9110).
pub fn presented_key(credential: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = credential.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(credential[SCHEME.len()..].trim_ascii())
}

/// Compares against every key in constant time, so timing tells nothing of how much of a
/// guess was right (the number of keys and their lengths are not secret).
pub fn key_matches(presented: &[u8], keys: &[String]) -> bool {
    keys.iter().fold(false, |found, key| {
        found | bool::from(key.as_bytes().ct_eq(presented))
    })
}

/// The 401 (with a detail) for a request to a closed route without a valid key; `None`
/// when the request may go on.
pub fn refusal(keys: &[String], request: &Request) -> Option<Response> {
    // A browser's CORS preflight carries no credentials; the CORS layer answers it.
    let preflight = request.method() == Method::OPTIONS;
    if keys.is_empty() || preflight || is_open(request.uri().path()) {
        return None;
    }
    if bearer_matches(request.headers(), keys) {
        return None;
    }
    let detail = if request.headers().contains_key(header::AUTHORIZATION) {
        "the API key is not valid"
    } else {
        "this route needs an API key: send the header `Authorization: Bearer <key>`"
    };
    let mut response = ApiError::Unauthorized(detail.into()).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// The CORS layer for the configured origins; `None` when none is configured (no CORS
/// headers at all, the browser's same-origin policy applies).
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        // Validated when the configuration loaded.
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(Any)
            .expose_headers(Any),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        vec!["first-key".into(), "second-key".into()]
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        assert!(key_matches(b"first-key", &keys()));
        assert!(key_matches(b"second-key", &keys()));
        assert!(!key_matches(b"first-ke", &keys()));
        assert!(!key_matches(b"first-keyy", &keys()));
        assert!(!key_matches(b"", &keys()));
        assert!(!key_matches(b"first-key", &[]));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(presented_key(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(presented_key(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(presented_key(b"Basic abc"), None);
        assert_eq!(presented_key(b"abc"), None);
    }

    #[test]
    fn only_probes_metrics_and_docs_are_open() {
        for open in [
            "/health",
            "/health/live",
            "/health/ready",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/docs/index.html",
            "/ui",
            "/ui/batch_client.js",
            "/v2/health/live",
            "/v2/health/ready",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/",
            "/predict",
            "/models",
            "/models/example/load",
            "/config",
            "/stats",
            "/v2",
            "/v2/models/example/infer",
            "/docsx",
            "/uix",
            "/health/live/x",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }
}
