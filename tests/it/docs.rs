//! The documentation keeps up with the code: every configuration key of the schema is described
//! in docs/configuration.md, and the README opens with its two commands.

use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// Field names of the serde structs in src/config/schema.rs and src/config/auth.rs.
fn schema_keys() -> Vec<String> {
    let schema = read("src/config/schema.rs") + &read("src/config/auth.rs");
    let mut keys: Vec<String> = schema
        .lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix("pub ").or(Some(l)))
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            let is_field = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && rest.ends_with(',');
            is_field.then(|| name.to_string())
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn configuration_reference_names_every_schema_key() {
    let doc = read("docs/configuration.md");
    let keys = schema_keys();
    assert!(keys.len() > 30, "schema parse found too few keys: {keys:?}");
    for must in [
        "listen",
        "max_body_bytes",
        "endpoints",
        "first_byte_ms",
        "sni",
        "default_model",
    ] {
        assert!(
            keys.contains(&must.to_string()),
            "{must} not found in schema: {keys:?}"
        );
    }
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention: {missing:?}"
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
        assert!(doc.contains(&format!("`{top}`")), "{top}");
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
