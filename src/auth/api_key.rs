//! Service API keys. Only SHA-256 digests are configured; a presented key is hashed and looked
//! up by the digest's first 8 bytes in a hash map (so 10,000 keys cost what 10 do), and the full
//! digest is then compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Prefix of keys made by `ultra-gateway hash-key`; a bearer value with it is an API key.
pub const KEY_PREFIX: &str = "uk_";

/// A configured key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: Arc<str>,
    /// SHA-256 of the key (the key itself is never configured).
    pub digest: [u8; 32],
    /// The key's roles as a set (`Rbac::role_set`), and by name for principals and the audit
    /// log (built once, not per request).
    pub roles: u64,
    pub role_names: Arc<[String]>,
    /// Unix seconds after which it is refused.
    pub expires_at: Option<i64>,
    pub disabled: bool,
}

impl ApiKey {
    /// A key with no roles, no expiry, enabled.
    pub fn new(id: &str, digest: [u8; 32]) -> ApiKey {
        ApiKey {
            id: Arc::from(id),
            digest,
            roles: 0,
            role_names: Arc::from([]),
            expires_at: None,
            disabled: false,
        }
    }
}

/// Why a presented key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Unknown,
    Expired,
    Disabled,
}

#[derive(Debug, Default)]
pub struct ApiKeys {
    by_prefix: HashMap<u64, Vec<ApiKey>>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> ApiKeys {
        let mut by_prefix: HashMap<u64, Vec<ApiKey>> = HashMap::new();
        for k in keys {
            by_prefix.entry(prefix(&k.digest)).or_default().push(k);
        }
        ApiKeys { by_prefix }
    }

    /// Finds the key `presented`, valid at `now` (Unix seconds).
    pub fn check(&self, presented: &str, now: i64) -> Result<&ApiKey, KeyRefusal> {
        let digest = sha256(presented.as_bytes());
        let found = self
            .by_prefix
            .get(&prefix(&digest))
            .and_then(|c| c.iter().find(|k| bool::from(k.digest.ct_eq(&digest))))
            .ok_or(KeyRefusal::Unknown)?;
        if found.disabled {
            return Err(KeyRefusal::Disabled);
        }
        if found.expires_at.is_some_and(|t| now >= t) {
            return Err(KeyRefusal::Expired);
        }
        Ok(found)
    }
}

fn prefix(d: &[u8; 32]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn to_hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex characters.
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    // `from_str_radix` alone would take a leading `+`.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random key: `uk_` and 43 base64url characters (256 bits).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    use base64::Engine;
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> ApiKeys {
        ApiKeys::new((0..n).map(|i| ApiKey {
            roles: 1,
            ..ApiKey::new(&format!("k{i}"), sha256(format!("uk_key{i}").as_bytes()))
        }))
    }

    #[test]
    fn finds_valid_keys_and_refuses_others() {
        let t = table(100);
        assert_eq!(&*t.check("uk_key42", 0).unwrap().id, "k42");
        assert_eq!(t.check("uk_key100", 0).unwrap_err(), KeyRefusal::Unknown);
        assert_eq!(t.check("", 0).unwrap_err(), KeyRefusal::Unknown);
    }

    #[test]
    fn expired_and_disabled() {
        let t = ApiKeys::new([
            ApiKey {
                expires_at: Some(100),
                ..ApiKey::new("old", sha256(b"uk_old"))
            },
            ApiKey {
                disabled: true,
                ..ApiKey::new("off", sha256(b"uk_off"))
            },
        ]);
        assert!(t.check("uk_old", 99).is_ok());
        assert_eq!(t.check("uk_old", 100).unwrap_err(), KeyRefusal::Expired);
        assert_eq!(t.check("uk_off", 0).unwrap_err(), KeyRefusal::Disabled);
    }

    #[test]
    fn digests_and_generation() {
        let d = sha256(b"abc");
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_digest(&to_hex(&d)), Some(d));
        assert_eq!(parse_digest("xyz"), None);
        assert_eq!(parse_digest(&"+f".repeat(32)), None, "no signs");
        let k = generate();
        assert!(k.starts_with("uk_") && k.len() == 3 + 43, "{k}");
        assert_ne!(k, generate());
    }
}
