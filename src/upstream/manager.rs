//! The upstream manager: one background service that owns the periodic work of every pool
//! (DNS refresh now). One service for all pools because Pingora fixes its services when
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
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            let mut live = Vec::new();
            for pool in rt.pools() {
                let key = Arc::as_ptr(pool) as usize;
                live.push(key);
                let next = *due
                    .entry(key)
                    .or_insert_with(|| now + pool.refresh_interval());
                if next <= now {
                    pool.refresh().await;
                    due.insert(key, Instant::now() + pool.refresh_interval());
                }
            }
            due.retain(|k, _| live.contains(k));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
