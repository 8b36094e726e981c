//! The retry plan's decisions (docs/providers.md, "Retries"), on inline configurations whose
//! pools hold IP literals: budget and deadline, backends and keys not tried twice, key failures
//! that cost nothing until a provider runs out, and the final error.

use super::*;
use crate::test_support::resolved_runtime;
use http::HeaderMap;

const CONFIG: &str = r#"
providers:
  a:
    kind: openai
    endpoints: ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    keys: [{ id: k1, value: sk-aaaaaaaa1 }, { id: k2, value: sk-aaaaaaaa2 }]
    health_check: { enabled: false }
    retry: { max_attempts: 3, deadline_ms: 60000 }
    breaker: { consecutive_failures: 1, open_seconds: 30, max_open_seconds: 60 }
  b:
    kind: openai-compatible
    endpoints: ["http://127.0.0.1:11"]
    health_check: { enabled: false }
models:
  - id: m
    targets: [{ provider: a }, { provider: b }]
"#;

fn plan(rt: &Runtime, now: Instant) -> Plan {
    let model = rt.registry.get(rt.registry.lookup("m").unwrap());
    Plan::new(
        rt,
        model.id.clone(),
        model.targets.clone(),
        Arc::from("alice"),
        now,
    )
}

fn bad_upstream() -> GatewayError {
    GatewayError::BadUpstream {
        provider: "a".into(),
        detail: "test",
    }
}

/// (provider name, backend port, key id) of the attempt chosen now.
fn chosen(
    p: &mut Plan,
    rt: &Runtime,
    now: Instant,
) -> Result<(String, u16, Option<String>), GatewayError> {
    let (a, t) = p.current_or_next(rt, now)?;
    Ok((
        t.provider_name.to_string(),
        a.backend.addr.port(),
        a.key.as_ref().map(|(_, k)| k.id.to_string()),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_failed_backend_is_not_tried_again_and_spends_the_budget() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let mut p = plan(&rt, now);
    let (provider, first, _) = chosen(&mut p, &rt, now).unwrap();
    assert_eq!(provider, "a");
    p.backend_failed(bad_upstream(), now);
    let (provider, second, _) = chosen(&mut p, &rt, now).unwrap();
    assert_eq!(provider, "a");
    assert_ne!(first, second, "the other backend of the pool");
    p.backend_failed(bad_upstream(), now);
    let (provider, port, key) = chosen(&mut p, &rt, now).unwrap();
    assert_eq!(
        (provider.as_str(), port, key),
        ("b", 11, None),
        "then the next target"
    );
    assert_eq!(p.made, 3);
    p.backend_failed(bad_upstream(), now);
    assert!(!p.budget_left(now), "max_attempts 3 of the first provider");
    assert_eq!(
        chosen(&mut p, &rt, now),
        Err(bad_upstream()),
        "the last error"
    );
}

#[tokio::test(start_paused = true)]
async fn the_attempt_in_flight_is_not_chosen_twice() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let mut p = plan(&rt, now);
    let first = chosen(&mut p, &rt, now).unwrap();
    assert_eq!(chosen(&mut p, &rt, now).unwrap(), first);
    assert_eq!(p.made, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_key_rotates_for_free_then_the_next_target_costs_one() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let mut p = plan(&rt, now);
    let (_, _, k1) = chosen(&mut p, &rt, now).unwrap();
    p.key_failed(None);
    let (provider, _, k2) = chosen(&mut p, &rt, now).unwrap();
    assert_eq!(provider, "a", "same provider, another key");
    assert_ne!(k1, k2);
    assert!(p.budget_left(now));
    p.key_failed(None);
    let (provider, _, _) = chosen(&mut p, &rt, now).unwrap();
    assert_eq!(provider, "b", "out of keys: the next target");
    assert_eq!(
        p.made, 3,
        "every upstream request counts for x-ultra-attempts"
    );
    assert_eq!(p.spent, 1, "only leaving the provider spent an attempt");
}

#[tokio::test(start_paused = true)]
async fn a_provider_whose_keys_all_refused_us_is_a_gateway_problem() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let model = rt.registry.get(rt.registry.lookup("m").unwrap());
    let only_a: Arc<[Target]> = model.targets[..1].into();
    let mut p = Plan::new(&rt, model.id.clone(), only_a, Arc::from("alice"), now);
    for _ in 0..2 {
        chosen(&mut p, &rt, now).unwrap();
        p.key_failed(Some(GatewayError::ProviderAuthFailed {
            provider: "a".into(),
        }));
    }
    assert_eq!(
        chosen(&mut p, &rt, now),
        Err(GatewayError::ProviderAuthFailed {
            provider: "a".into()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn cooling_keys_answer_429_with_when_the_first_comes_back() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let provider =
        rt.provider(rt.registry.get(rt.registry.lookup("m").unwrap()).targets[0].provider);
    for (i, header, value) in [(0, "retry-after", "7"), (1, "retry-after-ms", "2500")] {
        let mut headers = HeaderMap::new();
        headers.insert(header, value.parse().unwrap());
        let KeyPick::Key(_, k) = provider.keys.pick(None, &[1 - i], now) else {
            panic!("key {i} is usable");
        };
        provider.keys.cool_down(i, &k, &headers, now).unwrap();
    }
    let model = rt.registry.get(rt.registry.lookup("m").unwrap());
    let only_a: Arc<[Target]> = model.targets[..1].into();
    let mut p = Plan::new(&rt, model.id.clone(), only_a, Arc::from("alice"), now);
    assert_eq!(
        chosen(&mut p, &rt, now),
        Err(GatewayError::ProviderRateLimited { retry_after: 3 }),
        "2.5 s rounded up: a client that waits that long finds a key"
    );
    let mut p = plan(&rt, now);
    assert_eq!(
        chosen(&mut p, &rt, now).unwrap().0,
        "b",
        "another provider can serve"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_keeps_its_backend_out() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let mut p = plan(&rt, now);
    let (_, failed, _) = chosen(&mut p, &rt, now).unwrap();
    // consecutive_failures: 1 opens the breaker of that backend.
    p.backend_failed(bad_upstream(), now);
    for _ in 0..4 {
        let mut fresh = plan(&rt, now);
        let (_, port, _) = chosen(&mut fresh, &rt, now).unwrap();
        assert_ne!(port, failed, "a new request skips the open breaker");
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    let later = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut fresh = plan(&rt, later);
        seen.push(chosen(&mut fresh, &rt, later).unwrap().1);
    }
    assert!(
        seen.contains(&failed),
        "half-open after open_seconds: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_after_the_deadline() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let mut p = plan(&rt, now);
    chosen(&mut p, &rt, now).unwrap();
    p.backend_failed(bad_upstream(), now);
    let late = now + Duration::from_millis(60_001);
    assert!(!p.budget_left(late));
    assert_eq!(chosen(&mut p, &rt, late), Err(bad_upstream()));
}

#[tokio::test(start_paused = true)]
async fn could_continue_sees_what_is_left() {
    let rt = resolved_runtime(CONFIG).await;
    let now = Instant::now();
    let mut p = plan(&rt, now);
    chosen(&mut p, &rt, now).unwrap();
    assert!(
        p.could_continue(&rt, now),
        "another backend, then another target"
    );
    p.backend_failed(bad_upstream(), now);
    chosen(&mut p, &rt, now).unwrap();
    assert!(p.could_continue(&rt, now), "the next target still");
    p.backend_failed(bad_upstream(), now);
    chosen(&mut p, &rt, now).unwrap();
    assert!(
        !p.could_continue(&rt, now),
        "the third attempt is the last: its 5xx goes to the client"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unresolved_model_has_no_healthy_upstream() {
    let rt = crate::test_support::runtime(CONFIG);
    let now = Instant::now();
    let mut p = plan(&rt, now);
    assert_eq!(
        chosen(&mut p, &rt, now),
        Err(GatewayError::NoHealthyUpstream {
            model: "m".into(),
            retry_after: NO_BACKEND_RETRY_AFTER
        })
    );
    assert_eq!(p.made, 0);
}
