//! JWT validation. The token header's `alg` must be on the allow-list (never `none`); keys are
//! picked by the algorithm's family and the header's `kid`, and each algorithm has its own
//! `Validation` (jsonwebtoken 11 refuses a validation mixing families), so an HS256 token can
//! never be checked against an RSA public key used as an HMAC secret.

use super::cache::{TokenCache, Verified};
use super::jwks::JwksUrl;
use super::keys::VerifyKey;
use super::Refusal;
use crate::time::unix_now;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::Arc;

/// Longest token accepted; larger ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Everything the verifier needs, resolved from the configuration.
pub struct JwtSettings {
    pub algorithms: Vec<Algorithm>,
    pub keys: Vec<Arc<VerifyKey>>,
    pub jwks_url: Option<Arc<JwksUrl>>,
    pub issuer: Vec<String>,
    pub audience: Vec<String>,
    pub leeway: u64,
    pub subject_claim: String,
    pub roles_claim: String,
    pub cache_entries: usize,
}

pub struct JwtVerifier {
    validations: Vec<(Algorithm, Validation)>,
    keys: Vec<Arc<VerifyKey>>,
    jwks_url: Option<Arc<JwksUrl>>,
    subject_path: Vec<String>,
    roles_path: Vec<String>,
    leeway: u64,
    cache: TokenCache,
    /// The JWKS generation the cache was filled under.
    cache_generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field(
                "algorithms",
                &self.validations.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            )
            .field("keys", &self.keys)
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    /// Extensions the verifier must understand (RFC 7515 §4.1.11); it understands none.
    crit: Option<serde::de::IgnoredAny>,
}

impl JwtVerifier {
    pub fn new(s: JwtSettings) -> JwtVerifier {
        let validations = s
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = s.leeway;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if s.issuer.is_empty() {
                    v.iss = None;
                } else {
                    v.set_issuer(&s.issuer);
                    required.push("iss");
                }
                if s.audience.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&s.audience);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();
        JwtVerifier {
            validations,
            keys: s.keys,
            jwks_url: s.jwks_url,
            subject_path: s.subject_claim.split('.').map(str::to_string).collect(),
            roles_path: s.roles_claim.split('.').map(str::to_string).collect(),
            leeway: s.leeway,
            cache: TokenCache::new(s.cache_entries),
            cache_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn jwks_url(&self) -> Option<&Arc<JwksUrl>> {
        self.jwks_url.as_ref()
    }

    /// Verifies `token`: signature, algorithm, `exp`/`nbf` with leeway, `iss`, `aud`, and the
    /// subject claim.
    pub async fn verify(&self, token: &str) -> Result<Verified, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::TokenTooLarge);
        }
        let (alg, kid) = read_header(token)?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(Refusal::AlgNotAllowed)?;
        let family = alg.family();
        // HMAC tokens are cached too: the signature is cheap, but decoding a token (base64,
        // then the header and the claims parsed as JSON three times over) is not; a hit costs
        // one SHA-256 of the token. `cargo bench --bench auth`: HS256 2.6 µs -> 0.65 µs.
        let digest = super::api_key::sha256(token.as_bytes());
        // A key removed from the JWKS takes its verified tokens with it. Read first: a swap on
        // every request would be a write to one shared cache line from every worker.
        let generation = self.jwks_url.as_ref().map(|j| j.generation());
        if let Some(g) = generation {
            use std::sync::atomic::Ordering::{AcqRel, Acquire};
            if self.cache_generation.load(Acquire) != g
                && self.cache_generation.swap(g, AcqRel) != g
            {
                self.cache.clear();
            }
        }
        if let Some(hit) = self.cache.get(&digest, unix_now(), self.leeway) {
            return Ok(hit);
        }

        let jwks = self
            .jwks_url
            .as_ref()
            .filter(|_| family != AlgorithmFamily::Hmac);
        let mut candidates = self.candidates(alg, kid.as_deref());
        if let (Some(jwks), Some(_)) = (jwks, &kid) {
            if !candidates.iter().any(|k| k.kid.is_some()) {
                jwks.refresh_for_unknown_kid().await;
                candidates = self.candidates(alg, kid.as_deref());
            }
        }
        if candidates.is_empty() {
            return Err(match (jwks, &kid) {
                (Some(j), _) if !j.loaded() => Refusal::AuthUnavailable,
                (_, Some(_)) => Refusal::UnknownKid,
                (_, None) => Refusal::BadSignature,
            });
        }

        let mut last = Refusal::BadSignature;
        for key in &candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    let verified = self.claims(&data.claims)?;
                    // Not cached when the key set changed while this token was checked with
                    // the old one: the cache was emptied meanwhile and must stay so.
                    let unchanged = generation == self.jwks_url.as_ref().map(|j| j.generation());
                    if unchanged {
                        self.cache.insert(digest, verified.clone(), unix_now());
                    }
                    return Ok(verified);
                }
                Err(e) => {
                    last = refusal_of(e.kind());
                    // Only a wrong signature lets another key of the family try.
                    if last != Refusal::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<Arc<VerifyKey>> {
        let dynamic = self.jwks_url.as_ref().map(|j| j.keys());
        let all = self
            .keys
            .iter()
            .chain(dynamic.iter().flat_map(|k| k.iter()))
            .filter(|k| k.accepts(alg));
        let all: Vec<&Arc<VerifyKey>> = all.collect();
        match kid {
            // A token naming a kid is checked against that key; failing that, against the keys
            // without a kid (PEM files, the HMAC secret), which accept any.
            Some(kid) => {
                let exact: Vec<Arc<VerifyKey>> = all
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .map(|k| (*k).clone())
                    .collect();
                if exact.is_empty() {
                    all.iter()
                        .filter(|k| k.kid.is_none())
                        .map(|k| (*k).clone())
                        .collect()
                } else {
                    exact
                }
            }
            // Without a kid, only keys without one: a JWKS (whose keys have kids) is not
            // searched key by key, which would cost one signature check per key.
            None => all
                .into_iter()
                .filter(|k| k.kid.is_none())
                .cloned()
                .collect(),
        }
    }

    fn claims(&self, claims: &Map<String, Value>) -> Result<Verified, Refusal> {
        // RFC 7519 §4.1.1: a string. jsonwebtoken takes an array holding the issuer as a match;
        // a gateway reading `iss` differently from the one behind it must not let it through.
        if claims.get("iss").is_some_and(|iss| !iss.is_string()) {
            return Err(Refusal::IssuerNotString);
        }
        let subject = match lookup(claims, &self.subject_path) {
            Some(Value::String(s)) if !s.is_empty() => Arc::from(s.as_str()),
            _ => return Err(Refusal::MissingClaims),
        };
        let roles: Vec<String> = match lookup(claims, &self.roles_path) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Refusal::MissingClaims)?;
        Ok(Verified {
            subject,
            roles: Arc::from(roles),
            exp,
        })
    }
}

/// Reads `alg` and `kid` from the token header without trusting anything else in it, and
/// refuses a header that asks for an extension (`crit`).
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), Refusal> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::MalformedToken);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| Refusal::MalformedToken)?;
    let header: RawHeader = serde_json::from_slice(&bytes).map_err(|_| Refusal::MalformedToken)?;
    let alg = header.alg.ok_or(Refusal::MalformedToken)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(Refusal::AlgNone);
    }
    if header.crit.is_some() {
        return Err(Refusal::CriticalExtension);
    }
    let alg = Algorithm::from_str(&alg).map_err(|_| Refusal::AlgNotAllowed)?;
    Ok((alg, header.kid))
}

fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(first)?, |v, k| v.get(k))
}

fn refusal_of(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            Refusal::MissingClaims
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Refusal::AlgNotAllowed,
        _ => Refusal::MalformedToken,
    }
}
