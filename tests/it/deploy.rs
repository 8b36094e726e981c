//! The deployment kit under `deploy/` holds together without a container engine or a cluster:
//! every YAML and JSON file parses, the gateway configurations of compose and of the Kubernetes
//! ConfigMap pass `check-config` in production mode, the orchestrators give the gateway longer
//! to stop than its grace period, the probes and health checks point at the right endpoints,
//! what compose mounts exists, and no secret is shipped.

use crate::common::gateway::binary;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Time the gateway may still need once its grace period is over: cut requests get up to 2 s
/// to end (`shutdown::CUT_WAIT`), then the logs are flushed and the state file written. An
/// orchestrator's stop timeout must cover the grace period plus this.
const STOP_MARGIN_SECONDS: u64 = 5;

/// Files another part of the kit provides (the Prometheus and Grafana configuration). Until
/// they exist, compose's mounts of them are not checked; once they do, they are.
const OBSERVABILITY_FILES: &[&str] = &[
    "prometheus/prometheus.yml",
    "prometheus/alerts.yaml",
    "grafana/ultra-gateway.json",
    "grafana/provisioning/datasources/prometheus.yaml",
    "grafana/provisioning/dashboards/ultra-gateway.yaml",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The one document of a YAML file.
fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

/// The files under `dir`, recursively, in a stable order.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The names of the `${VAR}`s (without a `:-default`) in the string values of a configuration,
/// where the gateway interpolates them (comments and map keys are not interpolated).
fn required_vars(config: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) => scan(s, out),
            Value::Sequence(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Mapping(m) => m.values().for_each(|i| walk(i, out)),
            Value::Tagged(t) => walk(&t.value, out),
            _ => {}
        }
    }
    fn scan(s: &str, out: &mut BTreeSet<String>) {
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            let after = &rest[i + 1..];
            if let Some(escaped) = after.strip_prefix('$') {
                rest = escaped; // `$$` is a literal `$`
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .expect("an unterminated ${ in a shipped configuration");
                let inner = &body[..end];
                if !inner.contains(":-") {
                    out.insert(inner.to_string());
                }
                rest = &body[end + 1..];
            } else {
                rest = after;
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(config, &mut out);
    out
}

/// A value of the right shape for a variable, by its name: what `check-config` needs to accept
/// the configuration (a real key is never needed: nothing is contacted).
fn placeholder(name: &str) -> String {
    use sha2::Digest;
    if name.ends_with("SHA256") {
        // A distinct digest per variable: the same digest twice is an error.
        return sha2::Sha256::digest(name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    }
    if name.contains("JWKS") {
        return "https://idp.example.com/realms/main/protocol/openid-connect/certs".into();
    }
    if name.contains("ISSUER") {
        return "https://idp.example.com/realms/main".into();
    }
    if name.contains("REDIS") && name.ends_with("URL") {
        return "redis://:placeholder-password@redis:6379/0".into();
    }
    if name.ends_with("_URL") {
        return "https://placeholder.example.com".into();
    }
    if name.ends_with("RESOURCE") {
        return "placeholder".into();
    }
    // Keys, passwords and secrets: long enough for an HMAC secret (32 bytes), URL-safe.
    format!(
        "placeholder-{}-0123456789abcdef0123456789abcdef",
        name.to_ascii_lowercase()
    )
}

/// `ultra-gateway check-config -c CONFIG` with exactly `env` as its environment (nothing of the
/// test's own environment can make a missing variable pass): exit code, stdout, stderr.
fn check_config(config: &Path, env: &[(String, String)]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["check-config", "-c"])
        .arg(config)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The variable names of a dotenv file (`NAME=value` lines; comments skipped) with their values.
fn env_file_entries(path: &Path) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not NAME=value: {l}", path.display()));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// Seconds of a duration as compose (`45s`, `1m30s`) or systemd (`45`, `45s`, `1min 30s`)
/// write it.
fn seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    let mut unit = String::new();
    let mut flush = |number: &mut String, unit: &mut String| {
        if number.is_empty() {
            assert!(unit.is_empty(), "bad duration {text:?}");
            return;
        }
        let n: u64 = number.parse().unwrap();
        total += n * match unit.as_str() {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" | "hr" => 3600,
            other => panic!("unknown unit {other:?} in {text:?}"),
        };
        number.clear();
        unit.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut number, &mut unit);
            }
            number.push(c);
        } else if c.is_ascii_alphabetic() {
            unit.push(c);
        } else if !c.is_whitespace() {
            panic!("bad duration {text:?}");
        }
    }
    flush(&mut number, &mut unit);
    total
}

/// `server.grace_period_seconds` of a gateway configuration (the gateway's default: 10).
fn grace_period(config: &Value) -> u64 {
    config["server"]["grace_period_seconds"]
        .as_u64()
        .unwrap_or(10)
}

/// The port of an `IP:PORT` listen address.
fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not IP:PORT: {listen}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|i| i.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Every file parses.

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let files = files_under(&deploy());
    let mut checked = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let docs = yaml_docs(path);
            assert!(!docs.is_empty(), "{}: no YAML document", path.display());
        } else if name.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&read(path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else {
            continue;
        }
        checked.push(path.strip_prefix(deploy()).unwrap().display().to_string());
    }
    // The walk found the kit, not an empty directory.
    for expected in [
        "compose.yaml",
        "compose/gateway/ultra.yaml",
        "k8s/configmap.yaml",
        "k8s/deployment.yaml",
        "k8s/hpa.yaml",
        "k8s/pdb.yaml",
        "k8s/secret.yaml",
        "k8s/service.yaml",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not found among {checked:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Docker Compose.

struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            doc: yaml(&deploy().join("compose.yaml")),
        }
    }

    fn service(&self, name: &str) -> &Value {
        let s = &self.doc["services"][name];
        assert!(s.is_mapping(), "compose.yaml has no service `{name}`");
        s
    }

    /// Bind mounts of a service as (host path relative to deploy/, container path).
    fn binds(&self, service: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for v in self.service(service)["volumes"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let (source, target) = match &v {
                Value::String(s) => {
                    let mut parts = s.split(':');
                    let source = parts.next().unwrap().to_string();
                    let target = parts.next().unwrap_or_default().to_string();
                    (source, target)
                }
                m => (
                    m["source"].as_str().unwrap_or_default().to_string(),
                    m["target"].as_str().unwrap_or_default().to_string(),
                ),
            };
            if source.starts_with('.') || source.starts_with('/') {
                out.push((source, target));
            }
        }
        out
    }

    /// The gateway's configuration file on the host: the `-c` of its command, mapped through
    /// its bind mounts.
    fn gateway_config(&self) -> PathBuf {
        let command = strings(&self.service("gateway")["command"]);
        let i = command
            .iter()
            .position(|a| a == "-c")
            .expect("the gateway's command names its configuration with -c");
        let inside = Path::new(&command[i + 1]);
        for (source, target) in self.binds("gateway") {
            if let Ok(rest) = inside.strip_prefix(&target) {
                return deploy().join(source).join(rest);
            }
        }
        panic!(
            "no bind mount of compose.yaml's gateway holds {}",
            inside.display()
        );
    }

    /// Env files of a service, relative to deploy/.
    fn env_files(&self, service: &str) -> Vec<String> {
        match &self.service(service)["env_file"] {
            Value::String(s) => vec![s.clone()],
            Value::Sequence(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    m => m["path"].as_str().expect("env_file path").to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The variables a service's env files provide, with placeholder values, read from the
    /// shipped `.example` files (the real files are the operator's, outside version control).
    fn env_placeholders(&self, service: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for f in self.env_files(service) {
            let example = deploy().join(format!("{f}.example"));
            for (k, _) in env_file_entries(&example) {
                let v = placeholder(&k);
                env.push((k, v));
            }
        }
        env
    }
}

#[test]
fn compose_gateway_config_passes_check_config_in_production_mode() {
    let compose = Compose::load();
    let config_path = compose.gateway_config();
    let config = yaml(&config_path);
    assert_eq!(
        config["mode"].as_str(),
        Some("production"),
        "{}",
        config_path.display()
    );

    // Compose provides every variable the configuration needs: a variable missing from the env
    // files' examples would stop the gateway of everyone who followed them.
    let env = compose.env_placeholders("gateway");
    let provided: BTreeSet<String> = env.iter().map(|(k, _)| k.clone()).collect();
    let missing: Vec<_> = required_vars(&config)
        .difference(&provided)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "{} needs {missing:?}, which no env file of the gateway service declares",
        config_path.display()
    );

    let (code, out, err) = check_config(&config_path, &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("OK (production mode"), "{out}");

    // Several gateways on one Redis share budgets: the store is Redis, and the host in its URL
    // is a compose service.
    assert_eq!(config["quotas"]["store"].as_str(), Some("redis"));
    let url = config["quotas"]["redis"]["url"].as_str().unwrap();
    let host = url
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or_else(|| url.split_once("//").unwrap().1)
        .split([':', '/'])
        .next()
        .unwrap();
    compose.service(host);
}

#[test]
fn compose_gateway_config_is_refused_with_the_shipped_empty_values() {
    // Fail closed: the env files copied from their examples and not filled in stop the gateway.
    let compose = Compose::load();
    let mut env = Vec::new();
    for f in compose.env_files("gateway") {
        env.extend(env_file_entries(&deploy().join(format!("{f}.example"))));
    }
    let (code, out, err) = check_config(&compose.gateway_config(), &env);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("production mode refuses this"), "{err}");
}

#[test]
fn compose_mounts_only_files_that_exist() {
    let compose = Compose::load();
    let services = compose.doc["services"].as_mapping().unwrap();
    let declared_volumes = compose.doc["volumes"]
        .as_mapping()
        .cloned()
        .unwrap_or_default();
    let mut checked = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for (source, target) in compose.binds(name) {
            let relative = source.trim_start_matches("./");
            // Written by another part of the kit; checked once it lands (a missing bind source
            // would make Docker create an empty directory in its place).
            if OBSERVABILITY_FILES.contains(&relative) && !deploy().join(relative).exists() {
                continue;
            }
            let host = deploy().join(&source);
            assert!(
                host.exists(),
                "service {name} mounts {source} (at {target}), which does not exist"
            );
            checked += 1;
        }
        // Named volumes are declared at the top level.
        for v in service["volumes"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(s) = v.as_str() {
                let source = s.split(':').next().unwrap();
                if !(source.starts_with('.') || source.starts_with('/')) {
                    assert!(
                        declared_volumes.contains_key(source),
                        "service {name} uses the undeclared volume {source}"
                    );
                }
            }
        }
        // Env files are the operator's copies of shipped examples.
        for f in compose.env_files(name) {
            let example = deploy().join(format!("{f}.example"));
            assert!(
                example.exists(),
                "service {name} reads {f}: ship {}",
                example.display()
            );
        }
    }
    assert!(checked > 0, "no bind mount was checked");
    // The image is built from the repository's Dockerfile.
    let build = &compose.service("gateway")["build"];
    let context = deploy().join(build["context"].as_str().expect("build.context"));
    let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
    assert!(
        context.join(dockerfile).exists(),
        "no {dockerfile} in {}",
        context.display()
    );
}

#[test]
fn compose_gateway_is_health_checked_drains_and_publishes_on_loopback_only() {
    let compose = Compose::load();
    let config = yaml(&compose.gateway_config());
    let gateway = compose.service("gateway");
    let listen_port = port_of(config["server"]["listen"].as_str().unwrap());
    let metrics_port = port_of(config["metrics"]["listen"].as_str().unwrap());

    // The binary's own health check (the image has no shell or curl), against /health on the
    // configured port.
    let test = strings(&gateway["healthcheck"]["test"]);
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "{test:?}");
    assert!(test.iter().any(|a| a == "healthcheck"), "{test:?}");
    let url = format!("http://127.0.0.1:{listen_port}/health");
    assert!(test.contains(&url), "{test:?} should check {url}");

    // Compose's default stop timeout (10 s) would SIGKILL requests the gateway is draining.
    let stop = seconds(
        gateway["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    let grace = grace_period(&config);
    assert!(
        stop >= grace + STOP_MARGIN_SECONDS,
        "stop_grace_period {stop}s must exceed grace_period_seconds {grace} + {STOP_MARGIN_SECONDS}"
    );

    // Nothing is published beyond the loopback interface (no TLS here, Prometheus has no
    // authentication), and the metrics port not at all: Prometheus reaches it over the
    // compose network.
    for (name, service) in compose.doc["services"].as_mapping().unwrap() {
        for p in strings(&service["ports"]) {
            assert!(
                p.starts_with("127.0.0.1:"),
                "service {name:?} publishes {p} beyond the loopback interface"
            );
            assert!(
                !p.ends_with(&format!(":{metrics_port}")),
                "service {name:?} publishes the metrics port: {p}"
            );
        }
    }
    // Prometheus scrapes the gateway's metrics listener by its compose name.
    assert_eq!(
        metrics_port, 9464,
        "deploy/prometheus/prometheus.yml scrapes gateway:9464"
    );
    let prometheus = deploy().join("prometheus/prometheus.yml");
    if prometheus.exists() {
        assert!(
            read(&prometheus).contains("gateway:9464"),
            "{} does not scrape gateway:9464",
            prometheus.display()
        );
    }
}

#[test]
fn compose_mounts_the_monitoring_files_where_they_are_read() {
    let compose = Compose::load();
    let target_of = |service: &str, file: &str| -> Option<String> {
        compose
            .binds(service)
            .into_iter()
            .find(|(source, _)| source.trim_start_matches("./") == file)
            .map(|(_, target)| target)
    };
    // The other part of the kit may not have landed yet: each check runs once its file exists.
    let prometheus = deploy().join("prometheus/prometheus.yml");
    if prometheus.exists() {
        let config = yaml(&prometheus);
        let mounted: Vec<String> = compose
            .binds("prometheus")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let config_target = target_of("prometheus", "prometheus/prometheus.yml")
            .expect("compose mounts prometheus.yml");
        assert!(
            strings(&compose.service("prometheus")["command"])
                .contains(&format!("--config.file={config_target}")),
            "prometheus runs on the mounted configuration"
        );
        for rule_file in strings(&config["rule_files"]) {
            assert!(
                mounted.contains(&rule_file),
                "prometheus.yml loads {rule_file}, which compose does not mount"
            );
        }
    }
    let dashboards = deploy().join("grafana/provisioning/dashboards/ultra-gateway.yaml");
    if dashboards.exists() {
        let provider = yaml(&dashboards);
        let dir = provider["providers"][0]["options"]["path"]
            .as_str()
            .expect("the dashboard provider's path");
        let json = target_of("grafana", "grafana/ultra-gateway.json")
            .expect("compose mounts the dashboard");
        assert_eq!(
            Path::new(&json).parent(),
            Some(Path::new(dir)),
            "the provider reads {dir}, the dashboard is mounted at {json}"
        );
    }
    let datasource = deploy().join("grafana/provisioning/datasources/prometheus.yaml");
    if datasource.exists() {
        let url = yaml(&datasource)["datasources"][0]["url"]
            .as_str()
            .expect("the data source's url")
            .to_string();
        let host = url
            .trim_start_matches("http://")
            .split([':', '/'])
            .next()
            .unwrap();
        compose.service(host);
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes.

/// The manifests of deploy/k8s by kind (the first of each kind, or by name).
struct K8s {
    docs: Vec<Value>,
}

impl K8s {
    fn load() -> K8s {
        let mut docs = Vec::new();
        for f in files_under(&deploy().join("k8s")) {
            if f.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                docs.extend(yaml_docs(&f));
            }
        }
        K8s { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert!(!all.is_empty(), "no {kind} in deploy/k8s");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/k8s"))
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn container(&self) -> &Value {
        let containers = self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container: the gateway");
        &containers[0]
    }

    /// The container port a probe or Service names (by name or number).
    fn container_port(&self, port: &Value) -> u64 {
        if let Some(n) = port.as_u64() {
            return n;
        }
        let name = port.as_str().expect("a port name or number");
        self.container()["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("the container has no port named {name}"))
    }

    /// The ConfigMap the gateway's configuration directory is mounted from, the mount path and
    /// the file (a data key) its `-c` names.
    fn config(&self) -> (&Value, String) {
        let container = self.container();
        let args = strings(&container["args"]);
        let i = args.iter().position(|a| a == "-c").expect("args name -c");
        let file = Path::new(&args[i + 1]);
        let pod = &self.deployment()["spec"]["template"]["spec"];
        for m in container["volumeMounts"].as_sequence().unwrap() {
            let mount = m["mountPath"].as_str().unwrap();
            let Ok(key) = file.strip_prefix(mount) else {
                continue;
            };
            // subPath mounts never see a ConfigMap's updates: no live reload.
            assert!(
                m["subPath"].is_null(),
                "the configuration is mounted with subPath"
            );
            let volume = pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("the mounted volume");
            let cm_name = volume["configMap"]["name"]
                .as_str()
                .expect("the configuration comes from a ConfigMap");
            let cm = self.named("ConfigMap", cm_name);
            return (cm, key.display().to_string());
        }
        panic!("no volume mount holds {}", file.display());
    }

    /// The gateway configuration of the ConfigMap, parsed.
    fn gateway_config(&self) -> Value {
        let (cm, key) = self.config();
        let text = cm["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no key {key}"));
        serde_yaml::from_str(text).unwrap()
    }

    /// The Secret the container's environment comes from.
    fn secret(&self) -> &Value {
        let env_from = self.container()["envFrom"].as_sequence().expect("envFrom");
        let name = env_from
            .iter()
            .find_map(|e| e["secretRef"]["name"].as_str())
            .expect("envFrom a secretRef");
        self.named("Secret", name)
    }

    fn secret_entries(&self) -> Vec<(String, String)> {
        let s = self.secret();
        let data = s["stringData"]
            .as_mapping()
            .expect("the Secret's stringData");
        data.iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v.as_str().expect("a string value").to_string(),
                )
            })
            .collect()
    }
}

/// Writes every data key of the ConfigMap into a directory, as the pod sees it mounted, and
/// returns the directory and the configuration's path in it.
fn mounted_configmap(k8s: &K8s) -> (tempfile::TempDir, PathBuf) {
    let (cm, key) = k8s.config();
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in cm["data"].as_mapping().unwrap() {
        std::fs::write(dir.path().join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
    }
    let path = dir.path().join(key);
    (dir, path)
}

#[test]
fn k8s_configmap_passes_check_config_in_production_mode() {
    let k8s = K8s::load();
    let config = k8s.gateway_config();
    assert_eq!(config["mode"].as_str(), Some("production"));
    let entries = k8s.secret_entries();
    let provided: BTreeSet<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    let missing: Vec<_> = required_vars(&config)
        .difference(&provided)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "the configuration needs {missing:?}, which the Secret does not hold"
    );
    let env: Vec<_> = entries
        .iter()
        .map(|(k, _)| (k.clone(), placeholder(k)))
        .collect();
    let (_dir, path) = mounted_configmap(&k8s);
    let (code, out, err) = check_config(&path, &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("OK (production mode"), "{out}");
}

#[test]
fn k8s_secret_ships_empty_placeholders_that_production_refuses() {
    let k8s = K8s::load();
    let entries = k8s.secret_entries();
    assert!(!entries.is_empty());
    for (k, v) in &entries {
        assert!(v.is_empty(), "the shipped Secret holds a value for {k}");
    }
    // Applied unfilled, the pods refuse to start (fail closed), naming the variables' fields.
    let (_dir, path) = mounted_configmap(&k8s);
    let (code, out, err) = check_config(&path, &entries);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("production mode refuses this"), "{err}");
}

#[test]
fn k8s_pods_drain_before_they_are_killed() {
    let k8s = K8s::load();
    let pod = &k8s.deployment()["spec"]["template"]["spec"];
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds (Kubernetes' default, 30 s, is too short)");
    let pre_stop = &k8s.container()["lifecycle"]["preStop"];
    let sleep = pre_stop["sleep"]["seconds"].as_u64().unwrap_or_else(|| {
        // An exec form, `sleep N`, on an image that has a shell.
        let cmd = strings(&pre_stop["exec"]["command"]);
        cmd.iter()
            .rev()
            .find_map(|a| a.rsplit(' ').next().and_then(|n| n.parse().ok()))
            .expect("a preStop sleep")
    });
    assert!(
        sleep > 0,
        "preStop must wait for the endpoints to drop the pod"
    );
    let grace = grace_period(&k8s.gateway_config());
    assert!(
        termination >= sleep + grace + STOP_MARGIN_SECONDS,
        "terminationGracePeriodSeconds {termination} must exceed the preStop sleep {sleep} + \
         grace_period_seconds {grace} + {STOP_MARGIN_SECONDS}"
    );
    // Rolling updates start a new pod before stopping an old one.
    let rolling = &k8s.deployment()["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxUnavailable"].as_u64(), Some(0));
}

#[test]
fn k8s_probes_and_ports_match_the_configuration() {
    let k8s = K8s::load();
    let config = k8s.gateway_config();
    let container = k8s.container();
    let listen = u64::from(port_of(config["server"]["listen"].as_str().unwrap()));
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(k8s.container_port(&get["port"]), listen, "{probe}'s port");
    }
    // The metrics listener is a port of its own, and the metrics Service reaches it.
    let metrics = u64::from(port_of(
        config["metrics"]["listen"]
            .as_str()
            .expect("metrics.listen: /metrics off the API port"),
    ));
    assert_ne!(metrics, listen);
    let pod_labels = &k8s.deployment()["spec"]["template"]["metadata"]["labels"];
    let mut targets = BTreeSet::new();
    for svc in k8s.all("Service") {
        let selector = svc["spec"]["selector"].as_mapping().expect("a selector");
        for (k, v) in selector {
            assert_eq!(&pod_labels[k.as_str().unwrap()], v, "selector {k:?}");
        }
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            targets.insert(k8s.container_port(&p["targetPort"]));
        }
    }
    assert_eq!(targets, BTreeSet::from([listen, metrics]));
}

#[test]
fn k8s_pods_are_locked_down() {
    let k8s = K8s::load();
    let pod = &k8s.deployment()["spec"]["template"]["spec"];
    let c = k8s.container();
    let sc = &c["securityContext"];
    assert!(
        sc["runAsNonRoot"].as_bool() == Some(true)
            || pod["securityContext"]["runAsNonRoot"].as_bool() == Some(true)
    );
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()));
    assert!(
        sc["capabilities"]["add"].is_null(),
        "no capability is added"
    );
    assert!(c["resources"]["requests"]["cpu"].as_str().is_some());
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
}

#[test]
fn k8s_replicas_share_quotas_through_redis() {
    let k8s = K8s::load();
    let hpa = k8s.one("HorizontalPodAutoscaler");
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
    assert!(
        min >= 2,
        "one replica leaves nothing serving during a disruption"
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        k8s.deployment()["metadata"]["name"]
    );
    // In memory, each replica would count alone: N replicas, N budgets.
    let config = k8s.gateway_config();
    assert_eq!(config["quotas"]["store"].as_str(), Some("redis"));
    // A disruption budget covering the pods, which lets one go at a time.
    let pdb = k8s.one("PodDisruptionBudget");
    let pod_labels = &k8s.deployment()["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v);
    }
    let allowed = pdb["spec"]["maxUnavailable"].as_u64().unwrap_or_else(|| {
        min - pdb["spec"]["minAvailable"]
            .as_u64()
            .expect("maxUnavailable or minAvailable")
    });
    assert!(
        allowed >= 1 && allowed < min,
        "the PDB lets {allowed} of {min} go"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd.

/// The `[Service]` section's settings, in order (a key may repeat).
fn unit_service_settings() -> Vec<(String, String)> {
    let text = read(&deploy().join("systemd/ultra-gateway.service"));
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("Key=value");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn systemd_unit_reloads_with_hup_and_outlasts_the_grace_period() {
    let settings = unit_service_settings();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = get(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0]
    };
    assert!(
        get("ExecReload")
            .iter()
            .any(|v| v.contains("kill -HUP $MAINPID")),
        "ExecReload sends SIGHUP: {:?}",
        get("ExecReload")
    );
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("KillSignal"), "SIGTERM");
    // The unit runs conf/production.example.yaml, installed as /etc/ultra-gateway/ultra.yaml.
    assert!(one("ExecStart").ends_with("run -c /etc/ultra-gateway/ultra.yaml"));
    let example = yaml(&repo().join("conf/production.example.yaml"));
    let grace = grace_period(&example);
    let stop = seconds(one("TimeoutStopSec"));
    assert!(
        stop >= grace + STOP_MARGIN_SECONDS,
        "TimeoutStopSec {stop} must exceed grace_period_seconds {grace} + {STOP_MARGIN_SECONDS}"
    );
    // The sandbox.
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    for key in ["RestrictAddressFamilies", "SystemCallFilter", "LimitNOFILE"] {
        assert!(!get(key).is_empty(), "{key} is not set");
    }
    // ProtectSystem=strict leaves writable only the unit's own directories: the example's
    // audit log must be in its LogsDirectory.
    let logs = one("LogsDirectory");
    let audit = example["audit"]["path"].as_str().unwrap();
    assert!(
        audit.starts_with(&format!("/var/log/{logs}/")),
        "audit.path {audit} is outside LogsDirectory={logs}"
    );
}

#[test]
fn systemd_env_example_declares_every_variable_of_the_production_example() {
    let example = deploy().join("systemd/ultra-gateway.env.example");
    let declared: BTreeSet<String> = env_file_entries(&example)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let config = yaml(&repo().join("conf/production.example.yaml"));
    let missing: Vec<_> = required_vars(&config)
        .difference(&declared)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "{} lacks {missing:?}",
        example.display()
    );
}

#[test]
fn shipped_env_examples_hold_no_values() {
    let examples: Vec<_> = files_under(&deploy())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".env.example"))
        .collect();
    assert!(examples.len() >= 3, "{examples:?}");
    for path in examples {
        for (k, v) in env_file_entries(&path) {
            assert!(v.is_empty(), "{} ships a value for {k}", path.display());
        }
    }
}

#[test]
fn duration_parsing_reads_compose_and_systemd_forms() {
    assert_eq!(seconds("45"), 45);
    assert_eq!(seconds("45s"), 45);
    assert_eq!(seconds("1m30s"), 90);
    assert_eq!(seconds("1min 30s"), 90);
    assert_eq!(seconds("2h"), 7200);
}
