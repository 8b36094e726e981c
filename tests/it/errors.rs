//! The gateway's own errors, one per row of DESIGN.md's table: status, OpenAI-shaped body with
//! type and code, and the retry hints.

use crate::common::*;
use serde_json::{json, Value};

async fn expect_error(
    r: reqwest::Response,
    status: u16,
    ty: &str,
    code: &str,
) -> (reqwest::header::HeaderMap, Value) {
    assert_eq!(r.status().as_u16(), status, "expected {code}");
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert!(h.contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], ty, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().len() > 10);
    assert!(v["error"].as_object().unwrap().contains_key("param"));
    (h, v)
}

#[tokio::test]
async fn request_errors() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let post = |body: &'static str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (h, _) = expect_error(
        post("{not json").await.unwrap(),
        400,
        "invalid_request_error",
        "invalid_json",
    )
    .await;
    assert_eq!(h["x-should-retry"], "false");
    expect_error(
        post("[1,2,3]").await.unwrap(),
        400,
        "invalid_request_error",
        "invalid_json",
    )
    .await;
    expect_error(
        post("").await.unwrap(),
        400,
        "invalid_request_error",
        "invalid_json",
    )
    .await;
    expect_error(
        post(r#"{"model":"a","model":"b"}"#).await.unwrap(),
        400,
        "invalid_request_error",
        "invalid_json",
    )
    .await;
    // Invalid UTF-8 inside a string the gateway does not read itself (issue 13, finding 9).
    let mut bad = br#"{"model":"mini","messages":[{"role":"user","content":"caf"#.to_vec();
    bad.extend_from_slice(&[0xe9, b'"', b'}', b']', b'}']);
    let (_, v) = expect_error(
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request_error",
        "invalid_json",
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid UTF-8 at byte 57"),
        "{v}"
    );
    assert!(
        up.received().iter().all(|r| r.is_probe()),
        "a request reached the provider"
    );
    let (_, v) = expect_error(
        post(r#"{"messages":[]}"#).await.unwrap(),
        400,
        "invalid_request_error",
        "missing_model",
    )
    .await;
    assert_eq!(v["error"]["param"], "model");
    expect_error(
        post(r#"{"model":42}"#).await.unwrap(),
        400,
        "invalid_request_error",
        "missing_model",
    )
    .await;

    let (h, v) = expect_error(
        post(r#"{"model":"gpt-4o-mni"}"#).await.unwrap(),
        404,
        "invalid_request_error",
        "model_not_found",
    )
    .await;
    assert_eq!(h["x-should-retry"], "false");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Did you mean: gpt-4o-mini, gpt-4o"), "{msg}");
    let entry = gw.access_entry(h["x-request-id"].to_str().unwrap()).await;
    assert_eq!(entry["status"], 404);
    assert_eq!(entry["error"], "model_not_found");
    assert_eq!(entry["requested_model"], "gpt-4o-mni");
    assert!(entry["model"].is_null());

    let r = client()
        .post(gw.url("/v1/files"))
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "invalid_request_error", "unknown_endpoint").await;
    let r = gw.get("/v1/chat/completions").await;
    let (h, _) = expect_error(r, 405, "invalid_request_error", "method_not_allowed").await;
    assert_eq!(h["allow"], "POST");
    assert!(
        up.received().is_empty(),
        "no bad request reached the provider"
    );
}

#[tokio::test]
async fn provider_401_and_403_become_502_provider_auth_failed() {
    for status in [401u16, 403] {
        let up = MockUpstream::start(move |_| {
            Reply::Json(status, json!({"error": {"message": "Incorrect API key provided: sk-test-upst***", "type": "invalid_request_error"}}))
        })
        .await;
        let gw = TestGateway::start(&openai_config(&up.url()));
        let r = gw.chat("gpt-4o").await;
        let (h, v) = expect_error(r, 502, "upstream_error", "provider_auth_failed").await;
        assert_eq!(h["x-should-retry"], "false");
        assert_eq!(h["x-ultra-provider"], "up");
        assert!(
            !v.to_string().contains("Incorrect API key"),
            "the provider's message is not relayed"
        );
    }
}

#[tokio::test]
async fn dead_provider_is_a_fast_503_when_health_checks_saw_it() {
    // A port nothing listens on: the start-up health check finds it down.
    let gw = TestGateway::start(&openai_config(&dead_url()));
    let r = gw.chat("gpt-4o").await;
    let (h, _) = expect_error(r, 503, "upstream_error", "no_healthy_upstream").await;
    assert_eq!(h["retry-after"], "5");
    let rid = h["x-request-id"].to_str().unwrap();
    assert_eq!(
        gw.access_entry(rid).await["attempts"],
        0,
        "no attempt is made"
    );
}

#[tokio::test]
async fn dead_provider_without_health_checks_is_502_bad_upstream_response() {
    let cfg = openai_config(&dead_url()).replace(
        "    keys:",
        "    health_check: { enabled: false }\n    keys:",
    );
    let gw = TestGateway::start(&cfg);
    let r = gw.chat("gpt-4o").await;
    let (h, _) = expect_error(r, 502, "upstream_error", "bad_upstream_response").await;
    assert_eq!(h["x-ultra-provider"], "up");
    assert_eq!(
        h["x-should-retry"], "false",
        "final: the gateway retried already"
    );
}

#[tokio::test]
async fn no_usable_provider_is_503_with_retry_after() {
    let cfg = format!(
        "logging: {{ level: warn }}
providers:
  p: {{ kind: openai, endpoints: [{}], keys: [{{ id: k, value: '${{ULTRA_TEST_UNSET:-}}' }}] }}
  q: {{ kind: openai-compatible, endpoints: [http://no-such-host.invalid] }}
models:
  - {{ id: keyless, targets: [{{ provider: p }}] }}
  - {{ id: unresolvable, targets: [{{ provider: q }}] }}
",
        dead_url()
    );
    let gw = TestGateway::start(&cfg);
    for model in ["keyless", "unresolvable"] {
        let r = gw.chat(model).await;
        let (h, _) = expect_error(r, 503, "upstream_error", "no_healthy_upstream").await;
        assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    }
}

#[tokio::test]
async fn slow_provider_is_504_upstream_timeout() {
    let up = MockUpstream::start(|_| Reply::Hang).await;
    let cfg = openai_config(&up.url()).replace(
        "    keys:",
        "    timeouts: { first_byte_ms: 300, between_chunks_ms: 300 }\n    keys:",
    );
    let gw = TestGateway::start(&cfg);
    let r = gw.chat("gpt-4o").await;
    expect_error(r, 504, "upstream_error", "upstream_timeout").await;
}

/// Time spent waiting on attempts that timed out is the provider's, not gateway overhead, and
/// each such attempt is in the upstream-duration histogram (issue 13, finding 11).
#[tokio::test]
async fn timed_out_attempts_count_as_upstream_time_not_overhead() {
    let up = MockUpstream::start(|_| Reply::Hang).await;
    let cfg = openai_config(&up.url()).replace(
        "    keys:",
        "    timeouts: { first_byte_ms: 400, between_chunks_ms: 400 }\n    keys:",
    );
    let gw = TestGateway::start(&cfg);
    let r = gw.chat("gpt-4o").await;
    expect_error(r, 504, "upstream_error", "upstream_timeout").await;
    let text = gw.get("/metrics").await.text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    // A first-byte timeout is not retried (the provider may be working on it): one attempt
    // that waited ~0.4 s.
    let attempts = value("ultra_upstream_duration_seconds_count{provider=\"up\"}");
    let waited = value("ultra_upstream_duration_seconds_sum{provider=\"up\"}");
    assert_eq!(attempts, 1.0, "{text}");
    assert!(waited >= 0.38, "upstream time {waited}");
    // The request's overhead is what is left: milliseconds, not the 0.4 s of waiting.
    let count = value("ultra_gateway_overhead_seconds_count");
    let under_100ms = value("ultra_gateway_overhead_seconds_bucket{le=\"0.1\"}");
    assert!(count >= 1.0);
    assert_eq!(under_100ms, count, "overhead over 100 ms:\n{text}");
}
