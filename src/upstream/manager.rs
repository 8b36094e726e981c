//! The upstream manager: one background service that owns the periodic work of every pool (DNS
//! refresh, health checks), of key files (re-read when they change) and of the identity
//! provider's JWKS. One service for all pools because Pingora fixes its services when
//! `Server::run` starts, while pools come and go with configurations.

use super::pool::Pool;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the manager looks for due work.
const TICK: Duration = Duration::from_secs(1);

/// Retry interval for a pool without any resolved backend: it serves nothing until resolved.
const EMPTY_POOL_RETRY: Duration = Duration::from_secs(2);

pub struct UpstreamManager {
    runtime: Arc<ArcSwap<Runtime>>,
}

impl UpstreamManager {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        UpstreamManager { runtime }
    }
}

/// Resolves every pool of `rt` once, concurrently; returns when all are done.
pub async fn refresh_all(rt: &Runtime) {
    let mut set = tokio::task::JoinSet::new();
    for pool in rt.pools() {
        let pool = pool.clone();
        set.spawn(async move { pool.refresh().await });
    }
    while set.join_next().await.is_some() {}
}

/// Runs a health pass, concurrently, for every pool that has a backend no check has passed yet
/// (start-up and reloads, before traffic: such backends take none until checked).
pub async fn check_unchecked(rt: &Runtime) {
    let mut set = tokio::task::JoinSet::new();
    for pool in rt.pools().filter(|p| p.has_unchecked()) {
        let pool = pool.clone();
        set.spawn(async move { pool.check_health().await });
    }
    while set.join_next().await.is_some() {}
}

/// Periodic work of one pool: when it is next due, and the passes in flight.
struct Schedule {
    pool: Arc<Pool>,
    dns_due: Instant,
    health_due: Instant,
    dns_task: Option<tokio::task::JoinHandle<()>>,
    health_task: Option<tokio::task::JoinHandle<()>>,
}

fn idle(task: &Option<tokio::task::JoinHandle<()>>) -> bool {
    task.as_ref().is_none_or(|t| t.is_finished())
}

impl Schedule {
    /// A pool first seen `now`. Start-up (or a reload's warm-up) resolved and checked it once;
    /// an empty pool is retried soon.
    fn new(pool: &Arc<Pool>, now: Instant) -> Schedule {
        let never = Duration::from_secs(365 * 86_400);
        Schedule {
            pool: pool.clone(),
            dns_due: now + dns_wait(pool),
            health_due: now + pool.health_interval().unwrap_or(never),
            dns_task: None,
            health_task: None,
        }
    }

    /// Takes over the provider's pool of a new configuration, keeping the due times (the pool
    /// in flight finishes its pass on the old one, which is harmless).
    fn adopt(&mut self, pool: &Arc<Pool>) {
        if !Arc::ptr_eq(&self.pool, pool) {
            self.pool = pool.clone();
            self.dns_task = None;
            self.health_task = None;
        }
    }

    /// Starts the DNS refresh when due and the last one has finished; on its own task, so a
    /// slow resolver holds up no other pool. `true` when started.
    fn refresh_dns_if_due(&mut self, now: Instant) -> bool {
        if !(idle(&self.dns_task) && self.dns_due <= now) {
            return false;
        }
        let p = self.pool.clone();
        self.dns_task = Some(tokio::spawn(async move {
            p.refresh().await;
            // New addresses get no traffic before a passed check: check them now rather than at
            // the next periodic pass.
            if p.has_unchecked() {
                p.check_health().await;
            }
        }));
        // Counted from the start of the lookup; a lookup still running when it is due again is
        // not doubled.
        self.dns_due = now + dns_wait(&self.pool);
        true
    }

    /// Starts the health pass when due and the last one has finished. `true` when started.
    fn check_health_if_due(&mut self, now: Instant) -> bool {
        let Some(every) = self.pool.health_interval() else {
            return false;
        };
        if !(idle(&self.health_task) && self.health_due <= now) {
            return false;
        }
        let p = self.pool.clone();
        self.health_task = Some(tokio::spawn(async move { p.check_health().await }));
        self.health_due = now + every;
        self.pool.set_next_check(now + every);
        true
    }
}

/// Time to the next DNS refresh: the pool's interval, or sooner while it has no backend (it
/// serves nothing until resolved).
fn dns_wait(pool: &Pool) -> Duration {
    if pool.has_backends() {
        pool.refresh_interval()
    } else {
        pool.refresh_interval().min(EMPTY_POOL_RETRY)
    }
}

#[async_trait]
impl BackgroundService for UpstreamManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Keyed by provider name, the pool's stable id: a reload that gives a provider a new
        // pool keeps its schedule (under reloads every few seconds, restarting the clocks would
        // postpone every health pass for ever).
        let mut schedules: HashMap<Arc<str>, Schedule> = HashMap::new();
        let mut jwks_task: Option<tokio::task::JoinHandle<()>> = None;
        let mut key_files_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            let mut live = Vec::new();
            for pool in rt.pools() {
                let key = pool.provider().clone();
                live.push(key.clone());
                let s = schedules
                    .entry(key)
                    .or_insert_with(|| Schedule::new(pool, now));
                s.adopt(pool);
                s.refresh_dns_if_due(now);
                s.check_health_if_due(now);
            }
            schedules.retain(|k, _| live.contains(k));
            if idle(&key_files_task) {
                key_files_task = reread_key_files(&rt);
            }
            // On its own task: a slow identity provider must not hold up DNS refreshes.
            if let Some(jwks) = rt.auth.jwks_url() {
                if idle(&jwks_task) && jwks.next_refresh() <= now {
                    let j = jwks.clone();
                    jwks_task = Some(tokio::spawn(async move { j.refresh().await }));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(tick(&rt)) => {}
            }
        }
    }
}

/// Re-reads the providers' key files, on a blocking-pool thread (file I/O must stay off the
/// runtime's workers). `None` when no key comes from a file.
fn reread_key_files(rt: &Runtime) -> Option<tokio::task::JoinHandle<()>> {
    let rings: Vec<_> = rt
        .providers
        .iter()
        .filter(|p| p.keys.has_files())
        .map(|p| p.keys.clone())
        .collect();
    if rings.is_empty() {
        return None;
    }
    Some(tokio::task::spawn_blocking(move || {
        for r in rings {
            r.refresh_files();
        }
    }))
}

/// How often the manager looks for due work: every second, or faster when a health interval is
/// shorter than that.
fn tick(rt: &Runtime) -> Duration {
    rt.pools()
        .filter_map(|p| p.health_interval())
        .fold(TICK, |a, b| a.min(b / 2).max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointSpec, Strategy};
    use crate::upstream::breaker::BreakerPolicy;
    use crate::upstream::endpoint::Endpoint;
    use crate::upstream::pool::PoolSettings;
    use pingora::lb::health_check::TcpHealthCheck;

    fn pool(health: Option<Duration>) -> Arc<Pool> {
        let endpoint = Endpoint::parse(&EndpointSpec {
            url: "http://127.0.0.1:9".into(),
            weight: 1,
            sni: None,
        })
        .unwrap();
        Arc::new(Pool::new(
            PoolSettings {
                provider: "p".into(),
                endpoints: vec![Arc::new(endpoint)],
                strategy: Strategy::RoundRobin,
                refresh: Duration::from_secs(30),
                breaker: BreakerPolicy::try_new(1, Duration::from_secs(1), Duration::from_secs(1))
                    .unwrap(),
                health: health.map(|every| {
                    let check: Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> =
                        TcpHealthCheck::new();
                    (check, every)
                }),
            },
            &Default::default(),
        ))
    }

    async fn settle(s: &mut Schedule) {
        for t in [s.dns_task.take(), s.health_task.take()]
            .into_iter()
            .flatten()
        {
            t.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_pool_is_resolved_again_soon_a_resolved_one_at_its_interval() {
        let p = pool(None);
        let t0 = Instant::now();
        let mut s = Schedule::new(&p, t0);
        assert!(!s.refresh_dns_if_due(t0 + Duration::from_millis(1999)));
        assert!(
            s.refresh_dns_if_due(t0 + EMPTY_POOL_RETRY),
            "no backend yet: 2 s"
        );
        settle(&mut s).await;
        assert!(p.has_backends());
        let t1 = t0 + EMPTY_POOL_RETRY;
        // The due time was set when the lookup started, while the pool was still empty.
        assert!(s.refresh_dns_if_due(t1 + EMPTY_POOL_RETRY));
        settle(&mut s).await;
        let t2 = t1 + EMPTY_POOL_RETRY;
        assert!(
            !s.refresh_dns_if_due(t2 + Duration::from_secs(29)),
            "resolved: every 30 s"
        );
        assert!(s.refresh_dns_if_due(t2 + Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_still_running_is_not_started_twice() {
        let p = pool(None);
        let t0 = Instant::now();
        let mut s = Schedule::new(&p, t0);
        s.dns_task = Some(tokio::spawn(std::future::pending()));
        assert!(!s.refresh_dns_if_due(t0 + Duration::from_secs(60)));
        s.health_task = Some(tokio::spawn(std::future::pending()));
        s.pool = pool(Some(Duration::from_secs(5)));
        assert!(!s.check_health_if_due(t0 + Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn health_passes_run_at_their_interval_and_tell_when_the_next_is() {
        let p = pool(Some(Duration::from_secs(10)));
        p.refresh().await;
        let t0 = Instant::now();
        let mut s = Schedule::new(&p, t0);
        assert!(!s.check_health_if_due(t0 + Duration::from_secs(9)));
        let t1 = t0 + Duration::from_secs(10);
        assert!(s.check_health_if_due(t1));
        assert_eq!(p.next_check(), Some(t1 + Duration::from_secs(10)));
        settle(&mut s).await;
        assert!(!s.check_health_if_due(t1 + Duration::from_secs(9)));
        assert!(s.check_health_if_due(t1 + Duration::from_secs(10)));
        let off = pool(None);
        let mut s = Schedule::new(&off, t0);
        assert!(
            !s.check_health_if_due(t0 + Duration::from_secs(86_400)),
            "checks off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_tick_follows_the_shortest_health_interval() {
        let rt = crate::test_support::runtime(
            "providers:\n  a: { kind: openai-compatible, endpoints: [\"http://127.0.0.1:9\"], health_check: { interval_seconds: 1 } }\nmodels:\n  - { id: m, targets: [{ provider: a }] }\n",
        );
        assert_eq!(tick(&rt), Duration::from_millis(500));
        let rt = crate::test_support::runtime(
            "providers:\n  a: { kind: openai-compatible, endpoints: [\"http://127.0.0.1:9\"], health_check: { enabled: false } }\nmodels:\n  - { id: m, targets: [{ provider: a }] }\n",
        );
        assert_eq!(tick(&rt), TICK);
    }
}
