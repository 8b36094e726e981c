//! Checks of the `auth`, `audit` and `metrics` sections, and the production-mode refusals of
//! unsafe settings (all listed at once, each naming its field).

use super::error::ConfigError;
use super::{AuthSection, Config, JwtSection, Mode, ProviderKind};
use crate::auth::dev_token::DEV_SECRET;
use crate::auth::rbac::{KNOWN_GROUPS, MAX_ROLES};
use crate::auth::{api_key, client_addr::TrustedProxies};
use crate::upstream::endpoint::Endpoint;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

/// Shortest HMAC secret production accepts (RFC 7518 3.2: at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

pub fn validate_auth(c: &Config, errors: &mut Vec<ConfigError>) {
    validate_observability(c, errors);
    let Some(auth) = &c.auth else { return };
    let file = c.file.as_path();
    validate_roles(c, auth, errors);
    validate_api_keys(file, auth, errors);
    if let Some(j) = &auth.jwt {
        validate_jwt_keys(file, j, auth.test_tokens, errors);
        validate_jwt_claims(file, j, errors);
    }
}

/// `server.trusted_proxies`, `audit` and `metrics`.
fn validate_observability(c: &Config, errors: &mut Vec<ConfigError>) {
    let file = c.file.as_path();
    if let Err((i, msg)) = TrustedProxies::parse(&c.server.trusted_proxies) {
        errors.push(ConfigError::new(
            file,
            format!("server.trusted_proxies[{i}]"),
            msg,
        ));
    }
    if c.audit.path.trim().is_empty() {
        errors.push(ConfigError::new(
            file,
            "audit.path",
            "expected stdout, stderr or a file path",
        ));
    }
    if c.audit.queue_lines == 0 {
        errors.push(ConfigError::new(
            file,
            "audit.queue_lines",
            "must be at least 1",
        ));
    }
    if let Some(l) = &c.metrics.listen {
        if l.parse::<SocketAddr>().is_err() {
            errors.push(ConfigError::new(file, "metrics.listen", "expected IP:PORT"));
        }
    }
}

/// `auth.roles`: how many, and the endpoint groups and model patterns they grant.
fn validate_roles(c: &Config, auth: &AuthSection, errors: &mut Vec<ConfigError>) {
    let file = c.file.as_path();
    let extra_groups: HashSet<String> = c
        .server
        .extra_paths
        .iter()
        .map(|x| {
            x.group
                .clone()
                .unwrap_or_else(|| x.path.rsplit('/').next().unwrap_or_default().to_string())
        })
        .collect();
    if auth.roles.len() > MAX_ROLES {
        errors.push(ConfigError::new(
            file,
            "auth.roles",
            format!("at most {MAX_ROLES} roles"),
        ));
    }
    for (name, role) in &auth.roles {
        let p = format!("auth.roles.{name}");
        for (i, e) in role.endpoints.iter().enumerate() {
            if e != "*" && !KNOWN_GROUPS.contains(&e.as_str()) && !extra_groups.contains(e) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.endpoints[{i}]"),
                    format!("unknown endpoint group; expected `*`, one of {}, or a server.extra_paths group", KNOWN_GROUPS.join(", ")),
                ));
            }
        }
        for (i, m) in role.models.iter().enumerate() {
            if m.trim().is_empty() {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.models[{i}]"),
                    "must not be empty",
                ));
            }
        }
    }
}

/// `auth.api_keys`: unique ids and digests, known roles, readable expiry times.
fn validate_api_keys(file: &Path, auth: &AuthSection, errors: &mut Vec<ConfigError>) {
    let mut ids = HashSet::new();
    let mut digests = HashSet::new();
    for (i, k) in auth.api_keys.iter().enumerate() {
        let p = format!("auth.api_keys[{i}]");
        if k.id.trim().is_empty() {
            errors.push(ConfigError::new(
                file,
                format!("{p}.id"),
                "must not be empty",
            ));
        } else if !ids.insert(k.id.as_str()) {
            errors.push(ConfigError::new(
                file,
                format!("{p}.id"),
                "duplicate API key id",
            ));
        }
        match api_key::parse_digest(&k.sha256) {
            None => errors.push(ConfigError::new(
                file,
                format!("{p}.sha256"),
                "expected 64 hex characters (print one with `ultra-gateway hash-key`)",
            )),
            Some(d) if !digests.insert(d) => errors.push(ConfigError::new(
                file,
                format!("{p}.sha256"),
                "the same key digest is configured twice",
            )),
            Some(_) => {}
        }
        if k.roles.is_empty() {
            errors.push(ConfigError::new(
                file,
                format!("{p}.roles"),
                "a key without roles is refused on every request: give it at least one role",
            ));
        }
        for (j, r) in k.roles.iter().enumerate() {
            if !auth.roles.contains_key(r) {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.roles[{j}]"),
                    format!("no role named `{r}` in auth.roles"),
                ));
            }
        }
        if let Some(t) = &k.expires_at {
            if crate::time::parse_rfc3339(t).is_none() {
                errors.push(ConfigError::new(
                    file,
                    format!("{p}.expires_at"),
                    "expected an RFC 3339 time such as 2027-01-31T00:00:00Z",
                ));
            }
        }
    }
}

/// `auth.jwt`'s algorithms and keys: every listed algorithm known, and at least one with a key
/// to verify it (otherwise every token would be refused with `bad_signature`).
fn validate_jwt_keys(
    file: &Path,
    j: &JwtSection,
    test_tokens: bool,
    errors: &mut Vec<ConfigError>,
) {
    if j.algorithms.is_empty() {
        errors.push(ConfigError::new(
            file,
            "auth.jwt.algorithms",
            "must list at least one algorithm",
        ));
    }
    for (i, a) in j.algorithms.iter().enumerate() {
        if jsonwebtoken::Algorithm::from_str(a).is_err() {
            errors.push(ConfigError::new(
                file,
                format!("auth.jwt.algorithms[{i}]"),
                "expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
            ));
        }
    }
    let has_hmac = j.hmac_secret.as_deref().is_some_and(|s| !s.is_empty());
    let has_public = !j.public_keys.is_empty() || j.jwks_file.is_some() || j.jwks_url.is_some();
    if !has_hmac && !has_public && !test_tokens {
        errors.push(ConfigError::new(
            file,
            "auth.jwt",
            "no key to verify tokens with: set hmac_secret, public_keys, jwks_file or jwks_url",
        ));
    } else if !test_tokens {
        // Every token would be refused with bad_signature: say so now.
        let usable = j
            .algorithms
            .iter()
            .filter_map(|a| jsonwebtoken::Algorithm::from_str(a).ok())
            .any(|a| {
                if a.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                    has_hmac
                } else {
                    has_public
                }
            });
        if !usable && !j.algorithms.is_empty() {
            errors.push(ConfigError::new(
                file,
                "auth.jwt.algorithms",
                "no listed algorithm has a key: HS* need hmac_secret; RS*, PS*, ES* and EdDSA need public_keys, jwks_file or jwks_url",
            ));
        }
    }
}

/// `auth.jwt`'s claims and refresh settings.
fn validate_jwt_claims(file: &Path, j: &JwtSection, errors: &mut Vec<ConfigError>) {
    // An empty list would switch the check off; an empty value would refuse every token.
    for (field, v) in [("issuer", &j.issuer), ("audience", &j.audience)] {
        if let Some(list) = v {
            if list.0.is_empty() || list.0.iter().any(|s| s.trim().is_empty()) {
                errors.push(ConfigError::new(
                    file,
                    format!("auth.jwt.{field}"),
                    "must not be empty (leave it out to not check it)",
                ));
            }
        }
    }
    if let Some(u) = &j.jwks_url {
        if !(u.starts_with("https://") || u.starts_with("http://"))
            || u.parse::<http::Uri>().is_err()
        {
            errors.push(ConfigError::new(
                file,
                "auth.jwt.jwks_url",
                "expected an http:// or https:// URL",
            ));
        }
    }
    if j.jwks_refresh_seconds < 10 {
        errors.push(ConfigError::new(
            file,
            "auth.jwt.jwks_refresh_seconds",
            "must be at least 10",
        ));
    }
    for (field, v) in [
        ("subject_claim", &j.subject_claim),
        ("roles_claim", &j.roles_claim),
    ] {
        if v.is_empty() || v.split('.').any(str::is_empty) {
            errors.push(ConfigError::new(
                file,
                format!("auth.jwt.{field}"),
                "expected a claim name or a dotted path",
            ));
        }
    }
    if j.cache_entries == 0 {
        errors.push(ConfigError::new(
            file,
            "auth.jwt.cache_entries",
            "must be at least 1",
        ));
    }
}

/// Production mode refuses to start on settings that are only safe on a developer's machine.
pub fn validate_production(c: &Config, errors: &mut Vec<ConfigError>) {
    if c.mode != Mode::Production {
        return;
    }
    let file = c.file.as_path();
    let mut refuse = |field: String, why: &str| {
        errors.push(ConfigError::new(
            file,
            field,
            format!("production mode refuses this: {why}"),
        ));
    };
    refuse_unsafe_auth(c.auth.as_ref(), &mut refuse);
    refuse_unsafe_providers(c, &mut refuse);
    if c.metrics.enabled && c.metrics.listen.is_none() && !c.metrics.public {
        refuse(
            "metrics".into(),
            "/metrics would be public on the main listener: set `metrics.listen` to an internal address, or `metrics.public: true`",
        );
    }
}

/// Production refusals of `auth`: none, test tokens, keys over plain HTTP, weak secrets.
fn refuse_unsafe_auth(auth: Option<&AuthSection>, refuse: &mut impl FnMut(String, &str)) {
    match auth {
        None => refuse(
            "auth".into(),
            "no authentication is configured (add `auth` with jwt and/or api_keys)",
        ),
        Some(a) => {
            let keyed = a.jwt.is_some() || !a.api_keys.is_empty();
            if !keyed {
                refuse("auth".into(), "neither `jwt` nor `api_keys` is configured");
            }
            if a.test_tokens {
                refuse(
                    "auth.test_tokens".into(),
                    "test tokens are for development (set it to false)",
                );
            }
            if a.jwt
                .as_ref()
                .and_then(|j| j.jwks_url.as_deref())
                .is_some_and(|u| !u.starts_with("https://"))
            {
                refuse(
                    "auth.jwt.jwks_url".into(),
                    "keys fetched over plain http:// can be replaced in transit (use https://)",
                );
            }
            if !a.api_keys.is_empty() && a.roles.is_empty() {
                refuse(
                    "auth.roles".into(),
                    "API keys are configured but no role is",
                );
            }
            if let Some(s) = a.jwt.as_ref().and_then(|j| j.hmac_secret.as_deref()) {
                if s == DEV_SECRET {
                    refuse(
                        "auth.jwt.hmac_secret".into(),
                        "it is the public development secret",
                    );
                } else if s.len() < MIN_HMAC_SECRET_BYTES {
                    refuse(
                        "auth.jwt.hmac_secret".into(),
                        &format!("shorter than {MIN_HMAC_SECRET_BYTES} bytes"),
                    );
                }
            }
        }
    }
}

/// Production refusals of providers: mocks, empty keys, https by IP without `sni`.
fn refuse_unsafe_providers(c: &Config, refuse: &mut impl FnMut(String, &str)) {
    for (name, p) in &c.providers {
        if p.kind == ProviderKind::Mock {
            refuse(
                format!("providers.{name}.kind"),
                "the mock provider is for development",
            );
        }
        for (i, k) in p.keys.iter().enumerate() {
            if k.value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                refuse(
                    format!("providers.{name}.keys[{i}].value"),
                    "the key is empty (is its environment variable set?)",
                );
            }
        }
        for (i, e) in p.endpoints.iter().enumerate() {
            if let Ok(ep) = Endpoint::parse(e) {
                if ep.tls && ep.ip.is_some() && e.sni.is_none() {
                    refuse(
                        format!("providers.{name}.endpoints[{i}]"),
                        "an https:// endpoint given by IP needs `sni` (the name on the provider's certificate)",
                    );
                }
            }
        }
    }
}
