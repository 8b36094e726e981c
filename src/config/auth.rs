//! The `auth:` section of the schema (key names are the public contract of DESIGN.md).

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// `auth:` who may call the gateway. Without it, development mode serves everyone (with a loud
/// warning) and production mode refuses to start.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// JWT validation. Default: none.
    #[serde(default)]
    pub jwt: Option<JwtSection>,
    /// Service API keys, by SHA-256 digest. Default: none.
    #[serde(default)]
    pub api_keys: Vec<ApiKeySpec>,
    /// Roles by name: which models and endpoint groups they allow.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSpec>,
    /// Development only: also accept tokens signed with the built-in development secret (what
    /// `ultra-gateway token` signs with when the configuration has no `hmac_secret`). Default
    /// false; production refuses true.
    #[serde(default)]
    pub test_tokens: bool,
}

/// `auth.jwt:` JWT validation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// Accepted algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    /// Default `[HS256, RS256, ES256]`. A token with any other `alg` (and `none`) is refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// HMAC secret for HS*, at least 32 bytes in production; usually `${ULTRA_JWT_SECRET}`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// PEM public key files (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// A JWKS JSON file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start, every `jwks_refresh_seconds`, and when a token names an
    /// unknown `kid` (at most once per 30 s).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Seconds between scheduled JWKS URL refreshes. Default 300.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Accepted `iss` values (a string or a list). Default: not checked.
    #[serde(default)]
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` values (a string or a list). Default: not checked.
    #[serde(default)]
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Claim naming the caller. Default `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding the roles, a string or a list; dotted paths reach nested claims
    /// (`realm_access.roles` for Keycloak). Default `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Verified tokens remembered so an RS/PS/ES/EdDSA signature is checked once per token.
    /// Default 10000.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_algorithms() -> Vec<String> {
    vec!["HS256".into(), "RS256".into(), "ES256".into()]
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_leeway() -> u64 {
    30
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_cache_entries() -> usize {
    10_000
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `auth.api_keys[]`: a service key, stored only as its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Stable name, in the audit log and the access log.
    pub id: String,
    /// Hex SHA-256 digest of the key, as printed by `ultra-gateway hash-key`.
    pub sha256: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 3339 time after which the key is refused. Default: never.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Refuse this key. Default false.
    #[serde(default)]
    pub disabled: bool,
}

/// `auth.roles.<name>`: what a role allows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// Model id patterns (`*` any run of characters, `?` one), matched on canonical ids.
    #[serde(default)]
    pub models: Vec<String>,
    /// Endpoint groups: chat, completions, embeddings, responses, moderations, models, analyze,
    /// usage, admin, a `server.extra_paths` group, or `*`.
    #[serde(default)]
    pub endpoints: Vec<String>,
}
