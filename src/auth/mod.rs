//! Who is calling: JWTs (`jwt`, `jwks`, `keys`, `cache`) and service API keys (`api_key`)
//! become a `Principal`; roles (`rbac`) decide what it may reach; every decision is audited
//! (`audit`). `dev_token` mints development tokens; `client_addr` finds the caller's address.

pub mod api_key;
pub mod audit;
pub mod cache;
pub mod client_addr;
pub mod dev_token;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod rbac;

use crate::config::{AuthSection, Config, ConfigError, ConfigErrors};
use crate::registry::Registry;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use rbac::{Access, Rbac};
use std::str::FromStr;
use std::sync::Arc;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Arc<str>,
    /// The API key's id, for key callers.
    pub key_id: Option<Arc<str>>,
    pub access: Access,
    /// Roles as presented (token claim or key configuration), for the audit log.
    pub roles: Arc<[String]>,
    /// `jwt`, `api_key` or `anonymous`.
    pub method: &'static str,
}

/// Why a caller is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingCredentials,
    /// More than one credential header (two `Authorization`, two `x-api-key`, or one of each):
    /// a front proxy that reads another one than the gateway would authorize someone else.
    AmbiguousCredentials,
    UnsupportedScheme,
    MalformedToken,
    TokenTooLarge,
    AlgNone,
    AlgNotAllowed,
    BadSignature,
    UnknownKid,
    Expired,
    NotYetValid,
    WrongIssuer,
    /// `iss` that is not a string (an array, say).
    IssuerNotString,
    /// A header naming critical extensions (`crit`), none of which the gateway implements.
    CriticalExtension,
    WrongAudience,
    MissingClaims,
    /// A JWT sent to a configuration that accepts none.
    JwtNotAccepted,
    InvalidApiKey,
    ApiKeyExpired,
    ApiKeyDisabled,
    /// JWT keys are not loaded (the identity provider was unreachable).
    AuthUnavailable,
    NoKnownRoles,
    EndpointForbidden,
    ModelForbidden,
}

/// The HTTP class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// 401 `missing_credentials`.
    Missing,
    /// 401 `ambiguous_credentials`.
    Ambiguous,
    /// 401 `invalid_token`.
    InvalidToken,
    /// 401 `invalid_api_key`.
    InvalidApiKey,
    /// 403 `permission_denied`.
    Forbidden,
    /// 503 `auth_unavailable`.
    Unavailable,
}

impl Refusal {
    /// Reason code, as written in the audit log.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::MissingCredentials => "missing_credentials",
            Refusal::AmbiguousCredentials => "ambiguous_credentials",
            Refusal::UnsupportedScheme => "unsupported_scheme",
            Refusal::MalformedToken => "malformed_token",
            Refusal::TokenTooLarge => "token_too_large",
            Refusal::AlgNone => "alg_none",
            Refusal::AlgNotAllowed => "alg_not_allowed",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::IssuerNotString => "issuer_not_string",
            Refusal::CriticalExtension => "unsupported_critical_header",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::MissingClaims => "missing_claims",
            Refusal::JwtNotAccepted => "jwt_not_accepted",
            Refusal::InvalidApiKey => "unknown_api_key",
            Refusal::ApiKeyExpired => "api_key_expired",
            Refusal::ApiKeyDisabled => "api_key_disabled",
            Refusal::AuthUnavailable => "auth_unavailable",
            Refusal::NoKnownRoles => "no_known_roles",
            Refusal::EndpointForbidden => "endpoint_forbidden",
            Refusal::ModelForbidden => "model_forbidden",
        }
    }

    pub fn kind(self) -> RefusalKind {
        match self {
            Refusal::MissingCredentials => RefusalKind::Missing,
            Refusal::AmbiguousCredentials => RefusalKind::Ambiguous,
            Refusal::InvalidApiKey | Refusal::ApiKeyExpired | Refusal::ApiKeyDisabled => {
                RefusalKind::InvalidApiKey
            }
            Refusal::AuthUnavailable => RefusalKind::Unavailable,
            Refusal::NoKnownRoles | Refusal::EndpointForbidden | Refusal::ModelForbidden => {
                RefusalKind::Forbidden
            }
            _ => RefusalKind::InvalidToken,
        }
    }

    /// What the caller is told: why, in general terms.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::MissingCredentials => {
                "No credentials: send `Authorization: Bearer <token or API key>`."
            }
            Refusal::AmbiguousCredentials => {
                "More than one credential: send exactly one `Authorization` or `x-api-key` header."
            }
            Refusal::UnsupportedScheme => "Only the Bearer authorization scheme is accepted.",
            Refusal::MalformedToken => "The bearer token is not a well-formed JWT.",
            Refusal::TokenTooLarge => "The bearer token is larger than 8 KiB.",
            Refusal::AlgNone | Refusal::AlgNotAllowed => {
                "The token's signing algorithm is not accepted."
            }
            Refusal::BadSignature => "The token's signature is not valid.",
            Refusal::UnknownKid => "The token was signed with a key this gateway does not know.",
            Refusal::Expired => "The token has expired.",
            Refusal::NotYetValid => "The token is not valid yet.",
            Refusal::WrongIssuer => "The token's issuer is not accepted.",
            Refusal::IssuerNotString => "The token's issuer (`iss`) must be a string.",
            Refusal::CriticalExtension => {
                "The token's header names critical extensions (`crit`) this gateway does not support."
            }
            Refusal::WrongAudience => "The token is not intended for this gateway (audience).",
            Refusal::MissingClaims => "The token lacks a required claim.",
            Refusal::JwtNotAccepted => "This gateway does not accept JWTs.",
            Refusal::InvalidApiKey => "The API key is not valid.",
            Refusal::ApiKeyExpired => "The API key has expired.",
            Refusal::ApiKeyDisabled => "The API key is disabled.",
            Refusal::AuthUnavailable => {
                "Token verification is temporarily unavailable. Try again later."
            }
            Refusal::NoKnownRoles => "None of your roles is known to this gateway.",
            Refusal::EndpointForbidden => "Your roles do not allow this endpoint.",
            Refusal::ModelForbidden => "Your roles do not allow this model.",
        }
    }
}

/// The compiled authentication and authorization of one configuration.
#[derive(Debug)]
pub struct Authenticator {
    /// No `auth` section (development only): everyone is served as `anonymous`.
    open: bool,
    jwt: Option<jwt::JwtVerifier>,
    api_keys: api_key::ApiKeys,
    pub rbac: Rbac,
}

impl Authenticator {
    /// Compiles `config.auth`: reads PEM and JWKS files, indexes key digests, compiles roles.
    /// A JWKS URL is not fetched here (see `jwks::JwksUrl::refresh`).
    /// Compiles `auth`; a JWKS URL that an earlier configuration fetched is taken from `state`
    /// with its key set (not fetched again).
    pub fn compile(
        config: &Config,
        registry: &Registry,
        state: &crate::state::State,
    ) -> Result<Authenticator, ConfigErrors> {
        let Some(auth) = &config.auth else {
            return Ok(Authenticator {
                open: true,
                jwt: None,
                api_keys: api_key::ApiKeys::default(),
                rbac: Rbac::compile(&Default::default(), registry),
            });
        };
        let mut errors = ConfigErrors::default();
        let rbac = Rbac::compile(&auth.roles, registry);
        let jwt = compile_jwt(config, auth, state, &mut errors);
        let api_keys = api_key::ApiKeys::new(auth.api_keys.iter().filter_map(|k| {
            let roles = rbac.role_set(k.roles.iter().map(String::as_str));
            Some(api_key::ApiKey {
                roles,
                role_names: rbac.names(roles).iter().map(|r| r.to_string()).collect(),
                // Validation refused an unreadable time; were one to get here, the key is
                // refused rather than valid forever.
                expires_at: k
                    .expires_at
                    .as_deref()
                    .map(|t| crate::time::parse_rfc3339(t).unwrap_or(i64::MIN)),
                disabled: k.disabled,
                ..api_key::ApiKey::new(&k.id, api_key::parse_digest(&k.sha256)?)
            })
        }));
        errors.into_result(Authenticator {
            open: false,
            jwt,
            api_keys,
            rbac,
        })
    }

    pub fn jwks_url(&self) -> Option<&Arc<jwks::JwksUrl>> {
        self.jwt.as_ref().and_then(|j| j.jwks_url())
    }

    /// Authenticates a request by its headers. Role checks come after (see `Rbac`); a caller
    /// none of whose roles is known is authenticated with `Access::NoKnownRoles`, so that its
    /// refusal (`NoKnownRoles`) is audited with its subject and roles.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        if self.open {
            return Ok(Principal {
                subject: Arc::from("anonymous"),
                key_id: None,
                access: Access::All,
                roles: Arc::from(Vec::new()),
                method: "anonymous",
            });
        }
        match credential(headers)? {
            Credential::ApiKey(key) => {
                let found = self
                    .api_keys
                    .check(key, crate::time::unix_now() as i64)
                    .map_err(|r| match r {
                        api_key::KeyRefusal::Unknown => Refusal::InvalidApiKey,
                        api_key::KeyRefusal::Expired => Refusal::ApiKeyExpired,
                        api_key::KeyRefusal::Disabled => Refusal::ApiKeyDisabled,
                    })?;
                Ok(Principal {
                    subject: found.id.clone(),
                    key_id: Some(found.id.clone()),
                    access: Access::of_roles(found.roles),
                    roles: found.role_names.clone(),
                    method: "api_key",
                })
            }
            Credential::Token(token) => {
                let verifier = self.jwt.as_ref().ok_or(Refusal::JwtNotAccepted)?;
                let v = verifier.verify(token).await?;
                let set = self.rbac.role_set(v.roles.iter().map(String::as_str));
                Ok(Principal {
                    subject: v.subject,
                    key_id: None,
                    access: Access::of_roles(set),
                    roles: v.roles,
                    method: "jwt",
                })
            }
        }
    }
}

enum Credential<'a> {
    Token(&'a str),
    ApiKey(&'a str),
}

/// `Authorization: Bearer <jwt | uk_ key>` or `x-api-key: <key>`, exactly one of them.
fn credential(headers: &HeaderMap) -> Result<Credential<'_>, Refusal> {
    let presented = headers.get_all(http::header::AUTHORIZATION).iter().count()
        + headers.get_all("x-api-key").iter().count();
    if presented > 1 {
        return Err(Refusal::AmbiguousCredentials);
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| Refusal::MalformedToken)?.trim();
        let (scheme, value) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refusal::UnsupportedScheme);
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(Refusal::MissingCredentials);
        }
        return Ok(if value.starts_with(api_key::KEY_PREFIX) {
            Credential::ApiKey(value)
        } else {
            Credential::Token(value)
        });
    }
    match headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(k) if !k.is_empty() => Ok(Credential::ApiKey(k)),
        _ => Err(Refusal::MissingCredentials),
    }
}

fn compile_jwt(
    config: &Config,
    auth: &AuthSection,
    state: &crate::state::State,
    errors: &mut ConfigErrors,
) -> Option<jwt::JwtVerifier> {
    if auth.jwt.is_none() && !auth.test_tokens {
        return None;
    }
    let test_only = test_tokens_jwt();
    let j = auth.jwt.as_ref().unwrap_or(&test_only);
    let mut algorithms: Vec<Algorithm> = j
        .algorithms
        .iter()
        .filter_map(|a| Algorithm::from_str(a).ok())
        .collect();
    let mut keys = Vec::new();
    if let Some(secret) = j.hmac_secret.as_deref().filter(|s| !s.is_empty()) {
        keys.push(hmac_key(secret));
    }
    if auth.test_tokens {
        keys.push(hmac_key(dev_token::DEV_SECRET));
        if !algorithms.contains(&Algorithm::HS256) {
            algorithms.push(Algorithm::HS256);
        }
    }
    keys.extend(pem_keys(config, &j.public_keys, errors));
    if let Some(p) = &j.jwks_file {
        keys.extend(jwks_file_keys(config, p, errors));
    }
    let jwks_url = j.jwks_url.as_ref().and_then(|url| {
        let refresh = std::time::Duration::from_secs(j.jwks_refresh_seconds);
        if let Some(known) = state.jwks.get(url).filter(|k| k.refresh_every() == refresh) {
            return Some(known);
        }
        let fresh = jwks::JwksUrl::new(url, refresh)
            .map(Arc::new)
            .map_err(|msg| errors.push(ConfigError::new(&config.file, "auth.jwt.jwks_url", msg)))
            .ok()?;
        Some(state.jwks.adopt(url, |_| fresh))
    });
    let list =
        |v: &Option<crate::config::OneOrMany>| v.as_ref().map(|o| o.0.clone()).unwrap_or_default();
    Some(jwt::JwtVerifier::new(jwt::JwtSettings {
        algorithms,
        keys,
        jwks_url,
        issuer: list(&j.issuer),
        audience: list(&j.audience),
        leeway: j.leeway_seconds,
        subject_claim: j.subject_claim.clone(),
        roles_claim: j.roles_claim.clone(),
        cache_entries: j.cache_entries,
    }))
}

/// The JWT settings when `auth.test_tokens` is on without an `auth.jwt` section: the
/// development tokens only (HS256, standard claims).
fn test_tokens_jwt() -> crate::config::JwtSection {
    crate::config::JwtSection {
        algorithms: vec!["HS256".into()],
        hmac_secret: None,
        public_keys: Vec::new(),
        jwks_file: None,
        jwks_url: None,
        jwks_refresh_seconds: 300,
        issuer: None,
        audience: None,
        leeway_seconds: 30,
        subject_claim: "sub".into(),
        roles_claim: "roles".into(),
        cache_entries: 10_000,
    }
}

fn hmac_key(secret: &str) -> Arc<keys::VerifyKey> {
    Arc::new(keys::VerifyKey::configured(
        jsonwebtoken::AlgorithmFamily::Hmac,
        jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
    ))
}

/// `auth.jwt.public_keys`: each PEM file's key, or an error naming its index.
fn pem_keys(
    config: &Config,
    files: &[std::path::PathBuf],
    errors: &mut ConfigErrors,
) -> Vec<Arc<keys::VerifyKey>> {
    let mut found = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let path = config.resolve_path(p);
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|pem| keys::from_pem(&pem))
        {
            Ok(k) => found.push(Arc::new(k)),
            Err(msg) => errors.push(ConfigError::new(
                &config.file,
                format!("auth.jwt.public_keys[{i}]"),
                format!("{}: {msg}", path.display()),
            )),
        }
    }
    found
}

/// `auth.jwt.jwks_file`: its signing keys; a file without one is an error.
fn jwks_file_keys(
    config: &Config,
    file: &std::path::Path,
    errors: &mut ConfigErrors,
) -> Vec<Arc<keys::VerifyKey>> {
    let path = config.resolve_path(file);
    let field = "auth.jwt.jwks_file";
    match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| keys::from_jwks(&t))
    {
        Ok((ks, _)) if !ks.is_empty() => ks.into_iter().map(Arc::new).collect(),
        Ok(_) => {
            let msg = "no usable signing key in the JWKS";
            errors.push(ConfigError::new(&config.file, field, msg));
            Vec::new()
        }
        Err(msg) => {
            let msg = format!("{}: {msg}", path.display());
            errors.push(ConfigError::new(&config.file, field, msg));
            Vec::new()
        }
    }
}
