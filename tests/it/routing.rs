//! Routing by the body's `model`: targets, aliases, the upstream name rewrite, the endpoint URL
//! rule, `default_model`, request ids, upstream errors passing through, the access log.

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn chat_goes_to_the_target_with_the_model_renamed() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = gw.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ultra-provider"], "up");
    assert_eq!(r.headers()["x-upstream-request-id"], "upstream-req-1");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hello from upstream");

    let got = up.single();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.json()["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(got.json()["messages"], chat_body("x")["messages"]);
    assert_eq!(got.header("x-request-id"), Some(rid.as_str()));

    let entry = gw.access_entry(&rid).await;
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/v1/chat/completions");
    assert_eq!(entry["model"], "gpt-4o-mini");
    assert_eq!(entry["provider"], "up");
    assert_eq!(entry["provider_key_id"], "k1");
    assert_eq!(entry["subject"], "anonymous");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["backend"], up.addr.to_string());
    assert!(entry["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["upstream_ttfb_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["bytes_in"].as_u64().unwrap() > 0);
    assert!(entry["bytes_out"].as_u64().unwrap() > 0);
    assert!(entry["ts"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn alias_routes_and_is_rewritten_and_same_name_is_untouched() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = gw.chat("mini").await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(up.received()[0].json()["model"], "gpt-4o-mini-2024-07-18");
    let entry = gw.access_entry(&rid).await;
    assert_eq!(entry["model"], "gpt-4o-mini");
    assert_eq!(entry["requested_model"], "mini");

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"temperature":0.5}"#;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        &up.received()[1].body[..],
        body.as_bytes(),
        "no rewrite: forwarded byte for byte"
    );
}

#[tokio::test]
async fn every_builtin_path_is_proxied_and_query_is_kept() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let paths = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/moderations",
    ];
    for p in paths {
        let r = gw.post_json(p, &chat_body("gpt-4o")).await;
        assert_eq!(r.status(), 200, "{p}");
    }
    let r = gw
        .post_json(
            "/v1/chat/completions?api-version=2024-10-21",
            &chat_body("gpt-4o"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let got: Vec<String> = up.received().into_iter().map(|r| r.path).collect();
    let mut expected: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    expected.push("/v1/chat/completions?api-version=2024-10-21".into());
    assert_eq!(got, expected);
}

#[tokio::test]
async fn endpoint_path_replaces_the_leading_v1() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config_for(
        "openai-compatible",
        &format!("{}/openai/v1", up.url()),
        "",
    ));
    let r = gw.post_json("/v1/embeddings", &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.single().path, "/openai/v1/embeddings");
}

#[tokio::test]
async fn extra_paths_are_proxied() {
    let up = MockUpstream::openai_like().await;
    let cfg = openai_config(&up.url()).replace(
        "server: { grace_period_seconds: 1 }",
        "server: { grace_period_seconds: 1, extra_paths: [{ path: /v1/rerank, group: rerank }] }",
    );
    let gw = TestGateway::start(&cfg);
    let r = gw.post_json("/v1/rerank", &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.single().path, "/v1/rerank");
    let r = gw.post_json("/v1/files", &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn default_model_serves_unknown_names_and_says_so() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config_for("openai", &up.url(), "default_model: mini\n"));
    let r = gw.chat("gpt-5-ultra").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ultra-default-model"], "gpt-4o-mini");
    assert_eq!(up.single().json()["model"], "gpt-4o-mini-2024-07-18");

    // A known model is not substituted.
    let r = gw.chat("gpt-4o").await;
    assert!(r.headers().get("x-ultra-default-model").is_none());
}

#[tokio::test]
async fn client_request_id_is_kept_when_sane() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "trace-abc_123")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc_123");
    assert_eq!(
        up.received()[0].header("x-request-id"),
        Some("trace-abc_123")
    );

    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "evil\"; drop")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn upstream_client_errors_pass_through() {
    let err = json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens", "code": null}});
    let e2 = err.clone();
    let up = MockUpstream::start(move |_| Reply::Json(400, e2.clone())).await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-ultra-provider"], "up");
    assert_eq!(r.json::<Value>().await.unwrap(), err);

    // A provider without keys: its 429 is the client's answer (a keyed provider's 429 rotates
    // the key instead, see pools.rs).
    let limited = json!({"error": {"message": "slow down", "type": "rate_limit_error"}});
    let l2 = limited.clone();
    let up = MockUpstream::start(move |_| Reply::Json(429, l2.clone())).await;
    let gw = TestGateway::start(&config_for("openai-compatible-nokey", &up.url(), ""));
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().await.unwrap(), limited);
}
