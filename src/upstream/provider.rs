//! A compiled provider: its endpoints, pool, key ring and how its kind authenticates.

use super::keys::{KeyRing, ProviderKey};
use super::pool::Pool;
use super::tls::CaList;
use crate::config::{KeyAffinity, MockSpec, ProviderKind, RetrySpec};
use crate::registry::ProviderIdx;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::sync::Arc;

/// Default `anthropic-version` sent when neither the client nor the config gives one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// How a provider's requests (traffic and health probes alike) carry its credentials and
/// static headers.
#[derive(Debug)]
pub struct RequestAuth {
    pub kind: ProviderKind,
    pub anthropic_version: HeaderValue,
    /// Marked sensitive: they may hold credentials.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestAuth {
    /// Puts `key` (if any), `anthropic-version` (Anthropic, unless the client sent one) and the
    /// static headers on an upstream request.
    pub fn apply(&self, req: &mut RequestHeader, key: Option<&ProviderKey>) -> pingora::Result<()> {
        if let Some(k) = key {
            k.apply(req)?;
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

/// The compiled provider.
#[derive(Debug)]
pub struct Provider {
    /// Its position in `Runtime::providers` (not stable across reloads: the name is).
    pub idx: ProviderIdx,
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub keys: Arc<KeyRing>,
    pub auth: Arc<RequestAuth>,
    pub retry: RetrySpec,
    pub ca: Option<CaList>,
    /// `None` for the mock provider, which has no network backends.
    pub pool: Option<Arc<Pool>>,
    pub mock: Option<MockSpec>,
}

impl Provider {
    /// The mock that answers `X-Test-Mode` requests when the configuration has none.
    pub fn builtin_mock(idx: ProviderIdx) -> Provider {
        Provider {
            idx,
            name: Arc::from("test-mode"),
            kind: ProviderKind::Mock,
            keys: Arc::new(
                KeyRing::new(ProviderKind::Mock, KeyAffinity::None, Vec::new(), &|_| None).0,
            ),
            auth: Arc::new(RequestAuth {
                kind: ProviderKind::Mock,
                anthropic_version: HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
                extra_headers: Vec::new(),
            }),
            retry: RetrySpec::default(),
            ca: None,
            pool: None,
            mock: Some(MockSpec::default()),
        }
    }

    /// Whether the provider can serve: the mock always; others need a backend that is up and
    /// not behind an open breaker, and, when keys are configured, a key the provider has not
    /// refused. Keys that are only cooling down after a 429 count: they come back by themselves,
    /// and readiness must not flap with the provider's rate limits.
    pub fn is_usable(&self) -> bool {
        self.kind == ProviderKind::Mock
            || self
                .pool
                .as_ref()
                .is_some_and(|p| p.has_available() && self.keys.has_live())
    }

    /// Whether a request could be sent this instant: as `is_usable`, but a key must also be
    /// free of any cooldown (routing skips a provider whose keys all rest).
    pub fn can_take_now(&self) -> bool {
        self.kind == ProviderKind::Mock
            || self.pool.as_ref().is_some_and(|p| {
                p.has_available() && self.keys.has_usable(&[], tokio::time::Instant::now())
            })
    }
}
