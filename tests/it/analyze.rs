//! `POST /api/analyze` against the real binary and loopback providers: legs in parallel, a leg
//! falling over to its fallback target, partial and total failure, refusals before any call
//! (404, 403, quota), validation, streaming in completion order, a client leaving, synthesis,
//! usage totals and the legs' access-log lines.

use crate::common::auth::{hs_token, AUDIENCE, HS_SECRET, ISSUER};
use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An OpenAI-like provider answering `text` with usage 10 in / 5 out after `delay`.
async fn provider(text: &'static str, delay: Duration) -> MockUpstream {
    MockUpstream::start(move |_| {
        let mut body = upstream::chat_completion("m", text);
        body["usage"] = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
        Reply::Delayed(delay, Box::new(Reply::Json(200, body)))
    })
    .await
}

fn config(fast: &str, slow: &str, extra: &str) -> String {
    let dead = dead_url();
    format!(
        "logging: {{ level: warn }}
auth:
  jwt: {{ algorithms: [HS256], hmac_secret: {HS_SECRET}, issuer: {ISSUER}, audience: {AUDIENCE} }}
  roles:
    analyst: {{ models: ['*'], endpoints: [analyze] }}
    limited: {{ models: [fast], endpoints: [analyze] }}
providers:
  fastp: {{ kind: openai, endpoints: [{fast}], keys: [{{ id: f1, value: sk-fast-0123456789 }}], health_check: {{ enabled: false }} }}
  slowp: {{ kind: openai, endpoints: [{slow}], keys: [{{ id: s1, value: sk-slow-0123456789 }}], health_check: {{ enabled: false }} }}
  dead: {{ kind: openai, endpoints: [{dead}], keys: [{{ id: d1, value: sk-dead-0123456789 }}], health_check: {{ enabled: false }}, retry: {{ max_attempts: 2 }} }}
models:
  - {{ id: fast, targets: [{{ provider: fastp }}], pricing: {{ input_per_million: 1.0, output_per_million: 2.0 }} }}
  - {{ id: slow, aliases: [slow-alias], targets: [{{ provider: slowp }}] }}
  - {{ id: fallback, targets: [{{ provider: dead }}, {{ provider: fastp }}] }}
  - {{ id: broken, targets: [{{ provider: dead }}] }}
{extra}"
    )
}

async fn analyze(gw: &TestGateway, token: &str, body: Value) -> reqwest::Response {
    client()
        .post(gw.url("/api/analyze"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn analyst() -> String {
    hs_token("ana", &["analyst"])
}

#[tokio::test]
async fn legs_run_in_parallel_in_the_order_asked_with_their_usage() {
    let fast = provider("fast answer", Duration::from_millis(300)).await;
    let slow = provider("slow answer", Duration::from_millis(600)).await;
    let gw = TestGateway::start(&config(&fast.url(), &slow.url(), ""));
    let started = Instant::now();
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hello?", "models": ["slow", "fast"]}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert!(
        took < Duration::from_millis(900),
        "the slowest leg, not the sum: {took:?}"
    );
    assert_eq!(v["object"], "analysis");
    assert_eq!(v["status"], "complete");
    assert!(v["id"].as_str().unwrap().starts_with("anl-"));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["model"], "slow");
    assert_eq!(results[0]["content"], "slow answer");
    assert_eq!(results[1]["model"], "fast");
    assert_eq!(results[1]["provider"], "fastp");
    assert_eq!(results[1]["status"], "ok");
    assert_eq!(results[1]["usage"]["total_tokens"], 15);
    assert_eq!(results[1]["attempts"], 1);
    // 10 × $1 + 5 × $2 per million.
    assert_eq!(results[1]["cost_usd"], 0.00002);
    assert_eq!(v["usage"]["total_tokens"], 30, "the sum of the legs");
    assert_eq!(v["cost_usd"], 0.00002);
    // Each leg asked what a direct call would: one chat completion each, the model renamed.
    let sent = fast.single();
    assert_eq!(sent.json()["model"], "fast");
    assert_eq!(sent.json()["messages"][0]["content"], "hello?");
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer sk-fast-0123456789")
    );
    // One access-log line per leg, with the parent's request id and the leg's index.
    let lines = poll_until("the legs' access-log lines", secs(5), || {
        let lines: Vec<Value> = gw
            .access_log()
            .into_iter()
            .filter(|l| l["request_id"] == rid.as_str() && l.get("leg").is_some())
            .collect();
        async move { (lines.len() == 2).then_some(lines) }
    })
    .await;
    let fast_line = lines.iter().find(|l| l["model"] == "fast").unwrap();
    assert_eq!(fast_line["leg"], 1);
    assert_eq!(fast_line["input_tokens"], 10);
    assert_eq!(fast_line["provider_key_id"], "f1");
    assert_eq!(fast_line["subject"], "ana");
}

#[tokio::test]
async fn a_leg_falls_over_to_its_next_target_and_a_dead_leg_makes_it_partial() {
    let fast = provider("fast answer", Duration::ZERO).await;
    let slow = provider("slow answer", Duration::ZERO).await;
    let gw = TestGateway::start(&config(&fast.url(), &slow.url(), ""));
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hi", "models": ["fallback", "broken"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "partial");
    let fell_over = &v["results"][0];
    assert_eq!(fell_over["status"], "ok");
    assert_eq!(fell_over["provider"], "fastp");
    assert_eq!(fell_over["attempts"], 2);
    let failed = &v["results"][1];
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error"]["code"], "bad_upstream_response");
    assert_eq!(failed["error"]["type"], "upstream_error");
    assert!(failed["usage"].is_null(), "a failed leg is charged nothing");
    // The legs' attempts are in the metrics like any request's.
    let m = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        m.contains("ultra_upstream_attempts_total{outcome=\"connect_error\",provider=\"dead\"}"),
        "{m}"
    );
    assert!(m.contains("ultra_upstream_attempts_total{outcome=\"2xx\",provider=\"fastp\"} 1"));
    assert!(m.contains("ultra_retries_total{reason=\"connect_error\"}"));
    // Every leg failing: 502 with the same body.
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hi", "models": ["broken"]}),
    )
    .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["results"][0]["status"], "error");
}

#[tokio::test]
async fn unknown_and_forbidden_models_are_refused_before_any_call() {
    let fast = provider("fast answer", Duration::ZERO).await;
    let slow = provider("slow answer", Duration::ZERO).await;
    let gw = TestGateway::start(&config(&fast.url(), &slow.url(), ""));
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hi", "models": ["fast", "fsat", "nope"]}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`fsat`") && msg.contains("`nope`") && msg.contains("fast"),
        "{msg}"
    );
    let limited = hs_token("lim", &["limited"]);
    let r = analyze(
        &gw,
        &limited,
        json!({"prompt": "hi", "models": ["fast", "slow"]}),
    )
    .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "permission_denied");
    assert!(v["error"]["message"].as_str().unwrap().contains("`slow`"));
    // Without the analyze group at all.
    let r = analyze(&gw, &hs_token("x", &["nobody"]), json!({"prompt": "hi"})).await;
    assert_eq!(r.status(), 403);
    assert!(
        fast.received().is_empty() && slow.received().is_empty(),
        "no call was made"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_problem() {
    let fast = provider("fast answer", Duration::ZERO).await;
    let slow = provider("slow answer", Duration::ZERO).await;
    let gw = TestGateway::start(&config(
        &fast.url(),
        &slow.url(),
        "analyze: { max_models: 2 }\n",
    ));
    for (body, says) in [
        (json!({"models": ["fast"]}), "`prompt`"),
        (
            json!({"prompt": "x", "messages": [{"role": "user", "content": "y"}], "models": ["fast"]}),
            "not both",
        ),
        (json!({"prompt": "x", "models": []}), "`models` is empty"),
        (
            json!({"prompt": "x", "models": ["slow", "slow-alias"]}),
            "twice",
        ),
        (
            json!({"prompt": "x", "models": ["fast", "slow", "fallback"]}),
            "at most 2",
        ),
        (json!({"prompt": "x"}), "default_models"),
        (
            json!({"prompt": "x", "models": ["fast"], "timeout_ms": 0}),
            "timeout_ms",
        ),
        (
            json!({"prompt": "x", "models": ["fast"], "modles": ["fast"]}),
            "unknown field",
        ),
    ] {
        let r = analyze(&gw, &analyst(), body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let r = client()
        .post(gw.url("/api/analyze"))
        .bearer_auth(analyst())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(fast.received().is_empty());
}

#[tokio::test]
async fn a_fan_out_that_does_not_fit_the_quota_is_refused_whole() {
    let fast = provider("fast answer", Duration::ZERO).await;
    let slow = provider("slow answer", Duration::ZERO).await;
    let rules = "quotas:\n  rules:\n    - { id: two, requests_per_minute: 2 }\n";
    let gw = TestGateway::start(&config(&fast.url(), &slow.url(), rules));
    crate::quotas::clear_of_minute_edge(secs(5)).await;
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hi", "models": ["fast", "slow", "fallback"]}),
    )
    .await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "quota_exceeded");
    assert!(fast.received().is_empty() && slow.received().is_empty());
    // Nothing was spent: the two that fit are still there.
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hi", "models": ["fast", "slow"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
}

#[tokio::test]
async fn streamed_results_come_as_legs_complete_then_synthesis_and_done() {
    let fast = provider("fast answer", Duration::from_millis(50)).await;
    let slow = provider("slow answer", Duration::from_millis(400)).await;
    let gw = TestGateway::start(&config(&fast.url(), &slow.url(), ""));
    let r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "which?", "models": ["slow", "fast"], "synthesis_model": "fast", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let parsed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let kinds: Vec<&str> = parsed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["result", "result", "synthesis", "done"]);
    assert_eq!(
        parsed[0]["model"], "fast",
        "completion order: the fast leg first"
    );
    assert_eq!(parsed[0]["index"], 1);
    assert_eq!(parsed[1]["model"], "slow");
    assert_eq!(parsed[2]["content"], "fast answer");
    assert_eq!(parsed[3]["status"], "complete");
    assert_eq!(
        parsed[3]["usage"]["total_tokens"], 45,
        "two legs and the synthesis"
    );
    // The synthesis was given the question and both answers.
    let synth = fast
        .received()
        .into_iter()
        .find(|r| {
            r.json()["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .contains("### Answer")
        })
        .expect("a synthesis call");
    let prompt = synth.json()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        prompt.contains("which?")
            && prompt.contains("slow answer")
            && prompt.contains("fast answer"),
        "{prompt}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_a_stream_cancels_the_legs_still_running() {
    let fast = provider("fast answer", Duration::ZERO).await;
    let endless = MockUpstream::start(|_| Reply::Endless {
        interval: Duration::from_millis(50),
    })
    .await;
    let gw = TestGateway::start(&config(&fast.url(), &endless.url(), ""));
    let mut r = analyze(
        &gw,
        &analyst(),
        json!({"prompt": "hi", "models": ["fast", "slow"], "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // The fast leg's event arrives; then the client leaves while the slow leg still reads.
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("fast answer"));
    poll_until("the slow leg to be under way", secs(5), || async {
        (!endless.received().is_empty()).then_some(())
    })
    .await;
    drop(r);
    poll_until(
        "the slow leg's upstream connection to close",
        secs(10),
        || async { (endless.streams_dropped() > 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_model_is_allowed_only_by_a_role_that_also_grants_analyze() {
    let fast = provider("fast answer", Duration::ZERO).await;
    let slow = provider("slow answer", Duration::ZERO).await;
    // `analyzer` grants the endpoint for `fast` only; `chatter` lists `slow` but not analyze.
    let cfg = config(&fast.url(), &slow.url(), "").replace(
        "    limited: { models: [fast], endpoints: [analyze] }",
        "    limited: { models: [fast], endpoints: [analyze] }\n    chatter: { models: [slow], endpoints: [chat] }",
    );
    let gw = TestGateway::start(&cfg);
    let both = hs_token("mix", &["limited", "chatter"]);
    let r = analyze(
        &gw,
        &both,
        json!({"prompt": "hi", "models": ["fast", "slow"]}),
    )
    .await;
    assert_eq!(r.status(), 403, "roles are not combined across endpoints");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("`slow`"));
    assert!(slow.received().is_empty());
}
