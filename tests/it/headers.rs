//! Header hygiene and key injection: what the client sends that must never reach a provider,
//! how each provider kind gets its key, and what a provider sends that must never reach a
//! client. The upstream records exactly what it received.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn each_client_credential_and_internal_header_is_stripped() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let stripped = [
        ("authorization", "Bearer client-token-should-not-leak"),
        ("x-api-key", "client-api-key"),
        ("api-key", "client-azure-key"),
        ("cookie", "session=abc"),
        ("openai-organization", "org-client"),
        ("openai-project", "proj_client"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("forwarded", "for=10.0.0.1"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "internal.example"),
        ("x-forwarded-proto", "http"),
        ("x-real-ip", "10.0.0.1"),
        ("accept-encoding", "gzip, br"),
    ];
    for (i, (name, value)) in stripped.iter().enumerate() {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header(*name, *value)
            .header("x-custom-kept", "yes")
            .json(&chat_body("gpt-4o"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let got = &up.received()[i];
        let seen = got.header(name);
        match *name {
            // The gateway sets these itself, to its own values.
            "authorization" => assert_eq!(seen, Some(format!("Bearer {UPSTREAM_KEY}").as_str())),
            "accept-encoding" => assert_eq!(seen, Some("identity")),
            _ => assert_eq!(seen, None, "{name} reached the upstream"),
        }
        assert_eq!(
            got.header("x-custom-kept"),
            Some("yes"),
            "other headers pass"
        );
        assert!(
            !format!("{:?}", got.headers).contains(value),
            "{name}'s value reached the upstream"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let body = r#"{"model":"gpt-4o","messages":[]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close, x-hop-secret\r\nx-hop-secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw::send(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let got = up.single();
    for h in ["x-hop-secret", "keep-alive", "te", "proxy-connection"] {
        assert_eq!(got.header(h), None, "{h} reached the upstream");
    }
}

#[tokio::test]
async fn host_content_length_and_request_id_are_set_for_the_upstream() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", "client-facing.example")
        .json(&chat_body("mini"))
        .send()
        .await
        .unwrap();
    let got = up.single();
    assert_eq!(got.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert!(got.header("x-request-id").is_some());
}

async fn injected(kind: &str, extra: &str) -> Received {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config_for(kind, &up.url(), extra));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer caller-token")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{kind}");
    up.single()
}

#[tokio::test]
async fn key_injection_per_provider_kind() {
    let got = injected("openai", "").await;
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );

    let got = injected("openai-compatible", "").await;
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );

    let got = injected("anthropic", "").await;
    assert_eq!(got.header("x-api-key"), Some(UPSTREAM_KEY));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(got.header("authorization"), None);

    let got = injected("azure", "").await;
    assert_eq!(got.header("api-key"), Some(UPSTREAM_KEY));
    assert_eq!(got.header("authorization"), None);

    let got = injected("openai-compatible-nokey", "").await;
    assert_eq!(
        got.header("authorization"),
        None,
        "a provider without keys gets none"
    );
    assert_eq!(got.header("x-api-key"), None);
}

#[tokio::test]
async fn anthropic_version_from_client_or_config() {
    let up = MockUpstream::openai_like().await;
    let cfg = config_for("anthropic", &up.url(), "").replace(
        "    keys:",
        "    anthropic_version: '2024-01-01'\n    headers: { HTTP-Referer: https://ultra.example }\n    keys:",
    );
    let gw = TestGateway::start(&cfg);
    gw.chat("gpt-4o").await;
    client()
        .post(gw.url("/v1/chat/completions"))
        .header("anthropic-version", "2023-01-01")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    let got = up.received();
    assert_eq!(got[0].header("anthropic-version"), Some("2024-01-01"));
    assert_eq!(got[0].header("http-referer"), Some("https://ultra.example"));
    assert_eq!(got[1].header("anthropic-version"), Some("2023-01-01"));
}

#[tokio::test]
async fn provider_response_headers_are_scrubbed() {
    let up = MockUpstream::start(|_| Reply::Raw {
        status: 200,
        headers: vec![
            ("content-type", "application/json".into()),
            ("set-cookie", "__cf_bm=provider-cookie".into()),
            ("openai-organization", "org-gateway-owner".into()),
            ("openai-project", "proj_gateway".into()),
            ("x-request-id", "req_provider_1".into()),
            ("x-ratelimit-remaining-requests", "99".into()),
        ],
        body: serde_json::to_vec(&json!({"ok": true})).unwrap().into(),
    })
    .await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(h.get("set-cookie").is_none());
    assert!(h.get("openai-organization").is_none());
    assert!(h.get("openai-project").is_none());
    assert_eq!(h["x-upstream-request-id"], "req_provider_1");
    assert_ne!(h["x-request-id"], "req_provider_1");
    assert_eq!(h["x-ratelimit-remaining-requests"], "99");
    assert_eq!(h["x-ultra-provider"], "up");
}

#[tokio::test]
async fn upstream_key_never_reaches_a_client_or_a_log() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let headers = format!("{:?}", r.headers());
    let body = r.text().await.unwrap();
    assert!(!headers.contains(UPSTREAM_KEY) && !body.contains(UPSTREAM_KEY));
    assert_eq!(
        up.single().header("authorization"),
        Some(&*format!("Bearer {UPSTREAM_KEY}")),
        "the key was used"
    );
    // Every line about the request is out before the output is searched.
    gw.access_entry(&rid).await;
    assert!(
        !gw.all_output().contains(UPSTREAM_KEY),
        "{}",
        gw.all_output()
    );
}

/// Two `x-request-id`s: logs and the provider would each pick one, so neither is kept and the
/// gateway's own id is used everywhere.
#[tokio::test]
async fn two_request_ids_are_replaced_by_a_new_one() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let body = r#"{"model":"gpt-4o","messages":[]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: first\r\nx-request-id: second\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw::send(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let rid = r.header("x-request-id").unwrap().to_string();
    assert!(
        rid != "first" && rid != "second" && rid.len() == 32,
        "{rid}"
    );
    assert_eq!(up.single().header("x-request-id"), Some(rid.as_str()));
    assert_eq!(gw.access_entry(&rid).await["request_id"], rid.as_str());
}
