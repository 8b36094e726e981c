//! Verification keys: PEM files, JWKS documents (file or URL), the HMAC secret.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{AlgorithmFamily, DecodingKey};
use serde_json::Value;

/// One key a token may be verified with.
#[derive(Clone)]
pub struct VerifyKey {
    /// The JWKS `kid`; PEM files and the HMAC secret have none.
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
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
            return Ok(VerifyKey {
                kid: None,
                family,
                key,
            });
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
        match parsed {
            Some((jwk, key)) if key.family() != AlgorithmFamily::Hmac => keys.push(VerifyKey {
                kid: jwk.common.key_id,
                family: key.family(),
                key,
            }),
            _ => skipped += 1,
        }
    }
    Ok((keys, skipped))
}
