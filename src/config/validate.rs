//! Semantic checks that serde cannot express: references between sections, uniqueness, ranges,
//! URLs. Pure: no file or network access (that happens when the runtime is compiled).

use super::error::ConfigError;
use super::{Config, ExtraPath, ModelSpec, ProviderKind, ProviderSpec, TimeoutsSpec};
use crate::endpoints;
use crate::upstream::endpoint::Endpoint;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

/// Headers a provider's `headers:` may not set: the gateway owns them.
const MANAGED_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-request-id",
];

pub fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    let file = c.file.as_path();
    validate_server(c, errors);
    for (name, p) in &c.providers {
        let path = format!("providers.{name}");
        if !valid_name(name) {
            errors.push(ConfigError::new(
                file,
                &path,
                "provider names may use letters, digits, `-`, `_` and `.`",
            ));
        }
        validate_provider_kind(file, &path, p, errors);
        validate_endpoints_and_keys(file, &path, p, errors);
        validate_provider_headers(file, &path, p, errors);
        validate_pool_settings(file, &path, p, errors);
    }
    validate_models(c, errors);
    super::validate_auth::validate_auth(c, errors);
    super::validate_auth::validate_production(c, errors);
    super::quotas::validate(c, errors);
    super::analyze::validate(c, errors);
}

/// What a `mock` provider takes (no endpoints, no keys, its `mock` settings) and what others need.
fn validate_provider_kind(
    file: &Path,
    path: &str,
    p: &ProviderSpec,
    errors: &mut Vec<ConfigError>,
) {
    if p.kind == ProviderKind::Mock {
        if !p.endpoints.is_empty() {
            errors.push(ConfigError::new(
                file,
                format!("{path}.endpoints"),
                "a mock provider takes no endpoints",
            ));
        }
        if !p.keys.is_empty() {
            errors.push(ConfigError::new(
                file,
                format!("{path}.keys"),
                "a mock provider takes no keys",
            ));
        }
        if let Some(m) = &p.mock {
            if !(0.0..=1.0).contains(&m.failure_rate) {
                errors.push(ConfigError::new(
                    file,
                    format!("{path}.mock.failure_rate"),
                    "must be between 0.0 and 1.0",
                ));
            }
            if m.embedding_dimensions == 0 || m.embedding_dimensions > 16384 {
                errors.push(ConfigError::new(
                    file,
                    format!("{path}.mock.embedding_dimensions"),
                    "must be between 1 and 16384",
                ));
            }
        }
    } else {
        if p.endpoints.is_empty() {
            errors.push(ConfigError::new(
                file,
                format!("{path}.endpoints"),
                "at least one endpoint URL is required",
            ));
        }
        if p.mock.is_some() {
            errors.push(ConfigError::new(
                file,
                format!("{path}.mock"),
                "only applies to providers of kind `mock`",
            ));
        }
    }
}

/// Endpoint URLs, and key ids (unique, each with `value` or `file`).
fn validate_endpoints_and_keys(
    file: &Path,
    path: &str,
    p: &ProviderSpec,
    errors: &mut Vec<ConfigError>,
) {
    for (i, e) in p.endpoints.iter().enumerate() {
        if let Err(msg) = Endpoint::parse(e) {
            errors.push(ConfigError::new(
                file,
                format!("{path}.endpoints[{i}]"),
                format!("invalid endpoint URL: {msg}"),
            ));
        }
    }
    let mut key_ids = HashSet::new();
    for (i, k) in p.keys.iter().enumerate() {
        let kp = format!("{path}.keys[{i}]");
        if k.id.trim().is_empty() {
            errors.push(ConfigError::new(
                file,
                format!("{kp}.id"),
                "must not be empty",
            ));
        } else if !key_ids.insert(k.id.as_str()) {
            errors.push(ConfigError::new(
                file,
                format!("{kp}.id"),
                "duplicate key id in this provider",
            ));
        }
        match (&k.value, &k.file) {
            (Some(_), Some(_)) => errors.push(ConfigError::new(
                file,
                &kp,
                "set `value` or `file`, not both",
            )),
            (None, None) => errors.push(ConfigError::new(
                file,
                &kp,
                "set `value` (usually `${ENV_VAR}`) or `file`",
            )),
            _ => {}
        }
    }
}

/// `headers`: valid names and values, none the gateway sets itself.
fn validate_provider_headers(
    file: &Path,
    path: &str,
    p: &ProviderSpec,
    errors: &mut Vec<ConfigError>,
) {
    for h in p.headers.keys() {
        let lower = h.to_ascii_lowercase();
        if MANAGED_HEADERS.contains(&lower.as_str()) {
            errors.push(ConfigError::new(
                file,
                format!("{path}.headers.{h}"),
                "is set by the gateway and cannot be configured",
            ));
        } else if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errors.push(ConfigError::new(
                file,
                format!("{path}.headers.{h}"),
                "is not a valid header name",
            ));
        }
    }
    for (h, v) in &p.headers {
        if http::HeaderValue::from_str(v).is_err() {
            errors.push(ConfigError::new(
                file,
                format!("{path}.headers.{h}"),
                "value is not a valid header value",
            ));
        }
    }
}

/// DNS refresh, timeouts, health checks, breaker and retry settings.
fn validate_pool_settings(
    file: &Path,
    path: &str,
    p: &ProviderSpec,
    errors: &mut Vec<ConfigError>,
) {
    if p.dns_refresh_seconds == Some(0) {
        errors.push(ConfigError::new(
            file,
            format!("{path}.dns_refresh_seconds"),
            "must be at least 1",
        ));
    }
    validate_timeouts(&p.timeouts, file, &format!("{path}.timeouts"), errors);
    let hc = &p.health_check;
    let mut positive = |field: &str, ok: bool| {
        if !ok {
            errors.push(ConfigError::new(
                file,
                format!("{path}.{field}"),
                "must be at least 1",
            ));
        }
    };
    positive("health_check.interval_seconds", hc.interval_seconds >= 1);
    positive("health_check.timeout_ms", hc.timeout_ms >= 1);
    positive("health_check.healthy_after", hc.healthy_after >= 1);
    positive("health_check.unhealthy_after", hc.unhealthy_after >= 1);
    positive(
        "breaker.consecutive_failures",
        p.breaker.consecutive_failures >= 1,
    );
    positive("breaker.open_seconds", p.breaker.open_seconds >= 1);
    positive("retry.deadline_ms", p.retry.deadline_ms >= 1);
    if !hc.path.starts_with('/') {
        errors.push(ConfigError::new(
            file,
            format!("{path}.health_check.path"),
            "must start with /",
        ));
    }
    if p.breaker.max_open_seconds < p.breaker.open_seconds {
        errors.push(ConfigError::new(
            file,
            format!("{path}.breaker.max_open_seconds"),
            "must be at least open_seconds",
        ));
    }
    if !(1..=10).contains(&p.retry.max_attempts) {
        errors.push(ConfigError::new(
            file,
            format!("{path}.retry.max_attempts"),
            "must be between 1 and 10",
        ));
    }
}

fn validate_server(c: &Config, errors: &mut Vec<ConfigError>) {
    let file = c.file.as_path();
    let s = &c.server;
    if s.listen.parse::<SocketAddr>().is_err() {
        errors.push(ConfigError::new(
            file,
            "server.listen",
            "expected IP:PORT, e.g. 127.0.0.1:8080",
        ));
    }
    if s.threads == 0 || s.threads > 1024 {
        errors.push(ConfigError::new(
            file,
            "server.threads",
            "must be between 1 and 1024",
        ));
    }
    if s.max_body_bytes < 1024 {
        errors.push(ConfigError::new(
            file,
            "server.max_body_bytes",
            "must be at least 1024",
        ));
    }
    if s.body_read_timeout_seconds == 0 {
        errors.push(ConfigError::new(
            file,
            "server.body_read_timeout_seconds",
            "must be at least 1",
        ));
    }
    for (key, value) in [
        (
            "server.header_read_timeout_seconds",
            s.header_read_timeout_seconds,
        ),
        (
            "server.keepalive_timeout_seconds",
            s.keepalive_timeout_seconds,
        ),
    ] {
        if !(1..=3600).contains(&value) {
            errors.push(ConfigError::new(file, key, "must be between 1 and 3600"));
        }
    }
    if !(1..=1_000_000).contains(&s.max_connections) {
        errors.push(ConfigError::new(
            file,
            "server.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    validate_extra_paths(file, &s.extra_paths, errors);
    validate_logging(c, errors);
}

/// `server.extra_paths`: normalised paths under `/v1/`, not already served, listed once.
fn validate_extra_paths(file: &Path, extra: &[ExtraPath], errors: &mut Vec<ConfigError>) {
    let mut seen = HashSet::new();
    for (i, x) in extra.iter().enumerate() {
        let p = format!("server.extra_paths[{i}]");
        match endpoints::normalize(&x.path) {
            Some(n) if n == x.path && n.starts_with("/v1/") => {
                if endpoints::builtin_group(&n).is_some() {
                    errors.push(ConfigError::new(
                        file,
                        format!("{p}.path"),
                        "is already proxied by default",
                    ));
                } else if n == "/v1/models" || n.starts_with("/v1/models/") {
                    errors.push(ConfigError::new(
                        file,
                        format!("{p}.path"),
                        "is served by the gateway itself",
                    ));
                } else if !seen.insert(n) {
                    errors.push(ConfigError::new(
                        file,
                        format!("{p}.path"),
                        "is listed twice",
                    ));
                }
            }
            _ => errors.push(ConfigError::new(
                file,
                format!("{p}.path"),
                "must be a normalised path under /v1/ (no `..`, `//`, escapes or trailing slash)",
            )),
        }
        if let Some(g) = &x.group {
            if !valid_name(g) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.group"),
                    "may use letters, digits, `-`, `_` and `.`",
                ));
            }
        }
    }
}

fn validate_logging(c: &Config, errors: &mut Vec<ConfigError>) {
    let file = c.file.as_path();
    if c.reload.debounce_ms > 60_000 {
        errors.push(ConfigError::new(
            file,
            "reload.debounce_ms",
            "must be at most 60000",
        ));
    }
    if !matches!(
        c.logging.level.as_str(),
        "trace" | "debug" | "info" | "warn" | "error"
    ) {
        errors.push(ConfigError::new(
            file,
            "logging.level",
            "expected one of trace, debug, info, warn, error",
        ));
    }
    if c.logging.access_log.trim().is_empty() {
        errors.push(ConfigError::new(
            file,
            "logging.access_log",
            "expected stdout, stderr, off or a file path",
        ));
    }
}

fn validate_models(c: &Config, errors: &mut Vec<ConfigError>) {
    // Every id and alias must name exactly one model.
    let mut names: HashMap<&str, (&Path, String)> = HashMap::new();
    for m in &c.models {
        let s = &m.spec;
        let file = m.file.as_path();
        let p = &m.path;
        if !valid_model_name(&s.id) {
            errors.push(ConfigError::new(
                file,
                format!("{p}.id"),
                "must be non-empty without spaces or control characters",
            ));
        } else if let Some((f, other)) = names.get(s.id.as_str()) {
            errors.push(ConfigError::new(
                file,
                format!("{p}.id"),
                format!("duplicate model id (also {} {other})", f.display()),
            ));
        } else {
            names.insert(&s.id, (file, format!("{p}.id")));
        }
        for (i, a) in s.aliases.iter().enumerate() {
            let ap = format!("{p}.aliases[{i}]");
            if !valid_model_name(a) {
                errors.push(ConfigError::new(
                    file,
                    &ap,
                    "must be non-empty without spaces or control characters",
                ));
            } else if let Some((f, other)) = names.get(a.as_str()) {
                errors.push(ConfigError::new(
                    file,
                    &ap,
                    format!("duplicate model name (also {} {other})", f.display()),
                ));
            } else {
                names.insert(a, (file, ap));
            }
        }
        validate_targets_and_pricing(c, file, p, s, errors);
        if let Some(t) = &s.timeouts {
            validate_timeouts(t, file, &format!("{p}.timeouts"), errors);
        }
    }
    if c.models.is_empty() {
        errors.push(ConfigError::new(
            &c.file,
            "models",
            "no models configured (set `models_file` or `models`)",
        ));
    }
    if let Some(d) = &c.default_model {
        if !names.contains_key(d.as_str()) {
            errors.push(ConfigError::new(
                &c.file,
                "default_model",
                "does not name a configured model id or alias",
            ));
        }
    }
}

fn validate_timeouts(t: &TimeoutsSpec, file: &Path, path: &str, errors: &mut Vec<ConfigError>) {
    for (name, v) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("between_chunks_ms", t.between_chunks_ms),
        ("total_ms", t.total_ms),
    ] {
        if v == Some(0) {
            errors.push(ConfigError::new(
                file,
                format!("{path}.{name}"),
                "must be at least 1",
            ));
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_model_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A model's targets (at least one, each naming a provider) and its prices.
fn validate_targets_and_pricing(
    c: &Config,
    file: &Path,
    p: &str,
    s: &ModelSpec,
    errors: &mut Vec<ConfigError>,
) {
    if s.targets.is_empty() {
        errors.push(ConfigError::new(
            file,
            format!("{p}.targets"),
            "at least one target is required",
        ));
    }
    for (i, t) in s.targets.iter().enumerate() {
        if !c.providers.contains_key(&t.provider) {
            errors.push(ConfigError::new(
                file,
                format!("{p}.targets[{i}].provider"),
                format!("no provider named `{}` in providers", t.provider),
            ));
        }
        if let Some(up) = &t.model {
            if !valid_model_name(up) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.targets[{i}].model"),
                    "must be non-empty without spaces or control characters",
                ));
            }
        }
    }
    if s.default_output_tokens == Some(0) {
        errors.push(ConfigError::new(
            file,
            format!("{p}.default_output_tokens"),
            "must be at least 1",
        ));
    }
    if let Some(pr) = &s.pricing {
        for (field, v) in [
            ("input_per_million", pr.input_per_million),
            ("output_per_million", pr.output_per_million),
            (
                "cached_input_per_million",
                pr.cached_input_per_million.unwrap_or(0.0),
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.pricing.{field}"),
                    "must be a non-negative number",
                ));
            }
        }
    }
}
