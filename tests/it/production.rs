//! Production mode: it refuses unsafe settings (all at once, each by name), and a production
//! configuration serves real tokens and keys end to end. X-Test-Mode only works in development.

use crate::common::auth::*;
use crate::common::gateway::binary;
use crate::common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn check_config_refuses_every_unsafe_production_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prod.yaml");
    std::fs::write(
        &path,
        "mode: production
auth:
  jwt: { hmac_secret: too-short, jwks_url: 'http://idp.internal/jwks.json' }
  test_tokens: true
  roles: { user: { models: ['*'], endpoints: ['*'] } }
providers:
  local: { kind: mock }
  openai: { kind: openai, endpoints: [https://api.openai.com], keys: [{ id: main, value: '${ULTRA_TEST_UNSET_KEY:-}' }] }
  byip: { kind: openai-compatible, endpoints: ['https://10.1.2.3:8443'] }
metrics: { enabled: true }
models: [{ id: m, targets: [{ provider: local }] }]
",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "auth.test_tokens",
        "auth.jwt.hmac_secret",
        "auth.jwt.jwks_url",
        "providers.local.kind",
        "providers.openai.keys[0].value",
        "providers.byip.endpoints[0]",
        "metrics",
    ] {
        let needle = format!("{}: {field}: production mode refuses this", path.display());
        assert!(err.contains(&needle), "missing `{needle}` in:\n{err}");
    }
    assert!(!err.contains("too-short"), "no value is echoed");

    std::fs::write(&path, "mode: production\nproviders: { p: { kind: openai-compatible, endpoints: [http://127.0.0.1:1] } }\nmodels: [{ id: m, targets: [{ provider: p }] }]\nmetrics: { public: true }\n").unwrap();
    let out = Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(": auth: production mode refuses this: no authentication is configured"),
        "{err}"
    );

    std::fs::write(
        &path,
        format!(
            "mode: production\nauth: {{ jwt: {{ hmac_secret: {} }}, roles: {{ u: {{ models: ['*'], endpoints: ['*'] }} }} }}\nproviders: {{ p: {{ kind: openai-compatible, endpoints: [http://127.0.0.1:1] }} }}\nmodels: [{{ id: m, targets: [{{ provider: p }}] }}]\nmetrics: {{ listen: 127.0.0.1:9464 }}\n",
            ultra_gateway::auth::dev_token::DEV_SECRET
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jwt.hmac_secret: production mode refuses this: it is the public development secret"), "{err}");
}

#[test]
fn production_refuses_to_start_on_unsafe_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prod.yaml");
    std::fs::write(&path, "mode: production\nproviders: { m: { kind: mock } }\nmodels: [{ id: m, targets: [{ provider: m }] }]\n").unwrap();
    let out = Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("providers.m.kind: production mode refuses this"),
        "{err}"
    );
}

#[tokio::test]
async fn production_end_to_end_with_real_tokens_and_keys() {
    let up = MockUpstream::openai_like().await;
    let metrics_port = free_port();
    let cfg = format!(
        "mode: production
server: {{ grace_period_seconds: 1 }}
logging: {{ level: warn }}
auth:
  jwt:
    algorithms: [RS256, HS256]
    hmac_secret: {HS_SECRET}
    public_keys: [rsa_public.pem]
    issuer: {ISSUER}
    audience: {AUDIENCE}
  api_keys: [{{ id: billing, sha256: '{}', roles: [service] }}]
  roles:
    user: {{ models: [gpt-4o-mini], endpoints: [chat, models] }}
    service: {{ models: ['*'], endpoints: [chat, embeddings, models] }}
metrics: {{ listen: 127.0.0.1:{metrics_port} }}
providers:
  up: {{ kind: openai-compatible, endpoints: [{}], keys: [{{ id: k1, value: {UPSTREAM_KEY} }}] }}
models:
  - {{ id: gpt-4o-mini, targets: [{{ provider: up }}] }}
  - {{ id: gpt-4o, targets: [{{ provider: up }}] }}
",
        digest(USER_KEY),
        up.url()
    );
    let pem = fixture("rsa_public.pem");
    let gw = TestGateway::start_with(&cfg, &[("rsa_public.pem", &pem)], &[]);
    let rsa_token = sign(
        jsonwebtoken::Algorithm::RS256,
        None,
        &claims("alice", &["user"]),
        Signer::Rsa,
    );

    for path in ["/health", "/ready"] {
        assert_eq!(gw.get(path).await.status(), 200, "{path}");
    }
    for path in ["/v1/models", "/api/available-models"] {
        assert_eq!(gw.get(path).await.status(), 401, "{path}");
        let r = client()
            .get(gw.url(path))
            .bearer_auth(&rsa_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let r = client()
            .get(gw.url(path))
            .header("x-api-key", USER_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let chat = |auth: Option<(&'static str, String)>, model: &'static str| {
        let mut req = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body(model));
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(chat(None, "gpt-4o-mini").await, 401);
    assert_eq!(
        chat(
            Some(("authorization", format!("Bearer {rsa_token}"))),
            "gpt-4o-mini"
        )
        .await,
        200
    );
    assert_eq!(
        chat(
            Some(("authorization", format!("Bearer {rsa_token}"))),
            "gpt-4o"
        )
        .await,
        403
    );
    assert_eq!(
        chat(Some(("x-api-key", USER_KEY.to_string())), "gpt-4o").await,
        200
    );
    assert_eq!(up.received().len(), 2);
    assert!(up
        .received()
        .iter()
        .all(|r| r.header("authorization") == Some(&*format!("Bearer {UPSTREAM_KEY}"))));

    // Test mode is off in production: the header is dropped and the provider answers.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&rsa_token)
        .header("x-test-mode", "true")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ultra-provider"], "up");
    assert_eq!(up.received().last().unwrap().header("x-test-mode"), None);

    // Metrics are on the internal listener, not on the public one.
    let m = client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(text.contains("ultra_requests_total"), "{text}");
    assert!(
        text.contains(
            "ultra_auth_decisions_total{outcome=\"deny\",reason=\"missing_credentials\"}"
        ),
        "{text}"
    );
    assert_eq!(gw.get("/metrics").await.status(), 401);
    // Not merely behind authentication: the main listener does not serve it at all.
    let r = client()
        .get(gw.url("/metrics"))
        .header("x-api-key", USER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_endpoint"
    );
}

#[tokio::test]
async fn test_mode_answers_with_the_mock_in_development() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-test-mode", "true")
        .json(&chat_body("any-model-at-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ultra-provider"], "test-mode");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "any-model-at-all");
    assert!(up.received().is_empty(), "no provider was called");
    // Without the header, the provider answers.
    assert_eq!(gw.chat("gpt-4o").await.status(), 200);
    assert_eq!(up.received().len(), 1);
    assert_eq!(up.received()[0].header("x-test-mode"), None);
}

#[tokio::test]
async fn test_mode_still_needs_credentials() {
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_with(&auth_config(&dead_url(), ""), &files, &[]);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-test-mode", "true")
        .json(&chat_body("whatever"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-test-mode", "true")
        .bearer_auth(hs_token("alice", &["user"]))
        .json(&chat_body("whatever"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A known model the caller's roles forbid stays forbidden, mock or not.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-test-mode", "true")
        .bearer_auth(hs_token("alice", &["user"]))
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// The plan's success criterion, as the README's production smoke test runs it by hand: a
/// production gateway with real authentication (an RS256 key pair made here, and a service API
/// key) in front of two OpenAI-kind providers on loopback, one slower: health, analyze and the
/// model lists answer 200 with real credentials, 401 without, 403 with the wrong role.
#[tokio::test]
async fn production_smoke_test_health_analyze_and_models() {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let private_pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    let token = |sub: &str, roles: &[&str]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims(sub, roles),
            &encoding,
        )
        .unwrap()
    };
    let answer = |text: &'static str, delay_ms: u64| {
        move |_: &Received| {
            let mut body = upstream::chat_completion("m", text);
            body["usage"] =
                serde_json::json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13});
            Reply::Delayed(
                std::time::Duration::from_millis(delay_ms),
                Box::new(Reply::Json(200, body)),
            )
        }
    };
    let fast = MockUpstream::start(answer("fast", 50)).await;
    let slow = MockUpstream::start(answer("slow", 300)).await;
    let cfg = format!(
        "mode: production
server: {{ grace_period_seconds: 1 }}
logging: {{ level: warn }}
auth:
  jwt: {{ algorithms: [RS256], public_keys: [smoke_public.pem], issuer: {ISSUER}, audience: {AUDIENCE} }}
  api_keys: [{{ id: batch, sha256: '{}', roles: [analyst] }}]
  roles:
    analyst: {{ models: ['*'], endpoints: [analyze, models] }}
    viewer: {{ models: ['*'], endpoints: [models] }}
metrics: {{ listen: 127.0.0.1:{} }}
providers:
  fastp: {{ kind: openai, endpoints: [{}], keys: [{{ id: f, value: {UPSTREAM_KEY} }}] }}
  slowp: {{ kind: openai, endpoints: [{}], keys: [{{ id: s, value: {UPSTREAM_KEY} }}] }}
models:
  - {{ id: gpt-4o-mini, targets: [{{ provider: fastp }}] }}
  - {{ id: claude-3-5-haiku, targets: [{{ provider: slowp }}] }}
analyze:
  default_models: [gpt-4o-mini, claude-3-5-haiku]
",
        digest(USER_KEY),
        free_port(),
        fast.url(),
        slow.url(),
    );
    let gw = TestGateway::start_with(&cfg, &[("smoke_public.pem", &public_pem)], &[]);
    let analyst = token("alice", &["analyst"]);
    let viewer = token("victor", &["viewer"]);

    assert_eq!(gw.get("/health").await.status(), 200);
    let analyze = |auth: Option<String>| {
        let mut req = client()
            .post(gw.url("/api/analyze"))
            .json(&serde_json::json!({"prompt": "Is this gateway ready?"}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.unwrap() }
    };
    let r = analyze(Some(format!("Bearer {analyst}"))).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "complete", "{v}");
    assert_eq!(v["results"][0]["content"], "fast");
    assert_eq!(v["results"][1]["content"], "slow");
    assert_eq!(v["usage"]["total_tokens"], 26);
    let r = analyze(Some(format!("Bearer {USER_KEY}"))).await;
    assert_eq!(r.status(), 200, "the service API key");
    assert_eq!(analyze(None).await.status(), 401);
    assert_eq!(
        analyze(Some(format!("Bearer {viewer}"))).await.status(),
        403
    );
    for path in ["/v1/models", "/api/available-models"] {
        assert_eq!(gw.get_as(path, &analyst).await.status(), 200, "{path}");
        assert_eq!(gw.get_as(path, &viewer).await.status(), 200, "{path}");
        assert_eq!(gw.get(path).await.status(), 401, "{path}");
    }
    let no_models = token("nobody", &["unknown-role"]);
    assert_eq!(gw.get_as("/v1/models", &no_models).await.status(), 403);
    // The providers got the gateway's key, never the caller's credentials.
    for r in fast.received().iter().chain(slow.received().iter()) {
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {UPSTREAM_KEY}"))
        );
    }
}
