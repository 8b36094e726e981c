//! The Prometheus exposition of a live gateway: every metric of the reference is there after
//! some traffic, and `promtool check metrics` (Debian's `prometheus` package) accepts it.

use crate::common::*;
use crate::quotas::clear_of_minute_edge;
use std::io::Write;
use std::process::{Command, Stdio};

/// The metric names docs/operations.md documents; each must be exposed.
const EXPECTED: &[&str] = &[
    "ultra_requests_total",
    "ultra_request_duration_seconds",
    "ultra_upstream_duration_seconds",
    "ultra_gateway_overhead_seconds",
    "ultra_time_to_first_byte_seconds",
    "ultra_upstream_attempts_total",
    "ultra_retries_total",
    "ultra_tokens_total",
    "ultra_cost_usd_total",
    "ultra_backend_healthy",
    "ultra_breaker_state",
    "ultra_breaker_transitions_total",
    "ultra_provider_key_state",
    "ultra_provider_ratelimit_remaining",
    "ultra_key_cooldowns_total",
    "ultra_quota_rejections_total",
    "ultra_quota_store_errors_total",
    "ultra_inflight_requests",
    "ultra_build_info",
    "ultra_auth_decisions_total",
    "ultra_audit_dropped_total",
    "ultra_access_log_dropped_total",
    "ultra_config_reloads_total",
    "ultra_config_generation",
    "ultra_config_last_reload_success_timestamp_seconds",
    "ultra_connections_open",
    "ultra_connections_refused_total",
    "ultra_connections_closed_total",
];

/// docs/operations.md's metrics reference lists exactly the metrics above.
#[test]
fn the_metrics_reference_lists_every_metric() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let mut documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `ultra_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    documented.sort();
    let mut expected: Vec<&str> = EXPECTED
        .iter()
        .map(|n| n.strip_prefix("ultra_").unwrap())
        .collect();
    expected.sort();
    assert_eq!(documented, expected);
}

#[tokio::test]
async fn every_metric_is_exposed_and_promtool_accepts_the_exposition() {
    // Key one is rate-limited (a cooldown, then a retry on key two); the provider reports
    // its limits on every answer.
    let up = MockUpstream::start(|r| {
        if r.header("authorization") == Some("Bearer sk-one") {
            return Reply::Raw {
                status: 429,
                headers: vec![("retry-after", "3600".into())],
                body: bytes::Bytes::from_static(b"{}"),
            };
        }
        let mut body = upstream::chat_completion("m", "ok");
        body["usage"] =
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7});
        Reply::Raw {
            status: 200,
            headers: vec![
                ("content-type", "application/json".into()),
                ("x-ratelimit-remaining-requests", "4999".into()),
                ("x-ratelimit-remaining-tokens", "150000".into()),
            ],
            body: bytes::Bytes::from(body.to_string()),
        }
    })
    .await;
    let cfg = format!(
        "logging: {{ level: warn }}
providers:
  up:
    kind: openai
    endpoints: [{}]
    keys: [{{ id: one, value: sk-one }}, {{ id: two, value: sk-two }}]
models:
  - id: m
    targets: [{{ provider: up }}]
    pricing: {{ input_per_million: 1.0, output_per_million: 2.0 }}
quotas:
  rules:
    - {{ id: tiny, requests_per_minute: 3 }}
",
        up.url()
    );
    let gw = TestGateway::start(&cfg);
    clear_of_minute_edge(secs(5)).await;
    for _ in 0..4 {
        let _ = gw.chat("m").await;
    }
    let text = gw.get("/metrics").await.text().await.unwrap();
    for name in EXPECTED {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from the exposition"
        );
    }
    assert!(text.contains(
        "ultra_provider_ratelimit_remaining{key_id=\"two\",kind=\"requests\",provider=\"up\"} 4999"
    ));
    assert!(text
        .contains("ultra_provider_key_state{key_id=\"one\",provider=\"up\",state=\"cooling\"} 1"));
    assert!(text.contains(
        "ultra_key_cooldowns_total{key_id=\"one\",provider=\"up\",reason=\"rate_limited\"} 1"
    ));
    assert!(
        text.contains("ultra_retries_total{reason=\"429\"} 1"),
        "{text}"
    );
    assert!(text.contains("ultra_quota_rejections_total{rule=\"tiny\"} 1"));
    assert!(text.contains(&format!(
        "ultra_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on the PATH (.ci/run installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
