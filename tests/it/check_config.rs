//! `ultra-gateway check-config`: the shipped configurations pass; a broken one lists every
//! problem with its file and field path, and never a value.

use crate::common::gateway::binary;
use std::path::Path;
use std::process::Command;

fn check(path: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(["check-config", "-c"]).arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn shipped_development_config_passes() {
    let (code, out, err) = check(&repo("conf/ultra.yaml"), &[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("OK (development mode, 5 models, 1 provider)"),
        "{out}"
    );
}

#[test]
fn production_example_passes_when_its_variables_are_set() {
    let env = [
        ("OPENAI_API_KEY", "sk-a"),
        ("OPENAI_API_KEY_2", "sk-b"),
        ("ANTHROPIC_API_KEY", "sk-ant-c"),
        ("GROQ_API_KEY", "gsk-d"),
        ("AZURE_OPENAI_API_KEY", "az-e"),
        ("AZURE_OPENAI_RESOURCE", "myres"),
        ("OIDC_JWKS_URL", "https://idp.example.com/jwks.json"),
        ("OIDC_ISSUER", "https://idp.example.com"),
        (
            "BILLING_SERVICE_KEY_SHA256",
            "4203c5b18cd9d642d77d22d8a5a2fc6e7045bb6c999bf6c4d3e6e24ec29e69d5",
        ),
    ];
    let (code, out, err) = check(&repo("conf/production.example.yaml"), &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("production mode"), "{out}");
}

#[test]
fn production_example_names_missing_variables() {
    let (code, _, err) = check(&repo("conf/production.example.yaml"), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
    assert!(err.contains("providers.openai.keys[0].value"), "{err}");
}

#[test]
fn every_problem_is_listed_with_file_and_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "
server:
  listen: not-an-address
  max_body_bytes: 10
providers:
  openai:
    kind: openai
    endpoints: ['https://user:sk-leaked-in-url@api.openai.com']
    keys: [{ id: main, value: '${SECRET_NOT_SET}' }]
  groq:
    kind: openai-compatible
    endpoints: [https://api.groq.com/openai/v1]
    timeout: { connect_ms: 1 }
models:
  - id: gpt-4o
    targets: [{ provider: openai }]
  - id: llama
    aliases: [gpt-4o]
    targets: [{ provider: nowhere }]
  - id: empty
    targets: []
default_model: missing-model
",
    )
    .unwrap();
    let (code, out, err) = check(&path, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let file = path.display().to_string();
    for field in [
        "server.listen",
        "server.max_body_bytes",
        "providers.openai.endpoints[0]",
        "providers.openai.keys[0].value",
        "providers.groq.timeout",
        "models[1].aliases[0]",
        "models[1].targets[0].provider",
        "models[2].targets",
        "default_model",
    ] {
        let line = format!("{file}: {field}: ");
        assert!(err.contains(&line), "missing `{line}` in:\n{err}");
    }
    assert!(
        err.contains("SECRET_NOT_SET"),
        "the variable is named: {err}"
    );
    assert!(!err.contains("sk-leaked-in-url"), "a value leaked: {err}");
    assert!(err.trim_end().ends_with("9 problems found"), "{err}");
}

#[test]
fn unreadable_key_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "providers:\n  p:\n    kind: openai\n    endpoints: [https://api.openai.com]\n    keys: [{ id: f, file: missing.key }]\nmodels: [{ id: m, targets: [{ provider: p }] }]\n",
    )
    .unwrap();
    let (code, _, err) = check(&path, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("providers.p.keys[0].file: cannot read key file"),
        "{err}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = check(Path::new("/nonexistent/ultra.yaml"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/ultra.yaml: cannot read file"),
        "{err}"
    );
}
