//! Quotas in Redis: exact admission under concurrency, one budget for two gateway processes,
//! and a Redis outage with `on_store_error` allow and deny, then Redis back.

use crate::common::redis::RedisServer;
use crate::common::*;
use crate::quotas::clear_of_minute_edge;

pub fn redis_rules(url: &str, on_error: &str, rpm: u64) -> String {
    format!(
        "quotas:
  store: redis
  redis: {{ url: '{url}', key_prefix: 'test:', timeout_ms: 100 }}
  on_store_error: {on_error}
  rules:
    - {{ id: budget, requests_per_minute: {rpm} }}
"
    )
}

async fn statuses(gw: &TestGateway, n: usize) -> Vec<u16> {
    let sends = (0..n).map(|_| async move { gw.chat("gpt-4o-mini").await.status().as_u16() });
    futures_util::future::join_all(sends).await
}

fn count(s: &[u16], status: u16) -> usize {
    s.iter().filter(|x| **x == status).count()
}

#[tokio::test]
async fn two_hundred_concurrent_requests_against_one_hundred_in_redis() {
    let redis = RedisServer::start();
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config_for(
        "openai",
        &up.url(),
        &redis_rules(&redis.url(), "deny", 100).replace("timeout_ms: 100", "timeout_ms: 2000"),
    ));
    clear_of_minute_edge(secs(15)).await;
    let s = statuses(&gw, 200).await;
    assert_eq!((count(&s, 200), count(&s, 429)), (100, 100), "{s:?}");
    assert_eq!(up.received().len(), 100);
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_one_budget() {
    let redis = RedisServer::start();
    let up = MockUpstream::openai_like().await;
    let cfg = config_for("openai", &up.url(), &redis_rules(&redis.url(), "deny", 10));
    let (a, b) = (TestGateway::start(&cfg), TestGateway::start(&cfg));
    clear_of_minute_edge(secs(10)).await;
    let (sa, sb) = tokio::join!(statuses(&a, 8), statuses(&b, 8));
    let ok = count(&sa, 200) + count(&sb, 200);
    assert_eq!(ok, 10, "{sa:?} {sb:?}");
    assert_eq!(count(&sa, 429) + count(&sb, 429), 6);
    let r = a.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
}

#[tokio::test]
async fn a_redis_outage_fails_open_or_closed_as_configured_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let up = MockUpstream::openai_like().await;
    let open = TestGateway::start(&config_for(
        "openai",
        &up.url(),
        &redis_rules(&redis.url(), "allow", 1000),
    ));
    let closed = TestGateway::start(&config_for(
        "openai",
        &up.url(),
        &redis_rules(&redis.url(), "deny", 1000),
    ));
    assert_eq!(open.chat("gpt-4o-mini").await.status(), 200);
    assert_eq!(closed.chat("gpt-4o-mini").await.status(), 200);
    redis.kill();
    let r = open.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 200, "allow: served while Redis is down");
    assert!(
        r.headers().get("x-ratelimit-limit-requests").is_none(),
        "not counted"
    );
    let r = closed.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_unavailable");
    for gw in [&open, &closed] {
        let m = gw.get("/metrics").await.text().await.unwrap();
        let errors: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("ultra_quota_store_errors_total "))
            .expect("the store-error counter")
            .parse()
            .unwrap();
        assert!(errors >= 1.0, "{m}");
    }
    // Several requests during the outage: the log says so once.
    for _ in 0..5 {
        let _ = open.chat("gpt-4o-mini").await;
    }
    let outage_lines = open
        .all_output()
        .matches("quota store (Redis) unreachable")
        .count();
    assert_eq!(outage_lines, 1, "{}", open.all_output());
    redis.restart();
    // Back after the one-second back-off: counted (and shared) again.
    let counted = |gw: &TestGateway| {
        let gw = gw.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(gw)
                .json(&chat_body("gpt-4o-mini"))
                .send()
                .await
                .unwrap();
            let left = r.headers().get("x-ratelimit-remaining-requests")?;
            (r.status() == 200).then(|| left.to_str().unwrap().parse::<u64>().unwrap())
        }
    };
    poll_until("the deny gateway counts again", secs(10), || {
        counted(&closed)
    })
    .await;
    let left = poll_until("the allow gateway counts again", secs(10), || {
        counted(&open)
    })
    .await;
    // The restarted Redis forgot everything: the deny gateway's one request, then this one.
    assert_eq!(left, 998, "the other gateway's request counts too");
}

#[tokio::test]
async fn a_huge_max_tokens_is_counted_without_breaking_the_store() {
    let redis = RedisServer::start();
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config_for(
        "openai",
        &up.url(),
        &redis_rules(&redis.url(), "deny", 100),
    ));
    clear_of_minute_edge(secs(5)).await;
    let mut body = chat_body("gpt-4o-mini");
    body["max_tokens"] = serde_json::json!(u64::MAX);
    let left = |r: &reqwest::Response| {
        r.headers()["x-ratelimit-remaining-requests"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let r = gw.post_json("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200, "counted in Redis, not a store failure");
    assert_eq!(left(&r), "99");
    let r = gw.chat("gpt-4o-mini").await;
    assert_eq!(r.status(), 200, "the store still answers for everyone");
    assert_eq!(left(&r), "98");
}
