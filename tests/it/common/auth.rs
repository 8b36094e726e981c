//! Signing test tokens with the fixture keys (tests/fixtures), and an auth-enabled config.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub const HS_SECRET: &str = "integration-test-hmac-secret-0123456789abcdef";
pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "ultra";

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for `sub` with `roles`: right issuer and audience, an hour to live.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "sub": sub, "roles": roles, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "iat": now() })
}

/// Which key signs.
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    Hmac(&'a str),
    Rsa,
    Rsa2,
    Ec,
    Ed,
}

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, signer: Signer<'_>) -> String {
    let key = match signer {
        Signer::Hmac(s) => EncodingKey::from_secret(s.as_bytes()),
        Signer::Rsa => EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap(),
        Signer::Rsa2 => EncodingKey::from_rsa_pem(fixture("rsa2_private.pem").as_bytes()).unwrap(),
        Signer::Ec => EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap(),
        Signer::Ed => EncodingKey::from_ed_pem(fixture("ed_private.pem").as_bytes()).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

/// An HS256 token for `sub` with `roles`.
pub fn hs_token(sub: &str, roles: &[&str]) -> String {
    sign(
        Algorithm::HS256,
        None,
        &claims(sub, roles),
        Signer::Hmac(HS_SECRET),
    )
}

/// A token whose header and payload are written by hand (for `alg: none` and other forgeries).
pub fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    use base64::Engine;
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.{signature}", b(header), b(claims))
}

/// An HS256-signed token with `header` exactly as given (fields `Header` would drop or refuse).
pub fn sign_with_header(header: &Value, claims: &Value, secret: &str) -> String {
    let unsigned = raw_token(header, claims, "");
    let message = unsigned.trim_end_matches('.');
    let key = EncodingKey::from_secret(secret.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// The SHA-256 hex digest of an API key, as `hash-key` prints it.
pub fn digest(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub const USER_KEY: &str = "uk_user_service_key_0123456789abcdefghijkl";
pub const EXPIRED_KEY: &str = "uk_expired_service_key_0123456789abcdefgh";
pub const DISABLED_KEY: &str = "uk_disabled_service_key_0123456789abcdefg";

/// Files the auth config refers to, to write next to it.
pub fn key_files() -> Vec<(&'static str, String)> {
    vec![
        ("rsa_public.pem", fixture("rsa_public.pem")),
        ("ec_public.pem", fixture("ec_public.pem")),
        ("ed_public.pem", fixture("ed_public.pem")),
    ]
}

/// A gateway config with JWT (HS/RS/ES/EdDSA) and API-key auth, three roles, and the provider
/// `up` at `upstream_url` serving gpt-4o-mini (alias mini), gpt-4o and claude-3-5-sonnet.
pub fn auth_config(upstream_url: &str, extra: &str) -> String {
    format!(
        "logging: {{ level: warn }}
auth:
  jwt:
    algorithms: [HS256, RS256, ES256, EdDSA]
    hmac_secret: {HS_SECRET}
    public_keys: [rsa_public.pem, ec_public.pem, ed_public.pem]
    issuer: {ISSUER}
    audience: {AUDIENCE}
    leeway_seconds: 5
  api_keys:
    - {{ id: billing, sha256: '{}', roles: [service] }}
    - {{ id: old, sha256: '{}', roles: [service], expires_at: '2020-01-01T00:00:00Z' }}
    - {{ id: off, sha256: '{}', roles: [service], disabled: true }}
  roles:
    admin:   {{ models: ['*'], endpoints: ['*'] }}
    user:    {{ models: [gpt-4o-mini, 'claude-*'], endpoints: [chat, models] }}
    service: {{ models: ['*'], endpoints: [embeddings, models] }}
providers:
  up: {{ kind: openai, endpoints: [{upstream_url}], keys: [{{ id: k1, value: {} }}] }}
models:
  - {{ id: gpt-4o-mini, aliases: [mini], targets: [{{ provider: up }}] }}
  - {{ id: gpt-4o, aliases: [gpt4-alias], targets: [{{ provider: up }}] }}
  - {{ id: claude-3-5-sonnet, targets: [{{ provider: up }}] }}
{extra}",
        digest(USER_KEY),
        digest(EXPIRED_KEY),
        digest(DISABLED_KEY),
        super::UPSTREAM_KEY,
    )
}
