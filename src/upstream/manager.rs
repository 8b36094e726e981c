//! The upstream manager: one background service that owns the periodic work of every pool
//! (DNS refresh) and of the identity provider's JWKS. One service for all pools because Pingora fixes its services when
//! `Server::run` starts, while pools come and go with configurations.

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

#[async_trait]
impl BackgroundService for UpstreamManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next refresh per pool, keyed by the pool's address (pools live as long as a runtime).
        let mut due: HashMap<usize, Instant> = HashMap::new();
        let mut jwks_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            let mut live = Vec::new();
            for pool in rt.pools() {
                let key = Arc::as_ptr(pool) as usize;
                live.push(key);
                // Start-up resolved every pool once; an empty pool is retried soon.
                let first_wait = if pool.has_backends() {
                    pool.refresh_interval()
                } else {
                    EMPTY_POOL_RETRY
                };
                let next = *due.entry(key).or_insert_with(|| now + first_wait);
                if next <= now {
                    pool.refresh().await;
                    let wait = if pool.has_backends() {
                        pool.refresh_interval()
                    } else {
                        pool.refresh_interval().min(EMPTY_POOL_RETRY)
                    };
                    due.insert(key, Instant::now() + wait);
                }
            }
            due.retain(|k, _| live.contains(k));
            // On its own task: a slow identity provider must not hold up DNS refreshes.
            if let Some(jwks) = rt.auth.jwks_url() {
                let idle = jwks_task
                    .as_ref()
                    .is_none_or(|t: &tokio::task::JoinHandle<()>| t.is_finished());
                if idle && jwks.next_refresh() <= tokio::time::Instant::now() {
                    let j = jwks.clone();
                    jwks_task = Some(tokio::spawn(async move { j.refresh().await }));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
