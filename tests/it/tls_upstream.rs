//! `https://` upstreams: certificates checked against the system roots plus the provider's
//! `ca_file`, SNI and Host from the URL.

use crate::common::*;

#[tokio::test]
async fn https_upstream_with_private_ca() {
    let pki = tls::pki();
    let up = MockUpstream::start_tls(
        |r| {
            Reply::Json(
                200,
                upstream::chat_completion("m", r.header("host").unwrap_or("none")),
            )
        },
        pki.server_config.clone(),
    )
    .await;
    let url = format!("https://localhost:{}", up.addr.port());
    let cfg = config_for("openai", &url, "").replace("    keys:", "    ca_file: ca.pem\n    keys:");
    let gw = TestGateway::start_with(&cfg, &[("ca.pem", &pki.ca_pem)], &[]);
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 200, "{}", gw.all_output());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("localhost:{}", up.addr.port())
    );
    assert_eq!(
        up.single().header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
}

#[tokio::test]
async fn unknown_ca_is_refused() {
    let pki = tls::pki();
    let up = MockUpstream::start_tls(
        |_| Reply::Json(200, serde_json::json!({})),
        pki.server_config.clone(),
    )
    .await;
    let url = format!("https://localhost:{}", up.addr.port());
    // The health check trusts what traffic trusts: it finds the backend unverifiable.
    let gw = TestGateway::start(&config_for("openai", &url, ""));
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 503);
    let ready: serde_json::Value = gw.get("/ready").await.json().await.unwrap();
    assert_eq!(
        ready["unservable_models"],
        serde_json::json!(["gpt-4o-mini", "gpt-4o"])
    );
    // Without health checks, the request itself fails the handshake.
    let cfg = config_for("openai", &url, "").replace(
        "    keys:",
        "    health_check: { enabled: false }\n    keys:",
    );
    let gw = TestGateway::start(&cfg);
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_upstream_response");
    assert!(
        up.received().is_empty(),
        "no request went to an unverified server"
    );
}

#[tokio::test]
async fn ip_endpoint_verifies_the_ip_in_the_certificate() {
    let pki = tls::pki();
    let up = MockUpstream::start_tls(
        |_| Reply::Json(200, serde_json::json!({"ok": 1})),
        pki.server_config.clone(),
    )
    .await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let cfg = config_for("openai", &url, "").replace("    keys:", "    ca_file: ca.pem\n    keys:");
    let gw = TestGateway::start_with(&cfg, &[("ca.pem", &pki.ca_pem)], &[]);
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 200, "{}", gw.all_output());

    // A wrong SNI for that certificate fails verification.
    let cfg = config_for(
        "openai",
        &format!("{{ url: '{url}', sni: wrong.example }}"),
        "",
    )
    .replace(
        "    keys:",
        "    ca_file: ca.pem\n    health_check: { enabled: false }\n    keys:",
    );
    let gw = TestGateway::start_with(&cfg, &[("ca.pem", &pki.ca_pem)], &[]);
    let r = gw.chat("gpt-4o").await;
    assert_eq!(r.status(), 502);
}
