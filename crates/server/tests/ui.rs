//! The browser page's files through the router: the page, its script and the seed page's
//! tester byte for byte, open without an API key.

mod common;

use axum::http::StatusCode;
use common::{get, test_config};
use http_body_util::BodyExt;
use inference_server::{AppState, app};
use tower::ServiceExt;

async fn fetch(state: &AppState, path: &str) -> (StatusCode, String, String) {
    let response = app(state.clone()).oneshot(get(path)).await.unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn the_page_its_script_and_the_unchanged_seed_tester_are_served_without_a_key() {
    let mut config = test_config();
    config.server.api_keys = vec!["s3cret".into()];
    let state = AppState::from_config(config).await.unwrap();

    let (status, content_type, page) = fetch(&state, "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains(r#"<div id="batch-example-container">"#));
    for script in ["/ui/batch_client.js", "/ui/app.js"] {
        assert!(
            page.contains(&format!(r#"<script src="{script}">"#)),
            "{script}"
        );
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );

    let (status, content_type, tester) = fetch(&state, "/ui/batch_client.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    let original = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/seed/batch_client.js"),
    )
    .unwrap();
    assert_eq!(tester, original, "the seed tester is served unchanged");

    let (status, _, script) = fetch(&state, "/ui/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("renderBatchTestInterface('batch-example-container')"));
    assert!(script.contains("batchTester.baseUrl = location.origin"));
}
