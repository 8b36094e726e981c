use super::*;
use std::path::{Path, PathBuf};

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_yaml(yaml: &str) -> Result<Config, ConfigErrors> {
    load_str(yaml, Path::new("test.yaml"), Path::new("."), &no_env)
}

fn fields(errs: &ConfigErrors) -> Vec<String> {
    errs.iter().map(|e| e.field.clone()).collect()
}

const MINIMAL: &str = "
providers:
  local: { kind: mock }
models:
  - id: m1
    targets: [{ provider: local }]
";

#[test]
fn minimal_config_loads_with_defaults() {
    let c = load_yaml(MINIMAL).unwrap();
    assert_eq!(c.mode, Mode::Development);
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 16 * 1024 * 1024);
    assert_eq!(c.models.len(), 1);
    assert_eq!(c.models[0].path, "models[0]");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let yaml = "
server: { listen: nope, threads: 0 }
providers:
  openai:
    kind: openai
    endpoints: [ftp://x]
    keyz: []
  bad:
    kind: opneai
models:
  - id: a
    targets: [{ provider: missing }]
  - id: b
    aliases: [a]
    targets: []
default_model: zzz
";
    let errs = load_yaml(yaml).unwrap_err();
    let f = fields(&errs);
    for expected in [
        "server.listen",
        "server.threads",
        "providers.openai.keyz",
        "providers.bad.kind",
        "models[0].targets[0].provider",
        "models[1].aliases[0]",
        "models[1].targets",
        "default_model",
    ] {
        assert!(
            f.contains(&expected.to_string()),
            "missing {expected} in {f:?}"
        );
    }
}

#[test]
fn bad_url_is_reported_when_the_provider_otherwise_parses() {
    let yaml = "
providers:
  openai: { kind: openai, endpoints: ['ftp://x', 'https://ok.example'] }
models: [{ id: a, targets: [{ provider: openai }] }]
";
    let errs = load_yaml(yaml).unwrap_err();
    assert_eq!(fields(&errs), vec!["providers.openai.endpoints[0]"]);
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let errs = load_yaml(&format!("{MINIMAL}\nmetricz: {{}}\n")).unwrap_err();
    assert_eq!(fields(&errs), vec!["metricz"]);
}

#[test]
fn missing_env_var_is_named_and_default_applies() {
    let yaml = "
providers:
  openai:
    kind: openai
    endpoints: ['${OPENAI_BASE:-https://api.openai.com}']
    keys: [{ id: k, value: '${OPENAI_API_KEY}' }]
models: [{ id: a, targets: [{ provider: openai }] }]
";
    let errs = load_yaml(yaml).unwrap_err();
    assert_eq!(fields(&errs), vec!["providers.openai.keys[0].value"]);
    assert!(errs.0[0].message.contains("OPENAI_API_KEY"));

    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-test".to_string());
    let c = load_str(yaml, Path::new("t.yaml"), Path::new("."), &env).unwrap();
    assert_eq!(
        c.providers["openai"].keys[0].value.as_deref(),
        Some("sk-test")
    );
    assert_eq!(
        c.providers["openai"].endpoints[0].url,
        "https://api.openai.com"
    );
}

#[test]
fn env_files_supply_variables_after_the_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env.api_keys"), "K=from-file\nJ=file-j\n").unwrap();
    let yaml = "
env_files: [.env.api_keys, .env.absent]
providers:
  p:
    kind: openai-compatible
    endpoints: [http://127.0.0.1:9]
    keys: [{ id: a, value: '${K}' }, { id: b, value: '${J}' }]
models: [{ id: a, targets: [{ provider: p }] }]
";
    let env = |k: &str| (k == "J").then(|| "from-env".to_string());
    let c = load_str(yaml, &dir.path().join("c.yaml"), dir.path(), &env).unwrap();
    let keys = &c.providers["p"].keys;
    assert_eq!(keys[0].value.as_deref(), Some("from-file"));
    assert_eq!(keys[1].value.as_deref(), Some("from-env"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}

#[test]
fn models_file_is_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.yaml"),
        "models:\n  - id: x\n    targets: [{ provider: local }]\n  - id: x\n    targets: [{ provider: local }]\ndefault_model: x\n",
    )
    .unwrap();
    let yaml = "providers: { local: { kind: mock } }\nmodels_file: models.yaml\n";
    let errs = load_str(yaml, &dir.path().join("c.yaml"), dir.path(), &no_env).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs}");
    assert_eq!(errs.0[0].field, "models[1].id");
    assert!(errs.0[0].file.ends_with("models.yaml"));
}

#[test]
fn key_needs_exactly_one_source_and_unique_ids() {
    let yaml = "
providers:
  p:
    kind: openai
    endpoints: [https://api.openai.com]
    keys: [{ id: a }, { id: a, value: x, file: /f }]
models: [{ id: a, targets: [{ provider: p }] }]
";
    let f = fields(&load_yaml(yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "providers.p.keys[0]",
            "providers.p.keys[1].id",
            "providers.p.keys[1]"
        ]
    );
}

#[test]
fn mock_and_real_provider_rules() {
    let yaml = "
providers:
  m: { kind: mock, endpoints: [http://x], mock: { failure_rate: 2 } }
  r: { kind: openai, mock: {} }
models: [{ id: a, targets: [{ provider: m }, { provider: r }] }]
";
    let f = fields(&load_yaml(yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "providers.m.endpoints",
            "providers.m.mock.failure_rate",
            "providers.r.endpoints",
            "providers.r.mock"
        ]
    );
}

#[test]
fn extra_paths_must_be_new_and_normalised() {
    let yaml = format!(
        "{MINIMAL}
server:
  extra_paths:
    - {{ path: /v1/rerank }}
    - {{ path: /v1/chat/completions }}
    - {{ path: /v1/../x }}
    - {{ path: /v1/rerank }}
"
    );
    let f = fields(&load_yaml(&yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "server.extra_paths[1].path",
            "server.extra_paths[2].path",
            "server.extra_paths[3].path"
        ]
    );
}

#[test]
fn managed_headers_cannot_be_configured() {
    let yaml = "
providers:
  p: { kind: openai, endpoints: [https://a.example], headers: { Authorization: x, HTTP-Referer: https://me } }
models: [{ id: a, targets: [{ provider: p }] }]
";
    assert_eq!(
        fields(&load_yaml(yaml).unwrap_err()),
        vec!["providers.p.headers.Authorization"]
    );
}

#[test]
fn errors_never_echo_values() {
    let yaml = "
server: { threads: sk-supersecret }
providers: { local: { kind: mock } }
models: [{ id: a, targets: [{ provider: local }] }]
";
    let errs = load_yaml(yaml).unwrap_err();
    assert!(!errs.to_string().contains("supersecret"), "{errs}");
}

#[test]
fn invalid_yaml_reports_the_file() {
    let errs = load_yaml("providers: [\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs.to_string().starts_with("test.yaml: invalid YAML"),
        "{errs}"
    );
}

#[test]
fn api_keys_need_roles_unique_digests_and_known_roles() {
    let d = "a".repeat(64);
    let yaml = format!(
        "{MINIMAL}
auth:
  roles: {{ r: {{ models: ['*'], endpoints: [chat, bogus] }} }}
  api_keys:
    - {{ id: a, sha256: '{d}', roles: [r] }}
    - {{ id: b, sha256: '{d}', roles: [] }}
    - {{ id: c, sha256: nothex, roles: [ghost], expires_at: tomorrow }}
"
    );
    let f = fields(&load_yaml(&yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "auth.roles.r.endpoints[1]",
            "auth.api_keys[1].sha256",
            "auth.api_keys[1].roles",
            "auth.api_keys[2].sha256",
            "auth.api_keys[2].roles[0]",
            "auth.api_keys[2].expires_at",
        ]
    );
}

#[test]
fn jwt_needs_a_key_and_known_algorithms() {
    let yaml = format!(
        "{MINIMAL}\nauth:\n  jwt: {{ algorithms: [HS256, XX1], jwks_refresh_seconds: 1 }}\n"
    );
    let f = fields(&load_yaml(&yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "auth.jwt.algorithms[1]",
            "auth.jwt",
            "auth.jwt.jwks_refresh_seconds"
        ]
    );
}

#[test]
fn jwt_algorithms_need_a_key_of_their_family_and_claims_lists_are_not_empty() {
    let yaml = format!(
        "{MINIMAL}\nauth:\n  jwt: {{ algorithms: [RS256], hmac_secret: s, issuer: [], audience: ['', x] }}\n"
    );
    let f = fields(&load_yaml(&yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "auth.jwt.algorithms",
            "auth.jwt.issuer",
            "auth.jwt.audience"
        ]
    );
    let ok = format!("{MINIMAL}\nauth:\n  jwt: {{ algorithms: [RS256, HS256], hmac_secret: s }}\n");
    assert!(load_yaml(&ok).is_ok());
}

#[test]
fn pool_settings_are_checked() {
    let yaml = "
providers:
  p:
    kind: openai
    endpoints: [https://a.example]
    strategy: fastest
  q:
    kind: openai
    endpoints: [https://a.example]
    health_check: { path: v1/models, interval_seconds: 0 }
    breaker: { open_seconds: 60, max_open_seconds: 30 }
    retry: { max_attempts: 0 }
models: [{ id: a, targets: [{ provider: q }] }]
";
    let f = fields(&load_yaml(yaml).unwrap_err());
    assert_eq!(
        f,
        vec![
            "providers.p.strategy",
            "providers.q.health_check.interval_seconds",
            "providers.q.health_check.path",
            "providers.q.breaker.max_open_seconds",
            "providers.q.retry.max_attempts",
        ]
    );
}

#[test]
fn the_files_a_configuration_came_from_are_listed_for_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.yaml"),
        "models:\n  - { id: m1, targets: [{ provider: local }] }\n",
    )
    .unwrap();
    let main = dir.path().join("ultra.yaml");
    std::fs::write(
        &main,
        "env_files: [.env.keys, /nonexistent/.env]\nproviders:\n  local: { kind: mock }\nmodels_file: models.yaml\n",
    )
    .unwrap();
    let c = load(&main, &no_env).unwrap();
    assert_eq!(
        c.sources,
        [
            main.clone(),
            dir.path().join(".env.keys"),
            PathBuf::from("/nonexistent/.env"),
            dir.path().join("models.yaml"),
        ],
        "missing env files too: creating one is a change"
    );
}
