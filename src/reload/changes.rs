//! What a reload changes, by name (never by value: keys are secrets): models, providers,
//! provider keys, roles and API keys added, removed or changed; and the settings that only a
//! restart can apply.

use crate::config::{Config, KeySpec, ProviderSpec};
use serde::Serialize;
use std::collections::BTreeMap;

/// Names added, removed or changed in one part of the configuration.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    fn of<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Diff {
        let mut d = Diff::default();
        for (k, v) in new {
            match old.get(k) {
                None => d.added.push(k.clone()),
                Some(o) if o != v => d.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Everything a reload changes.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Changes {
    pub models: Diff,
    pub providers: Diff,
    /// `provider/key id`.
    pub keys: Diff,
    pub roles: Diff,
    pub api_keys: Diff,
    /// Other live settings that changed, by field path (`server.max_body_bytes`, `default_model`).
    pub settings: Vec<String>,
}

impl Changes {
    pub fn between(old: &Config, new: &Config) -> Changes {
        let models = |c: &Config| {
            c.models
                .iter()
                .map(|m| (m.spec.id.clone(), m.spec.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        // A provider's keys are reported on their own: a rotated key is not a changed provider.
        let providers = |c: &Config| {
            c.providers
                .iter()
                .map(|(n, p)| {
                    let without_keys = ProviderSpec {
                        keys: Vec::new(),
                        ..p.clone()
                    };
                    (n.clone(), without_keys)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let keys = |c: &Config| {
            let mut m: BTreeMap<String, KeySpec> = BTreeMap::new();
            for (n, p) in &c.providers {
                for k in &p.keys {
                    m.insert(format!("{n}/{}", k.id), k.clone());
                }
            }
            m
        };
        let roles = |c: &Config| c.auth.as_ref().map(|a| a.roles.clone()).unwrap_or_default();
        let api_keys = |c: &Config| {
            c.auth
                .as_ref()
                .map(|a| {
                    a.api_keys
                        .iter()
                        .map(|k| (k.id.clone(), k.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Changes {
            models: Diff::of(&models(old), &models(new)),
            providers: Diff::of(&providers(old), &providers(new)),
            keys: Diff::of(&keys(old), &keys(new)),
            roles: Diff::of(&roles(old), &roles(new)),
            api_keys: Diff::of(&api_keys(old), &api_keys(new)),
            settings: live_settings(old, new),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
            && self.providers.is_empty()
            && self.keys.is_empty()
            && self.roles.is_empty()
            && self.api_keys.is_empty()
            && self.settings.is_empty()
    }
}

/// Live settings outside the named collections that differ.
fn live_settings(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let mut changed = Vec::new();
    let mut check = |field: &str, same: bool| {
        if !same {
            changed.push(field.to_string());
        }
    };
    check(
        "server.max_body_bytes",
        o.max_body_bytes == n.max_body_bytes,
    );
    check(
        "server.body_read_timeout_seconds",
        o.body_read_timeout_seconds == n.body_read_timeout_seconds,
    );
    check(
        "server.header_read_timeout_seconds",
        o.header_read_timeout_seconds == n.header_read_timeout_seconds,
    );
    check(
        "server.keepalive_timeout_seconds",
        o.keepalive_timeout_seconds == n.keepalive_timeout_seconds,
    );
    check(
        "server.max_connections",
        o.max_connections == n.max_connections,
    );
    check(
        "server.models_max_age_seconds",
        o.models_max_age_seconds == n.models_max_age_seconds,
    );
    check("server.extra_paths", o.extra_paths == n.extra_paths);
    check(
        "server.trusted_proxies",
        o.trusted_proxies == n.trusted_proxies,
    );
    check("default_model", old.default_model == new.default_model);
    check("usage", old.usage == new.usage);
    let jwt = |c: &Config| c.auth.as_ref().and_then(|a| a.jwt.clone());
    check("auth.jwt", jwt(old) == jwt(new));
    let test_tokens = |c: &Config| c.auth.as_ref().is_some_and(|a| a.test_tokens);
    check("auth.test_tokens", test_tokens(old) == test_tokens(new));
    check("auth", old.auth.is_some() == new.auth.is_some());
    changed
}

/// Settings the running process cannot apply, changed between the configuration it started
/// with and `new`: the field paths (the rest of the reload still applies). `listen_fixed` when
/// the command line's `--listen` overrides `server.listen`.
pub fn needs_restart(started: &Config, new: &Config, listen_fixed: bool) -> Vec<&'static str> {
    let (s, n) = (&started.server, &new.server);
    let fields: [(&'static str, bool); 15] = [
        ("server.state_file", s.state_file == n.state_file),
        ("server.upgrade_sock", s.upgrade_sock == n.upgrade_sock),
        ("server.listen", listen_fixed || s.listen == n.listen),
        ("server.threads", s.threads == n.threads),
        ("server.work_stealing", s.work_stealing == n.work_stealing),
        (
            "server.grace_period_seconds",
            s.grace_period_seconds == n.grace_period_seconds,
        ),
        (
            "server.graceful_shutdown_timeout_seconds",
            s.graceful_shutdown_timeout_seconds == n.graceful_shutdown_timeout_seconds,
        ),
        (
            "metrics.enabled",
            started.metrics.enabled == new.metrics.enabled,
        ),
        (
            "metrics.listen",
            started.metrics.listen == new.metrics.listen,
        ),
        ("logging.level", started.logging.level == new.logging.level),
        (
            "logging.format",
            started.logging.format == new.logging.format,
        ),
        (
            "logging.access_log",
            started.logging.access_log == new.logging.access_log,
        ),
        ("audit.path", started.audit.path == new.audit.path),
        (
            "audit.on_overflow",
            started.audit.on_overflow == new.audit.on_overflow,
        ),
        (
            "audit.queue_lines",
            started.audit.queue_lines == new.audit.queue_lines,
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(f, _)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(yaml: &str) -> Config {
        crate::config::load_str(yaml, Path::new("t.yaml"), Path::new("."), &|_| None).unwrap()
    }

    const BASE: &str = "
auth:
  roles: { user: { models: ['*'], endpoints: [chat] } }
providers:
  a: { kind: openai-compatible, endpoints: [\"http://127.0.0.1:9\"], keys: [{ id: k1, value: sk-1 }] }
  local: { kind: mock }
models:
  - { id: m1, targets: [{ provider: a }] }
  - { id: m2, targets: [{ provider: local }] }
";

    #[test]
    fn names_what_was_added_removed_and_changed() {
        let old = load(BASE);
        let new = load(
            &BASE
                .replace("value: sk-1", "value: sk-2")
                .replace(
                    "  - { id: m2, targets: [{ provider: local }] }\n",
                    "  - { id: m3, targets: [{ provider: local }] }\n",
                )
                .replace("endpoints: [chat]", "endpoints: [chat, models]")
                .replace(
                    "  local: { kind: mock }",
                    "  local: { kind: mock, mock: { latency_ms: 5 } }",
                ),
        );
        let c = Changes::between(&old, &new);
        assert_eq!(c.models.added, ["m3"]);
        assert_eq!(c.models.removed, ["m2"]);
        assert_eq!(c.keys.changed, ["a/k1"]);
        assert_eq!(
            c.providers.changed,
            ["local"],
            "a rotated key is not a changed provider"
        );
        assert_eq!(c.roles.changed, ["user"]);
        assert!(c.api_keys.is_empty());
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("sk-"), "names only: {json}");
        assert!(Changes::between(&old, &load(BASE)).is_empty());
    }

    #[test]
    fn settings_that_need_a_restart_are_named() {
        let old = load(BASE);
        let new = load(&format!(
            "{BASE}server: {{ listen: 127.0.0.1:9999, threads: 4, max_body_bytes: 4096 }}\nmetrics: {{ listen: 127.0.0.1:9465 }}\n"
        ));
        assert_eq!(
            needs_restart(&old, &new, false),
            ["server.listen", "server.threads", "metrics.listen"]
        );
        assert_eq!(
            needs_restart(&old, &new, true),
            ["server.threads", "metrics.listen"],
            "--listen fixes the address"
        );
        assert_eq!(
            Changes::between(&old, &new).settings,
            ["server.max_body_bytes"]
        );
    }
}
