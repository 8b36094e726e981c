//! Quotas in the memory store: refusals with OpenAI's rate-limit headers, budgets per caller
//! and shared, exact admission under concurrency, requests that can never fit, settlement with
//! the reported usage, and `/api/usage`.

use crate::common::auth::{auth_config, hs_token, key_files, USER_KEY};
use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Waits until at least `margin` remains of the current wall-clock minute, so that a burst of
/// requests falls in one quota window.
pub async fn clear_of_minute_edge(margin: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = Duration::from_millis((now.as_millis() % 60_000) as u64);
    let left = Duration::from_secs(60) - into;
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

/// The upstream answers every chat with usage of 300 tokens (200 in, 100 out).
async fn upstream_with_usage() -> MockUpstream {
    MockUpstream::start(|_| {
        let mut body = upstream::chat_completion("m", "ok");
        body["usage"] =
            json!({"prompt_tokens": 200, "completion_tokens": 100, "total_tokens": 300});
        Reply::Json(200, body)
    })
    .await
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn post_as(gw: &TestGateway, token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request to the gateway")
}

#[tokio::test]
async fn requests_count_down_then_a_429_names_the_rule_with_retry_after() {
    let up = upstream_with_usage().await;
    let rules = "quotas:\n  rules:\n    - { id: everyone, requests_per_minute: 3 }\n";
    let gw = TestGateway::start(&config_for("openai", &up.url(), rules));
    clear_of_minute_edge(secs(5)).await;
    for left in ["2", "1", "0"] {
        let r = gw.chat("gpt-4o-mini").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(left));
        let reset = header(&r, "x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "an OpenAI duration: {reset}");
        assert_eq!(
            header(&r, "x-ratelimit-limit-tokens"),
            None,
            "no token rule"
        );
    }
    let r = gw.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        header(&r, "x-should-retry"),
        None,
        "waiting helps: the SDK decides"
    );
    let rid = header(&r, "x-request-id").unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`everyone`") && msg.contains("3 requests per minute"),
        "{msg}"
    );
    assert_eq!(
        up.received().len(),
        3,
        "the refused request never went upstream"
    );
    let e = gw.access_entry(&rid).await;
    assert_eq!(
        (e["status"].clone(), e["error"].clone()),
        (json!(429), json!("quota_exceeded"))
    );
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ultra_quota_rejections_total{rule=\"everyone\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_caller_has_a_budget_of_its_own_and_a_shared_rule_has_one() {
    let up = upstream_with_usage().await;
    let rules = "quotas:
  rules:
    - { id: users, match: { roles: [user] }, requests_per_minute: 2 }
    - { id: team, match: { subjects: [carol, dave] }, per: shared, requests_per_minute: 3 }
    - { id: billing-key, match: { api_keys: [billing] }, models: ['gpt-4o*'], requests_per_minute: 1 }
";
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_with(&auth_config(&up.url(), rules), &files, &[]);
    clear_of_minute_edge(secs(5)).await;
    let body = chat_body("gpt-4o-mini");
    let (alice, bob) = (hs_token("alice", &["user"]), hs_token("bob", &["user"]));
    for _ in 0..2 {
        assert_eq!(post_as(&gw, &alice, &body).await.status(), 200);
    }
    assert_eq!(post_as(&gw, &alice, &body).await.status(), 429);
    assert_eq!(
        post_as(&gw, &bob, &body).await.status(),
        200,
        "bob's own budget"
    );
    // carol and dave (admins, outside `users`) share three requests.
    let (carol, dave) = (hs_token("carol", &["admin"]), hs_token("dave", &["admin"]));
    let statuses = [
        post_as(&gw, &carol, &body).await.status(),
        post_as(&gw, &dave, &body).await.status(),
        post_as(&gw, &carol, &body).await.status(),
        post_as(&gw, &dave, &body).await.status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 200, 429]);
    // An API key matched by id, on models by glob: embeddings for gpt-4o count, others don't.
    let emb = |m: &str| json!({"model": m, "input": "hi"});
    let send = |m: &'static str| {
        let gw = &gw;
        let b = emb(m);
        async move {
            client()
                .post(gw.url("/v1/embeddings"))
                .bearer_auth(USER_KEY)
                .json(&b)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("gpt-4o").await, 200);
    assert_eq!(send("gpt-4o").await, 429);
    assert_eq!(
        send("claude-3-5-sonnet").await,
        200,
        "outside the rule's models"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_against_a_budget_of_one_hundred() {
    let up = MockUpstream::start(|_| {
        std::thread::sleep(Duration::from_millis(20));
        Reply::Json(200, upstream::chat_completion("m", "ok"))
    })
    .await;
    let rules = "quotas:\n  rules:\n    - { id: hundred, requests_per_minute: 100 }\n";
    let gw = TestGateway::start(&config_for("openai", &up.url(), rules));
    clear_of_minute_edge(secs(15)).await;
    let sends = (0..200).map(|_| {
        let gw = &gw;
        async move { gw.chat("gpt-4o-mini").await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(sends).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (100, 100), "{statuses:?}");
    assert_eq!(up.received().len(), 100);
}

#[tokio::test]
async fn a_request_larger_than_a_limit_is_told_it_can_never_fit() {
    let up = upstream_with_usage().await;
    let rules = "quotas:\n  rules:\n    - { id: small, tokens_per_minute: 100 }\n";
    let gw = TestGateway::start(&config_for("openai", &up.url(), rules));
    clear_of_minute_edge(secs(5)).await;
    let mut big = chat_body("gpt-4o-mini");
    big["max_tokens"] = json!(500);
    let r = gw.post_json("/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry"), Some("false"));
    assert_eq!(header(&r, "retry-after"), None, "no wait lets it through");
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot be served") && msg.contains("100 tokens per minute"),
        "{msg}"
    );
    // Without max_tokens the default estimate (1024) is more than the limit, but a small
    // request still goes through: its estimate shrinks to the room left.
    let r = gw.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(up.received().len(), 1);
}

#[tokio::test]
async fn a_reservation_is_replaced_by_the_reported_usage() {
    let up = upstream_with_usage().await;
    let rules = "quotas:\n  rules:\n    - { id: tokens, tokens_per_minute: 10000 }\n";
    let gw = TestGateway::start(&config_for("openai", &up.url(), rules));
    clear_of_minute_edge(secs(5)).await;
    let first = gw.chat("gpt-4o-mini").await;
    let rid = header(&first, "x-request-id").unwrap().to_string();
    let left_1: u64 = header(&first, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // Settled when the access line is written.
    assert_eq!(gw.access_entry(&rid).await["input_tokens"], 200);
    let second = gw.chat("gpt-4o-mini").await;
    let left_2: u64 = header(&second, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // The same request reserves the same estimate; the first now counts its 300 tokens.
    let reserved = 10_000 - left_1;
    assert!(
        reserved > 1024,
        "input estimate + default output: {reserved}"
    );
    assert_eq!(left_2, 10_000 - 300 - reserved);
}

#[tokio::test]
async fn the_usage_endpoint_shows_a_caller_its_own_and_an_admin_anyone() {
    let up = upstream_with_usage().await;
    let rules = "quotas:
  rules:
    - { id: users, match: { roles: [user] }, requests_per_minute: 10, tokens_per_day: 100000 }
";
    let cfg = auth_config(&up.url(), rules).replace(
        "endpoints: [chat, models] }",
        "endpoints: [chat, models, usage] }",
    );
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_with(&cfg, &files, &[]);
    clear_of_minute_edge(secs(5)).await;
    let alice = hs_token("alice", &["user"]);
    let admin = hs_token("root", &["admin"]);
    for _ in 0..2 {
        let r = post_as(&gw, &alice, &chat_body("gpt-4o-mini")).await;
        assert_eq!(r.status(), 200);
        let rid = header(&r, "x-request-id").unwrap().to_string();
        gw.access_entry(&rid).await;
    }
    let mine = gw.get_json_as("/api/usage", &alice).await;
    assert_eq!(mine["caller"], json!({"kind": "subject", "id": "alice"}));
    assert_eq!(mine["today"]["requests"], 2);
    assert_eq!(mine["today"]["tokens"], 600);
    let rule = &mine["rules"][0];
    assert_eq!(rule["id"], "users");
    assert_eq!(rule["minute"]["requests"], 2);
    assert_eq!(rule["minute"]["remaining_requests"], 8);
    assert_eq!(
        rule["day"]["tokens"], 600,
        "settled with the reported usage"
    );
    assert_eq!(rule["day"]["remaining_tokens"], 100000 - 600);
    // Only an admin may look at someone else, or at the top spenders.
    let r = gw.get_as("/api/usage?subject=bob", &alice).await;
    assert_eq!(r.status(), 403);
    let r = gw.get_as("/api/usage?top=3", &alice).await;
    assert_eq!(r.status(), 403);
    let theirs = gw.get_json_as("/api/usage?subject=alice", &admin).await;
    assert_eq!(theirs["today"], mine["today"]);
    assert_eq!(theirs["rules"][0]["minute"]["requests"], 2);
    let top = gw.get_json_as("/api/usage?top=3", &admin).await;
    assert_eq!(top["top"][0]["id"], "alice");
    assert_eq!(top["top"][0]["today"]["tokens"], 600);
    let r = gw.get_as("/api/usage?top=lots", &admin).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_query");
}

#[tokio::test]
async fn the_providers_own_rate_limit_headers_give_way_to_the_rules() {
    let up = MockUpstream::start(|_| Reply::Raw {
        status: 200,
        headers: vec![
            ("content-type", "application/json".into()),
            ("x-ratelimit-remaining-requests", "4999".into()),
            ("x-ratelimit-remaining-tokens", "150000".into()),
            ("anthropic-ratelimit-requests-remaining", "49".into()),
            ("anthropic-ratelimit-output-tokens-limit", "8000".into()),
        ],
        body: bytes::Bytes::from(upstream::chat_completion("m", "ok").to_string()),
    })
    .await;
    // Without a rule the provider's headers pass through.
    let gw = TestGateway::start(&config_for("openai", &up.url(), ""));
    let r = gw.chat("gpt-4o-mini").await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("4999"));
    drop(gw);
    let rules = "quotas:\n  rules:\n    - { id: rpm, requests_per_minute: 50 }\n";
    let gw = TestGateway::start(&config_for("openai", &up.url(), rules));
    clear_of_minute_edge(secs(5)).await;
    let r = gw.chat("gpt-4o-mini").await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("49"));
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens"),
        None,
        "no token rule: theirs go"
    );
    assert_eq!(header(&r, "anthropic-ratelimit-requests-remaining"), None);
    assert_eq!(header(&r, "anthropic-ratelimit-output-tokens-limit"), None);
}
