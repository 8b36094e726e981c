//! Development tokens: `ultra-gateway token` signs HS256 JWTs, with the configuration's HMAC
//! secret when it has one, else with the built-in development secret that `test_tokens: true`
//! makes a development gateway accept. Production refuses both `test_tokens` and this secret.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

/// The development HMAC secret. Public by design; production refuses it.
pub const DEV_SECRET: &str = "ultra-gateway-development-secret-not-for-production";

/// Issuer of tokens signed with the development secret.
pub const DEV_ISSUER: &str = "ultra-gateway-dev";

/// What to put in a token.
pub struct TokenRequest<'a> {
    pub subject: &'a str,
    pub roles: &'a [String],
    pub ttl_seconds: u64,
    pub secret: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    /// Name of the roles claim (dotted paths nest).
    pub roles_claim: &'a str,
    /// Name of the subject claim (dotted paths nest); `sub` is always set too.
    pub subject_claim: &'a str,
}

/// Signs a token valid from now for `ttl_seconds`.
pub fn mint(r: &TokenRequest<'_>) -> Result<String, String> {
    let now = crate::time::unix_now();
    let mut claims =
        json!({ "sub": r.subject, "iat": now, "nbf": now, "exp": now + r.ttl_seconds });
    if let Some(iss) = r.issuer {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = r.audience {
        claims["aud"] = json!(aud);
    }
    set_path(&mut claims, r.roles_claim, json!(r.roles));
    set_path(&mut claims, r.subject_claim, json!(r.subject));
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(r.secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}

/// Sets a dotted claim path (`realm_access.roles`), creating the objects on the way.
fn set_path(claims: &mut serde_json::Value, path: &str, value: serde_json::Value) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut slot = claims;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            slot[*part] = value;
            return;
        }
        if !slot[*part].is_object() {
            slot[*part] = json!({});
        }
        slot = &mut slot[*part];
    }
}

/// Parses a duration such as `90s`, `15m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90"), Some(90));
        assert_eq!(parse_ttl("15m"), Some(900));
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("7d"), Some(604_800));
        assert_eq!(parse_ttl("0s"), None);
        assert_eq!(parse_ttl("1y"), None);
        assert_eq!(parse_ttl("h"), None);
    }

    #[test]
    fn nested_roles_claim() {
        let roles = vec!["user".to_string()];
        let t = mint(&TokenRequest {
            subject: "alice",
            roles: &roles,
            ttl_seconds: 60,
            secret: DEV_SECRET,
            issuer: Some(DEV_ISSUER),
            audience: None,
            roles_claim: "realm_access.roles",
            subject_claim: "preferred_username",
        })
        .unwrap();
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&t)
                .unwrap()
                .claims;
        assert_eq!(claims["realm_access"]["roles"], json!(["user"]));
        assert_eq!(claims["iss"], DEV_ISSUER);
        assert_eq!(claims["preferred_username"], "alice");
        assert_eq!(claims["sub"], "alice");
    }
}
