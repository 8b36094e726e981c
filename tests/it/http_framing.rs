//! Requests that are not valid HTTP/1.1 for a proxy: no `Host`, or a `Connection` header that
//! asks for `Host` to be dropped (issue 13, finding 8). Each gets a 400 in the gateway's JSON
//! error shape with an `x-request-id`, and the provider sees nothing.

use crate::common::*;

fn chat_request(extra_headers: &str, version: &str) -> Vec<u8> {
    let body = serde_json::to_string(&chat_body("mini")).unwrap();
    format!(
        "POST /v1/chat/completions {version}\r\n{extra_headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn expect_invalid_header(gw: &TestGateway, request: &[u8], mentions: &str) {
    let r = raw::send(gw.addr, request).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-request-id").is_some());
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], "invalid_header", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(mentions), "{message}");
}

#[tokio::test]
async fn http11_without_host_is_400() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    expect_invalid_header(&gw, &chat_request("", "HTTP/1.1"), "Host").await;
    let r = raw::send(
        gw.addr,
        b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_header");
    // HTTP/1.0 needs no Host.
    let r = raw::send(gw.addr, &chat_request("", "HTTP/1.0")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(up.received().iter().filter(|r| !r.is_probe()).count() == 1);
}

#[tokio::test]
async fn a_connection_header_naming_host_is_400_not_a_hang() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    for connection in ["host", "keep-alive, Host", "close,host"] {
        let req = chat_request(
            &format!("Host: x\r\nConnection: {connection}\r\n"),
            "HTTP/1.1",
        );
        expect_invalid_header(&gw, &req, "Connection").await;
    }
    assert!(up.received().iter().all(|r| r.is_probe()));
    // Other hop-by-hop names are fine: they are removed before the provider sees the request.
    let req = chat_request(
        "Host: x\r\nConnection: x-trace\r\nX-Trace: 1\r\n",
        "HTTP/1.1",
    );
    let r = raw::send(gw.addr, &req).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn what_pingora_cannot_parse_gets_its_bare_400_and_is_counted() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    for request in [
        &b"GET /health HTTP/1.1\r\nHost: x\r\nBad header line\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    ] {
        let r = raw::send(gw.addr, request).await;
        assert_eq!(r.status, 400);
        assert!(r.body.is_empty(), "documented as bodiless");
    }
    let text = gw.get("/metrics").await.text().await.unwrap();
    let counted: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("ultra_connections_closed_total{reason=\"header_error\"} ")?
                .parse()
                .ok()
        })
        .unwrap();
    assert!(counted >= 2.0, "{counted}");
    assert!(up.received().iter().all(|r| r.is_probe()));
}
