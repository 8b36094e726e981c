//! The shared harness: the real gateway binary (`gateway`), mock upstreams (`upstream`), a raw
//! HTTP client (`raw`), and configuration builders.

#![allow(dead_code)]

pub mod auth;
pub mod gateway;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod upstream;

pub use gateway::TestGateway;
pub use upstream::{MockUpstream, Received, Reply};

/// The key the gateway holds for test upstreams; it must reach them and nothing else.
pub const UPSTREAM_KEY: &str = "sk-test-upstream-key-0123456789";

/// A gateway config with one provider `up` of `kind` at `url`, and the model `gpt-4o-mini`
/// (alias `mini`) served there as `gpt-4o-mini-2024-07-18`. `extra` is appended verbatim.
pub fn config_for(kind: &str, url: &str, extra: &str) -> String {
    let keys = if kind == "openai-compatible-nokey" {
        String::new()
    } else {
        format!("    keys: [{{ id: k1, value: {UPSTREAM_KEY} }}]\n")
    };
    let kind = kind.trim_end_matches("-nokey");
    format!(
        "server: {{ grace_period_seconds: 1 }}
logging: {{ level: warn }}
providers:
  up:
    kind: {kind}
    endpoints: [{url}]
{keys}models:
  - id: gpt-4o-mini
    aliases: [mini]
    targets: [{{ provider: up, model: gpt-4o-mini-2024-07-18 }}]
  - id: gpt-4o
    targets: [{{ provider: up }}]
{extra}"
    )
}

/// An OpenAI-kind provider at `url`.
pub fn openai_config(url: &str) -> String {
    config_for("openai", url, "")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A small chat request body.
pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
}

/// Polls `check` every 20 ms until it yields a value, for at most `timeout`, and returns that
/// value; panics naming `what` if it never comes. Tests wait for events this way, never by
/// sleeping a fixed time.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `secs` seconds, for `poll_until`.
pub fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// An `http://` URL on loopback where nothing listens: a port the kernel handed out and that
/// was closed again (a fixed port such as 9 may be in use on a test machine).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A loopback port that was free a moment ago (for tests that need a fixed port two processes
/// share).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
