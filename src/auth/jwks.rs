//! A JWKS URL: fetched at start, refreshed on a schedule and when a token names a `kid` that is
//! not known (at most once per 30 s, so a flood of random `kid`s cannot hammer the identity
//! provider). Until the first successful fetch, JWT callers get 503 `auth_unavailable`.

use super::keys::{self, VerifyKey};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Least time between two fetches caused by unknown `kid`s.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry interval while no fetch has succeeded yet.
const RETRY_UNLOADED: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct JwksUrl {
    url: String,
    refresh_every: Duration,
    client: reqwest::Client,
    keys: ArcSwap<Vec<Arc<VerifyKey>>>,
    loaded: AtomicBool,
    last_error: ArcSwapOption<String>,
    last_attempt: parking_lot::Mutex<Option<Instant>>,
    /// Last fetch caused by an unknown `kid` (rate-limited on its own, so that a scheduled or
    /// start-up fetch does not delay picking up a rotated key).
    last_kid_fetch: parking_lot::Mutex<Option<Instant>>,
    /// One fetch at a time; callers that waited see its result.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    /// Bumped whenever the key set changes, so verified-token caches can forget tokens of
    /// removed keys.
    generation: AtomicU64,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksUrl")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl JwksUrl {
    /// A JWKS URL refreshed every `refresh_every` once loaded (every few seconds until then).
    pub fn new(url: &str, refresh_every: Duration) -> Result<JwksUrl, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(JwksUrl {
            url: url.to_string(),
            refresh_every,
            client,
            keys: ArcSwap::from_pointee(Vec::new()),
            loaded: AtomicBool::new(false),
            last_error: ArcSwapOption::empty(),
            last_attempt: parking_lot::Mutex::new(None),
            last_kid_fetch: parking_lot::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        })
    }

    pub fn refresh_every(&self) -> Duration {
        self.refresh_every
    }

    /// When the next scheduled refresh is due, counted from the last attempt.
    pub fn next_refresh(&self) -> Instant {
        let every = if self.loaded() {
            self.refresh_every
        } else {
            RETRY_UNLOADED
        };
        self.last_attempt
            .lock()
            .map_or_else(Instant::now, |t| t + every)
    }

    pub fn keys(&self) -> Arc<Vec<Arc<VerifyKey>>> {
        self.keys.load_full()
    }

    /// Whether a fetch has succeeded once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Why the last fetch failed, if it did.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// Changes whenever the key set is replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches attempted so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches now (the scheduled refresh and start-up).
    pub async fn refresh(&self) {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await;
    }

    /// Fetches because a token named an unknown `kid`, unless a fetch happened less than
    /// `UNKNOWN_KID_INTERVAL` ago. Returns after any fetch in progress has finished.
    pub async fn refresh_for_unknown_kid(&self) {
        let _one = self.fetching.lock().await;
        let recent = self
            .last_kid_fetch
            .lock()
            .is_some_and(|t| t.elapsed() < UNKNOWN_KID_INTERVAL);
        if !recent {
            *self.last_kid_fetch.lock() = Some(Instant::now());
            self.fetch_locked().await;
        }
    }

    async fn fetch_locked(&self) {
        *self.last_attempt.lock() = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch_keys().await {
            Ok((keys, skipped)) => {
                tracing::info!(url = %self.url, keys = keys.len(), skipped, "JWKS loaded");
                // Only a changed key set empties verified-token caches. Keys are compared as
                // published (fingerprints), so a key replaced under the same kid, or without
                // one, counts as a change.
                let before: Vec<u64> = self.keys.load().iter().map(|k| k.fingerprint).collect();
                let after: Vec<u64> = keys.iter().map(|k| k.fingerprint).collect();
                self.keys
                    .store(Arc::new(keys.into_iter().map(Arc::new).collect()));
                if before != after {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                self.loaded.store(true, Ordering::Release);
                self.last_error.store(None);
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the keys already loaded");
                self.last_error.store(Some(Arc::new(e)));
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(Vec<VerifyKey>, usize), String> {
        // Errors leave the URL out: it can carry credentials, and /ready shows them.
        let mut resp = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS document larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        let (keys, skipped) = keys::from_jwks(&body)?;
        if keys.is_empty() {
            return Err("no usable signing key in the JWKS".into());
        }
        Ok((keys, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn unknown_kid_fetches_are_limited_to_one_per_interval() {
        // Nothing listens on port 1: every fetch fails at once, which is all this test needs.
        let j = JwksUrl::new("http://127.0.0.1:1/jwks.json", Duration::from_secs(300)).unwrap();
        j.refresh().await;
        assert_eq!(j.fetches(), 1);
        assert!(!j.loaded());
        assert!(j.last_error().is_some());
        for _ in 0..10 {
            j.refresh_for_unknown_kid().await;
        }
        assert_eq!(
            j.fetches(),
            2,
            "the scheduled fetch does not delay a kid fetch; later ones wait"
        );
        tokio::time::advance(UNKNOWN_KID_INTERVAL - Duration::from_secs(1)).await;
        j.refresh_for_unknown_kid().await;
        assert_eq!(j.fetches(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        j.refresh_for_unknown_kid().await;
        assert_eq!(j.fetches(), 3);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn schedule_retries_quickly_until_loaded() {
        let j = JwksUrl::new("http://127.0.0.1:1/jwks.json", Duration::from_secs(300)).unwrap();
        j.refresh().await;
        let next = j.next_refresh();
        assert!(next <= Instant::now() + RETRY_UNLOADED);
    }
}
