//! One Pingora `LoadBalancer` per provider, fed by a DNS service discovery so that a request
//! never resolves a name (`HttpPeer::new` with a host name does blocking DNS and panics on
//! failure in Pingora 0.9). The upstream manager (`upstream::manager`) refreshes it.

use super::endpoint::Endpoint;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one DNS lookup may take before the last known addresses are kept.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A provider's backends.
pub struct Pool {
    provider: Arc<str>,
    lb: LoadBalancer<RoundRobin>,
    refresh: Duration,
    resolved_once: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("provider", &self.provider)
            .finish()
    }
}

/// A selected backend: the socket address and the endpoint it came from.
#[derive(Debug, Clone)]
pub struct Selected {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
}

impl Pool {
    pub fn new(provider: Arc<str>, endpoints: Vec<Arc<Endpoint>>, refresh: Duration) -> Pool {
        let discovery = DnsDiscovery {
            provider: provider.clone(),
            last: Mutex::new(vec![Vec::new(); endpoints.len()]),
            endpoints,
        };
        Pool {
            provider,
            lb: LoadBalancer::from_backends(Backends::new(Box::new(discovery))),
            refresh,
            resolved_once: AtomicBool::new(false),
        }
    }

    /// Re-resolves the endpoints. Never fails: a failed lookup keeps the last known addresses.
    pub async fn refresh(&self) {
        if let Err(e) = self.lb.update().await {
            tracing::warn!(provider = %self.provider, error = %e, "backend discovery failed");
        }
        self.resolved_once.store(true, Ordering::Release);
    }

    /// Seconds between refreshes.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    pub fn resolved_once(&self) -> bool {
        self.resolved_once.load(Ordering::Acquire)
    }

    pub fn has_backends(&self) -> bool {
        !self.lb.backends().get_backend().is_empty()
    }

    /// Picks a healthy backend (round robin).
    pub fn select(&self) -> Option<Selected> {
        let b = self.lb.select_with(b"", 256, |_, healthy| healthy)?;
        let endpoint = b.ext.get::<Arc<Endpoint>>()?.clone();
        let addr = b.addr.as_inet()?.to_owned();
        Some(Selected { addr, endpoint })
    }
}

struct DnsDiscovery {
    provider: Arc<str>,
    endpoints: Vec<Arc<Endpoint>>,
    /// Last successful resolution per endpoint, kept when a later lookup fails.
    last: Mutex<Vec<Vec<SocketAddr>>>,
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let addrs = match ep.ip {
                Some(ip) => vec![SocketAddr::new(ip, ep.port)],
                None => match resolve(&ep.host, ep.port).await {
                    Ok(a) if !a.is_empty() => {
                        self.last.lock().unwrap_or_else(|p| p.into_inner())[i] = a.clone();
                        a
                    }
                    Ok(_) | Err(_) => {
                        let kept = self.last.lock().unwrap_or_else(|p| p.into_inner())[i].clone();
                        tracing::warn!(
                            provider = %self.provider,
                            host = %ep.host,
                            kept = kept.len(),
                            "DNS lookup failed; keeping the last known addresses"
                        );
                        kept
                    }
                },
            };
            for addr in addrs {
                let mut ext = http::Extensions::new();
                ext.insert(ep.clone());
                let fresh = backends.insert(Backend {
                    addr: PingoraAddr::Inet(addr),
                    weight: ep.weight,
                    ext,
                });
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
        Ok((backends, HashMap::new()))
    }
}

/// Resolves without blocking a worker. IPv4 addresses are preferred when a name has both, so
/// that a host without IPv6 routes (or `localhost` with a v4-only server) is not half broken.
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointSpec;

    fn endpoint(url: &str) -> Arc<Endpoint> {
        Arc::new(
            Endpoint::parse(&EndpointSpec {
                url: url.into(),
                weight: 1,
                sni: None,
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn ip_and_localhost_endpoints_resolve_without_blocking() {
        let pool = Pool::new(
            "p".into(),
            vec![
                endpoint("http://127.0.0.1:9001"),
                endpoint("http://localhost:9002"),
            ],
            Duration::from_secs(30),
        );
        assert!(!pool.has_backends());
        pool.refresh().await;
        assert!(pool.resolved_once());
        let mut ports: Vec<u16> = (0..4)
            .filter_map(|_| pool.select())
            .map(|s| s.addr.port())
            .collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports, vec![9001, 9002]);
    }

    #[tokio::test]
    async fn an_unresolvable_name_leaves_the_pool_empty_without_panicking() {
        let pool = Pool::new(
            "p".into(),
            vec![endpoint("http://no-such-host.invalid")],
            Duration::from_secs(30),
        );
        pool.refresh().await;
        assert!(pool.resolved_once());
        assert!(!pool.has_backends());
        assert!(pool.select().is_none());
    }
}
