//! The monitoring kit under `deploy/` keeps up with the gateway: the alert rules and the
//! Prometheus configuration pass `promtool` (and the alerts fire on the series they are meant
//! for), every metric and label the alerts and the Grafana dashboard query exists on a live
//! gateway's `/metrics`, every runbook link lands on a heading of docs/operations.md, and every
//! error code of docs/api.md has a troubleshooting entry there.

use crate::common::*;
use crate::quotas::clear_of_minute_edge;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn path(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/ultra-gateway.json";
const OPERATIONS: &str = "docs/operations.md";

/// Labels Prometheus adds to every scraped series (the scrape job, the target, and the
/// `service` label of prometheus.yml); the gateway itself never exports them.
const TARGET_LABELS: &[&str] = &["job", "instance", "service"];

/// Runs `promtool` with `args`; `None` (after saying so) when it is not installed, so that a
/// developer without Debian's `prometheus` package can still run the rest. CI installs it
/// (scripts/prerequisites), so there the checks always run.
fn promtool(args: &[&str]) -> Option<Output> {
    match Command::new("promtool").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: promtool is not installed; skipping `promtool {args:?}`");
            None
        }
        Err(e) => panic!("promtool: {e}"),
    }
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn alerts_yaml() -> Yaml {
    serde_yaml::from_str(&read(ALERTS)).expect("alerts.yaml parses")
}

/// Every alerting rule of alerts.yaml, across groups.
fn alert_rules(doc: &Yaml) -> Vec<&Yaml> {
    let groups = doc["groups"].as_sequence().expect("groups");
    let rules: Vec<&Yaml> = groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter(|r| r.get("alert").is_some())
        .collect();
    assert!(rules.len() >= 9, "too few alerts parsed: {}", rules.len());
    rules
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, with those nested in (collapsed) rows.
fn panels(dash: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Every PromQL expression: the alerts' `expr`, the dashboard's targets and its query
/// variables, each with where it comes from.
fn promql_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let alerts = alerts_yaml();
    for r in alert_rules(&alerts) {
        let name = r["alert"].as_str().unwrap();
        exprs.push((
            format!("alert {name}"),
            r["expr"].as_str().expect("expr").to_string(),
        ));
    }
    let dash = dashboard();
    for p in panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push((format!("panel {}", p["title"]), e.to_string()));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            exprs.push((
                format!("variable {}", v["name"]),
                q.expect("a query variable has a query").to_string(),
            ));
        }
    }
    exprs
}

/// What a PromQL expression refers to: metric names (identifiers starting `ultra_`) and label
/// names (in selectors, `by`/`without`/`on`/`ignoring`/`group_*` lists, and the label argument
/// of Grafana's `label_values(metric, label)`). A tokenizer is enough: the expressions the kit
/// uses have no nested strings or comments.
#[derive(Debug, Default, PartialEq)]
struct Refs {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str,
    Punct(char),
}

fn tokenize(expr: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            // A string literal: a label value or regex, never a metric name.
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
            out.push(Tok::Str);
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            let mut word = c.to_string();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    word.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            // Numbers and durations (`5m`, `0.99`) are not identifiers.
            if !c.is_ascii_digit() {
                out.push(Tok::Ident(word));
            }
        } else if !c.is_whitespace() {
            out.push(Tok::Punct(c));
        }
    }
    out
}

fn promql_refs(expr: &str) -> Refs {
    let toks = tokenize(expr);
    let mut refs = Refs::default();
    let ident = |i: usize| match toks.get(i) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize| match toks.get(i) {
        Some(Tok::Punct(c)) => Some(*c),
        _ => None,
    };
    let mut in_braces = false;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => in_braces = true,
            Tok::Punct('}') => in_braces = false,
            // `label="v"`, `label!="v"`, `label=~"v"`, `label!~"v"`.
            Tok::Ident(name) if in_braces && matches!(punct(i + 1), Some('=' | '!')) => {
                refs.labels.insert(name.clone());
            }
            Tok::Ident(name) if name.starts_with("ultra_") => {
                refs.metrics.insert(name.clone());
            }
            Tok::Ident(kw)
                if matches!(
                    kw.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) && punct(i + 1) == Some('(') =>
            {
                i += 2;
                while let Some(l) = ident(i) {
                    refs.labels.insert(l.to_string());
                    i += 1;
                    if punct(i) == Some(',') {
                        i += 1;
                    }
                }
                continue;
            }
            // Grafana's `label_values(selector, label)`: the last identifier before `)`.
            Tok::Ident(f) if f == "label_values" => {
                let close = toks[i..]
                    .iter()
                    .rposition(|t| *t == Tok::Punct(')'))
                    .map(|p| i + p)
                    .expect("label_values(...) closes");
                if punct(close - 2) == Some(',') {
                    refs.labels
                        .insert(ident(close - 1).expect("a label").to_string());
                }
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

#[test]
fn the_promql_tokenizer_finds_metrics_and_labels() {
    let r = promql_refs(
        r#"histogram_quantile(0.99, sum by (job, endpoint, le) (rate(ultra_request_duration_seconds_bucket{endpoint!~"health|ultra_x",le=~".*"}[5m]))) > 60
          and on (job) sum without(kind) (ultra_tokens_total) / ignoring (a) ultra_x:recorded"#,
    );
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        r.metrics,
        set(&[
            "ultra_request_duration_seconds_bucket",
            "ultra_tokens_total",
            "ultra_x:recorded"
        ])
    );
    assert_eq!(r.labels, set(&["a", "endpoint", "job", "kind", "le"]));
    let v = promql_refs(r#"label_values(ultra_requests_total{instance=~"$instance"}, model)"#);
    assert_eq!(v.metrics, set(&["ultra_requests_total"]));
    assert_eq!(v.labels, set(&["instance", "model"]));
}

/// A scrape, by metric family: the label names its samples carry. Histogram samples
/// (`_bucket`, `_sum`, `_count`) count under their family's name.
fn exposition_families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let histograms = histograms(text);
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = family(&line[..end], &histograms);
        let labels = families.entry(name).or_default();
        if line[end..].starts_with('{') {
            labels.extend(sample_label_names(&line[end + 1..]));
        }
    }
    families
}

/// The names of the histogram families of a scrape.
fn histograms(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect()
}

/// A sample or query name's family: without its histogram suffix when the rest is a histogram.
fn family(name: &str, histograms: &BTreeSet<&str>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if histograms.contains(base) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// The label names of `k="v",k2="v2"}...` (what follows a sample's `{`).
fn sample_label_names(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = rest.chars();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches(',').trim();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name.to_string());
        assert_eq!(chars.next(), Some('"'), "label value of {name} in {rest}");
        let mut escaped = false;
        for c in chars.by_ref() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                break;
            }
        }
    }
    names
}

#[test]
fn exposition_parsing_folds_histograms_into_their_family() {
    let text = "# TYPE ultra_h histogram\n\
                ultra_h_bucket{provider=\"a,b\",le=\"0.1\"} 1\n\
                ultra_h_sum{provider=\"x\\\"y\"} 1\n\
                ultra_h_count 1\n\
                # TYPE ultra_c_count counter\n\
                ultra_c_count{kind=\"x\"} 2\n";
    let f = exposition_families(text);
    assert_eq!(f.keys().collect::<Vec<_>>(), ["ultra_c_count", "ultra_h"]);
    assert_eq!(
        f["ultra_h"].iter().collect::<Vec<_>>(),
        ["le", "provider"],
        "{f:?}"
    );
}

/// A gateway with traffic that makes every labelled series exist (the scenario of
/// metrics.rs): a provider key that is rate-limited (a cooldown and a retry on the other key),
/// reported provider limits, usage with pricing (tokens and cost), and a quota rule that
/// refuses the fourth request.
async fn scrape_busy_gateway() -> String {
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
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(gw.chat("m").await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "the scenario's traffic");
    gw.get("/metrics").await.text().await.unwrap()
}

/// The point of the kit's test: a metric renamed or a label dropped in the code fails here,
/// not silently in a dashboard panel or an alert that can never fire.
#[tokio::test]
async fn every_metric_and_label_queried_exists_on_a_live_gateway() {
    let text = scrape_busy_gateway().await;
    let families = exposition_families(&text);
    let histograms = histograms(&text);
    let exprs = promql_expressions();
    assert!(exprs.len() > 30, "too few queries found: {}", exprs.len());
    let mut problems = Vec::new();
    let mut queried = BTreeSet::new();
    for (origin, expr) in &exprs {
        let refs = promql_refs(expr);
        let mut known_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for m in &refs.metrics {
            // `ultra_x_bucket` is family `ultra_x`, whose buckets carry `le`.
            let fam = family(m, &histograms);
            match families.get(&fam) {
                Some(labels) => known_labels.extend(labels.iter().map(String::as_str)),
                None => problems.push(format!("{origin}: `{m}` is not exported")),
            }
            queried.insert(fam);
        }
        for l in &refs.labels {
            if !known_labels.contains(l.as_str()) {
                problems.push(format!(
                    "{origin}: label `{l}` is on none of {:?}",
                    refs.metrics
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n\nscrape:\n{text}");
    // The alerts and the dashboard between them watch the metrics that matter; a metric left
    // out of both is reported so that adding one comes with a panel.
    let unwatched: Vec<&String> = families.keys().filter(|f| !queried.contains(*f)).collect();
    assert!(
        unwatched.is_empty(),
        "exported but neither charted nor alerted on: {unwatched:?}"
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(out) = promtool(&["check", "rules", path(ALERTS).to_str().unwrap()]) else {
        return;
    };
    assert_success("promtool check rules", &out);
}

/// Series that should and should not fire each alert, run by `promtool test rules` against a
/// copy of alerts.yaml without its annotations (promtool compares annotations in full; their
/// wording is not what is tested here). Evaluation every minute.
const ALERT_UNIT_TESTS: &str = r#"
tests:
  # 5xx share of chat: 12 a minute against 60 OK ones (17%): fires. Probes answering /ready
  # 503 (endpoint "health") do not count.
  - interval: 1m
    input_series:
      - series: 'ultra_requests_total{job="ultra-gateway",instance="a",endpoint="chat",model="m",provider="p",status="200",status_class="2xx"}'
        values: '0+60x30'
      - series: 'ultra_requests_total{job="ultra-gateway",instance="a",endpoint="chat",model="m",provider="p",status="502",status_class="5xx"}'
        values: '0+12x30'
      - series: 'ultra_requests_total{job="other",instance="b",endpoint="chat",model="m",provider="p",status="200",status_class="2xx"}'
        values: '0+60x30'
      - series: 'ultra_requests_total{job="other",instance="b",endpoint="health",model="unknown",provider="none",status="503",status_class="5xx"}'
        values: '0+600x30'
    alert_rule_test:
      - eval_time: 3m
        alertname: UltraGatewayHighErrorRatio
      - eval_time: 20m
        alertname: UltraGatewayHighErrorRatio
        exp_alerts:
          - exp_labels: {job: ultra-gateway, severity: critical}

  # Model m: every request a 503 without an attempt. Model n served.
  - interval: 1m
    input_series:
      - series: 'ultra_requests_total{job="g",instance="a",endpoint="chat",model="m",provider="none",status="503",status_class="5xx"}'
        values: '0+10x30'
      - series: 'ultra_requests_total{job="g",instance="a",endpoint="chat",model="n",provider="p",status="200",status_class="2xx"}'
        values: '0+10x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: UltraGatewayModelUnservable
        exp_alerts:
          - exp_labels: {job: g, model: m, severity: critical}

  # Provider p: both backends down; provider q: one of two up.
  - interval: 1m
    input_series:
      - series: 'ultra_backend_healthy{job="g",instance="a",provider="p",backend="10.0.0.1:80"}'
        values: '0x10'
      - series: 'ultra_backend_healthy{job="g",instance="a",provider="p",backend="10.0.0.2:80"}'
        values: '0x10'
      - series: 'ultra_backend_healthy{job="g",instance="a",provider="q",backend="10.0.0.3:80"}'
        values: '0x10'
      - series: 'ultra_backend_healthy{job="g",instance="a",provider="q",backend="10.0.0.4:80"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: UltraGatewayProviderNoHealthyBackend
        exp_alerts:
          - exp_labels: {job: g, instance: a, provider: p, severity: critical}

  # A breaker that keeps failing its probes (open, half-open, open, ...) fires; one that
  # opened once and closed does not.
  - interval: 1m
    input_series:
      - series: 'ultra_breaker_state{job="g",instance="a",provider="p",backend="10.0.0.1:80"}'
        values: '2 2 1 2 2 1 2 2 1 2 2 1 2'
      - series: 'ultra_breaker_state{job="g",instance="a",provider="p",backend="10.0.0.2:80"}'
        values: '2 1 0 0 0 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 10m
        alertname: UltraGatewayBreakerOpen
        exp_alerts:
          - exp_labels: {job: g, instance: a, provider: p, backend: "10.0.0.1:80", severity: warning}

  # Provider p: one key cooling, one disabled: no key usable (and one key disabled). Provider
  # q: one key still active.
  - interval: 1m
    input_series:
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="p",key_id="k1",state="active"}'
        values: '0x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="p",key_id="k1",state="cooling"}'
        values: '1x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="p",key_id="k1",state="disabled"}'
        values: '0x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="p",key_id="k2",state="active"}'
        values: '0x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="p",key_id="k2",state="cooling"}'
        values: '0x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="p",key_id="k2",state="disabled"}'
        values: '1x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="q",key_id="k3",state="active"}'
        values: '1x10'
      - series: 'ultra_provider_key_state{job="g",instance="a",provider="q",key_id="k3",state="cooling"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: UltraGatewayProviderKeysUnavailable
        exp_alerts:
          - exp_labels: {job: g, instance: a, provider: p, severity: critical}
      - eval_time: 5m
        alertname: UltraGatewayProviderKeyDisabled
        exp_alerts:
          - exp_labels: {job: g, instance: a, provider: p, key_id: k2, severity: warning}

  # Key k1 falls from 1000 requests left to 50 (under 10%); k2 stays at 900.
  - interval: 1m
    input_series:
      - series: 'ultra_provider_ratelimit_remaining{job="g",instance="a",provider="p",key_id="k1",kind="requests"}'
        values: '1000 800 600 400 200 50 50 50 50 50 50 50 50 50 50'
      - series: 'ultra_provider_ratelimit_remaining{job="g",instance="a",provider="p",key_id="k2",kind="requests"}'
        values: '1000 900 900 900 900 900 900 900 900 900 900 900 900 900 900'
    alert_rule_test:
      - eval_time: 12m
        alertname: UltraGatewayProviderQuotaLow
        exp_alerts:
          - exp_labels: {job: g, provider: p, key_id: k1, kind: requests, severity: warning}

  # Counters that only matter when they move: quiet first, then moving.
  - interval: 1m
    input_series:
      - series: 'ultra_quota_store_errors_total{job="g",instance="a"}'
        values: '0x10 1+1x5'
      - series: 'ultra_config_reloads_total{job="g",instance="a",result="rejected"}'
        values: '0x10 1x5'
      - series: 'ultra_config_reloads_total{job="g",instance="a",result="applied"}'
        values: '1+1x15'
      - series: 'ultra_audit_dropped_total{job="g",instance="a"}'
        values: '0x10 5+5x5'
      - series: 'ultra_access_log_dropped_total{job="g",instance="a"}'
        values: '0x10 5+5x5'
      - series: 'ultra_connections_refused_total{job="g",instance="a"}'
        values: '0x10 3+3x5'
    alert_rule_test:
      - eval_time: 9m
        alertname: UltraGatewayConnectionsRefused
      - eval_time: 9m
        alertname: UltraGatewayQuotaStoreErrors
      - eval_time: 9m
        alertname: UltraGatewayConfigReloadRejected
      - eval_time: 9m
        alertname: UltraGatewayAuditLinesDropped
      - eval_time: 13m
        alertname: UltraGatewayQuotaStoreErrors
        exp_alerts:
          - exp_labels: {job: g, instance: a, severity: warning}
      - eval_time: 13m
        alertname: UltraGatewayConfigReloadRejected
        exp_alerts:
          - exp_labels: {job: g, instance: a, result: rejected, severity: warning}
      - eval_time: 13m
        alertname: UltraGatewayAuditLinesDropped
        exp_alerts:
          - exp_labels: {job: g, instance: a, severity: critical}
      - eval_time: 13m
        alertname: UltraGatewayAccessLogLinesDropped
        exp_alerts:
          - exp_labels: {job: g, instance: a, severity: warning}
      - eval_time: 13m
        alertname: UltraGatewayConnectionsRefused
        exp_alerts:
          - exp_labels: {job: g, instance: a, severity: warning}

  # Every chat request takes between 60 and 120 s: p99 about 119 s. Overhead and time to
  # first byte well under their thresholds.
  - interval: 1m
    input_series:
      - series: 'ultra_request_duration_seconds_bucket{job="g",instance="a",endpoint="chat",le="60"}'
        values: '0x30'
      - series: 'ultra_request_duration_seconds_bucket{job="g",instance="a",endpoint="chat",le="120"}'
        values: '0+10x30'
      - series: 'ultra_request_duration_seconds_bucket{job="g",instance="a",endpoint="chat",le="+Inf"}'
        values: '0+10x30'
      - series: 'ultra_gateway_overhead_seconds_bucket{job="g",instance="a",le="0.001"}'
        values: '0+10x30'
      - series: 'ultra_gateway_overhead_seconds_bucket{job="g",instance="a",le="+Inf"}'
        values: '0+10x30'
      - series: 'ultra_time_to_first_byte_seconds_bucket{job="g",instance="a",provider="p",le="1"}'
        values: '0+10x30'
      - series: 'ultra_time_to_first_byte_seconds_bucket{job="g",instance="a",provider="p",le="+Inf"}'
        values: '0+10x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: UltraGatewayHighLatencyP99
        exp_alerts:
          - exp_labels: {job: g, endpoint: chat, severity: warning}
      - eval_time: 20m
        alertname: UltraGatewayHighOverhead
      - eval_time: 20m
        alertname: UltraGatewaySlowTimeToFirstByte

  # A target that cannot be scraped.
  - interval: 1m
    input_series:
      - series: 'up{job="ultra-gateway",instance="gateway:9464"}'
        values: '1 1 0 0 0 0 0'
      - series: 'up{job="ultra-gateway",instance="other:9464"}'
        values: '1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 6m
        alertname: UltraGatewayDown
        exp_alerts:
          - exp_labels: {job: ultra-gateway, instance: "gateway:9464", severity: critical}
"#;

#[test]
fn alerts_fire_on_the_series_they_watch() {
    let mut alerts = alerts_yaml();
    for g in alerts["groups"].as_sequence_mut().unwrap() {
        for r in g["rules"].as_sequence_mut().unwrap() {
            r.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&alerts).unwrap()).unwrap();
    let tests = dir.path().join("alerts_test.yaml");
    std::fs::write(
        &tests,
        format!(
            "rule_files: [{}]\nevaluation_interval: 1m\n{ALERT_UNIT_TESTS}",
            rules.display()
        ),
    )
    .unwrap();
    // Every alert is exercised: a new one comes with a case above.
    let cases: Vec<Yaml> = serde_yaml::from_str::<Yaml>(ALERT_UNIT_TESTS).unwrap()["tests"]
        .as_sequence()
        .unwrap()
        .clone();
    let tested: BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c["alert_rule_test"].as_sequence().unwrap())
        .map(|t| t["alertname"].as_str().unwrap())
        .collect();
    let doc = alerts_yaml();
    for r in alert_rules(&doc) {
        let name = r["alert"].as_str().unwrap();
        assert!(tested.contains(name), "{name} has no promtool unit test");
    }
    let Some(out) = promtool(&["test", "rules", tests.to_str().unwrap()]) else {
        return;
    };
    assert_success("promtool test rules", &out);
}

#[test]
fn prometheus_config_scrapes_the_gateway_and_passes_promtool() {
    let text = read(PROMETHEUS);
    let cfg: Yaml = serde_yaml::from_str(&text).expect("prometheus.yml parses");
    assert_eq!(
        cfg["rule_files"],
        serde_yaml::from_str::<Yaml>("[/etc/prometheus/alerts.yaml]").unwrap(),
        "compose mounts the rules there"
    );
    let jobs = cfg["scrape_configs"].as_sequence().unwrap();
    let gw = jobs
        .iter()
        .find(|j| j["job_name"] == "ultra-gateway")
        .expect("an ultra-gateway job: UltraGatewayDown selects up{job=\"ultra-gateway\"}");
    assert_eq!(
        gw["static_configs"][0]["targets"][0], "gateway:9464",
        "the compose gateway's metrics listener"
    );
    let interval = gw
        .get("scrape_interval")
        .unwrap_or(&cfg["global"]["scrape_interval"]);
    assert_eq!(interval, "15s");
    assert!(read(ALERTS).contains(r#"up{job="ultra-gateway"}"#));

    // promtool also checks that the rule files exist and pass: point the copy at this tree's.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("prometheus.yml");
    let local = text.replace(
        "/etc/prometheus/alerts.yaml",
        path(ALERTS).to_str().unwrap(),
    );
    assert_ne!(local, text);
    std::fs::write(&copy, local).unwrap();
    let Some(out) = promtool(&["check", "config", copy.to_str().unwrap()]) else {
        return;
    };
    assert_success("promtool check config", &out);
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`; a repeated heading gets `-1`, `-2`, ...
fn github_slugs(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut slugs = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        slugs.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    slugs
}

#[test]
fn github_slugs_match_githubs() {
    let s = github_slugs(
        "# Operations\n## `503 no_healthy_upstream`\n```sh\n# not a heading\n```\n\
         ### `/ready` answers `503`\n## Notes\n## Notes\n### What can change live, and what needs a restart\n",
    );
    let want = [
        "503-no_healthy_upstream",
        "notes",
        "notes-1",
        "operations",
        "ready-answers-503",
        "what-can-change-live-and-what-needs-a-restart",
    ];
    assert_eq!(s.iter().map(String::as_str).collect::<Vec<_>>(), want);
}

#[test]
fn every_alert_has_a_summary_a_description_and_its_runbook() {
    let slugs = github_slugs(&read(OPERATIONS));
    let doc = alerts_yaml();
    for r in alert_rules(&doc) {
        let name = r["alert"].as_str().unwrap();
        let a = &r["annotations"];
        for key in ["summary", "description"] {
            assert!(
                a[key].as_str().is_some_and(|s| s.trim().len() > 10),
                "{name}: {key}"
            );
        }
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name}: severity"
        );
        let url = a["runbook_url"].as_str().unwrap_or_default();
        let anchor = url
            .split_once("docs/operations.md#")
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} is not docs/operations.md#..."));
        assert!(
            slugs.contains(anchor),
            "{name}: docs/operations.md has no heading for #{anchor}"
        );
        assert_eq!(anchor, name.to_lowercase(), "{name}: its own runbook");
    }
}

/// docs/operations.md's own `(#anchor)` links land on a heading of it.
#[test]
fn operations_doc_links_to_its_own_headings() {
    let doc = read(OPERATIONS);
    let slugs = github_slugs(&doc);
    let broken: Vec<&str> = doc
        .split("](#")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .filter(|a| !slugs.contains(*a))
        .collect();
    assert!(broken.is_empty(), "broken anchors: {broken:?}");
}

/// Each row of docs/api.md's error tables (the gateway's and the mock provider's: status and
/// code) has a `### \`STATUS code\`` entry under "Troubleshooting by symptom".
#[test]
fn every_error_code_has_a_troubleshooting_entry() {
    let api = read("docs/api.md");
    let table = api
        .split("\n## Errors\n")
        .nth(1)
        .expect("api.md has an Errors section");
    let table = table.split("\n## ").next().unwrap();
    let codes: BTreeSet<String> = table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let status = cells.get(1)?;
            (status.len() == 3 && status.chars().all(|c| c.is_ascii_digit()))
                .then(|| format!("{status} {}", cells.get(3).unwrap().trim_matches('`')))
        })
        .collect();
    assert!(codes.len() >= 20, "api.md's error table: {codes:?}");
    let ops = read(OPERATIONS);
    let section = ops
        .split("\n## Troubleshooting by symptom\n")
        .nth(1)
        .expect("operations.md has a Troubleshooting by symptom section");
    let section = section.split("\n## ").next().unwrap();
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !section.contains(&format!("\n### `{c}`\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "no troubleshooting entry for {missing:?}"
    );
}

#[test]
fn the_dashboard_queries_a_datasource_in_every_panel() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dash["uid"], "ultra-gateway");
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds_var["query"], "prometheus");
    let ds_uid = format!("${{{}}}", ds_var["name"].as_str().unwrap());
    // The variable defaults to the provisioned data source.
    let provisioned: Yaml = serde_yaml::from_str(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yaml",
    ))
    .unwrap();
    let prom = &provisioned["datasources"][0];
    assert_eq!(prom["type"], "prometheus");
    assert_eq!(prom["url"], "http://prometheus:9090");
    let prom_uid = prom["uid"].as_str().expect("the data source has a uid");
    assert_eq!(ds_var["current"]["value"], prom_uid);

    let is_prometheus = |ds: &Json| {
        ds["type"] == "prometheus" && (ds["uid"] == ds_uid.as_str() || ds["uid"] == prom_uid)
    };
    let all = panels(&dash);
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id repeated"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        // Rows only group panels: they have no query of their own.
        if p["type"] == "row" {
            continue;
        }
        assert!(is_prometheus(&p["datasource"]), "{title}: datasource");
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr"
            );
            assert!(
                t["datasource"].is_null() || is_prometheus(&t["datasource"]),
                "{title}: target datasource"
            );
        }
        queried += 1;
    }
    assert!(queried >= 20, "only {queried} panels with queries");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert!(is_prometheus(&v["datasource"]), "variable {}", v["name"]);
    }
    // What issue 12 asks the dashboard to show, by the metric each part needs.
    let exprs: String = promql_expressions()
        .into_iter()
        .filter(|(o, _)| o.starts_with("panel"))
        .map(|(_, e)| e + "\n")
        .collect();
    for metric in [
        "ultra_requests_total",
        "ultra_request_duration_seconds_bucket",
        "ultra_gateway_overhead_seconds_bucket",
        "ultra_time_to_first_byte_seconds_bucket",
        "ultra_tokens_total",
        "ultra_cost_usd_total",
        "ultra_backend_healthy",
        "ultra_breaker_state",
        "ultra_provider_key_state",
        "ultra_quota_rejections_total",
    ] {
        assert!(exprs.contains(metric), "no panel charts {metric}");
    }

    let provider: Yaml = serde_yaml::from_str(&read(
        "deploy/grafana/provisioning/dashboards/ultra-gateway.yaml",
    ))
    .unwrap();
    let p = &provider["providers"][0];
    assert_eq!(p["type"], "file");
    assert_eq!(p["options"]["path"], "/var/lib/grafana/dashboards");
}
