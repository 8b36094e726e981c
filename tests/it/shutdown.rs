//! SIGTERM: the gateway stops accepting, lets what is in flight finish, and exits as soon as
//! nothing is left, not after the whole grace period; a stream still running when the grace
//! period ends gets an SSE error event rather than a silent cut.

use crate::common::*;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

fn stream_body() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

async fn wait_for_exit(gw: &mut TestGateway, within: Duration) {
    let t = Instant::now();
    poll_until("the gateway to exit", within, || {
        let gone = gw.exited();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(t.elapsed() < within);
}

#[tokio::test]
async fn an_idle_gateway_exits_at_once_whatever_its_grace_period() {
    let up = MockUpstream::openai_like().await;
    let cfg = openai_config(&up.url())
        .replace("grace_period_seconds: 1", "grace_period_seconds: 30")
        .replace("level: warn", "level: info");
    let mut gw = TestGateway::start(&cfg);
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    gw.access_entry(&rid).await;
    let t = Instant::now();
    gw.signal("TERM");
    wait_for_exit(&mut gw, Duration::from_secs(5)).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "not the 30 s grace period"
    );
    let out = gw.all_output();
    assert!(out.contains("ultra-gateway stopped"), "{out}");
    assert_eq!(gw.access_log().len(), 1);
}

#[tokio::test]
async fn a_stream_in_flight_completes_then_the_gateway_exits() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = std::sync::Mutex::new(Some(rx));
    let up =
        MockUpstream::start(move |_| Reply::Stream(rx.lock().unwrap().take().expect("one"))).await;
    let cfg = openai_config(&up.url())
        .replace("grace_period_seconds: 1", "grace_period_seconds: 30")
        .replace("level: warn", "level: info");
    let mut gw = TestGateway::start(&cfg);
    let resp = gw.post_json("/v1/chat/completions", &stream_body()).await;
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = resp.bytes_stream();
    tx.send(Bytes::from_static(b"data: {\"n\":0}\n\n")).unwrap();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {\"n\":0}"));

    gw.signal("TERM");
    poll_until("the shutdown to begin", secs(10), || async {
        gw.all_output().contains("shutting down").then_some(())
    })
    .await;
    // New connections are refused while the stream goes on.
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed"
    );
    assert!(!gw.exited(), "the stream is still in flight");
    tx.send(Bytes::from_static(b"data: {\"n\":1}\n\ndata: [DONE]\n\n"))
        .unwrap();
    drop(tx);
    let mut rest = String::new();
    while let Some(c) = body.next().await {
        rest.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "completed: {rest:?}");
    wait_for_exit(&mut gw, Duration::from_secs(5)).await;
    let logged = gw.access_entry(&rid).await;
    assert_eq!(
        logged["status"], 200,
        "its access-log line was written before the exit"
    );
}

#[tokio::test]
async fn a_stream_still_running_at_the_end_of_the_grace_period_ends_with_an_error_event() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = std::sync::Mutex::new(Some(rx));
    let up =
        MockUpstream::start(move |_| Reply::Stream(rx.lock().unwrap().take().expect("one"))).await;
    // grace_period_seconds: 1 (the test configuration's).
    let mut gw = TestGateway::start(&openai_config(&up.url()));
    let resp = gw.post_json("/v1/chat/completions", &stream_body()).await;
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = resp.bytes_stream();
    tx.send(Bytes::from_static(b"data: {\"n\":0}\n\n")).unwrap();
    body.next().await.unwrap().unwrap();
    gw.signal("TERM");
    let mut rest = String::new();
    while let Some(Ok(c)) = body.next().await {
        rest.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert!(
        rest.contains("\"code\":\"gateway_shutting_down\""),
        "an error event, not a silent cut: {rest:?}"
    );
    wait_for_exit(&mut gw, Duration::from_secs(10)).await;
    let logged = gw.access_entry(&rid).await;
    assert_eq!(logged["error"], "gateway_shutting_down");
    drop(tx);
}
