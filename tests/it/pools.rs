//! Provider pools under failure: a backend dying under load, breakers, health-check recovery,
//! key rotation on 429/401, all keys cooling, fallback to another provider for small and large
//! bodies, key files changing on disk, streams breaking after their first byte, timeouts, and
//! the provider health endpoint.

use crate::common::*;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAST_HEALTH: &str =
    "health_check: { interval_seconds: 1, timeout_ms: 500, healthy_after: 1, unhealthy_after: 1 }";

/// A config with one provider `up` (keys `sk-one`, `sk-two` unless `keys` says otherwise) at
/// `endpoints`, serving model `m` (as `m-upstream`), plus `provider_extra` lines.
fn pool_config(endpoints: &[String], keys: &str, provider_extra: &str) -> String {
    let eps = endpoints.join(", ");
    format!(
        "server: {{ grace_period_seconds: 1 }}
logging: {{ level: warn }}
providers:
  up:
    kind: openai
    endpoints: [{eps}]
    keys: {keys}
    {FAST_HEALTH}
{provider_extra}
models:
  - {{ id: m, targets: [{{ provider: up, model: m-upstream }}] }}
"
    )
}

const TWO_KEYS: &str = "[{ id: one, value: sk-one }, { id: two, value: sk-two }]";

fn auth(r: &Received) -> String {
    r.header("authorization").unwrap_or_default().to_string()
}

fn rid(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

/// A provider's 429 with `retry-after: secs` and an OpenAI-shaped error `message`.
fn too_many_requests(secs: u64, message: &str) -> Reply {
    Reply::Raw {
        status: 429,
        headers: vec![
            ("content-type", "application/json".into()),
            ("retry-after", secs.to_string()),
        ],
        body: Bytes::from(json!({"error": {"message": message}}).to_string()),
    }
}

async fn provider_health(gw: &TestGateway) -> Value {
    let v: Value = gw.get("/api/providers/health").await.json().await.unwrap();
    v["providers"][0].clone()
}

#[tokio::test]
async fn a_backend_killed_under_load_costs_no_request_started_after_the_kill() {
    let a = MockUpstream::openai_like().await;
    let b = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&pool_config(&[a.url(), b.url()], TWO_KEYS, ""));
    let url = gw.url("/v1/chat/completions");
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let results: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, results) = (url.clone(), results.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..60 {
                let started = Instant::now();
                let status = c
                    .post(&url)
                    .json(&chat_body("m"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                results.lock().unwrap().push((started, status));
            }
        }));
    }
    // Kill `a` once traffic flows to both.
    poll_until("traffic on both backends", secs(20), || async {
        (a.received().len() >= 10 && b.received().len() >= 10).then_some(())
    })
    .await;
    a.kill();
    *killed_at.lock().unwrap() = Some(Instant::now());
    for c in clients {
        c.await.unwrap();
    }
    let kill = killed_at.lock().unwrap().unwrap();
    let results = results.lock().unwrap();
    let after: Vec<u16> = results
        .iter()
        .filter(|(t, _)| *t > kill)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        after.len() >= 50,
        "enough requests after the kill: {}",
        after.len()
    );
    assert!(
        after.iter().all(|s| *s == 200),
        "errors after the kill: {after:?}"
    );
    assert_eq!(results.len(), 240);
}

#[tokio::test]
async fn breaker_opens_fails_fast_then_closes_through_a_probe() {
    let ok = Arc::new(AtomicBool::new(false));
    let o = ok.clone();
    let up = MockUpstream::start(move |_| {
        if o.load(Ordering::SeqCst) {
            Reply::Json(200, upstream::chat_completion("m", "ok"))
        } else {
            Reply::Json(
                500,
                json!({"error": {"message": "boom", "type": "server_error"}}),
            )
        }
    })
    .await;
    let cfg = pool_config(
        &[up.url()],
        TWO_KEYS,
        "    breaker: { consecutive_failures: 2, open_seconds: 3, max_open_seconds: 6 }",
    );
    let gw = TestGateway::start(&cfg);
    for _ in 0..2 {
        let r = gw.chat("m").await;
        assert_eq!(r.status(), 500, "the only backend's 5xx is the answer");
        assert_eq!(r.headers()["x-should-retry"], "false");
    }
    let h = provider_health(&gw).await;
    assert_eq!(h["backends"][0]["breaker"]["state"], "open");
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-should-retry"], "false");
    let rid = rid(&r);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "no_healthy_upstream"
    );
    assert_eq!(up.received().len(), 2, "no attempt against an open breaker");
    assert_eq!(gw.access_entry(&rid).await["attempts"], 0, "fails fast");

    ok.store(true, Ordering::SeqCst);
    poll_until("the breaker to let a probe through", secs(10), || async {
        let status = gw.chat("m").await.status();
        assert!(status == 200 || status == 503, "{status}");
        (status == 200).then_some(())
    })
    .await;
    let h = provider_health(&gw).await;
    assert_eq!(h["backends"][0]["breaker"]["state"], "closed");
    assert_eq!(gw.chat("m").await.status(), 200);
}

#[tokio::test]
async fn health_checks_take_a_backend_out_and_bring_it_back() {
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let up = MockUpstream::start_all(move |r| {
        if r.is_probe() && d.load(Ordering::SeqCst) {
            Reply::Json(503, json!({}))
        } else if r.is_probe() {
            Reply::Json(200, json!({"object": "list", "data": []}))
        } else {
            Reply::Json(200, upstream::chat_completion("m", "ok"))
        }
    })
    .await;
    let gw = TestGateway::start(&pool_config(
        &[up.url()],
        TWO_KEYS,
        "    headers: { x-proxy-token: pt-1 }",
    ));
    assert_eq!(gw.chat("m").await.status(), 200);
    let probe = up.probes().into_iter().next().expect("probed at start");
    assert_eq!(probe.method, "GET");
    assert_eq!(probe.path, "/v1/models");
    assert!(
        auth(&probe).starts_with("Bearer sk-"),
        "probes carry a usable key"
    );
    assert_eq!(
        probe.header("x-proxy-token"),
        Some("pt-1"),
        "and the provider's configured headers, as traffic does"
    );

    down.store(true, Ordering::SeqCst);
    poll_until("the backend to be taken out", secs(10), || async {
        (gw.chat("m").await.status() != 200).then_some(())
    })
    .await;
    let ready: Value = gw.get("/ready").await.json().await.unwrap();
    assert_eq!(ready["unservable_models"], json!(["m"]));
    down.store(false, Ordering::SeqCst);
    poll_until("the backend to come back", secs(10), || async {
        (gw.chat("m").await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_429_moves_traffic_to_the_other_key_for_free_and_back_after_the_cooldown() {
    let limited = Arc::new(AtomicBool::new(true));
    // The provider's Retry-After: an hour at first, so that nothing below can outlast it.
    let hint = Arc::new(AtomicU64::new(3600));
    let (l, h) = (limited.clone(), hint.clone());
    let up = MockUpstream::start(move |r| {
        if auth(r) == "Bearer sk-one" && l.load(Ordering::SeqCst) {
            too_many_requests(h.load(Ordering::SeqCst), "rate limited")
        } else {
            Reply::Json(200, upstream::chat_completion("m", &auth(r)))
        }
    })
    .await;
    // One attempt in the budget: rotating keys must not spend it.
    let config = pool_config(&[up.url()], TWO_KEYS, "    retry: { max_attempts: 1 }");
    let gw = TestGateway::start(&config);
    let mut attempts = Vec::new();
    for _ in 0..6 {
        let r = gw.chat("m").await;
        assert_eq!(r.status(), 200);
        attempts.push(
            r.headers()["x-ultra-attempts"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Bearer sk-two");
    }
    let used: Vec<String> = up.received().iter().map(auth).collect();
    assert_eq!(
        used.iter().filter(|a| *a == "Bearer sk-one").count(),
        1,
        "one 429, then the key rests: {used:?}"
    );
    assert!(attempts.contains(&"2".to_string()), "{attempts:?}");
    let keys = provider_health(&gw).await["keys"].clone();
    assert_eq!(keys[0]["id"], "one");
    assert_eq!(keys[0]["state"], "cooling");
    assert!(keys[0]["cooling_seconds"].as_f64().unwrap() > 3000.0);
    assert!(
        !keys.to_string().contains("sk-one"),
        "key values never appear"
    );
    drop(gw);

    // A short Retry-After: the key comes back by itself once it has passed.
    hint.store(1, Ordering::SeqCst);
    let gw = TestGateway::start(&config);
    poll_until("a 429 for key one", secs(10), || async {
        assert_eq!(gw.chat("m").await.status(), 200);
        (provider_health(&gw).await["keys"][0]["state"] == "cooling").then_some(())
    })
    .await;
    limited.store(false, Ordering::SeqCst);
    poll_until("the key to come back", secs(10), || async {
        (provider_health(&gw).await["keys"][0]["state"] == "active").then_some(())
    })
    .await;
    let before = up.received().len();
    for _ in 0..4 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    let used: Vec<String> = up.received()[before..].iter().map(auth).collect();
    assert!(
        used.contains(&"Bearer sk-one".to_string()),
        "back after its cooldown: {used:?}"
    );
}

#[tokio::test]
async fn a_401_key_is_disabled_and_traffic_stays_on_the_good_one() {
    let up = MockUpstream::start_all(|r| {
        if auth(r) == "Bearer sk-one" {
            Reply::Json(401, json!({"error": {"message": "Incorrect API key provided: sk-one***", "type": "invalid_request_error"}}))
        } else if r.is_probe() {
            Reply::Json(200, json!({"object": "list", "data": []}))
        } else {
            Reply::Json(200, upstream::chat_completion("m", "ok"))
        }
    })
    .await;
    let cfg = pool_config(&[up.url()], TWO_KEYS, "    retry: { max_attempts: 1 }")
        .replace(FAST_HEALTH, "health_check: { enabled: false }");
    let gw = TestGateway::start(&cfg);
    for _ in 0..6 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    let used: Vec<String> = up.received().iter().map(auth).collect();
    assert_eq!(
        used.iter().filter(|a| *a == "Bearer sk-one").count(),
        1,
        "{used:?}"
    );
    let keys = provider_health(&gw).await["keys"].clone();
    assert_eq!(keys[0]["state"], "disabled");
    assert_eq!(keys[0]["disabled_reason"], "unauthorized");
    assert_eq!(keys[0]["last_status"], 401);
    assert!(!gw.all_output().contains("sk-one"), "{}", gw.all_output());
}

#[tokio::test]
async fn every_key_cooling_gives_429_with_the_soonest_retry_after() {
    let up = MockUpstream::start(|_| too_many_requests(7, "slow down")).await;
    let gw = TestGateway::start(&pool_config(&[up.url()], TWO_KEYS, ""));
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        after, 7,
        "rounded up, so a client waiting that long finds a key back"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "provider_rate_limited");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(up.received().len(), 2, "each key tried once");
    // While both rest, nothing is sent.
    assert_eq!(gw.chat("m").await.status(), 429);
    assert_eq!(up.received().len(), 2);
    // Keys that only rest do not make the gateway unready.
    let ready = gw.get("/ready").await;
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}

#[tokio::test]
async fn a_keyless_providers_429_reaches_the_client_with_its_retry_after() {
    let up = MockUpstream::start(|_| too_many_requests(3, "too many requests")).await;
    let gw = TestGateway::start(&pool_config(&[up.url()], "[]", ""));
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(r.headers()["x-ultra-attempts"], "1", "nothing to rotate");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "too many requests");
}

fn body_of_size(size: usize, model: &str) -> String {
    let head = r#"{"messages":[{"role":"user","content":""#;
    let tail = format!(r#""}}],"model":"{model}"}}"#);
    let filler = "x".repeat(size.saturating_sub(head.len() + tail.len()));
    format!("{head}{filler}{tail}")
}

#[tokio::test]
async fn fallback_to_the_next_provider_renames_the_model_for_small_and_large_bodies() {
    let broken =
        MockUpstream::start(|_| Reply::Json(502, json!({"error": {"message": "bad gateway"}})))
            .await;
    let good = MockUpstream::openai_like().await;
    let cfg = format!(
        "server: {{ grace_period_seconds: 1 }}
logging: {{ level: warn }}
providers:
  first: {{ kind: openai, endpoints: [{}], keys: [{{ id: a, value: sk-a }}], {FAST_HEALTH} }}
  second: {{ kind: openai-compatible, endpoints: ['{}/openai/v1'], keys: [{{ id: b, value: sk-b }}], {FAST_HEALTH} }}
models:
  - {{ id: m, targets: [{{ provider: first, model: first-name }}, {{ provider: second, model: second-name }}] }}
",
        broken.url(),
        good.url()
    );
    let gw = TestGateway::start(&cfg);
    for (i, size) in [1024, 8 * 1024 * 1024].into_iter().enumerate() {
        let body = body_of_size(size, "m");
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "size {size}");
        assert_eq!(r.headers()["x-ultra-provider"], "second");
        assert_eq!(r.headers()["x-ultra-attempts"], "2");
        let got = &good.received()[i];
        assert_eq!(got.path, "/openai/v1/chat/completions");
        assert_eq!(got.header("authorization"), Some("Bearer sk-b"));
        let expected = body.replace(r#""model":"m"}"#, r#""model":"second-name"}"#);
        assert!(got.body == expected.as_bytes(), "size {size}: body differs");
        let tried = &broken.received()[i];
        let expected_first = body.replace(r#""model":"m"}"#, r#""model":"first-name"}"#);
        assert!(
            tried.body == expected_first.as_bytes(),
            "size {size}: first attempt body differs"
        );
        let entry = gw.access_entry(&rid(&r)).await;
        assert_eq!(entry["attempts"], 2);
        assert_eq!(entry["provider"], "second");
    }
    // Each attempt is timed under the provider that made it: the answering one under
    // `second`, and the failed one under `first` (time spent on it is not gateway overhead).
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ultra_upstream_duration_seconds_count{provider=\"second\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ultra_upstream_duration_seconds_count{provider=\"first\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_file_changed_on_disk_takes_effect() {
    let up = MockUpstream::start(|r| {
        if auth(r) == "Bearer sk-rotated" {
            Reply::Json(200, upstream::chat_completion("m", "ok"))
        } else {
            Reply::Json(401, json!({"error": {"message": "Incorrect API key"}}))
        }
    })
    .await;
    let cfg = pool_config(&[up.url()], "[{ id: filed, file: key.txt }]", "");
    let gw = TestGateway::start_with(&cfg, &[("key.txt", "sk-stale\n")], &[]);
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "provider_auth_failed"
    );
    std::fs::write(gw.dir.path().join("key.txt"), "sk-rotated\n").unwrap();
    poll_until("the new key file to be read", secs(10), || async {
        (gw.chat("m").await.status() == 200).then_some(())
    })
    .await;
}

fn stream_request() -> Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// An SSE response read as it arrives.
struct SseBody {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    text: String,
}

impl SseBody {
    fn new(r: reqwest::Response) -> SseBody {
        SseBody {
            body: Box::pin(r.bytes_stream()),
            text: String::new(),
        }
    }

    /// Reads until the text so far contains `needle` (10 s at most).
    async fn until(&mut self, needle: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.text.contains(needle) {
                let chunk = self.body.next().await.expect("stream open").unwrap();
                self.text.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} within 10 s; got {:?}", self.text));
    }

    /// Reads to the end (10 s at most) and returns every event.
    async fn events(mut self) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(c)) = self.body.next().await {
                self.text.push_str(&String::from_utf8_lossy(&c));
            }
        })
        .await
        .expect("stream ended within 10 s");
        self.text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect()
    }
}

async fn sse_events(r: reqwest::Response) -> Vec<String> {
    SseBody::new(r).events().await
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_byte_ends_with_an_error_event() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = Mutex::new(Some(rx));
    let up = MockUpstream::start(move |_| {
        Reply::Stream(rx.lock().unwrap().take().expect("one request"))
    })
    .await;
    let gw = TestGateway::start(&pool_config(&[up.url()], TWO_KEYS, ""));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tx.send(Bytes::from_static(b"data: {\"n\":1}\n\n")).unwrap();
    tx.send(Bytes::from_static(b"data: {\"n\":2}\n\n")).unwrap();
    let mut body = SseBody::new(r);
    body.until("{\"n\":2}").await;
    up.kill();
    let events = body.events().await;
    assert_eq!(events[0], "data: {\"n\":1}");
    assert_eq!(events[1], "data: {\"n\":2}");
    let last: Value =
        serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{events:?}");
    assert_eq!(last["error"]["code"], "bad_upstream_response");
    drop(tx);
}

#[tokio::test]
async fn timeouts_first_byte_between_chunks_and_total() {
    let mode = Arc::new(AtomicUsize::new(3));
    let m = mode.clone();
    let up = MockUpstream::start(move |_| match m.load(Ordering::SeqCst) {
        3 => Reply::Json(200, json!({"id": "ok", "choices": []})),
        0 => Reply::Hang,
        1 => {
            // One chunk, then silence.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            tx.send(Bytes::from_static(b"data: {\"n\":0}\n\n")).unwrap();
            std::mem::forget(tx);
            Reply::Stream(rx)
        }
        _ => Reply::Endless {
            interval: Duration::from_millis(100),
        },
    })
    .await;
    let cfg = pool_config(
        &[up.url()],
        TWO_KEYS,
        "    timeouts: { first_byte_ms: 400, between_chunks_ms: 400, total_ms: 1500 }\n    retry: { max_attempts: 1 }",
    );
    let gw = TestGateway::start(&cfg);

    // A first answer leaves a pooled connection; the hang then happens on that reused
    // connection, which must still count as a timeout (not a stale connection to retry).
    assert_eq!(gw.chat("m").await.status(), 200);
    mode.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_timeout"
    );
    assert_eq!(
        up.received().len(),
        2,
        "max_attempts 1: the timed-out request was not sent again"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "first byte limit: {:?}",
        started.elapsed()
    );

    mode.store(1, Ordering::SeqCst);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_events(r).await;
    assert_eq!(events[0], "data: {\"n\":0}");
    let last: Value =
        serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_timeout",
        "between chunks: {events:?}"
    );

    mode.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    let last: Value =
        serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_timeout",
        "total: {events:?}"
    );
    assert!(
        events.len() > 5,
        "chunks flowed until the total ran out: {}",
        events.len()
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A gap limit much shorter than the first-byte limit holds from the first chunk on: a stream
/// that stalls after one event is cut after `between_chunks_ms`, not `first_byte_ms`.
#[tokio::test]
async fn a_stall_after_the_first_event_is_cut_at_the_gap_limit_not_the_first_byte_one() {
    let up = MockUpstream::start(move |_| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        tx.send(Bytes::from_static(b"data: {\"n\":0}\n\n")).unwrap();
        std::mem::forget(tx);
        Reply::Stream(rx)
    })
    .await;
    let cfg = pool_config(
        &[up.url()],
        TWO_KEYS,
        "    timeouts: { first_byte_ms: 20000, between_chunks_ms: 300, total_ms: 60000 }\n    retry: { max_attempts: 1 }",
    );
    let gw = TestGateway::start(&cfg);
    let started = Instant::now();
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_events(r).await;
    let elapsed = started.elapsed();
    assert_eq!(events[0], "data: {\"n\":0}");
    let last: Value =
        serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{events:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "cut after the 300 ms gap, not the 20 s first-byte limit: {elapsed:?}"
    );
}

#[tokio::test]
async fn consistent_strategy_keeps_a_caller_on_one_backend() {
    let a = MockUpstream::openai_like().await;
    let b = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&pool_config(
        &[a.url(), b.url()],
        TWO_KEYS,
        "    strategy: consistent",
    ));
    for _ in 0..10 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    let (na, nb) = (a.received().len(), b.received().len());
    assert_eq!(na + nb, 10);
    assert!(na == 0 || nb == 0, "one caller, one backend: {na} / {nb}");
}

#[tokio::test]
async fn provider_health_is_for_admins_and_shows_ids_never_keys() {
    use crate::common::auth::*;
    let up = MockUpstream::openai_like().await;
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_with(&auth_config(&up.url(), ""), &files, &[]);
    let admin_health = || async {
        let r = gw
            .get_as("/api/providers/health", &hs_token("root", &["admin"]))
            .await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let v = admin_health().await;
    assert!(
        v["providers"][0]["backends"][0]["latency_ms"].is_null(),
        "probes do not count as latency: {v}"
    );
    let r = gw
        .get_as("/api/providers/health", &hs_token("u", &["user"]))
        .await;
    assert_eq!(r.status(), 403);
    let r = gw
        .get_as("/api/providers/health", &hs_token("root", &["admin"]))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let text = r.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY));
    let v: Value = serde_json::from_str(&text).unwrap();
    let p = &v["providers"][0];
    assert_eq!(p["name"], "up");
    assert_eq!(p["kind"], "openai");
    assert_eq!(p["usable"], true);
    assert_eq!(p["strategy"], "round_robin");
    let b = &p["backends"][0];
    assert_eq!(b["address"], up.addr.to_string());
    assert_eq!(b["healthy"], true);
    assert_eq!(b["breaker"]["state"], "closed");
    assert_eq!(p["keys"][0]["id"], "k1");
    assert_eq!(p["keys"][0]["state"], "active");

    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(hs_token("u", &["user"]))
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v = admin_health().await;
    assert!(
        v["providers"][0]["backends"][0]["latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "a request measured its time to first byte: {v}"
    );
}

#[tokio::test]
async fn provider_error_bodies_echoing_a_key_are_scrubbed() {
    let up = MockUpstream::start(|r| {
        let key = auth(r).trim_start_matches("Bearer ").to_string();
        Reply::Json(
            400,
            json!({"error": {"message": format!("Invalid request for key {key} (also sk-proj-abc***wxyz)"), "type": "invalid_request_error"}}),
        )
    })
    .await;
    let gw = TestGateway::start(&pool_config(&[up.url()], TWO_KEYS, ""));
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 400);
    let declared = r.headers().get("content-length").cloned();
    let text = r.text().await.unwrap();
    if let Some(n) = declared {
        assert_eq!(
            n.to_str().unwrap(),
            text.len().to_string(),
            "a declared length is right"
        );
    }
    assert!(
        !text.contains("sk-one") && !text.contains("sk-two"),
        "{text}"
    );
    assert!(!text.contains("abc***wxyz"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sk-***"),
        "{text}"
    );
}
