//! What compilation decides, from inline configurations.

use super::*;
use crate::config::ProviderKind;
use crate::test_support::{resolved_runtime, runtime};
use std::path::Path;

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
    Runtime::compile(&config)
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
