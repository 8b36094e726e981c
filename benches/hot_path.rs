//! Per-request cost of the hot path's steps, each at the sizes issue 11 names: model resolution
//! with 10 / 1,000 / 10,000 models, the role check with 10 and 64 roles (the most a
//! configuration may define), a breaker check, the provider key pick with 10 and 10,000 keys,
//! the body's model probe and rewrite at 1 KiB / 64 KiB / 1 MiB, the usage scan of a JSON
//! answer at 1 KiB / 64 KiB, and an access-log line. Run with `cargo bench --bench hot_path`.
//! (Authentication is `--bench auth`; quotas and SSE usage `--bench quota`.)

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ultra_gateway::auth::rbac::Access;
use ultra_gateway::endpoints::EndpointGroup;
use ultra_gateway::proxy::model_field::{probe, rewrite_model};
use ultra_gateway::runtime::Runtime;
use ultra_gateway::upstream::breaker::{Breaker, BreakerPolicy};

/// A runtime with `models` models and `roles` roles (each role allowing a slice of the models
/// by glob), one mock provider.
fn runtime(models: usize, roles: usize) -> Runtime {
    let mut y = String::from("auth:\n  test_tokens: true\n  roles:\n");
    for r in 0..roles {
        y.push_str(&format!(
            "    r{r}: {{ models: ['m{r}-*', 'shared'], endpoints: [chat, models] }}\n"
        ));
    }
    y.push_str("providers:\n  p: { kind: mock }\nmodels:\n  - { id: shared, targets: [{ provider: p }] }\n");
    for m in 0..models {
        y.push_str(&format!(
            "  - {{ id: m{}-{m}, aliases: [alias-{m}], targets: [{{ provider: p }}] }}\n",
            m % roles.max(1)
        ));
    }
    let config =
        ultra_gateway::config::load_str(&y, Path::new("b.yaml"), Path::new("."), &|_| None)
            .expect("bench configuration loads");
    Runtime::compile(&config, &Default::default())
        .expect("bench configuration compiles")
        .0
}

fn resolution(c: &mut Criterion) {
    let mut g = c.benchmark_group("model_lookup");
    for n in [10usize, 1_000, 10_000] {
        let rt = runtime(n, 10);
        let name = format!("alias-{}", n / 2);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(rt.registry.lookup(black_box(&name))))
        });
    }
    g.finish();
}

fn role_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("role_check");
    // Role sets are bit sets: 64 roles is the most a configuration may define (validation says
    // so), so the largest case is 64, not 1,000; a caller holds a few of them.
    for roles in [10usize, 64] {
        let rt = runtime(2_000, roles);
        let access = Access::of_roles(rt.auth.rbac.role_set(["r1", "r3"]));
        let idx = rt.registry.lookup("shared").unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(roles), &roles, |b, _| {
            b.iter(|| black_box(rt.auth.rbac.allows(access, &EndpointGroup::Chat, idx)))
        });
    }
    g.finish();
}

fn breaker(c: &mut Criterion) {
    let policy =
        BreakerPolicy::try_new(5, Duration::from_secs(10), Duration::from_secs(60)).unwrap();
    let b = Arc::new(Breaker::new(policy));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    c.bench_function("breaker_admit_and_succeed", |bench| {
        bench.iter(|| {
            let (admission, ticket) = b.admit(tokio::time::Instant::now());
            if let Some(t) = ticket {
                t.success();
            }
            black_box(admission)
        })
    });
}

fn body(size: usize) -> Bytes {
    let filler = "x".repeat(size.saturating_sub(120));
    Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","stream":true,"max_tokens":256,"messages":[{{"role":"user","content":"{filler}"}}]}}"#
    ))
}

fn body_model(c: &mut Criterion) {
    let mut g = c.benchmark_group("body_model");
    for (label, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let b = body(size);
        g.bench_with_input(BenchmarkId::new("probe", label), &b, |bench, b| {
            bench.iter(|| black_box(probe(b).map(|p| p.stream)))
        });
        g.bench_with_input(BenchmarkId::new("rewrite", label), &b, |bench, b| {
            bench.iter(|| black_box(rewrite_model(b, "gpt-4o-mini-2024-07-18")))
        });
    }
    g.finish();
}

fn key_pick(c: &mut Criterion) {
    use ultra_gateway::config::{KeyAffinity, ProviderKind};
    use ultra_gateway::upstream::keys::{KeyRing, KeySource};
    let mut g = c.benchmark_group("key_pick");
    for n in [10usize, 10_000] {
        let keys = (0..n)
            .map(|i| (format!("k{i}"), KeySource::Value(format!("sk-bench-{i}"))))
            .collect();
        let ring = KeyRing::new(ProviderKind::Openai, KeyAffinity::None, keys, &|_| None).0;
        let now = tokio::time::Instant::now();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(ring.pick(None, &[], now)))
        });
    }
    g.finish();
}

/// Every relayed response's headers are searched for the provider's keys: a typical OpenAI
/// response header against a ring of three keys.
fn header_scrub(c: &mut Criterion) {
    use pingora::http::ResponseHeader;
    use ultra_gateway::config::{KeyAffinity, ProviderKind};
    use ultra_gateway::proxy::response_body::scrub_headers;
    use ultra_gateway::upstream::keys::{KeyRing, KeySource};
    let keys = (0..3)
        .map(|i| {
            (
                format!("k{i}"),
                KeySource::Value(format!("sk-proj-bench-key-{i}-0123456789abcdef")),
            )
        })
        .collect();
    let ring = KeyRing::new(ProviderKind::Openai, KeyAffinity::None, keys, &|_| None).0;
    let mut resp = ResponseHeader::build(200, None).unwrap();
    for (n, v) in [
        ("date", "Thu, 03 Dec 2026 10:00:00 GMT"),
        ("content-type", "application/json"),
        ("openai-processing-ms", "412"),
        ("openai-version", "2020-10-01"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-remaining-tokens", "29999000"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "2ms"),
        (
            "x-upstream-request-id",
            "req_0f8e2c1d9a7b6c5d4e3f2a1b0c9d8e7f",
        ),
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload",
        ),
        ("cf-cache-status", "DYNAMIC"),
        ("server", "cloudflare"),
        ("alt-svc", "h3=\":443\"; ma=86400"),
    ] {
        resp.append_header(n, v).unwrap();
    }
    c.bench_function("response_header_scrub", |b| {
        b.iter(|| {
            let each = |f: &mut dyn FnMut(&ultra_gateway::upstream::keys::ProviderKey)| {
                ring.for_each_secret(f)
            };
            scrub_headers(&mut resp, each, || ring.secrets());
            black_box(&resp);
        })
    });
}

/// An answer of about `size` bytes, its usage at the end (where providers put it).
fn answer(size: usize) -> Bytes {
    let text = "word ".repeat(size.saturating_sub(220) / 5);
    Bytes::from(format!(
        r#"{{"id":"c1","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}}}"#
    ))
}

fn json_usage(c: &mut Criterion) {
    use ultra_gateway::usage::{Dialect, UsageMeter};
    let mut g = c.benchmark_group("usage_json");
    for (label, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10)] {
        let body = answer(size);
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| {
                let mut meter = UsageMeter::new(Dialect::OpenAi, false, false);
                let mut chunk = body.clone();
                meter.chunk(&mut chunk, true);
                black_box(meter.reported())
            })
        });
    }
    g.finish();
}

fn access_line(c: &mut Criterion) {
    use ultra_gateway::proxy::logging::AccessEntry;
    let backend: std::net::SocketAddr = "127.0.0.1:443".parse().unwrap();
    let client: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    c.bench_function("access_log_line", |b| {
        b.iter(|| {
            let entry = AccessEntry {
                ts: ultra_gateway::time::now_rfc3339(),
                request_id: "0f8e2c1d9a7b6c5d4e3f2a1b0c9d8e7f",
                method: "POST",
                path: "/v1/chat/completions",
                model: Some("gpt-4o-mini"),
                requested_model: None,
                provider: Some("openai"),
                backend: Some(backend),
                subject: Some("user-42"),
                caller_key_id: None,
                provider_key_id: Some("openai-1"),
                status: 200,
                error: None,
                attempts: 1,
                stream: false,
                latency_ms: 123.456,
                upstream_ms: Some(120.001),
                upstream_ttfb_ms: Some(80.5),
                input_tokens: Some(10),
                output_tokens: Some(2),
                cached_input_tokens: Some(0),
                cost_usd: Some(0.000014),
                usage: Some("reported"),
                bytes_in: 72,
                bytes_out: 230,
                client: Some(client),
            };
            // The timestamp is part of every line's cost; then what `LineSink::try_write_json`
            // does before queueing.
            let mut line = serde_json::to_vec(&entry).unwrap();
            line.push(b'\n');
            black_box(line)
        })
    });
}

criterion_group!(
    benches,
    resolution,
    role_check,
    breaker,
    header_scrub,
    key_pick,
    body_model,
    json_usage,
    access_line
);
criterion_main!(benches);
