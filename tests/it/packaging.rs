//! The container image's recipe, checked without a container engine (none runs on the build
//! machines): what the Dockerfile copies exists and is not ignored, it builds with the command CI
//! runs, its HEALTHCHECK uses the `healthcheck` subcommand in exec form; and that subcommand
//! against a live gateway.

use crate::common::gateway::{binary, TestGateway};
use std::path::Path;
use std::process::Command;

fn repo(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The Dockerfile's instructions, continuation lines joined.
fn instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in repo("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push(current.trim().to_string());
                }
                current.clear();
            }
        }
    }
    out
}

#[test]
fn every_path_the_dockerfile_copies_exists_and_is_not_ignored() {
    let ignored: Vec<String> = repo(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let copies: Vec<String> = instructions()
        .into_iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from="))
        .collect();
    assert!(copies.len() >= 4, "{copies:?}");
    for copy in copies {
        let words: Vec<&str> = copy.split_whitespace().skip(1).collect();
        let (sources, _dest) = words.split_at(words.len() - 1);
        for src in sources {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
            assert!(
                !ignored.iter().any(|i| i == src.trim_end_matches('/')),
                ".dockerignore excludes {src}, which the Dockerfile copies"
            );
        }
    }
    for secret in [".env*", "target/", ".git/"] {
        assert!(
            repo(".dockerignore").lines().any(|l| l.trim() == secret),
            ".dockerignore must keep {secret} out of the build context"
        );
    }
}

#[test]
fn the_image_builds_with_the_command_ci_runs() {
    const BUILD: &str = "cargo build --release --locked";
    let builds: Vec<String> = instructions()
        .into_iter()
        .filter(|i| i.contains("cargo "))
        .collect();
    assert!(!builds.is_empty());
    for b in &builds {
        for cargo in b.split("&&").filter(|c| c.contains("cargo ")) {
            assert_eq!(
                cargo.trim(),
                BUILD,
                "the Dockerfile runs `{}`",
                cargo.trim()
            );
        }
    }
    assert!(
        repo(".ci/run").lines().any(|l| l.trim() == BUILD),
        ".ci/run must build the release binary as the image does: {BUILD}"
    );
    // The builder's Rust is the one the crate declares as its minimum.
    let msrv = repo("Cargo.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("rust-version = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .expect("rust-version in Cargo.toml");
    assert!(
        instructions()
            .iter()
            .any(|i| i == &format!("ARG RUST_VERSION={msrv}")),
        "the builder image should use rust {msrv}"
    );
}

#[test]
fn the_runtime_image_is_small_non_root_and_checks_its_health_without_a_shell() {
    let all = instructions();
    let runtime_from = all
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a runtime stage");
    let runtime = &all[runtime_from..];
    assert!(
        runtime[0].contains("distroless") || runtime[0].contains("slim"),
        "{}",
        runtime[0]
    );
    let user = runtime
        .iter()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    let health = runtime
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    assert!(
        health.contains(r#"CMD ["/usr/local/bin/ultra-gateway", "healthcheck""#),
        "exec form, no shell: {health}"
    );
    let copied: Vec<&String> = runtime.iter().filter(|i| i.starts_with("COPY ")).collect();
    assert_eq!(copied.len(), 2, "the binary and conf/ only: {copied:?}");
    for label in [
        "title", "version", "revision", "created", "source", "licenses",
    ] {
        assert!(
            runtime
                .iter()
                .any(|i| i.contains(&format!("org.opencontainers.image.{label}="))),
            "OCI label {label}"
        );
    }
}

fn healthcheck(url: &str) -> (i32, String) {
    let out = Command::new(binary())
        .args(["healthcheck", "--url", url, "--timeout-seconds", "3"])
        .output()
        .expect("run healthcheck");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn healthcheck_passes_on_a_live_gateway_and_fails_otherwise() {
    let gw = TestGateway::start(&crate::common::openai_config("http://127.0.0.1:9"));
    let (code, err) = healthcheck(&gw.url("/health"));
    assert_eq!(code, 0, "{err}");
    // Not a 200: unhealthy.
    let (code, err) = healthcheck(&gw.url("/no-such-path"));
    assert_eq!(code, 1);
    assert!(err.contains("status 404"), "{err}");
    // Nothing listening: unhealthy, promptly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err) = healthcheck(&format!("http://127.0.0.1:{port}/health"));
    assert_eq!(code, 1);
    assert!(!err.is_empty());
    let (code, err) = healthcheck("https://127.0.0.1/health");
    assert_eq!(code, 1);
    assert!(err.contains("only http://"), "{err}");
}
