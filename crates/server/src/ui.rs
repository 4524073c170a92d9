//! `GET /ui`: a page to try the server in a browser, embedded in the binary (no CDN, nothing
//! fetched at run time). It serves the seed page's own browser tester,
//! `clients/seed/batch_client.js`, byte for byte, and renders it into the page.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../ui/index.html");
const APP: &str = include_str!("../ui/app.js");
/// The original framework's tester, unchanged.
pub const SEED_TESTER: &str = include_str!("../../../clients/seed/batch_client.js");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page changes with the binary only; a minute of caching spares reloads.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// `GET /ui`: the page.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "ui",
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /ui/app.js`: the page's script.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    tag = "ui",
    responses((status = 200, description = "The page's script", body = String, content_type = "text/javascript"))
)]
pub async fn app_script() -> Response {
    asset(APP, "text/javascript; charset=utf-8")
}

/// `GET /ui/batch_client.js`: the seed page's tester.
#[utoipa::path(
    get,
    path = "/ui/batch_client.js",
    tag = "ui",
    responses((status = 200, description = "The seed page's browser tester, unchanged", body = String, content_type = "text/javascript"))
)]
pub async fn seed_tester() -> Response {
    asset(SEED_TESTER, "text/javascript; charset=utf-8")
}
