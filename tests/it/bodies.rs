//! Request bodies of every size reach the provider byte for byte (apart from the model
//! rewrite), however they are framed, including bodies larger than Pingora's 64 KiB retry
//! buffer with `model` placed after megabytes of messages.

use crate::common::*;
use bytes::Bytes;
use futures_util::stream;

/// A chat body of about `size` bytes with `model` last and JSON-escaped content that contains
/// `"model"` itself.
fn big_body(size: usize) -> String {
    let head = r#"{"messages":[{"role":"system","content":"say \"model\": \"x\" \u00e9"},{"role":"user","content":""#;
    let tail = r#""}],"temperature":0.2,"model":"mini"}"#;
    let filler_len = size.saturating_sub(head.len() + tail.len());
    let unit = "lorem ipsum \\\"quoted\\\" ";
    let mut filler = unit.repeat(filler_len / unit.len() + 1);
    filler.truncate(filler_len);
    while filler.ends_with('\\') {
        filler.pop();
        filler.push('x');
    }
    format!("{head}{filler}{tail}")
}

fn expected_upstream(body: &str) -> String {
    body.replace(r#""model":"mini"}"#, r#""model":"gpt-4o-mini-2024-07-18"}"#)
}

async fn send(gw: &TestGateway, body: String, chunked: bool) -> reqwest::Response {
    let req = client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json");
    let req = if chunked {
        let pieces: Vec<Result<Bytes, std::io::Error>> = Bytes::from(body)
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        req.body(reqwest::Body::wrap_stream(stream::iter(pieces)))
    } else {
        req.body(body)
    };
    req.send().await.unwrap()
}

#[tokio::test]
async fn bodies_of_every_size_arrive_byte_for_byte() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    let mut expected = Vec::new();
    for size in [1024, 64 * 1024, 64 * 1024 + 1, 1024 * 1024, 8 * 1024 * 1024] {
        for chunked in [false, true] {
            let body = big_body(size);
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
            let r = send(&gw, body.clone(), chunked).await;
            let status = r.status();
            assert_eq!(
                status,
                200,
                "size {size} chunked {chunked}: {:?}",
                r.text().await
            );
            expected.push((size, chunked, expected_upstream(&body)));
        }
    }
    let got = up.received();
    assert_eq!(got.len(), expected.len());
    for ((size, chunked, want), r) in expected.iter().zip(&got) {
        assert_eq!(r.body.len(), want.len(), "size {size} chunked {chunked}");
        assert!(
            r.body == want.as_bytes(),
            "size {size} chunked {chunked}: body differs"
        );
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert_eq!(r.header("transfer-encoding"), None);
    }
    // One access-log line per request, chunked ones included.
    poll_until("an access-log line per request", secs(10), || async {
        (gw.access_log().len() >= expected.len()).then_some(())
    })
    .await;
    let log = gw.access_log();
    assert_eq!(log.len(), expected.len());
    assert!(log
        .iter()
        .all(|e| e["status"] == 200 && e["model"] == "gpt-4o-mini"));
}

#[tokio::test]
async fn oversized_bodies_get_413_both_framings() {
    let up = MockUpstream::openai_like().await;
    let cfg = openai_config(&up.url()).replace(
        "server: { grace_period_seconds: 1 }",
        "server: { grace_period_seconds: 1, max_body_bytes: 65536 }",
    );
    let gw = TestGateway::start(&cfg);
    for chunked in [false, true] {
        let r = send(&gw, big_body(70_000), chunked).await;
        assert_eq!(r.status(), 413, "chunked {chunked}");
        assert_eq!(r.headers()["x-should-retry"], "false");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // At the limit is fine.
    let r = send(&gw, big_body(65_536), false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.received().len(), 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered() {
    let up = MockUpstream::openai_like().await;
    let cfg = openai_config(&up.url()).replace(
        "server: { grace_period_seconds: 1 }",
        "server: { grace_period_seconds: 1, max_body_bytes: 65536 }",
    );
    let gw = TestGateway::start(&cfg);
    let body = big_body(2000);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The client waits for 100 Continue before sending the body, as curl does.
    let mut first = Vec::new();
    while !first.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .expect("100 Continue within 5 s")
            .unwrap();
        first.push(byte[0]);
    }
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let r = raw::parse(&rest);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.single().header("expect"),
        None,
        "expect is not forwarded"
    );

    // Too large: refused at once, without 100 Continue and without reading the body.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n";
    let r = raw::send(gw.addr, head.as_bytes()).await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn a_stalled_or_malformed_body_is_the_clients_problem() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = MockUpstream::openai_like().await;
    let cfg = openai_config(&up.url()).replace(
        "server: { grace_period_seconds: 1 }",
        "server: { grace_period_seconds: 1, body_read_timeout_seconds: 1 }",
    );
    let gw = TestGateway::start(&cfg);

    // Ten of the hundred announced bytes, then nothing: 408, and the connection is closed.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answered and closed within 10 s")
        .unwrap();
    let r = raw::parse(&buf);
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let rid = r.header("x-request-id").unwrap().to_string();
    let entry = gw.access_entry(&rid).await;
    assert_eq!(entry["status"], 408);
    assert_eq!(entry["error"], "request_timeout");

    // A chunk size that is not hexadecimal: 400, and the connection is closed.
    let r = raw::send(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_body");
    assert!(up.received().is_empty(), "nothing went upstream");
    assert!(
        !gw.all_output()
            .contains("request failed inside the gateway"),
        "{}",
        gw.all_output()
    );
}
