//! The shared harness: the real gateway binary (`gateway`), mock upstreams (`upstream`), a raw
//! HTTP client (`raw`), and configuration builders.

#![allow(dead_code)]

pub mod auth;
pub mod gateway;
pub mod raw;
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
