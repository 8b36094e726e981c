//! Verification keys: PEM files, JWKS documents (file or URL), the HMAC secret.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// One key a token may be verified with.
#[derive(Clone)]
pub struct VerifyKey {
    /// The JWKS `kid`; PEM files and the HMAC secret have none.
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// The one algorithm a JWK says it is for (RFC 8725 §3.1); `None`: any of its family.
    pub alg: Option<Algorithm>,
    /// A digest of the JWK as published, so that a key replaced under the same `kid` (or
    /// without one) is noticed; 0 for configured keys.
    pub fingerprint: u64,
    pub key: DecodingKey,
}

impl VerifyKey {
    /// A configured key (PEM file, HMAC secret): no kid, any algorithm of its family.
    pub fn configured(family: AlgorithmFamily, key: DecodingKey) -> VerifyKey {
        VerifyKey {
            kid: None,
            family,
            alg: None,
            fingerprint: 0,
            key,
        }
    }

    /// Whether a token signed with `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// Reads a PEM public key (RSA, EC or Ed25519). The error names the problem, not the content.
pub fn from_pem(pem: &[u8]) -> Result<VerifyKey, String> {
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(AlgorithmFamily, Parse); 3] = [
        (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem),
        (AlgorithmFamily::Ec, DecodingKey::from_ec_pem),
        (AlgorithmFamily::Ed, DecodingKey::from_ed_pem),
    ];
    for (family, parse) in attempts {
        if let Ok(key) = parse(pem) {
            return Ok(VerifyKey::configured(family, key));
        }
    }
    Err("not a PEM RSA, EC or Ed25519 public key".into())
}

/// Reads a JWKS document. Keys that cannot verify signatures (encryption keys, symmetric or
/// unsupported types) are skipped and counted, so that one exotic key does not hide the others.
pub fn from_jwks(json: &[u8]) -> Result<(Vec<VerifyKey>, usize), String> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for k in list {
        if k.get("use").and_then(Value::as_str) == Some("enc") {
            skipped += 1;
            continue;
        }
        let parsed = serde_json::from_value::<Jwk>(k.clone())
            .ok()
            .and_then(|jwk| DecodingKey::from_jwk(&jwk).ok().map(|key| (jwk, key)));
        let Some((jwk, key)) = parsed.filter(|(_, key)| key.family() != AlgorithmFamily::Hmac)
        else {
            skipped += 1;
            continue;
        };
        // An `alg` that is not a signature algorithm of the key's family (`RSA-OAEP`, ...)
        // marks a key that must not verify tokens.
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match Algorithm::from_str(&ka.to_string()) {
                Ok(a) if a.family() == key.family() => Some(a),
                _ => {
                    skipped += 1;
                    continue;
                }
            },
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.to_string().hash(&mut h);
        keys.push(VerifyKey {
            kid: jwk.common.key_id,
            family: key.family(),
            alg,
            fingerprint: h.finish(),
            key,
        });
    }
    Ok((keys, skipped))
}
