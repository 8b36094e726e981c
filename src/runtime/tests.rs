//! What compilation decides, from inline configurations.

use super::*;
use crate::config::ProviderKind;
use crate::test_support::{resolved_runtime, runtime};
use std::path::Path;
use std::sync::Arc;

const TWO_PROVIDERS: &str = r#"
providers:
  zeta:
    kind: openai-compatible
    endpoints: ["http://127.0.0.1:9"]
    health_check: { enabled: false }
  alpha:
    kind: openai
    endpoints: ["http://127.0.0.1:10"]
    keys: [{ id: k1, value: sk-aaaaaaaa }, { id: blank, value: "" }]
    health_check: { enabled: false }
models:
  - { id: m, targets: [{ provider: zeta }, { provider: alpha }] }
"#;

fn compile(yaml: &str) -> Result<(Runtime, Vec<String>), crate::config::ConfigErrors> {
    let config = crate::config::load_str(yaml, Path::new("t.yaml"), Path::new("."), &|_| None)
        .expect("loads");
    Runtime::compile(&config, &Default::default())
}

#[test]
fn providers_are_indexed_in_a_stable_order_and_targets_point_at_them() {
    let rt = runtime(TWO_PROVIDERS);
    let names: Vec<&str> = rt.providers.iter().map(|p| &*p.name).collect();
    assert_eq!(
        &names[..2],
        ["alpha", "zeta"],
        "by name, whatever the file's order"
    );
    for (i, p) in rt.providers.iter().enumerate() {
        assert_eq!(p.idx, ProviderIdx(i));
    }
    let m = rt.registry.get(rt.registry.lookup("m").unwrap());
    let target_names: Vec<&str> = m
        .targets
        .iter()
        .map(|t| &*rt.provider(t.provider).name)
        .collect();
    assert_eq!(target_names, ["zeta", "alpha"], "the model's order");
}

#[test]
fn development_adds_a_mock_for_test_mode_when_none_is_configured() {
    let rt = runtime(TWO_PROVIDERS);
    let mock = rt.test_mock.expect("development answers X-Test-Mode");
    assert_eq!(rt.provider(mock).kind, ProviderKind::Mock);
    assert_eq!(&*rt.provider(mock).name, "test-mode");
    assert_eq!(rt.providers.len(), 3);

    let with_mock = format!("{TWO_PROVIDERS}\n")
        .replace("providers:\n", "providers:\n  local: { kind: mock }\n");
    let rt = runtime(&with_mock);
    let mock = rt.test_mock.unwrap();
    assert_eq!(&*rt.provider(mock).name, "local", "the configured mock");
    assert_eq!(rt.providers.len(), 3);
}

#[test]
fn a_key_file_that_cannot_be_read_is_an_error_at_its_path_and_an_empty_key_a_warning() {
    let (_, warnings) = compile(TWO_PROVIDERS).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("providers.alpha.keys[1]") && w.contains("blank")),
        "{warnings:?}"
    );
    let yaml = TWO_PROVIDERS.replace(
        "{ id: blank, value: \"\" }",
        "{ id: f, file: /nonexistent/ultra-key }",
    );
    let errors = compile(&yaml).expect_err("an unreadable key file stops compilation");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["providers.alpha.keys[1].file"]);
}

#[test]
fn a_provider_without_a_usable_key_is_a_warning() {
    let yaml = TWO_PROVIDERS.replace("{ id: k1, value: sk-aaaaaaaa }, ", "");
    let (_, warnings) = compile(&yaml).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("providers.alpha has no usable key")),
        "{warnings:?}"
    );
}

#[test]
fn auth_that_admits_everybody_or_nobody_is_a_warning() {
    let (_, warnings) = compile(TWO_PROVIDERS).unwrap();
    assert!(warnings.iter().any(|w| w.contains("no `auth` section")));
    let locked = format!(
        "{TWO_PROVIDERS}auth: {{ roles: {{ admin: {{ models: ['*'], endpoints: ['*'] }} }} }}\n"
    );
    let (_, warnings) = compile(&locked).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("every request except /health")),
        "{warnings:?}"
    );
}

#[test]
fn extra_paths_are_proxied_in_their_group() {
    let yaml = format!(
        "{TWO_PROVIDERS}server:\n  extra_paths: [{{ path: /v1/audio/speech }}, {{ path: /v1/rerank, group: search }}]\n"
    );
    let rt = runtime(&yaml);
    assert_eq!(
        rt.proxied_group("/v1/audio/speech"),
        Some(EndpointGroup::Custom("speech".into())),
        "named after the last segment"
    );
    assert_eq!(
        rt.proxied_group("/v1/rerank"),
        Some(EndpointGroup::Custom("search".into()))
    );
    assert_eq!(
        rt.proxied_group("/v1/chat/completions"),
        Some(EndpointGroup::Chat)
    );
    assert_eq!(rt.proxied_group("/v1/files"), None);
}

#[test]
fn metrics_are_on_the_main_listener_unless_they_have_their_own() {
    assert!(runtime(TWO_PROVIDERS).metrics_on_main);
    let own = format!("{TWO_PROVIDERS}metrics: {{ listen: \"127.0.0.1:0\" }}\n");
    assert!(!runtime(&own).metrics_on_main);
    let off = format!("{TWO_PROVIDERS}metrics: {{ enabled: false }}\n");
    assert!(!runtime(&off).metrics_on_main);
}

#[tokio::test]
async fn a_model_is_servable_once_one_of_its_providers_has_a_backend() {
    let rt = runtime(TWO_PROVIDERS);
    assert_eq!(rt.servable(), [false], "nothing resolved yet");
    let rt = resolved_runtime(TWO_PROVIDERS).await;
    assert_eq!(rt.servable(), [true]);
}

// === state carried over from one configuration to the next ===

fn compile_with(yaml: &str, state: &Arc<crate::state::State>) -> Runtime {
    let config = crate::config::load_str(yaml, Path::new("t.yaml"), Path::new("."), &|_| None)
        .expect("loads");
    Runtime::compile(&config, state).expect("compiles").0
}

fn provider<'a>(rt: &'a Runtime, name: &str) -> &'a crate::upstream::provider::Provider {
    rt.providers.iter().find(|p| &*p.name == name).unwrap()
}

fn key_state(rt: &Runtime, provider_name: &str, id: &str) -> &'static str {
    let now = tokio::time::Instant::now();
    let keys = provider(rt, provider_name).keys.view(now);
    keys.into_iter().find(|k| k.id == id).unwrap().state
}

#[tokio::test(start_paused = true)]
async fn key_states_carry_over_until_the_value_changes() {
    let state = Arc::default();
    let rt1 = compile_with(TWO_PROVIDERS, &state);
    let ring = &provider(&rt1, "alpha").keys;
    let crate::upstream::keys::KeyPick::Key(i, k) =
        ring.pick(None, &[], tokio::time::Instant::now())
    else {
        panic!("a usable key");
    };
    let mut h = http::HeaderMap::new();
    h.insert("retry-after", "600".parse().unwrap());
    ring.cool_down(i, &k, &h, tokio::time::Instant::now());
    assert_eq!(key_state(&rt1, "alpha", "k1"), "cooling");

    // An unrelated change: the key keeps resting.
    let more_models = format!("{TWO_PROVIDERS}  - {{ id: m2, targets: [{{ provider: zeta }}] }}\n");
    let rt2 = compile_with(&more_models, &state);
    assert_eq!(key_state(&rt2, "alpha", "k1"), "cooling");
    // A new value for the key: it starts afresh.
    let rotated = more_models.replace("sk-aaaaaaaa", "sk-bbbbbbbb");
    let rt3 = compile_with(&rotated, &state);
    assert_eq!(key_state(&rt3, "alpha", "k1"), "active");
    // A disabled key stays out across a reload, until its value changes.
    let ring = &provider(&rt3, "alpha").keys;
    let crate::upstream::keys::KeyPick::Key(i, k) =
        ring.pick(None, &[], tokio::time::Instant::now())
    else {
        panic!("a usable key");
    };
    ring.disable(i, &k, "unauthorized");
    let rt4 = compile_with(&rotated, &state);
    assert_eq!(key_state(&rt4, "alpha", "k1"), "disabled");
    drop((rt1, rt2));
    assert_eq!(
        key_state(&compile_with(&more_models, &state), "alpha", "k1"),
        "active"
    );
}

#[tokio::test(start_paused = true)]
async fn backend_state_and_breakers_carry_over_by_endpoint_and_address() {
    let state = Arc::default();
    let fragile = TWO_PROVIDERS.replace(
        "kind: openai-compatible",
        "kind: openai-compatible\n    breaker: { consecutive_failures: 1 }",
    );
    let rt1 = compile_with(&fragile, &state);
    crate::upstream::manager::refresh_all(&rt1).await;
    let pool1 = provider(&rt1, "zeta").pool.clone().unwrap();
    let now = tokio::time::Instant::now();
    let b1 = pool1.select(b"", &[], now).unwrap();
    b1.breaker.admit(now).1.unwrap().failure(now);
    assert!(!b1.breaker.available(now), "one failure opens it");

    let more = fragile.replace(
        "endpoints: [\"http://127.0.0.1:9\"]",
        "endpoints: [\"http://127.0.0.1:9\", \"http://127.0.0.1:19\"]",
    );
    let rt2 = compile_with(&more, &state);
    crate::upstream::manager::refresh_all(&rt2).await;
    let pool2 = provider(&rt2, "zeta").pool.clone().unwrap();
    assert!(
        !Arc::ptr_eq(&pool1, &pool2),
        "a new pool for the changed provider"
    );
    let same = pool2
        .backends()
        .into_iter()
        .find(|(b, _)| b.addr == b1.addr)
        .unwrap()
        .0;
    assert!(
        Arc::ptr_eq(&same, &b1),
        "the backend's state is the same object"
    );
    for _ in 0..4 {
        let picked = pool2.select(b"", &[], now).unwrap();
        assert_ne!(picked.addr, b1.addr, "its breaker is still open");
    }
    drop((rt1, rt2, pool1, pool2, same, b1));
    assert_eq!(state.backends.prune(), 0, "nothing holds them: gone");
}

#[tokio::test(start_paused = true)]
async fn a_changed_breaker_policy_starts_a_new_breaker() {
    let state = Arc::default();
    let rt1 = compile_with(TWO_PROVIDERS, &state);
    crate::upstream::manager::refresh_all(&rt1).await;
    let b1 = provider(&rt1, "zeta").pool.as_ref().unwrap().backends()[0]
        .0
        .clone();
    let stricter = TWO_PROVIDERS.replace(
        "kind: openai-compatible",
        "kind: openai-compatible\n    breaker: { consecutive_failures: 2 }",
    );
    let rt2 = compile_with(&stricter, &state);
    crate::upstream::manager::refresh_all(&rt2).await;
    let b2 = provider(&rt2, "zeta").pool.as_ref().unwrap().backends()[0]
        .0
        .clone();
    assert!(!Arc::ptr_eq(&b1, &b2));
    assert!(b2.checked(), "passing a check is kept");
}

#[test]
fn a_jwks_url_seen_before_is_not_fetched_again() {
    let state = Arc::default();
    let yaml = format!(
        "{TWO_PROVIDERS}auth:\n  jwt: {{ algorithms: [RS256], jwks_url: \"https://idp.example/jwks.json\" }}\n  roles: {{ u: {{ models: ['*'], endpoints: ['*'] }} }}\n"
    );
    let rt1 = compile_with(&yaml, &state);
    let rt2 = compile_with(&yaml, &state);
    let (a, b) = (rt1.auth.jwks_url().unwrap(), rt2.auth.jwks_url().unwrap());
    assert!(Arc::ptr_eq(a, b), "the same key set, loaded or loading");
    let slower = yaml.replace("jwks_url:", "jwks_refresh_seconds: 900, jwks_url:");
    let rt3 = compile_with(&slower, &state);
    assert!(!Arc::ptr_eq(a, rt3.auth.jwks_url().unwrap()));
}
