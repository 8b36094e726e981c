//! The schema of `quotas:` (budgets per caller or shared, counted in a store) and its
//! validation.

use super::error::ConfigError;
use super::Config;
use serde::Deserialize;
use std::collections::HashSet;

/// `quotas:` budgets of requests, tokens and money, checked before a request goes upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasSection {
    /// Where counters live: `memory` (default: this process) or `redis` (shared by every
    /// gateway on the same Redis).
    pub store: QuotaStoreKind,
    pub redis: RedisSpec,
    /// When the store cannot answer: `allow` (default: serve, counted in
    /// `ultra_quota_store_errors_total` and logged once per outage) or `deny` (503
    /// `quota_unavailable`).
    pub on_store_error: OnStoreError,
    /// Rules; every rule that applies to a request must have room for it.
    pub rules: Vec<QuotaRule>,
}

impl Default for QuotasSection {
    fn default() -> Self {
        QuotasSection {
            store: QuotaStoreKind::Memory,
            redis: RedisSpec::default(),
            on_store_error: OnStoreError::Allow,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaStoreKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

/// `quotas.redis:` the shared store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSpec {
    /// `redis://[user:password@]host:port/db` (or `rediss://`). `${ENV}` allowed. Default
    /// `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Prefix of every key the gateway writes. Default `ultra:`.
    pub key_prefix: String,
    /// Longest wait for Redis per request, in milliseconds; past it the store counts as
    /// failed (see `on_store_error`). Default 50.
    pub timeout_ms: u64,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "ultra:".into(),
            timeout_ms: 50,
        }
    }
}

/// One entry of `quotas.rules`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    /// Stable id: counters follow it across reloads and restarts; it names the rule in 429s.
    pub id: String,
    /// Who the rule applies to: callers with any of these roles, subjects or API key ids.
    /// Omitted (or empty): every caller.
    #[serde(default, rename = "match")]
    pub matches: QuotaMatch,
    /// Globs on canonical model ids (`gpt-4o*`). Omitted: every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// `caller` (default): each subject or API key has its own budget; `shared`: one budget
    /// for everyone the rule matches.
    #[serde(default)]
    pub per: QuotaPer,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Input + output tokens per minute.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Input + output tokens per UTC day.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Dollars per UTC day, from the models' `pricing` (a model without pricing costs 0).
    #[serde(default)]
    pub cost_usd_per_day: Option<f64>,
}

/// `match:` of a quota rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaMatch {
    pub roles: Vec<String>,
    pub subjects: Vec<String>,
    pub api_keys: Vec<String>,
}

impl QuotaMatch {
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.subjects.is_empty() && self.api_keys.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPer {
    #[default]
    Caller,
    Shared,
}

/// `quotas:` checks: ids unique and usable in store keys, at least one positive limit per
/// rule, roles and API keys that exist, a usable Redis URL.
pub fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    let q = &c.quotas;
    let file = &c.file;
    if q.store == QuotaStoreKind::Redis {
        let url = &q.redis.url;
        if !["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            errors.push(ConfigError::new(
                file,
                "quotas.redis.url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if q.redis.timeout_ms == 0 {
            errors.push(ConfigError::new(
                file,
                "quotas.redis.timeout_ms",
                "must be at least 1",
            ));
        }
    }
    if q.redis.key_prefix.chars().any(|c| c.is_whitespace()) {
        errors.push(ConfigError::new(
            file,
            "quotas.redis.key_prefix",
            "must not contain spaces",
        ));
    }
    let roles: HashSet<&str> = c
        .auth
        .as_ref()
        .map(|a| a.roles.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let api_keys: HashSet<&str> = c
        .auth
        .as_ref()
        .map(|a| a.api_keys.iter().map(|k| k.id.as_str()).collect())
        .unwrap_or_default();
    let mut ids = HashSet::new();
    for (i, r) in q.rules.iter().enumerate() {
        let p = format!("quotas.rules[{i}]");
        if !valid_rule_id(&r.id) {
            errors.push(ConfigError::new(
                file,
                format!("{p}.id"),
                "must be 1-64 characters of letters, digits, `-`, `_` or `.`",
            ));
        } else if !ids.insert(r.id.as_str()) {
            errors.push(ConfigError::new(
                file,
                format!("{p}.id"),
                "duplicate rule id",
            ));
        }
        let limits = [
            ("requests_per_minute", r.requests_per_minute),
            ("tokens_per_minute", r.tokens_per_minute),
            ("tokens_per_day", r.tokens_per_day),
        ];
        for (name, v) in limits {
            if v == Some(0) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.{name}"),
                    "must be at least 1 (omit it for no limit)",
                ));
            }
        }
        if let Some(v) = r.cost_usd_per_day {
            if !v.is_finite() || v <= 0.0 {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.cost_usd_per_day"),
                    "must be a positive number (omit it for no limit)",
                ));
            }
        }
        if limits.iter().all(|(_, v)| v.is_none()) && r.cost_usd_per_day.is_none() {
            errors.push(ConfigError::new(
                file,
                &p,
                "sets no limit: give requests_per_minute, tokens_per_minute, tokens_per_day or cost_usd_per_day",
            ));
        }
        for (j, role) in r.matches.roles.iter().enumerate() {
            if !roles.contains(role.as_str()) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.match.roles[{j}]"),
                    format!("no role named `{role}` in auth.roles"),
                ));
            }
        }
        for (j, key) in r.matches.api_keys.iter().enumerate() {
            if !api_keys.contains(key.as_str()) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.match.api_keys[{j}]"),
                    format!("no API key with id `{key}` in auth.api_keys"),
                ));
            }
        }
        if let Some(models) = &r.models {
            if models.is_empty() {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.models"),
                    "is empty: omit it for every model",
                ));
            }
        }
    }
}

fn valid_rule_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
