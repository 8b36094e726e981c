//! Client connections: the whole-header deadline, the idle keep-alive limit and the cap on open
//! connections (issue 13, finding 1). Slow clients are raw sockets that send a header a byte at
//! a time; normal clients must keep being served meanwhile.

use crate::common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(url: &str, server: &str) -> String {
    openai_config(url).replacen(
        "server: { grace_period_seconds: 1 }",
        &format!("server: {{ grace_period_seconds: 1, {server} }}"),
        1,
    )
}

/// Waits until the server closes `s` (EOF or reset); how long that took, or `None` if it did
/// not within `within`. Whatever the server sent first is ignored.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A slow client: the request line and part of a header, then one byte every `every` until the
/// server closes the connection (or `max` passes). How long the connection lived.
async fn trickle(addr: SocketAddr, every: Duration, max: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-a: ")
        .await
        .unwrap();
    while start.elapsed() < max {
        tokio::time::sleep(every).await;
        if s.write_all(b"a").await.is_err() {
            return Some(start.elapsed());
        }
        let mut probe = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            if matches!(r, Ok(0) | Err(_)) {
                return Some(start.elapsed());
            }
        }
    }
    None
}

/// One keep-alive GET on an open socket; the status, or `None` if the connection was closed.
async fn keepalive_get(s: &mut TcpStream, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(secs(10), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                return head.split(' ').nth(1)?.parse().ok();
            }
        }
    }
}

async fn metric(gw: &TestGateway, line_start: &str) -> f64 {
    let text = gw.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics"))
}

#[tokio::test]
async fn a_header_sent_a_byte_at_a_time_is_cut_at_the_header_deadline() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config(&up.url(), "header_read_timeout_seconds: 1"));
    let lived = trickle(gw.addr, Duration::from_millis(200), secs(10))
        .await
        .expect("the slow header was never cut");
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_millis(2500),
        "cut after {lived:?}, expected about 1 s"
    );
    let cut = metric(
        &gw,
        "ultra_connections_closed_total{reason=\"header_timeout\"}",
    )
    .await;
    assert!(cut >= 1.0, "header_timeout closes counted: {cut}");
    // Nothing of it is an error of the gateway's.
    assert!(!gw.all_output().contains("ERROR"), "{}", gw.all_output());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config(&up.url(), "header_read_timeout_seconds: 1"));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let lived = closed_within(&mut s, secs(10))
        .await
        .expect("a silent connection was never closed");
    assert!(
        lived >= Duration::from_millis(900),
        "closed after {lived:?}"
    );
}

#[tokio::test]
async fn a_slow_but_timely_header_and_a_long_request_are_not_cut() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config(&up.url(), "header_read_timeout_seconds: 2"));
    // A header that takes 1.2 s in all, within the 2 s deadline.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for part in [
        &b"GET /health HTTP/1.1\r\n"[..],
        b"Host: x\r\n",
        b"X-slow: 1\r\n",
        b"\r\n",
    ] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The deadline is the header's only: a request body that takes longer than it is fine.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let body = serde_json::to_vec(&chat_body("mini")).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    s.write_all(a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(b).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(secs(10), s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "keepalive_timeout_seconds: 1, header_read_timeout_seconds: 5",
    ));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keepalive_get(&mut s, "/health").await, Some(200));
    // Reused within the limit...
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(keepalive_get(&mut s, "/health").await, Some(200));
    // ...and closed once idle for longer.
    let lived = closed_within(&mut s, secs(10))
        .await
        .expect("an idle keep-alive connection was never closed");
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_millis(3000),
        "closed after {lived:?}, expected about 1 s"
    );
    let idle = metric(
        &gw,
        "ultra_connections_closed_total{reason=\"idle_timeout\"}",
    )
    .await;
    assert!(idle >= 1.0, "idle closes counted: {idle}");
}

#[tokio::test]
async fn normal_clients_are_served_while_slow_clients_hold_connections() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config(&up.url(), "header_read_timeout_seconds: 3"));
    let slow: Vec<_> = (0..300)
        .map(|_| tokio::spawn(trickle(gw.addr, Duration::from_millis(500), secs(20))))
        .collect();
    // Polled: on a loaded machine 300 connects take a while to be accepted.
    poll_until("300 slow connections open", secs(2), || async {
        (metric(&gw, "ultra_connections_open").await >= 300.0).then_some(())
    })
    .await;
    for _ in 0..20 {
        let start = Instant::now();
        let r = gw.chat("mini").await;
        assert_eq!(r.status(), 200);
        assert!(start.elapsed() < secs(2), "slow: {:?}", start.elapsed());
    }
    for s in slow {
        let lived = s.await.unwrap().expect("a slow client was never cut");
        assert!(lived < secs(6), "cut after {lived:?}");
    }
    // The count goes back down once they are gone.
    poll_until("the slow connections counted closed", secs(5), || async {
        (metric(&gw, "ultra_connections_open").await <= 2.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn beyond_max_connections_new_ones_are_refused_and_open_ones_still_served() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "max_connections: 10, header_read_timeout_seconds: 30",
    ));
    // An established keep-alive client, then slow clients up to the cap.
    let mut established = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keepalive_get(&mut established, "/health").await, Some(200));
    let mut slow = Vec::new();
    for _ in 0..9 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-a: ")
            .await
            .unwrap();
        slow.push(s);
    }
    poll_until("ten connections open", secs(5), || async {
        let mut s = TcpStream::connect(gw.addr).await.ok()?;
        // Refused connections are closed at once, without a byte.
        closed_within(&mut s, Duration::from_millis(500))
            .await
            .map(|_| ())
    })
    .await;
    // The established connection is still served, and sees the refusals counted.
    assert_eq!(keepalive_get(&mut established, "/health").await, Some(200));
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    established.write_all(req.as_bytes()).await.unwrap();
    let mut metrics = Vec::new();
    let mut chunk = [0u8; 65536];
    while !String::from_utf8_lossy(&metrics).contains("ultra_connections_refused_total ") {
        let n = tokio::time::timeout(secs(5), established.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
        metrics.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&metrics);
    let refused: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("ultra_connections_refused_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap();
    assert!(refused >= 1.0, "{refused}");
    assert!(text.contains("ultra_connections_open 10"), "{text}");
    let warned = gw.all_output();
    assert!(
        warned.contains("server.max_connections reached"),
        "{warned}"
    );
    // Once the slow ones leave, new connections are accepted again.
    drop(slow);
    poll_until("a new connection accepted", secs(5), || async {
        let r = gw.get("/health").await;
        (r.status() == 200).then_some(())
    })
    .await;
}
