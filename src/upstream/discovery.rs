//! Service discovery for a provider's pool: every endpoint's name resolved without blocking
//! (Pingora 0.9's `HttpPeer::new` with a host name does blocking DNS and panics on failure), the
//! last good addresses kept when a lookup fails, and each address's `BackendState` kept across
//! re-resolutions.

use super::backend::BackendState;
use super::breaker::BreakerPolicy;
use super::endpoint::Endpoint;
use crate::state::{BackendKey, State};
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long one DNS lookup may take before the last known addresses are kept.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Pingora service discovery over a provider's endpoints.
pub(super) struct DnsDiscovery {
    pub(super) provider: Arc<str>,
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    /// Whether endpoint weights count (`round_robin` ignores them).
    pub(super) weighted: bool,
    pub(super) breaker: BreakerPolicy,
    pub(super) checked_initially: bool,
    /// Last successful resolution per endpoint, kept when a later lookup fails.
    pub(super) last: parking_lot::Mutex<Vec<Vec<SocketAddr>>>,
    /// Backend state by address, kept across re-resolutions (and so across DNS changes).
    pub(super) states: parking_lot::Mutex<HashMap<(usize, SocketAddr), Arc<BackendState>>>,
    /// Where backend states of earlier configurations are found by their stable id.
    pub(super) carried: Arc<State>,
}

impl DnsDiscovery {
    /// The last addresses each endpoint had in an earlier configuration (so that a reload
    /// whose lookup fails does not empty a pool that was serving).
    pub(super) fn carried_addresses(&self) -> Vec<Vec<SocketAddr>> {
        self.endpoints
            .iter()
            .map(|ep| {
                let mut addrs: Vec<SocketAddr> = self
                    .carried
                    .backends
                    .live_keys()
                    .into_iter()
                    .filter(|k| k.provider == self.provider && *k.endpoint_url == *ep.url)
                    .map(|k| k.addr)
                    .collect();
                addrs.sort();
                addrs
            })
            .collect()
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut resolved = self.lookup_all().await;
        let mut backends = BTreeSet::new();
        let mut live = Vec::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            for addr in self.addresses(i, ep, resolved[i].take()) {
                live.push((i, addr));
                let fresh = backends.insert(self.backend(i, ep, addr));
                // Pingora's Backend identity is address + weight: a second endpoint on the same
                // address would silently lose its Host, SNI and path.
                if !fresh {
                    tracing::warn!(
                        provider = %self.provider,
                        url = %ep.url,
                        %addr,
                        "two endpoints of this provider resolve to the same address and weight; only the first is used"
                    );
                }
            }
        }
        self.states.lock().retain(|k, _| live.contains(k));
        Ok((backends, HashMap::new()))
    }
}

type Lookup = Option<std::io::Result<Vec<SocketAddr>>>;

impl DnsDiscovery {
    /// Resolves every named endpoint at once: one slow or black-holed name must not use up the
    /// time the others (and the start-up budget) need. `None` for IP endpoints.
    async fn lookup_all(&self) -> Vec<Lookup> {
        let mut lookups = tokio::task::JoinSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.ip.is_none() {
                let (host, port) = (ep.host.clone(), ep.port);
                lookups.spawn(async move { (i, resolve(&host, port).await) });
            }
        }
        let mut resolved: Vec<Lookup> = (0..self.endpoints.len()).map(|_| None).collect();
        while let Some(done) = lookups.join_next().await {
            if let Ok((i, r)) = done {
                resolved[i] = Some(r);
            }
        }
        resolved
    }

    /// Endpoint `i`'s addresses: its IP, what its lookup found, or, when the lookup failed or
    /// found nothing, the last addresses it had.
    fn addresses(&self, i: usize, ep: &Endpoint, lookup: Lookup) -> Vec<SocketAddr> {
        if let Some(ip) = ep.ip {
            return vec![SocketAddr::new(ip, ep.port)];
        }
        match lookup.unwrap_or_else(|| Err(std::io::Error::other("DNS lookup task failed"))) {
            Ok(a) if !a.is_empty() => {
                self.last.lock()[i] = a.clone();
                a
            }
            Ok(_) | Err(_) => {
                let kept = self.last.lock()[i].clone();
                tracing::warn!(
                    provider = %self.provider,
                    host = %ep.host,
                    kept = kept.len(),
                    "DNS lookup failed; keeping the last known addresses"
                );
                kept
            }
        }
    }

    /// The Pingora backend of one address, carrying its state (kept across re-resolutions, and
    /// across reloads by its stable id).
    fn backend(&self, i: usize, ep: &Arc<Endpoint>, addr: SocketAddr) -> Backend {
        let state = self
            .states
            .lock()
            .entry((i, addr))
            .or_insert_with(|| self.carried_state(ep, addr))
            .clone();
        let mut ext = http::Extensions::new();
        ext.insert(state);
        Backend {
            addr: PingoraAddr::Inet(addr),
            weight: if self.weighted { ep.weight } else { 1 },
            ext,
        }
    }
}

impl DnsDiscovery {
    /// The state an earlier configuration had for this backend when it is the same target under
    /// the same breaker policy; otherwise a new one (that still keeps whether it passed a
    /// check: a changed policy is no reason to hold a healthy backend back).
    fn carried_state(&self, ep: &Arc<Endpoint>, addr: SocketAddr) -> Arc<BackendState> {
        let key = BackendKey {
            provider: self.provider.clone(),
            endpoint_url: Arc::from(ep.url.as_str()),
            addr,
        };
        self.carried.backends.adopt(&key, |old| {
            let old = old.filter(|o| Endpoint::same_target(&o.endpoint, ep));
            if let Some(o) = old.as_ref().filter(|o| o.breaker.policy() == self.breaker) {
                return o.clone();
            }
            let checked = self.checked_initially || old.as_ref().is_some_and(|o| o.checked());
            let fresh = Arc::new(BackendState::new(addr, ep.clone(), self.breaker, checked));
            if old.is_none() {
                // What a previous process saved for this backend (`server.state_file`).
                if let Some(seed) = self.carried.take_backend_seed(&key) {
                    seed.apply(&fresh, tokio::time::Instant::now());
                }
            }
            fresh
        })
    }
}

/// Resolves without blocking a worker. IPv4 addresses are preferred when a name has both, so
/// that a host without IPv6 routes (or `localhost` with a v4-only server) is not half broken.
pub(super) async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let lookup = tokio::net::lookup_host((host, port));
    let all: Vec<SocketAddr> = tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DNS lookup timed out"))??
        .collect();
    let v4: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| matches!(a.ip(), IpAddr::V4(_)))
        .collect();
    Ok(if v4.is_empty() { all } else { v4 })
}
