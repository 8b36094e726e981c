//! Endpoints the gateway answers itself: health, readiness, the model lists with ETags.

use crate::common::*;
use serde_json::Value;

fn two_provider_config(live_url: &str) -> String {
    format!(
        "logging: {{ level: warn }}
providers:
  live:
    kind: openai-compatible
    endpoints: [{live_url}]
  dead:
    kind: openai
    endpoints: [{live_url}]
    keys: [{{ id: k, value: '${{ULTRA_TEST_UNSET_KEY:-}}' }}]
models:
  - id: alive-model
    aliases: [alive]
    owned_by: acme
    targets: [{{ provider: live }}]
    context_window: 8192
    pricing: {{ input_per_million: 1.5, output_per_million: 2 }}
    capabilities: [chat, streaming]
    description: a model
  - id: dead-model
    targets: [{{ provider: dead }}]
"
    )
}

#[tokio::test]
async fn metrics_on_the_main_listener() {
    let gw = TestGateway::start(&openai_config(&dead_url()));
    assert_eq!(gw.get("/health").await.status(), 200);
    let r = gw.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(h.contains_key("x-request-id"));
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("ultra_requests_total{endpoint=\"health\",model=\"unknown\",provider=\"none\",status=\"200\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    let r = client().post(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn health_is_ok() {
    let gw = TestGateway::start(&openai_config(&dead_url()));
    let r = gw.get("/health").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn ready_lists_unservable_models_and_stays_ready_while_one_is_servable() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&two_provider_config(&up.url()));
    let r = gw.get("/ready").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["checks"]["servable_models"], 1);
    assert_eq!(v["unservable_models"], serde_json::json!(["dead-model"]));
}

#[tokio::test]
async fn not_ready_when_no_model_is_servable() {
    let cfg = format!(
        "logging: {{ level: warn }}
providers:
  dead: {{ kind: openai, endpoints: [{}], keys: [{{ id: k, value: '' }}] }}
models: [{{ id: m, targets: [{{ provider: dead }}] }}]
",
        dead_url()
    );
    let gw = TestGateway::start(&cfg);
    let r = gw.get("/ready").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["unservable_models"], serde_json::json!(["m"]));
    // The process itself is fine.
    assert_eq!(gw.get("/health").await.status(), 200);
}

#[tokio::test]
async fn models_list_is_openai_shaped_with_etag_and_304() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&two_provider_config(&up.url()));
    let r = gw.get("/v1/models").await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "alive-model");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "acme");
    assert!(data[0]["created"].is_u64());
    assert_eq!(
        data[1]["owned_by"], "dead",
        "owned_by defaults to the first provider"
    );

    let r = client()
        .get(gw.url("/v1/models"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = client()
        .get(gw.url("/v1/models"))
        .header("if-none-match", "\"other\", W/".to_string() + &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "weak comparison and lists match");

    let r = client()
        .get(gw.url("/v1/models"))
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn model_by_id_and_alias() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&two_provider_config(&up.url()));
    for name in ["alive-model", "alive"] {
        let r = gw.get(&format!("/v1/models/{name}")).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("etag"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], "alive-model");
        assert_eq!(v["object"], "model");
    }
    let r = gw.get("/v1/models/alive-modle").await;
    assert_eq!(r.status(), 404);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("alive-model"));
    let logged = gw.access_entry(&rid).await;
    assert_eq!(logged["status"], 404);
    assert_eq!(
        logged["error"], "model_not_found",
        "local errors are logged like any"
    );
}

#[tokio::test]
async fn available_models_describe_providers_pricing_and_availability() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&two_provider_config(&up.url()));
    let r = gw.get("/api/available-models").await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let alive = &v["data"][0];
    assert_eq!(alive["id"], "alive-model");
    assert_eq!(alive["aliases"], serde_json::json!(["alive"]));
    assert_eq!(
        alive["providers"],
        serde_json::json!([{"provider": "live", "model": "alive-model"}])
    );
    assert_eq!(alive["context_window"], 8192);
    assert_eq!(alive["pricing"]["input_per_million"], 1.5);
    assert_eq!(
        alive["capabilities"],
        serde_json::json!(["chat", "streaming"])
    );
    assert_eq!(alive["description"], "a model");
    assert_eq!(alive["available"], true);
    assert_eq!(v["data"][1]["available"], false);

    let r = client()
        .get(gw.url("/api/available-models"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test]
async fn head_and_wrong_methods() {
    let gw = TestGateway::start(&openai_config(&dead_url()));
    let r = client().head(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    assert!(r.bytes().await.unwrap().is_empty());

    let r = client()
        .post(gw.url("/v1/models"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        logged_post_to_models(&gw).await["error"],
        "method_not_allowed"
    );
}

/// The access-log line of a fresh `POST /v1/models` (a local endpoint's 405).
async fn logged_post_to_models(gw: &TestGateway) -> Value {
    let r = client()
        .post(gw.url("/v1/models"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    gw.access_entry(&rid).await
}

#[tokio::test]
async fn shipped_default_config_serves_its_models() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/ultra.yaml")).unwrap();
    let models =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/models.yaml")).unwrap();
    let gw = TestGateway::start_with(&text, &[("models.yaml", &models)], &[]);
    let unauthenticated = gw.get("/v1/models").await;
    assert_eq!(
        unauthenticated.status(),
        401,
        "the shipped configuration requires credentials"
    );
    let token = gw.token("alice", &["user"]);
    let v: Value = gw.get_json_as("/v1/models", &token).await;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "gpt-4o-mini",
            "gpt-4o",
            "claude-3-5-sonnet",
            "llama-3.1-8b-instruct",
            "text-embedding-3-small"
        ]
    );
    assert_eq!(gw.get("/ready").await.status(), 200);
}

#[tokio::test]
async fn sighup_and_sigusr1_do_not_stop_the_gateway() {
    let mut gw =
        TestGateway::start(&openai_config(&dead_url()).replace("level: warn", "level: info"));
    gw.signal("HUP");
    gw.signal("USR1");
    // Handled signals leave a log line; a killed process leaves none.
    poll_until("both signals logged", secs(10), || {
        let out = gw.all_output();
        assert!(!gw.exited(), "the gateway died: {out}");
        async move {
            (out.contains("SIGHUP received") && out.contains("SIGUSR1 received")).then_some(())
        }
    })
    .await;
    assert!(!gw.exited());
    assert_eq!(gw.get("/health").await.status(), 200);
}
