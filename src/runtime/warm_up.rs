//! Making a runtime ready before it takes traffic, at start and before a reload's swap: every
//! pool resolved, backends nobody has checked yet checked once, and a JWKS URL nobody has
//! fetched yet fetched. What an earlier configuration knew (carried by `state::State`) is not
//! learnt again, so a reload is quick and never makes a servable model unservable for lack of a
//! first check.

use super::Runtime;
use crate::upstream::manager;
use std::time::Duration;

/// Longest wait for the first resolution and JWKS fetch, then for the first health pass. A
/// failure is not fatal: the manager keeps trying, and JWT callers get 503 until the JWKS loads.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    pub async fn warm_up(&self) {
        let jwks = async {
            if let Some(j) = self.auth.jwks_url().filter(|j| !j.loaded()) {
                j.refresh().await;
            }
        };
        let both = async {
            tokio::join!(manager::refresh_all(self), jwks);
        };
        let _ = tokio::time::timeout(STEP_TIMEOUT, both).await;
        let _ = tokio::time::timeout(STEP_TIMEOUT, manager::check_unchecked(self)).await;
    }
}
