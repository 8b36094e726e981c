//! The proxied-path allow-list holds against `..`, `%2e`, `//` and other tricks: what is
//! checked is the normalised path, and the normalised path is what goes upstream.

use crate::common::*;

const BODY: &str = r#"{"model":"gpt-4o","messages":[]}"#;

#[tokio::test]
async fn tricks_cannot_reach_unlisted_paths() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    for path in [
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/batches",
        "/v1/organization/users",
        "/v1/chat/completions/../../v1/files",
        "/v1/chat/completions/%2e%2e/%2e%2e/files",
        "/v1/%2e%2e/v1/files",
        "/v1/%2E%2E/v1/files",
        "/../v1/chat/completions",
        "/v1/chat/completions%00",
        "/v1/chat\\completions",
        "/v1/chat/completions/%zz",
        "/v2/chat/completions",
    ] {
        let r = raw::post(gw.addr, path, BODY).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["code"], "unknown_endpoint", "{path}");
    }
    assert!(up.received().is_empty(), "nothing reached the provider");
}

#[tokio::test]
async fn equivalent_spellings_are_normalised_before_forwarding() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    for path in [
        "/v1/chat/completions",
        "//v1//chat/completions/",
        "/v1/./chat/completions",
        "/v1/embeddings/../chat/completions",
        "/v1/%63hat/completions",
    ] {
        let r = raw::post(gw.addr, path, BODY).await;
        assert_eq!(r.status, 200, "{path}");
    }
    assert!(up
        .received()
        .iter()
        .all(|r| r.path == "/v1/chat/completions"));
    assert_eq!(up.received().len(), 5);
}

#[tokio::test]
async fn local_paths_are_normalised_too() {
    let gw = TestGateway::start(&openai_config(&dead_url()));
    assert_eq!(raw::get(gw.addr, "/v1/../health").await.status, 200);
    assert_eq!(raw::get(gw.addr, "//v1/models/").await.status, 200);
    assert_eq!(raw::get(gw.addr, "/nope").await.status, 404);
}
