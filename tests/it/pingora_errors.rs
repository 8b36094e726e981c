//! What Pingora itself would log or answer: a client leaving in the middle of a header is not a
//! gateway error, and an upstream's raw bytes (which may hold a provider key) never reach the
//! operational log (issue 13, findings 5 and 10).

use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with `response`, byte for byte (and health-check
/// probes with a 200).
async fn raw_upstream(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let probe = String::from_utf8_lossy(&seen)
                    .to_ascii_lowercase()
                    .contains("user-agent: ultra-gateway-health-check");
                let answer: &[u8] = if probe {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    response
                };
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

async fn metric(gw: &TestGateway, line_start: &str) -> f64 {
    let text = gw.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics"))
}

#[tokio::test]
async fn a_client_leaving_in_the_middle_of_a_header_is_counted_not_logged_as_an_error() {
    let up = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&up.url()));
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-a: b")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    poll_until("the five counted", secs(5), || async {
        let n = metric(
            &gw,
            "ultra_connections_closed_total{reason=\"header_error\"}",
        )
        .await;
        (n >= 5.0).then_some(())
    })
    .await;
    let out = gw.all_output();
    assert!(!out.contains("ERROR"), "{out}");
    assert!(!out.contains("Fail to proxy"), "{out}");
}

#[tokio::test]
async fn a_malformed_upstream_header_holding_the_key_is_never_logged() {
    let url = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nbroken header sk-test-upstream-key-0123456789 \x01\x02\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    let config = openai_config(&url)
        .replacen("logging: { level: warn }", "logging: { level: debug }", 1)
        .replacen(
            &format!("endpoints: [{url}]\n"),
            &format!("endpoints: [{url}]\n    health_check: {{ enabled: false }}\n"),
            1,
        );
    let gw = TestGateway::start(&config);
    let r = gw.chat("mini").await;
    let status = r.status();
    if status != 502 {
        panic!("{status} {}\n{}", r.text().await.unwrap(), gw.all_output());
    }
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_upstream_response", "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = gw.all_output();
    assert!(
        !out.contains(UPSTREAM_KEY),
        "the key reached the log:\n{out}"
    );
    assert!(
        !out.contains("broken header"),
        "raw upstream bytes in the log:\n{out}"
    );
    assert!(!gw
        .access_log()
        .iter()
        .any(|l| l.to_string().contains(UPSTREAM_KEY)));
}
