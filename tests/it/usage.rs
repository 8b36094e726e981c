//! Token usage and cost, as the provider reports them, for every kind of response: JSON, SSE
//! whether the client asked for the usage chunk or not, the responses API, Anthropic, the mock;
//! and a stream the client abandons is charged an estimate.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

const PRICED: &str = "    pricing: { input_per_million: 2.0, output_per_million: 10.0, cached_input_per_million: 1.0 }\n";

/// One provider `up` of `kind` at `url` serving model `m` (priced), plus `extra`.
fn config(kind: &str, url: &str, extra: &str) -> String {
    format!(
        "server: {{ grace_period_seconds: 1, extra_paths: [{{ path: /v1/messages, group: messages }}] }}
logging: {{ level: warn }}
providers:
  up: {{ kind: {kind}, endpoints: [{url}], keys: [{{ id: k1, value: sk-test-usage-1234 }}], health_check: {{ enabled: false }} }}
models:
  - id: m
    targets: [{{ provider: up }}]
{PRICED}{extra}"
    )
}

async fn logged(gw: &TestGateway, r: &reqwest::Response) -> Value {
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    gw.access_entry(&rid).await
}

fn sse(events: &[Value]) -> Reply {
    Reply::Sse {
        events: events.iter().map(|e| e.to_string()).collect(),
        interval: Duration::from_millis(1),
    }
}

#[tokio::test]
async fn json_usage_is_logged_with_its_cost() {
    let up = MockUpstream::start(|_| {
        let mut body = upstream::chat_completion("m", "ok");
        body["usage"] = json!({"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200, "prompt_tokens_details": {"cached_tokens": 400}});
        Reply::Json(200, body)
    })
    .await;
    let gw = TestGateway::start(&config("openai", &up.url(), ""));
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    let e = logged(&gw, &r).await;
    assert_eq!(
        (e["input_tokens"].clone(), e["output_tokens"].clone()),
        (json!(1000), json!(200))
    );
    assert_eq!(e["cached_input_tokens"], 400);
    assert_eq!(e["usage"], "reported");
    // 600 × $2 + 400 × $1 + 200 × $10, per million tokens.
    assert_eq!(e["cost_usd"], 0.0036);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ultra_tokens_total{kind=\"input\",model=\"m\",provider=\"up\"} 1000"),
        "{metrics}"
    );
    assert!(metrics.contains("ultra_cost_usd_total{model=\"m\",provider=\"up\"} 0.0036"));
}

/// A provider that streams as OpenAI does: `"usage":null` on every chunk and a usage-only last
/// chunk, only when the request asks for usage.
async fn openai_streaming() -> MockUpstream {
    MockUpstream::start(|r| {
        let asked = r.json()["stream_options"]["include_usage"] == true;
        let mut events = Vec::new();
        for word in ["Hello", " there"] {
            let mut c = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}}]});
            if asked {
                c["usage"] = Value::Null;
            }
            events.push(c);
        }
        if asked {
            events.push(json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}}));
        }
        sse(&events)
    })
    .await
}

fn stream_request(include_usage: Option<bool>) -> Value {
    let mut b =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(u) = include_usage {
        b["stream_options"] = json!({"include_usage": u});
    }
    b
}

#[tokio::test]
async fn a_stream_is_counted_and_the_client_sees_no_usage_it_did_not_ask_for() {
    let up = openai_streaming().await;
    let gw = TestGateway::start(&config("openai", &up.url(), ""));
    let r = gw
        .post_json("/v1/chat/completions", &stream_request(None))
        .await;
    let e_rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    assert!(!text.contains("usage"), "as if nobody had asked: {text}");
    assert!(
        text.contains("Hello") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let sent = up.single().json();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asked for it"
    );
    let e = gw.access_entry(&e_rid).await;
    assert_eq!(
        (e["input_tokens"].clone(), e["output_tokens"].clone()),
        (json!(30), json!(2))
    );
    assert_eq!(e["usage"], "reported");

    // A client that asks gets the provider's stream untouched.
    let r = gw
        .post_json("/v1/chat/completions", &stream_request(Some(true)))
        .await;
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\"usage\":{\"completion_tokens\":2"),
        "{text}"
    );
    assert!(text.contains("\"usage\":null"), "{text}");
}

#[tokio::test]
async fn without_force_stream_usage_a_stream_is_charged_an_estimate() {
    let up = openai_streaming().await;
    let gw = TestGateway::start(&config(
        "openai",
        &up.url(),
        "usage: { force_stream_usage: false }\n",
    ));
    let r = gw
        .post_json("/v1/chat/completions", &stream_request(None))
        .await;
    let e = logged(&gw, &r).await;
    assert_eq!(
        up.single().json().get("stream_options"),
        None,
        "the body is the client's"
    );
    r.text().await.unwrap();
    assert_eq!(e["usage"], "estimated");
    assert!(e["input_tokens"].as_u64().unwrap() > 0);
    assert!(
        e["output_tokens"].as_u64().unwrap() > 0,
        "never zero for a served stream"
    );
}

#[tokio::test]
async fn responses_api_and_anthropic_streams() {
    let responses = MockUpstream::start(|_| {
        sse(&[
            json!({"type": "response.output_text.delta", "delta": "hi"}),
            json!({"type": "response.completed", "response": {"id": "r1", "usage": {"input_tokens": 12, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 2}}}}),
        ])
    })
    .await;
    let gw = TestGateway::start(&config("openai", &responses.url(), ""));
    let body = json!({"model": "m", "stream": true, "input": "hi"});
    let r = gw.post_json("/v1/responses", &body).await;
    let e = logged(&gw, &r).await;
    r.text().await.unwrap();
    assert_eq!(
        (
            e["input_tokens"].clone(),
            e["output_tokens"].clone(),
            e["cached_input_tokens"].clone()
        ),
        (json!(12), json!(5), json!(2))
    );
    assert_eq!(
        responses.single().json().get("stream_options"),
        None,
        "not chat: nothing asked"
    );

    let anthropic = MockUpstream::start(|_| {
        sse(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 20, "cache_read_input_tokens": 10, "output_tokens": 1}}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 8}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 17}}),
        ])
    })
    .await;
    let gw = TestGateway::start(&config("anthropic", &anthropic.url(), ""));
    let body = json!({"model": "m", "stream": true, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let r = gw.post_json("/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    let e = logged(&gw, &r).await;
    r.text().await.unwrap();
    assert_eq!(
        (
            e["input_tokens"].clone(),
            e["output_tokens"].clone(),
            e["cached_input_tokens"].clone()
        ),
        (json!(30), json!(17), json!(10)),
        "the delta's cumulative count replaces"
    );
}

#[tokio::test]
async fn the_mock_is_counted_like_any_provider() {
    let gw = TestGateway::start(
        "logging: { level: warn }
providers: { local: { kind: mock } }
models: [{ id: m, targets: [{ provider: local }], pricing: { input_per_million: 1.0, output_per_million: 1.0 } }]
",
    );
    let r = gw.chat("m").await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let answer: Value = r.json().await.unwrap();
    let e = gw.access_entry(&rid).await;
    assert_eq!(e["input_tokens"], answer["usage"]["prompt_tokens"]);
    assert_eq!(e["output_tokens"], answer["usage"]["completion_tokens"]);
    assert_eq!(e["usage"], "reported");

    let r = gw
        .post_json("/v1/chat/completions", &stream_request(None))
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    assert!(!text.contains("usage"), "{text}");
    let e = gw.access_entry(&rid).await;
    assert_eq!(
        e["usage"], "reported",
        "the mock's usage chunk, taken out for the client"
    );
    assert!(e["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn an_abandoned_stream_is_charged_an_estimate() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let rx = std::sync::Mutex::new(Some(rx));
    let up =
        MockUpstream::start(move |_| Reply::Stream(rx.lock().unwrap().take().expect("one"))).await;
    let gw = TestGateway::start(&config("openai", &up.url(), ""));
    let r = gw
        .post_json("/v1/chat/completions", &stream_request(None))
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = r.bytes_stream();
    tx.send(bytes::Bytes::from(format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {"content": "x".repeat(400)}}], "usage": null})
    )))
    .unwrap();
    body.next().await.unwrap().unwrap();
    drop(body);
    let e = gw.access_entry(&rid).await;
    assert_eq!(e["error"], "client_closed");
    assert_eq!(e["usage"], "estimated");
    assert!(e["output_tokens"].as_u64().unwrap() >= 100, "{e}");
    drop(tx);
}
