//! Fault injection against the real binary: a provider that resets, stalls or answers garbage
//! at each phase of a response. Each case checks what the client is told and that the gateway
//! goes on serving a healthy model next to the broken one. (Covered elsewhere: connection
//! refused, `errors::dead_provider_*`; an unresolvable host, `errors::no_usable_provider_*`;
//! stalls before the first byte and between stream events, `pools::timeouts_*`; a stream reset
//! after its first event, `pools::a_stream_that_breaks_*`; Redis outages, `quotas_redis`; a
//! full audit queue, `audit::full_audit_queue_*`.)

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the broken provider does once it has read a request.
#[derive(Clone, Copy)]
enum Fault {
    /// Closes with a TCP reset before answering anything.
    ResetBeforeAnswer,
    /// Sends these bytes, then resets.
    SendThenReset(&'static [u8]),
    /// Sends these bytes, then goes silent (keeping the connection open).
    SendThenStall(&'static [u8]),
    /// Sends these bytes, then closes normally.
    SendThenClose(&'static [u8]),
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, bytes) = match self {
            Fault::ResetBeforeAnswer => return f.write_str("reset before answering"),
            Fault::SendThenReset(b) => ("reset after", b),
            Fault::SendThenStall(b) => ("stall after", b),
            Fault::SendThenClose(b) => ("close after", b),
        };
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]);
        write!(f, "{what} {} bytes ({head:?}...)", bytes.len())
    }
}

/// A provider scripted to fail as `fault` says on every request (health-check probes get a
/// 200, so the failure is the request's alone).
async fn broken_provider(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, fault));
        }
    });
    format!("http://{addr}")
}

async fn serve(mut s: TcpStream, fault: Fault) {
    let Some(request) = read_request(&mut s).await else {
        return;
    };
    if request.contains("ultra-gateway-health-check") {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    match fault {
        Fault::ResetBeforeAnswer => reset(s),
        Fault::SendThenReset(bytes) => {
            let _ = s.write_all(bytes).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(s);
        }
        Fault::SendThenStall(bytes) => {
            let _ = s.write_all(bytes).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Fault::SendThenClose(bytes) => {
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
        }
    }
}

/// Reads a request's header and its `content-length` body; lower-cased header text.
async fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16384];
    let header_end = loop {
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&seen[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while seen.len() < header_end + length {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// SO_LINGER 0: the close is a TCP reset, as from a crashed process or a middlebox.
#[allow(deprecated)] // tokio deprecates it for the blocking close it causes: here, no wait.
fn reset(s: TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A gateway with `broken` (the faulty provider, short timeouts, no health checks so that the
/// first request meets the fault) and `good` (a healthy mock upstream).
async fn start(fault: Fault) -> (TestGateway, MockUpstream) {
    let url = broken_provider(fault).await;
    let good = MockUpstream::openai_like().await;
    let cfg = format!(
        "logging: {{ level: warn }}
providers:
  bad:
    kind: openai
    endpoints: [{url}]
    keys: [{{ id: k1, value: {UPSTREAM_KEY} }}]
    health_check: {{ enabled: false }}
    timeouts: {{ connect_ms: 500, first_byte_ms: 800, between_chunks_ms: 800, total_ms: 5000 }}
  ok: {{ kind: openai, endpoints: [{}], keys: [{{ id: k2, value: {UPSTREAM_KEY} }}] }}
models:
  - {{ id: broken, targets: [{{ provider: bad }}] }}
  - {{ id: healthy, targets: [{{ provider: ok }}] }}
",
        good.url()
    );
    (TestGateway::start(&cfg), good)
}

/// The healthy model is still served, quickly, after the fault.
async fn still_serving(gw: &TestGateway) {
    let t = Instant::now();
    let r = gw.chat("healthy").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["object"],
        "chat.completion"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// The fault comes before the client has seen a byte: an OpenAI-shaped error with `code`.
async fn expect_error(fault: Fault, status: u16, code: &str) {
    let (gw, _good) = start(fault).await;
    let t = Instant::now();
    let r = gw.chat("broken").await;
    assert_eq!(r.status().as_u16(), status, "{fault:?}");
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{fault:?}: {v}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "{fault:?}: {:?}",
        t.elapsed()
    );
    still_serving(&gw).await;
}

/// The fault comes after the header was relayed: the client gets the status, then a body that
/// ends early (its length or its chunked framing unfinished), never a hang.
async fn expect_cut_body(fault: Fault) {
    let (gw, _good) = start(fault).await;
    let r = tokio::time::timeout(Duration::from_secs(4), gw.chat("broken"))
        .await
        .expect("the header came");
    assert_eq!(r.status(), 200, "{fault:?}");
    let body = tokio::time::timeout(Duration::from_secs(4), r.bytes())
        .await
        .expect("the body ended instead of hanging");
    assert!(
        body.is_err(),
        "{fault:?}: a cut body reads as an error, got {body:?}"
    );
    still_serving(&gw).await;
}

#[tokio::test]
async fn a_reset_before_any_byte_is_502() {
    expect_error(Fault::ResetBeforeAnswer, 502, "bad_upstream_response").await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_header_is_502() {
    let half = b"HTTP/1.1 200 OK\r\nContent-Type: application/js";
    expect_error(Fault::SendThenReset(half), 502, "bad_upstream_response").await;
}

#[tokio::test]
async fn a_stall_in_the_middle_of_the_header_is_504() {
    let half = b"HTTP/1.1 200 OK\r\nContent-Type: application/js";
    expect_error(Fault::SendThenStall(half), 504, "upstream_timeout").await;
}

#[tokio::test]
async fn garbage_instead_of_a_response_is_502() {
    for garbage in [
        &b"\x00\x01\x02 this is not HTTP\r\n\r\n"[..],
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ] {
        expect_error(Fault::SendThenClose(garbage), 502, "bad_upstream_response").await;
    }
}

/// Over Pingora's limit for a response header (1 MiB); below it, a provider's header is
/// relayed as it is.
#[tokio::test]
async fn an_oversized_response_header_is_502() {
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 10));
    big.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    expect_error(Fault::SendThenClose(big), 502, "bad_upstream_response").await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_a_sized_body_cuts_it() {
    let partial =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":\"x\",";
    expect_cut_body(Fault::SendThenReset(partial)).await;
}

#[tokio::test]
async fn a_stall_in_the_middle_of_a_body_is_cut_at_the_gap_limit() {
    let partial =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":\"x\",";
    let t = Instant::now();
    expect_cut_body(Fault::SendThenStall(partial)).await;
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn truncated_or_malformed_chunked_encoding_cuts_the_body() {
    // The last chunk never comes: the provider closes after a first chunk.
    expect_cut_body(Fault::SendThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",
    ))
    .await;
    // A chunk size that is not hexadecimal.
    expect_cut_body(Fault::SendThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n1}\r\n0\r\n\r\n",
    ))
    .await;
}

/// A stream that stalls in the middle of an event, and one reset in the middle of an event:
/// the client gets the events before, then the gateway's SSE error event, and the stream ends.
#[tokio::test]
async fn a_stream_broken_in_the_middle_of_an_event_ends_with_an_error_event() {
    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    // A whole event, then a chunk announcing 16 bytes of which 14 come.
    let body = format!("{:x}\r\n{event}\r\n10\r\ndata: {{\"choic", event.len());
    let script: &'static [u8] = Box::leak([HEAD, body.as_bytes()].concat().into_boxed_slice());
    for fault in [Fault::SendThenStall(script), Fault::SendThenReset(script)] {
        let (gw, _good) = start(fault).await;
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&serde_json::json!({"model": "broken", "messages": [], "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = tokio::time::timeout(Duration::from_secs(4), r.text())
            .await
            .expect("the stream ended")
            .unwrap_or_default();
        assert!(text.contains("\"content\":\"a\""), "{fault:?}: {text}");
        assert!(
            text.contains("\"error\""),
            "{fault:?}: no error event in {text}"
        );
        still_serving(&gw).await;
    }
}

fn audit_config(upstream: &str, audit: &str) -> String {
    openai_config(upstream).replace(
        "logging: { level: warn }",
        &format!("logging: {{ level: warn }}\naudit: {audit}"),
    )
}

async fn dropped_audit_lines(gw: &TestGateway) -> f64 {
    let text = gw.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ultra_audit_dropped_total ")?.parse().ok())
        .expect("ultra_audit_dropped_total")
}

/// An audit log on a full disk (`/dev/full`: every write fails), `on_overflow: drop`: requests
/// are served, the lost lines counted, and the operational log says why once.
#[tokio::test]
async fn an_audit_log_on_a_full_disk_drops_and_counts_its_lines() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&audit_config(&up.url(), "{ path: /dev/full }"));
    for _ in 0..20 {
        assert_eq!(gw.chat("gpt-4o").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poll_until("dropped audit lines counted", secs(5), || async {
        (dropped_audit_lines(&gw).await > 0.0).then_some(())
    })
    .await;
    let said = gw
        .all_output()
        .matches("cannot write to a log destination")
        .count();
    assert_eq!(said, 1, "{}", gw.all_output());
}

/// The same with `on_overflow: reject`: once the writes are known to fail, allowed requests are
/// refused with `503 audit_unavailable`: none is served without its audit line.
#[tokio::test]
async fn an_audit_log_on_a_full_disk_refuses_requests_when_asked_to() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&audit_config(
        &up.url(),
        "{ path: /dev/full, on_overflow: reject }",
    ));
    // The first line's write is what shows the disk is full.
    let _ = gw.chat("gpt-4o").await;
    let r = poll_until("requests refused", secs(5), || async {
        let r = gw.chat("gpt-4o").await;
        (r.status() == 503).then_some(r)
    })
    .await;
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "audit_unavailable");
    assert!(dropped_audit_lines(&gw).await > 0.0);
    // Local endpoints that need no audit line go on answering.
    assert_eq!(gw.get("/health").await.status(), 200);
}

/// An audit file that cannot be opened stops the start with a clear message.
#[test]
fn an_audit_file_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ultra.yaml");
    std::fs::write(
        &path,
        "audit: { path: /nonexistent-dir/audit.log }\nproviders: { m: { kind: mock } }\nmodels: [{ id: m, targets: [{ provider: m }] }]\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::common::gateway::binary())
        .args(["run", "-c"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open audit log /nonexistent-dir/audit.log"),
        "{err}"
    );
}

/// Has Redis drop every client connection (the gateway's included), as a failover or a
/// `timeout` setting would, without going down.
async fn drop_redis_clients(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nTYPE\r\n$6\r\nnormal\r\n")
        .await
        .unwrap();
    let mut reply = [0u8; 64];
    let n = s.read(&mut reply).await.unwrap();
    let killed: u32 = std::str::from_utf8(&reply[1..n])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        reply[0] == b':' && killed >= 1,
        "the gateway's connection was killed"
    );
}

/// Redis dropping its connections in the middle of a burst: every answer is a success or the
/// documented `503 quota_unavailable` (`on_store_error: deny`), none hangs or is another error,
/// and once Redis stays, requests are counted again.
#[tokio::test]
async fn redis_dropping_connections_under_load() {
    let redis = crate::common::redis::RedisServer::start();
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config_for(
        "openai",
        &up.url(),
        &crate::quotas_redis::redis_rules(&redis.url(), "deny", 1_000_000),
    ));
    assert_eq!(gw.chat("gpt-4o-mini").await.status(), 200);
    // One client for the burst: building one per request (TLS roots) would block this thread.
    let http = client();
    let url = gw.url("/v1/chat/completions");
    let burst = async {
        let sends = (0..240).map(|i| {
            let (http, url) = (&http, &url);
            async move {
                tokio::time::sleep(Duration::from_millis(i * 5)).await;
                let t = Instant::now();
                let send = http.post(url).json(&chat_body("gpt-4o-mini")).send();
                let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), send).await else {
                    return (0, format!("no answer in {:?} (sent at {i})", t.elapsed()));
                };
                let status = r.status().as_u16();
                let code = if status == 200 {
                    String::new()
                } else {
                    r.json::<Value>().await.unwrap()["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                (status, code)
            }
        });
        futures_util::future::join_all(sends).await
    };
    let chaos = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            drop_redis_clients(redis.port).await;
        }
    };
    let (answers, ()) = tokio::join!(burst, chaos);
    let served = answers.iter().filter(|(s, _)| *s == 200).count();
    for (status, code) in &answers {
        assert!(
            *status == 200 || (*status == 503 && code == "quota_unavailable"),
            "{status} {code}"
        );
    }
    // A dropped connection is reconnected and the command tried again: it costs no request
    // the back-off.
    assert!(
        served * 10 >= answers.len() * 9,
        "{served} of {} served: {}",
        answers.len(),
        gw.all_output()
    );
    poll_until("counted again", secs(10), || async {
        let r = gw.chat("gpt-4o-mini").await;
        (r.status() == 200 && r.headers().contains_key("x-ratelimit-remaining-requests"))
            .then_some(())
    })
    .await;
}
