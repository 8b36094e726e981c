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
use std::time::{Duration, Instant};

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

/// Runs the first health check of every pool, concurrently (start-up, before traffic).
pub async fn check_all(rt: &Runtime) {
    let mut set = tokio::task::JoinSet::new();
    for pool in rt.pools() {
        let pool = pool.clone();
        set.spawn(async move { pool.check_health().await });
    }
    while set.join_next().await.is_some() {}
}

/// Periodic work of one pool: when it is next due, and the health pass in flight.
struct Schedule {
    /// Held so that the pool's address, the map's key, cannot be reused by another pool while
    /// this entry exists.
    _pool: Arc<Pool>,
    dns_due: Instant,
    health_due: Instant,
    dns_task: Option<tokio::task::JoinHandle<()>>,
    health_task: Option<tokio::task::JoinHandle<()>>,
}

fn idle(task: &Option<tokio::task::JoinHandle<()>>) -> bool {
    task.as_ref().is_none_or(|t| t.is_finished())
}

#[async_trait]
impl BackgroundService for UpstreamManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Keyed by the pool's address (each entry holds its pool).
        let mut schedules: HashMap<usize, Schedule> = HashMap::new();
        let mut jwks_task: Option<tokio::task::JoinHandle<()>> = None;
        let mut key_files_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            let mut live = Vec::new();
            for pool in rt.pools() {
                let key = Arc::as_ptr(pool) as usize;
                live.push(key);
                let s = schedules.entry(key).or_insert_with(|| Schedule {
                    _pool: pool.clone(),
                    // Start-up resolved and checked every pool once; an empty pool is retried soon.
                    dns_due: now
                        + if pool.has_backends() {
                            pool.refresh_interval()
                        } else {
                            EMPTY_POOL_RETRY
                        },
                    health_due: now
                        + pool
                            .health_interval()
                            .unwrap_or(Duration::from_secs(365 * 86_400)),
                    dns_task: None,
                    health_task: None,
                });
                // DNS and health passes run on their own tasks: a slow resolver or backend must
                // not hold up other pools.
                if idle(&s.dns_task) && s.dns_due <= now {
                    let p = pool.clone();
                    s.dns_task = Some(tokio::spawn(async move {
                        p.refresh().await;
                        // New addresses get no traffic before a passed check: check them now
                        // rather than at the next periodic pass.
                        if p.has_unchecked() {
                            p.check_health().await;
                        }
                    }));
                    // An empty pool is retried sooner; the due time counts from the start of
                    // the lookup, and a lookup still running when it is due is not doubled.
                    let wait = if pool.has_backends() {
                        pool.refresh_interval()
                    } else {
                        pool.refresh_interval().min(EMPTY_POOL_RETRY)
                    };
                    s.dns_due = now + wait;
                }
                if let (true, Some(every)) = (
                    idle(&s.health_task) && s.health_due <= now,
                    pool.health_interval(),
                ) {
                    let p = pool.clone();
                    s.health_task = Some(tokio::spawn(async move { p.check_health().await }));
                    s.health_due = now + every;
                    pool.set_next_check(tokio::time::Instant::now() + every);
                }
            }
            schedules.retain(|k, _| live.contains(k));
            // Reading key files is blocking I/O: off the runtime's workers.
            if idle(&key_files_task) {
                let rings: Vec<_> = rt
                    .providers
                    .iter()
                    .filter(|p| p.keys.has_files())
                    .map(|p| p.keys.clone())
                    .collect();
                if !rings.is_empty() {
                    key_files_task = Some(tokio::task::spawn_blocking(move || {
                        for r in rings {
                            r.refresh_files();
                        }
                    }));
                }
            }
            // On its own task: a slow identity provider must not hold up DNS refreshes.
            if let Some(jwks) = rt.auth.jwks_url() {
                if idle(&jwks_task) && jwks.next_refresh() <= tokio::time::Instant::now() {
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

/// How often the manager looks for due work: every second, or faster when a health interval is
/// shorter than that.
fn tick(rt: &Runtime) -> Duration {
    rt.pools()
        .filter_map(|p| p.health_interval())
        .fold(TICK, |a, b| a.min(b / 2).max(Duration::from_millis(100)))
}
