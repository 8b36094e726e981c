//! Every relative link in README.md and docs/*.md points at a file that exists and, with a
//! `#anchor`, at a heading of that file (GitHub's slugs): a renamed section or a moved page
//! breaks the build, not the reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (`-` and `_` kept), spaces
/// to `-`; a repeated heading gets `-1`, `-2`, ...
fn slugs(markdown: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The `](target)` links of a markdown text, outside code fences.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join("deploy/k8s/README.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            files.push(p);
        }
    }
    files
}

#[test]
fn every_relative_link_resolves_to_a_file_and_a_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(path)
            };
            checked += 1;
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", file.display()));
                continue;
            }
            if let (Some(anchor), Some("md")) =
                (anchor, target.extension().and_then(|e| e.to_str()))
            {
                let headings = slugs(&std::fs::read_to_string(&target).unwrap());
                if !headings.iter().any(|h| h == anchor) {
                    broken.push(format!("{}: {link}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the scanner broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slugs("# Top\n## `providers.<name>.keys`\n## Top\n```\n# not a heading\n```\n### What's left?"),
        vec!["top", "providersnamekeys", "top-1", "whats-left"]
    );
}

/// Every path the gateway serves (from the code's own tables, so a new endpoint without docs
/// fails here) is in docs/openapi.yaml's `paths` and has a heading or a row in docs/api.md.
#[test]
fn every_served_path_is_in_the_openapi_file_and_api_md() {
    use ultra_gateway::endpoints::BUILTIN_PROXY_PATHS;
    use ultra_gateway::proxy::local::{LISTED_PATHS, LISTED_POST_PATHS};
    let openapi: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap())
            .unwrap();
    let paths = openapi["paths"].as_mapping().expect("openapi paths");
    let api = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    let served: Vec<&str> = LISTED_PATHS
        .iter()
        .chain(LISTED_POST_PATHS)
        .copied()
        .chain(BUILTIN_PROXY_PATHS.iter().map(|(p, _)| *p))
        .chain(["/metrics", "/healthz", "/readyz"])
        .collect();
    assert!(served.len() >= 17, "{served:?}");
    let mut missing = Vec::new();
    for p in served {
        if !paths.contains_key(serde_yaml::Value::from(p)) {
            missing.push(format!("docs/openapi.yaml: {p}"));
        }
        if !api.contains(&format!("`{p}`")) && !api.contains(&format!(" {p}`")) {
            missing.push(format!("docs/api.md: {p}"));
        }
    }
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
}
