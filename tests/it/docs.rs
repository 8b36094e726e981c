//! The documentation keeps up with the code: every configuration key of the schema is described
//! in docs/configuration.md, and the README opens with its two commands.

use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// Where each schema struct's keys live in the configuration, as docs/configuration.md's
/// headings name them. A struct missing here fails the test: a new section must be placed.
const STRUCT_PATHS: &[(&str, &str)] = &[
    ("ServerSection", "server"),
    ("ExtraPath", "server.extra_paths"),
    ("LoggingSection", "logging"),
    ("AuthSection", "auth"),
    ("JwtSection", "auth.jwt"),
    ("ApiKeySpec", "auth.api_keys"),
    ("RoleSpec", "auth.roles"),
    ("AuditSection", "audit"),
    ("MetricsSection", "metrics"),
    ("ReloadSection", "reload"),
    ("UsageSection", "usage"),
    ("QuotasSection", "quotas"),
    ("RedisSpec", "quotas.redis"),
    ("QuotaRule", "quotas.rules"),
    ("QuotaMatch", "quotas.rules[].match"),
    ("AnalyzeSection", "analyze"),
    ("SynthesisSpec", "analyze.synthesis"),
    ("ProviderSpec", "providers.<name>"),
    ("HealthCheckSpec", "providers.<name>.health_check"),
    ("BreakerSpec", "providers.<name>.breaker"),
    ("RetrySpec", "providers.<name>.retry"),
    ("EndpointSpec", "providers.<name>.endpoints"),
    ("EndpointObject", "providers.<name>.endpoints"),
    ("KeySpec", "providers.<name>.keys"),
    ("TimeoutsSpec", "providers.<name>.timeouts"),
    ("MockSpec", "providers.<name>.mock"),
    ("ModelSpec", "models"),
    ("TargetSpec", "models[].targets"),
    ("PricingSpec", "models[].pricing"),
    ("ModelsFileTop", "models_file"),
];

/// The fields of every `struct` with named fields in the schema files, by struct name.
fn schema_structs() -> Vec<(String, Vec<String>)> {
    let schema = read("src/config/schema.rs")
        + &read("src/config/auth.rs")
        + &read("src/config/observability.rs")
        + &read("src/config/quotas.rs")
        + &read("src/config/analyze.rs");
    let mut structs: Vec<(String, Vec<String>)> = Vec::new();
    // A `#[serde(... rename = "key")]` names the next field's key.
    let mut renamed: Option<String> = None;
    for line in schema.lines() {
        let l = line.trim_start();
        if l.starts_with("#[serde(") {
            renamed = l
                .split("rename = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string);
            continue;
        }
        let decl = l
            .strip_prefix("pub struct ")
            .or_else(|| l.strip_prefix("struct "));
        if let Some(rest) = decl.filter(|r| r.ends_with('{')) {
            let name = rest.trim_end_matches('{').trim().to_string();
            structs.push((name, Vec::new()));
            continue;
        }
        if line == "}" {
            continue;
        }
        let field = l.strip_prefix("pub ").unwrap_or(l);
        if let (Some((name, rest)), Some(current)) = (field.split_once(": "), structs.last_mut()) {
            let is_field = line.starts_with("    ")
                && !line.starts_with("     ")
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && rest.ends_with(',');
            if is_field {
                current
                    .1
                    .push(renamed.take().unwrap_or_else(|| name.to_string()));
            }
        }
    }
    structs.retain(|(_, fields)| !fields.is_empty());
    structs
}

/// The text under each heading of docs/configuration.md, by the heading's first backticked
/// name (`## \`server\`` gives `server`), up to the next heading.
fn doc_sections(doc: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut in_code = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if line.starts_with('#') && !in_code {
            let name = line.split('`').nth(1).unwrap_or_default().to_string();
            sections.push((name, String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
}

#[test]
fn configuration_reference_documents_every_schema_key_at_its_path() {
    let doc = read("docs/configuration.md");
    let sections = doc_sections(&doc);
    let structs = schema_structs();
    assert!(
        structs.len() > 15,
        "schema parse found too few structs: {structs:?}"
    );
    let mut missing = Vec::new();
    for (name, fields) in &structs {
        let Some((_, path)) = STRUCT_PATHS.iter().find(|(s, _)| s == name) else {
            panic!("schema struct {name} has no documented path: add it to STRUCT_PATHS");
        };
        let section: String = sections
            .iter()
            .filter(|(h, _)| h == path)
            .map(|(_, t)| t.as_str())
            .collect();
        for f in fields {
            let row = section
                .lines()
                .any(|l| l.starts_with(&format!("| `{f}` |")));
            let own_heading = sections.iter().any(|(h, _)| *h == format!("{path}.{f}"));
            if !(row || own_heading) {
                missing.push(format!("{path}.{f}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document, at their path: {missing:?}"
    );
    for top in [
        "mode",
        "env_files",
        "server",
        "logging",
        "providers",
        "models_file",
        "models",
    ] {
        assert!(
            sections.iter().any(|(h, _)| h == top) || doc.contains(&format!("| `{top}` |")),
            "top-level `{top}`"
        );
    }
}

#[test]
fn readme_opens_with_the_run_and_test_commands() {
    let readme = read("README.md");
    let block: Vec<&str> = readme
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(block.len(), 2, "{block:?}");
    assert!(block[0].starts_with("cargo run --release"));
    assert!(block[1].starts_with("scripts/test"));
    assert!(read(".ci/run").contains("scripts/test"));
}
