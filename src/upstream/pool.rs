//! A provider's pool: one Pingora `LoadBalancer` (round robin, random or consistent) over the
//! backends its discovery (`discovery`) finds, and selection that skips what must not get
//! traffic (unhealthy, not yet checked, breaker open, already tried by the request). Each
//! backend carries its `BackendState` (`backend`) in `Backend.ext`. The upstream manager
//! (`upstream::manager`) refreshes DNS and runs the health checks.

pub use super::backend::BackendState;

use super::breaker::BreakerPolicy;
use super::discovery::DnsDiscovery;
use super::endpoint::Endpoint;
use super::health::ProviderHealth;
use crate::config::Strategy;
use crate::state::State;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

macro_rules! with_lb {
    ($b:expr, $lb:ident => $e:expr) => {
        match $b {
            Balancer::RoundRobin($lb) => $e,
            Balancer::Random($lb) => $e,
            Balancer::Consistent($lb) => $e,
        }
    };
}

/// A provider's backends.
pub struct Pool {
    provider: Arc<str>,
    strategy: Strategy,
    lb: Balancer,
    refresh: Duration,
    resolved_once: AtomicBool,
    /// Seconds between health-check passes; `None` when checks are off.
    health_interval: Option<Duration>,
    /// Keeps the provider's shared health registry (and its probe) alive with this pool.
    _health: Option<Arc<ProviderHealth>>,
    next_check: parking_lot::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("provider", &self.provider)
            .finish()
    }
}

/// How a pool is built.
pub struct PoolSettings {
    pub provider: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub strategy: Strategy,
    pub refresh: Duration,
    pub breaker: BreakerPolicy,
    /// The health check and its interval; `None` disables checks.
    pub health: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
}

impl Pool {
    /// A pool, carrying over from `state` what earlier configurations knew of the provider's
    /// backends: their states, their health verdicts (when checks stay on) and their last
    /// addresses.
    pub fn new(s: PoolSettings, state: &Arc<State>) -> Pool {
        let mut discovery = DnsDiscovery {
            provider: s.provider.clone(),
            weighted: s.strategy != Strategy::RoundRobin,
            breaker: s.breaker,
            checked_initially: s.health.is_none(),
            last: parking_lot::Mutex::new(Vec::new()),
            states: parking_lot::Mutex::new(HashMap::new()),
            endpoints: s.endpoints,
            carried: state.clone(),
        };
        discovery.last = parking_lot::Mutex::new(discovery.carried_addresses());
        // With checks on, verdicts live in the provider's health registry, shared by the pools
        // of successive configurations. With checks off, a fresh one: no verdict of a past
        // check may keep a backend out when nothing will check it again.
        let health_interval = s.health.as_ref().map(|(_, i)| *i);
        let health = s.health.map(|(check, _)| {
            state.health.adopt(&s.provider, |known| match known {
                Some(h) => {
                    h.replace_check(check);
                    h
                }
                None => Arc::new(ProviderHealth::new(check)),
            })
        });
        let backends = match &health {
            Some(h) => Backends::new_with_health_registry(Box::new(discovery), h.registry.clone()),
            None => Backends::new(Box::new(discovery)),
        };
        let lb = match s.strategy {
            Strategy::RoundRobin | Strategy::Weighted => {
                Balancer::RoundRobin(LoadBalancer::from_backends(backends))
            }
            Strategy::Random => Balancer::Random(LoadBalancer::from_backends(backends)),
            Strategy::Consistent => Balancer::Consistent(LoadBalancer::from_backends(backends)),
        };
        Pool {
            provider: s.provider,
            strategy: s.strategy,
            lb,
            refresh: s.refresh,
            resolved_once: AtomicBool::new(false),
            health_interval,
            _health: health,
            next_check: parking_lot::Mutex::new(None),
        }
    }

    /// Re-resolves the endpoints. Never fails: a failed lookup keeps the last known addresses.
    pub async fn refresh(&self) {
        if let Err(e) = with_lb!(&self.lb, l => l.update().await) {
            tracing::warn!(provider = %self.provider, error = %e, "backend discovery failed");
        }
        self.resolved_once.store(true, Ordering::Release);
    }

    /// Runs one health-check pass over every backend (when checks are on).
    pub async fn check_health(&self) {
        if self.health_interval.is_some() {
            with_lb!(&self.lb, l => l.backends().run_health_check(true).await);
        }
    }

    /// When the manager runs the next health pass (for the provider health endpoint).
    pub fn set_next_check(&self, at: Instant) {
        *self.next_check.lock() = Some(at);
    }

    pub fn next_check(&self) -> Option<Instant> {
        *self.next_check.lock()
    }

    /// The provider's name: the pool's stable id across configurations.
    pub fn provider(&self) -> &Arc<str> {
        &self.provider
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn health_interval(&self) -> Option<Duration> {
        self.health_interval
    }

    pub fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    pub fn resolved_once(&self) -> bool {
        self.resolved_once.load(Ordering::Acquire)
    }

    pub fn has_backends(&self) -> bool {
        !with_lb!(&self.lb, l => l.backends().get_backend().is_empty())
    }

    /// Whether health checks are on and some backend has not passed one yet.
    pub fn has_unchecked(&self) -> bool {
        self.health_interval.is_some() && self.backends().iter().any(|(s, _)| !s.checked())
    }

    /// Whether some backend could take a request now.
    pub fn has_available(&self) -> bool {
        self.available_except(&[], Instant::now())
    }

    /// Whether a backend not in `exclude` could take a request, without moving the selection
    /// on (round-robin's counter is not advanced by asking).
    pub fn available_except(&self, exclude: &[SocketAddr], now: Instant) -> bool {
        with_lb!(&self.lb, l => {
            let backends = l.backends();
            backends.get_backend().iter().any(|b| {
                backends.ready(b)
                    && b.ext.get::<Arc<BackendState>>().is_some_and(|s| {
                        s.checked() && !exclude.contains(&s.addr) && s.breaker.available(now)
                    })
            })
        })
    }

    /// Every backend with its health-check verdict.
    pub fn backends(&self) -> Vec<(Arc<BackendState>, bool)> {
        with_lb!(&self.lb, l => {
            let set = l.backends().get_backend();
            set.iter()
                .filter_map(|b| Some((b.ext.get::<Arc<BackendState>>()?.clone(), l.backends().ready(b))))
                .collect()
        })
    }

    /// Picks a backend that is healthy, checked, not behind an open breaker and not in
    /// `exclude` (already tried by this request). `key` steers the `consistent` strategy.
    pub fn select(
        &self,
        key: &[u8],
        exclude: &[SocketAddr],
        now: Instant,
    ) -> Option<Arc<BackendState>> {
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.ext.get::<Arc<BackendState>>().is_some_and(|s| {
                    s.checked() && !exclude.contains(&s.addr) && s.breaker.available(now)
                })
        };
        let key = if self.strategy == Strategy::Consistent {
            key
        } else {
            b""
        };
        let b = with_lb!(&self.lb, l => l.select_with(key, 256, accept))?;
        b.ext.get::<Arc<BackendState>>().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointSpec;

    fn endpoint(url: &str, weight: usize) -> Arc<Endpoint> {
        Arc::new(
            Endpoint::parse(&EndpointSpec {
                url: url.into(),
                weight,
                sni: None,
            })
            .unwrap(),
        )
    }

    fn pool(strategy: Strategy, endpoints: Vec<Arc<Endpoint>>) -> Pool {
        Pool::new(
            PoolSettings {
                provider: "p".into(),
                endpoints,
                strategy,
                refresh: Duration::from_secs(30),
                breaker: BreakerPolicy::try_new(
                    1,
                    Duration::from_secs(10),
                    Duration::from_secs(10),
                )
                .unwrap(),
                health: None,
            },
            &Default::default(),
        )
    }

    /// The ports of `n` selections; every one must find a backend.
    fn ports(p: &Pool, n: usize, key: &[u8], exclude: &[SocketAddr]) -> Vec<u16> {
        (0..n)
            .map(|_| p.select(key, exclude, Instant::now()).expect("a backend"))
            .map(|s| s.addr.port())
            .collect()
    }

    #[tokio::test]
    async fn ip_and_localhost_endpoints_resolve_without_blocking() {
        let p = pool(
            Strategy::RoundRobin,
            vec![
                endpoint("http://127.0.0.1:9001", 1),
                endpoint("http://localhost:9002", 1),
            ],
        );
        assert!(!p.has_backends());
        p.refresh().await;
        assert!(p.resolved_once());
        let mut got = ports(&p, 4, b"", &[]);
        got.sort();
        got.dedup();
        assert_eq!(got, vec![9001, 9002]);
    }

    #[tokio::test]
    async fn an_unresolvable_name_leaves_the_pool_empty_without_panicking() {
        let p = pool(
            Strategy::RoundRobin,
            vec![endpoint("http://no-such-host.invalid", 1)],
        );
        p.refresh().await;
        assert!(p.resolved_once());
        assert!(!p.has_backends());
        assert!(p.select(b"", &[], Instant::now()).is_none());
    }

    #[tokio::test]
    async fn weights_count_only_for_weighted_strategies() {
        let eps = vec![
            endpoint("http://127.0.0.1:9001", 3),
            endpoint("http://127.0.0.1:9002", 1),
        ];
        let rr = pool(Strategy::RoundRobin, eps.clone());
        rr.refresh().await;
        let got = ports(&rr, 400, b"", &[]);
        let first = got.iter().filter(|p| **p == 9001).count();
        assert!(
            (150..=250).contains(&first),
            "round_robin ignores weights: {first}/400"
        );
        let w = pool(Strategy::Weighted, eps);
        w.refresh().await;
        let got = ports(&w, 400, b"", &[]);
        let first = got.iter().filter(|p| **p == 9001).count();
        assert!(
            (250..=350).contains(&first),
            "weighted follows 3:1: {first}/400"
        );
    }

    #[tokio::test]
    async fn consistent_keeps_a_key_on_one_backend_and_moves_it_when_excluded() {
        let eps = (1..=4)
            .map(|i| endpoint(&format!("http://127.0.0.1:900{i}"), 1))
            .collect();
        let p = pool(Strategy::Consistent, eps);
        p.refresh().await;
        let a = ports(&p, 10, b"alice", &[]);
        assert!(
            a.windows(2).all(|w| w[0] == w[1]),
            "one backend per caller: {a:?}"
        );
        let home: SocketAddr = format!("127.0.0.1:{}", a[0]).parse().unwrap();
        let moved = ports(&p, 5, b"alice", &[home]);
        assert!(moved.iter().all(|p| *p != home.port()));
        assert!(
            moved.windows(2).all(|w| w[0] == w[1]),
            "and stays on its next one: {moved:?}"
        );
    }

    #[tokio::test]
    async fn open_breakers_and_exclusions_are_skipped() {
        let p = pool(
            Strategy::RoundRobin,
            vec![
                endpoint("http://127.0.0.1:9001", 1),
                endpoint("http://127.0.0.1:9002", 1),
            ],
        );
        p.refresh().await;
        let b = p.select(b"", &[], Instant::now()).unwrap();
        b.breaker
            .admit(Instant::now())
            .1
            .unwrap()
            .failure(Instant::now());
        let got = ports(&p, 6, b"", &[]);
        assert!(got.iter().all(|port| *port != b.addr.port()), "{got:?}");
        let other = p.select(b"", &[], Instant::now()).unwrap();
        assert!(
            p.select(b"", &[other.addr], Instant::now()).is_none(),
            "the other is open"
        );
        assert!(p.has_available());
    }
}
