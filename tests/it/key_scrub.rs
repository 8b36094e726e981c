//! Provider keys echoed back by a provider: scrubbed from every relayed header (any status) and
//! from error bodies of any size and content type, streamed, with a correct framing.

use crate::common::upstream::chat_completion;
use crate::common::*;
use bytes::Bytes;

/// Not shaped like an OpenAI key: only the configured value can find it.
const KEY: &str = "AIzaCustomKeyValue0123456789";

fn config(url: &str) -> String {
    format!(
        "logging: {{ level: warn }}
providers:
  up: {{ kind: openai, endpoints: [{url}], keys: [{{ id: k1, value: {KEY} }}] }}
models:
  - {{ id: gpt-4o, targets: [{{ provider: up }}] }}
"
    )
}

fn echo_headers(status: u16, content_type: &str, body: Bytes) -> Reply {
    Reply::Raw {
        status,
        headers: vec![
            ("content-type", content_type.to_string()),
            ("x-echo-key", KEY.to_string()),
            ("www-authenticate", format!("Bearer realm=\"p\", key={KEY}")),
            ("x-other", "kept as it is".to_string()),
        ],
        body,
    }
}

#[tokio::test]
async fn a_key_in_a_response_header_is_scrubbed_whatever_the_status() {
    for status in [200u16, 400, 500] {
        let body = if status == 200 {
            serde_json::to_vec(&chat_completion("gpt-4o", "hi")).unwrap()
        } else {
            br#"{"error":{"message":"no","type":"invalid_request_error"}}"#.to_vec()
        };
        let body = Bytes::from(body);
        let up =
            MockUpstream::start(move |_| echo_headers(status, "application/json", body.clone()))
                .await;
        let gw = TestGateway::start(&config(&up.url()));
        let r = gw.chat("gpt-4o").await;
        assert_eq!(r.status(), status);
        let h = r.headers().clone();
        assert_eq!(h["x-echo-key"], "***", "{status}");
        assert_eq!(
            h["www-authenticate"], "Bearer realm=\"p\", key=***",
            "{status}"
        );
        assert_eq!(h["x-other"], "kept as it is");
        let text = r.text().await.unwrap();
        assert!(!text.contains(KEY), "{status}: {text}");
        assert_eq!(
            up.received()[0].header("authorization"),
            Some(&*format!("Bearer {KEY}"))
        );
    }
}

/// A 1 MiB error body with the key at its start, across the gateway's read boundaries and at
/// its end: every copy is scrubbed, every other byte arrives, and the length is right.
#[tokio::test]
async fn a_large_error_body_is_scrubbed_in_full() {
    let filler = "x".repeat(16 * 1024 - 7);
    let mut text = format!("{KEY} ");
    while text.len() < 1024 * 1024 {
        text.push_str(&filler);
        text.push_str(KEY);
    }
    text.push_str(" end");
    let copies = text.matches(KEY).count();
    let body = Bytes::from(text.clone());
    let up = MockUpstream::start(move |_| Reply::Raw {
        status: 500,
        headers: vec![("content-type", "text/plain".into())],
        body: body.clone(),
    })
    .await;
    let gw = TestGateway::start(&config(&up.url()));
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 500);
    assert!(
        r.headers().get("content-length").is_none(),
        "the length changed: chunked"
    );
    let got = r.text().await.unwrap();
    assert!(!got.contains(KEY));
    assert_eq!(got, text.replace(KEY, "***"));
    assert!(copies > 60, "{copies}");
}

/// An SSE error response (`text/event-stream` with an error status) is scrubbed too.
#[tokio::test]
async fn an_event_stream_error_body_is_scrubbed() {
    let event = format!("event: error\ndata: {{\"error\":{{\"message\":\"bad key {KEY}\"}}}}\n\n");
    let body = Bytes::from(event.repeat(3));
    let up = MockUpstream::start(move |_| Reply::Raw {
        status: 400,
        headers: vec![("content-type", "text/event-stream".into())],
        body: body.clone(),
    })
    .await;
    let gw = TestGateway::start(&config(&up.url()));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [], "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert_eq!(text, event.replace(KEY, "***").repeat(3));
}
