//! SSE passes through unbuffered, at the upstream's pace, and a client that leaves cancels the
//! upstream request.

use crate::common::*;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

fn stream_body() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn lockstep_stream_flows_chunk_by_chunk() {
    // The upstream sends chunk n+1 only after the client has read chunk n: a proxy that
    // buffers anything deadlocks here and the test times out.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = std::sync::Mutex::new(Some(rx));
    let up = MockUpstream::start(move |_| {
        Reply::Stream(rx.lock().unwrap().take().expect("one request"))
    })
    .await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let resp = gw.post_json("/v1/chat/completions", &stream_body()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    for n in 0..5 {
        let event = format!("data: {{\"n\":{n}}}\n\n");
        tx.send(Bytes::from(event.clone())).unwrap();
        while !seen.contains(&event) {
            let chunk = tokio::time::timeout(secs(5), body.next())
                .await
                .unwrap_or_else(|_| panic!("chunk {n} never reached the client: the proxy buffers"))
                .expect("stream open")
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
    drop(tx);
    while let Some(c) = body.next().await {
        seen.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    let expected: String = (0..5).map(|n| format!("data: {{\"n\":{n}}}\n\n")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn half_an_event_is_passed_on_before_its_other_half_is_sent() {
    // The gateway looks at every SSE line for error events; it must do so without holding a
    // partial line back. The upstream sends each event in two writes, split inside the line,
    // and sends the second half only once the client has read the first.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = std::sync::Mutex::new(Some(rx));
    let up = MockUpstream::start(move |_| {
        Reply::Stream(rx.lock().unwrap().take().expect("one request"))
    })
    .await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    // The client asks for usage itself: the gateway then has no usage chunk to take out, and
    // nothing of a line may wait (see usage::sse for what hiding holds).
    let mut body = stream_body();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let resp = gw.post_json("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let mut expected = String::new();
    for n in 0..3 {
        let event = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{n}\"}}}}]}}\n\n");
        let (head, tail) = event.split_at(9);
        for half in [head, tail] {
            expected.push_str(half);
            tx.send(Bytes::from(half.to_string())).unwrap();
            while seen.len() < expected.len() {
                let chunk = tokio::time::timeout(secs(5), body.next())
                    .await
                    .unwrap_or_else(|_| panic!("{half:?} of event {n} was held back"))
                    .expect("stream open")
                    .unwrap();
                seen.push_str(std::str::from_utf8(&chunk).unwrap());
            }
            assert_eq!(seen, expected);
        }
    }
    tx.send(Bytes::from_static(b"data: [DONE]\n\n")).unwrap();
    drop(tx);
    while let Some(c) = body.next().await {
        seen.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    assert_eq!(seen, expected + "data: [DONE]\n\n");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream() {
    let up = MockUpstream::start(|_| Reply::Endless {
        interval: Duration::from_millis(50),
    })
    .await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let resp = gw.post_json("/v1/chat/completions", &stream_body()).await;
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(up.streams_dropped(), 0);
    drop(body);
    poll_until("the upstream stream to be cancelled", secs(10), || async {
        (up.streams_dropped() > 0).then_some(())
    })
    .await;
    let entry = gw.access_entry(&rid).await;
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["error"], "client_closed");
    assert!(entry["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn client_leaving_a_mock_stream_is_logged_as_closed() {
    let gw = TestGateway::start(
        "logging: { level: warn }
providers: { m: { kind: mock, mock: { chunk_interval_ms: 200 } } }
models: [{ id: gpt-4o, targets: [{ provider: m }] }]
",
    );
    let resp = gw.post_json("/v1/chat/completions", &stream_body()).await;
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let entry = gw.access_entry(&rid).await;
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["error"], "client_closed");
    assert!(entry["bytes_out"].as_u64().unwrap() > 0);
    assert!(
        !gw.all_output().contains("ERROR"),
        "a client leaving is not a gateway error"
    );
}

#[tokio::test]
async fn mock_stream_ends_with_usage_and_done() {
    let gw = TestGateway::start(
        "logging: { level: warn }
providers: { m: { kind: mock, mock: { chunk_interval_ms: 1 } } }
models: [{ id: gpt-4o, targets: [{ provider: m }] }]
",
    );
    let events = |text: String| -> Vec<serde_json::Value> {
        let parts: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(*parts.last().unwrap(), "data: [DONE]");
        parts[..parts.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    };

    let mut body = stream_body();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let resp = gw.post_json("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let with_usage = events(resp.text().await.unwrap());
    let last = with_usage.last().unwrap();
    assert_eq!(last["choices"], serde_json::json!([]));
    assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let content: String = with_usage
        .iter()
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(content.ends_with("You said: hi"), "{content}");

    // Without stream_options, as with OpenAI, no usage chunk and no `usage` field.
    let resp = gw.post_json("/v1/chat/completions", &stream_body()).await;
    let plain = events(resp.text().await.unwrap());
    assert!(plain.iter().all(|v| v.get("usage").is_none()));
    assert_eq!(plain.last().unwrap()["choices"][0]["finish_reason"], "stop");
}
