//! The background service that reloads on SIGHUP and, with `reload.watch`, when a file of the
//! configuration changes. (`POST /api/admin/reload` calls the reloader directly.)

use super::watch::Watch;
use super::{Reloader, Trigger};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub struct ReloadService {
    reloader: Arc<Reloader>,
    /// Notified by the SIGHUP handler.
    hangups: Arc<Notify>,
}

impl ReloadService {
    pub fn new(reloader: Arc<Reloader>, hangups: Arc<Notify>) -> ReloadService {
        ReloadService { reloader, hangups }
    }

    /// A watch over the serving configuration's files, when it asks for one.
    async fn watch(&self) -> Option<Watch> {
        let settings = self.reloader.watch_settings().await;
        let files = self.reloader.sources().await;
        (settings.watch && !files.is_empty())
            .then(|| Watch::new(files, Duration::from_millis(settings.debounce_ms)))
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watch = self.watch().await;
        let mut watching = self.reloader.generation();
        loop {
            let tick = watch
                .as_ref()
                .map_or(Duration::from_secs(3600), Watch::interval);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.hangups.notified() => {
                    let _ = self.reloader.reload(Trigger::Signal).await;
                }
                _ = tokio::time::sleep(tick) => {
                    let now = tokio::time::Instant::now();
                    if watch.as_mut().is_some_and(|w| w.poll(now)) {
                        let _ = self.reloader.reload(Trigger::FileChange).await;
                    }
                }
            }
            // Whatever applied a new configuration (this loop or the admin endpoint), its files
            // and watch settings are the ones to follow now.
            let generation = self.reloader.generation();
            if generation != watching {
                watch = self.watch().await;
                watching = generation;
            }
        }
    }
}
