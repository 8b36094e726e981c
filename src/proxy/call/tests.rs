//! `call::send` against real loopback upstreams: an answer with its usage, a rate-limited key
//! rotated for free, a dead first target falling over to the next, a 5xx moved past, every
//! attempt failing, and a provider too slow for its first byte.

use super::*;
use crate::test_support::resolved_runtime;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the upstream answers to its n-th request (from 0) carrying this authorization header.
type Handler = dyn Fn(usize, &str) -> (u16, &'static str, Duration) + Send + Sync;

/// A plain HTTP/1.1 upstream on a loopback port; each answer closes its connection.
async fn upstream(handler: Arc<Handler>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (handler, count) = (handler.clone(), count.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The header, then the body by its length.
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization:"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (status, body, delay) = handler(n, &auth);
                tokio::time::sleep(delay).await;
                // TRUNCATED: a header promising more body than is sent before the close.
                let declared = if body == TRUNCATED { 1000 } else { body.len() };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n{body}"
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

const TRUNCATED: &str = r#"{"choices":"#;

const OK: &str = r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;

fn config(a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        r#"
providers:
  a:
    kind: openai
    endpoints: ["http://{a}"]
    keys: [{{ id: k1, value: sk-aaaaaaaa1 }}, {{ id: k2, value: sk-aaaaaaaa2 }}]
    health_check: {{ enabled: false }}
    retry: {{ max_attempts: 2 }}
    timeouts: {{ first_byte_ms: 300 }}
{extra}
  b:
    kind: openai
    endpoints: ["http://{b}"]
    keys: [{{ id: kb, value: sk-bbbbbbbb1 }}]
    health_check: {{ enabled: false }}
models:
  - id: m
    targets: [{{ provider: a }}, {{ provider: b }}]
"#
    )
}

async fn send_m(rt: &Runtime) -> Answer {
    send_m_by(rt, None).await
}

async fn send_m_by(rt: &Runtime, deadline: Option<tokio::time::Instant>) -> Answer {
    let m = rt.registry.get(rt.registry.lookup("m").unwrap());
    let now = tokio::time::Instant::now();
    let plan = Plan::new(rt, m.id.clone(), m.targets.clone(), Arc::from("alice"), now);
    let body = |_: &crate::registry::Target| Bytes::from_static(br#"{"model":"m"}"#);
    let call = Call {
        plan,
        path: "/v1/chat/completions",
        body_for: &body,
        request_id: "rid",
        max_body: 1 << 20,
        deadline,
    };
    send(rt, &Connector::new(None), call).await
}

fn always(status: u16, body: &'static str) -> Arc<Handler> {
    Arc::new(move |_, _| (status, body, Duration::ZERO))
}

#[tokio::test]
async fn an_answer_comes_back_with_its_usage() {
    let (a, seen_a) = upstream(always(200, OK)).await;
    let (b, _) = upstream(always(200, OK)).await;
    let rt = resolved_runtime(&config(a, b, "")).await;
    let ans = send_m(&rt).await;
    assert_eq!((ans.status, ans.attempts), (200, 1));
    assert_eq!(ans.provider.as_deref(), Some("a"));
    assert_eq!(ans.usage.map(|u| (u.input, u.output)), Some((7, 3)));
    assert!(ans.error.is_none());
    assert_eq!(&ans.body[..], OK.as_bytes());
    assert_eq!(seen_a.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rate_limited_key_is_rotated_for_free() {
    let first_key_limited: Arc<Handler> = Arc::new(|_, auth| {
        if auth.ends_with("sk-aaaaaaaa1") {
            (429, "{}", Duration::ZERO)
        } else {
            (200, OK, Duration::ZERO)
        }
    });
    // Round-robin may start on either key: two calls see the 429 at least once.
    let (a, _) = upstream(first_key_limited).await;
    let (b, seen_b) = upstream(always(200, OK)).await;
    let rt = resolved_runtime(&config(a, b, "")).await;
    for _ in 0..2 {
        let ans = send_m(&rt).await;
        assert_eq!(ans.status, 200);
        assert_eq!(
            ans.provider.as_deref(),
            Some("a"),
            "another key, same provider"
        );
    }
    let view = rt
        .provider(rt.registry.get(rt.registry.lookup("m").unwrap()).targets[0].provider)
        .keys
        .view(tokio::time::Instant::now());
    assert_eq!(view[0].state, "cooling");
    assert_eq!(seen_b.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_dead_first_target_falls_over_to_the_next() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (b, seen_b) = upstream(always(200, OK)).await;
    let rt = resolved_runtime(&config(dead, b, "")).await;
    let ans = send_m(&rt).await;
    assert_eq!((ans.status, ans.attempts), (200, 2));
    assert_eq!(ans.provider.as_deref(), Some("b"));
    assert_eq!(seen_b.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_5xx_moves_on_and_the_last_one_is_relayed() {
    let (a, _) = upstream(always(503, r#"{"error":"busy"}"#)).await;
    let (b, _) = upstream(always(200, OK)).await;
    let rt = resolved_runtime(&config(a, b, "")).await;
    let ans = send_m(&rt).await;
    assert_eq!((ans.status, ans.provider.as_deref()), (200, Some("b")));
    // With both providers failing, the budget (2) runs out and the second 5xx is relayed.
    let (b2, _) = upstream(always(502, r#"{"error":"down"}"#)).await;
    let rt = resolved_runtime(&config(a, b2, "")).await;
    let ans = send_m(&rt).await;
    assert_eq!((ans.status, ans.attempts), (502, 2));
    assert!(ans.error.is_none(), "the provider's own answer");
}

#[tokio::test]
async fn a_provider_too_slow_for_its_first_byte_times_out() {
    let slow: Arc<Handler> = Arc::new(|_, _| (200, OK, Duration::from_secs(2)));
    let (a, _) = upstream(slow.clone()).await;
    let (b, _) = upstream(slow).await;
    let cfg = config(a, b, "").replace(
        "  b:\n    kind: openai\n",
        "  b:\n    kind: openai\n    timeouts: { first_byte_ms: 300 }\n",
    );
    let rt = resolved_runtime(&cfg).await;
    let started = Instant::now();
    let ans = send_m(&rt).await;
    assert_eq!(ans.status, 504);
    assert!(matches!(
        ans.error,
        Some(GatewayError::UpstreamTimeout { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_answer_that_breaks_after_its_header_is_not_asked_again() {
    let (a, seen_a) = upstream(always(200, TRUNCATED)).await;
    let (b, seen_b) = upstream(always(200, OK)).await;
    let rt = resolved_runtime(&config(a, b, "")).await;
    let ans = send_m(&rt).await;
    assert_eq!((ans.status, ans.attempts), (502, 1), "{ans:?}");
    assert!(matches!(ans.error, Some(GatewayError::BadUpstream { .. })));
    assert_eq!(seen_a.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen_b.load(Ordering::SeqCst),
        0,
        "the provider did the work once"
    );
}

#[tokio::test]
async fn the_call_keeps_to_its_deadline_and_says_what_it_tried() {
    let slow: Arc<Handler> = Arc::new(|_, _| (200, OK, Duration::from_secs(2)));
    let (a, _) = upstream(slow.clone()).await;
    let (b, _) = upstream(slow).await;
    // The providers' own first-byte timeout (300 ms for `a`) is longer than the deadline.
    let rt = resolved_runtime(&config(a, b, "")).await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
    let ans = send_m_by(&rt, Some(deadline)).await;
    assert_eq!(ans.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ans.attempts, 1);
    assert_eq!(ans.outcomes.len(), 1);
    assert_eq!(ans.provider.as_deref(), Some("a"));
}
