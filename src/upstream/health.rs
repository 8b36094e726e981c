//! Active health checks of a provider's backends: an HTTP `GET` of a cheap path (default
//! `/v1/models`) carrying a currently usable provider key, or a TCP connect. Only connect and TLS
//! errors, timeouts and 5xx take a backend down: a 401 or 429 is about the key (the key ring
//! hears of it), not about the backend. The probe uses the same peer as traffic (CA list, SNI,
//! Host), so what the check trusts is what requests trust.
//!
//! Pingora's own `HttpHealthCheck` sends one fixed request with one Host/SNI, counts only 200
//! as healthy and ignores a per-provider CA (0.9.1), hence this implementation.

use super::keys::KeyRing;
use super::peer::http_peer;
use super::pool::BackendState;
use super::provider::RequestAuth;
use super::timeouts::Timeouts;
use super::tls::CaList;
use crate::config::{HealthCheckKind, HealthCheckSpec};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::{Backend, HealthRegistry};
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::Duration;

pub struct ProviderProbe {
    kind: HealthCheckKind,
    path: String,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
    auth: Arc<RequestAuth>,
    keys: Arc<KeyRing>,
    ca: Option<CaList>,
    connector: Connector,
}

impl ProviderProbe {
    pub fn new(
        spec: &HealthCheckSpec,
        auth: Arc<RequestAuth>,
        keys: Arc<KeyRing>,
        ca: Option<CaList>,
    ) -> ProviderProbe {
        ProviderProbe {
            kind: spec.kind,
            path: spec.path.clone(),
            timeout: Duration::from_millis(spec.timeout_ms),
            healthy_after: spec.healthy_after,
            unhealthy_after: spec.unhealthy_after,
            auth,
            keys,
            ca,
            connector: Connector::new(None),
        }
    }

    async fn probe(&self, state: &BackendState) -> pingora::Result<()> {
        let t = Timeouts {
            connect: self.timeout,
            first_byte: self.timeout,
            between_chunks: self.timeout,
            total: self.timeout,
        };
        if self.kind == HealthCheckKind::Tcp {
            return match tokio::time::timeout(
                self.timeout,
                tokio::net::TcpStream::connect(state.addr),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Error::e_because(ErrorType::ConnectError, "health check connect", e),
                Err(_) => {
                    Error::e_explain(ErrorType::ConnectTimedout, "health check connect timed out")
                }
            };
        }
        let peer = http_peer(state, self.ca.as_ref(), &t);
        let (mut session, _) = self.connector.get_http_session(&peer).await?;
        let mut req = RequestHeader::build(
            "GET",
            state.endpoint.upstream_path(&self.path).as_bytes(),
            None,
        )?;
        req.insert_header("host", &state.endpoint.host_header)?;
        req.insert_header("user-agent", "ultra-gateway-health-check")?;
        req.insert_header("accept", "application/json")?;
        // The same headers as traffic: a provider that needs a configured header to accept the
        // key would otherwise refuse the probe, and the key would be disabled for nothing.
        let key = self.keys.peek(tokio::time::Instant::now());
        self.auth.apply(&mut req, key.as_ref().map(|(_, k)| &**k))?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let Some(resp) = session.response_header() else {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "health check without a status",
            );
        };
        let status = resp.status.as_u16();
        if let Some((i, k)) = &key {
            self.keys.observe(*i, status);
            match status {
                401 => self.keys.disable(*i, k, "unauthorized"),
                429 => {
                    self.keys
                        .cool_down(*i, k, &resp.headers, tokio::time::Instant::now());
                }
                _ => {}
            }
        }
        if status >= 500 || status == 0 {
            return Error::e_explain(ErrorType::HTTPStatus(status), "health check answered 5xx");
        }
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for ProviderProbe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some(state) = target.ext.get::<Arc<BackendState>>() else {
            return Error::e_explain(ErrorType::InternalError, "backend without state");
        };
        let result = match tokio::time::timeout(self.timeout, self.probe(state)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "health check timed out"),
        };
        match &result {
            // Latency is traffic's time to first byte, not the probe's (a cheaper request).
            Ok(()) => state.mark_checked(),
            Err(e) => state.record_error(format!("health check: {}", e.etype().as_str())),
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }
}

/// A provider's health-check registry, shared by the pools of successive configurations so
/// that backends keep their verdicts across a reload. Pingora 0.9.1's `HealthRegistry` takes
/// its check once (`set_health_check` asserts it is unset), so the registry gets a
/// `SwappableCheck` and a reload swaps the probe inside it.
pub struct ProviderHealth {
    pub registry: Arc<HealthRegistry>,
    check: Arc<SwappableCheck>,
}

impl ProviderHealth {
    pub fn new(check: Box<dyn HealthCheck + Send + Sync>) -> ProviderHealth {
        let check = Arc::new(SwappableCheck(ArcSwap::from_pointee(check)));
        let registry = Arc::new(HealthRegistry::new());
        registry.set_health_check(Box::new(SharedCheck(check.clone())));
        ProviderHealth { registry, check }
    }

    /// The probe of the configuration being applied, for every later pass.
    pub fn replace_check(&self, check: Box<dyn HealthCheck + Send + Sync>) {
        self.check.0.store(Arc::new(check));
    }
}

struct SwappableCheck(ArcSwap<Box<dyn HealthCheck + Send + Sync>>);

/// The registry's handle on the swappable probe.
struct SharedCheck(Arc<SwappableCheck>);

#[async_trait]
impl HealthCheck for SharedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let probe = self.0 .0.load_full();
        probe.check(target).await
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let probe = self.0 .0.load_full();
        probe.health_status_change(target, healthy).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.0 .0.load().health_threshold(success)
    }
}
