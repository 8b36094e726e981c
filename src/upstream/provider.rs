//! A compiled provider: its endpoints, pool, key and how its kind authenticates.

use super::endpoint::Endpoint;
use super::pool::Pool;
use super::timeouts::Timeouts;
use super::tls::CaList;
use crate::config::{MockSpec, ProviderKind};
use crate::registry::ProviderId;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::sync::Arc;

/// Default `anthropic-version` sent when neither the client nor the config gives one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// One provider key, ready to put on the wire. The value is marked sensitive so that `Debug`
/// never prints it.
#[derive(Debug, Clone)]
pub struct ProviderKey {
    pub id: Arc<str>,
    header: HeaderName,
    value: HeaderValue,
}

/// The compiled provider.
#[derive(Debug)]
pub struct Provider {
    pub id: ProviderId,
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The key in use; `None` when the provider has no keys configured or none is usable.
    pub key: Option<ProviderKey>,
    /// How many keys are configured (0 means the provider needs none).
    pub keys_configured: usize,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    pub anthropic_version: HeaderValue,
    pub timeouts: Timeouts,
    pub ca: Option<CaList>,
    /// `None` for the mock provider, which has no network backends.
    pub pool: Option<Arc<Pool>>,
    pub mock: Option<MockSpec>,
}

impl Provider {
    /// Builds the key for this provider's kind from its secret value. `None` when the value
    /// cannot be a header value (empty, or with control characters).
    pub fn make_key(kind: ProviderKind, id: &str, secret: &str) -> Option<ProviderKey> {
        let secret = secret.trim();
        if secret.is_empty() {
            return None;
        }
        let (header, raw) = match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                (http::header::AUTHORIZATION, format!("Bearer {secret}"))
            }
            ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), secret.to_string()),
            ProviderKind::Azure => (HeaderName::from_static("api-key"), secret.to_string()),
            ProviderKind::Mock => return None,
        };
        let mut value = HeaderValue::from_str(&raw).ok()?;
        value.set_sensitive(true);
        Some(ProviderKey {
            id: Arc::from(id),
            header,
            value,
        })
    }

    /// The mock that answers `X-Test-Mode` requests when the configuration has none.
    pub fn builtin_mock(id: ProviderId) -> Provider {
        Provider {
            id,
            name: Arc::from("test-mode"),
            kind: ProviderKind::Mock,
            endpoints: Vec::new(),
            key: None,
            keys_configured: 0,
            extra_headers: Vec::new(),
            anthropic_version: HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
            timeouts: Timeouts::DEFAULT,
            ca: None,
            pool: None,
            mock: Some(MockSpec::default()),
        }
    }

    /// Whether requests can be sent: the mock always; others need a resolved backend and, when
    /// keys are configured, a usable one.
    pub fn is_usable(&self) -> bool {
        match (&self.pool, self.kind) {
            (_, ProviderKind::Mock) => true,
            (Some(pool), _) => {
                pool.has_backends() && (self.keys_configured == 0 || self.key.is_some())
            }
            (None, _) => false,
        }
    }

    /// Puts this provider's credentials and static headers on an upstream request.
    pub fn apply_auth(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        if let Some(k) = &self.key {
            req.insert_header(k.header.clone(), k.value.clone())?;
        }
        if self.kind == ProviderKind::Anthropic && req.headers.get("anthropic-version").is_none() {
            req.insert_header("anthropic-version", self.anthropic_version.clone())?;
        }
        for (n, v) in &self.extra_headers {
            req.insert_header(n.clone(), v.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_authenticates_its_way() {
        let k = Provider::make_key(ProviderKind::Openai, "a", "sk-1").unwrap();
        assert_eq!(k.header, http::header::AUTHORIZATION);
        assert_eq!(k.value, "Bearer sk-1");
        let k = Provider::make_key(ProviderKind::Anthropic, "a", "sk-ant").unwrap();
        assert_eq!(k.header, "x-api-key");
        let k = Provider::make_key(ProviderKind::Azure, "a", "az").unwrap();
        assert_eq!(k.header, "api-key");
        assert!(Provider::make_key(ProviderKind::Openai, "a", "  ").is_none());
        assert!(Provider::make_key(ProviderKind::Openai, "a", "bad\nkey").is_none());
    }

    #[test]
    fn key_debug_hides_the_secret() {
        let k = Provider::make_key(ProviderKind::Openai, "a", "sk-verysecret").unwrap();
        assert!(!format!("{k:?}").contains("verysecret"));
    }
}
