//! What the gateway knows about one backend (one address of one endpoint): its circuit breaker,
//! whether it passed a health check since it appeared, its latency and its last error. It rides
//! in Pingora's `Backend.ext`, so selection reads it without a lookup.

use super::breaker::{Breaker, BreakerPolicy};
use super::endpoint::Endpoint;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the gateway knows about one backend (one address of one endpoint).
#[derive(Debug)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    pub breaker: Arc<Breaker>,
    /// Passed a health check since it appeared (always true when checks are off): new backends
    /// get no traffic before that.
    checked: AtomicBool,
    /// Exponentially weighted latency of responses, in microseconds (0: none yet).
    latency_us: AtomicU64,
    last_error: parking_lot::Mutex<Option<(String, SystemTime)>>,
}

impl BackendState {
    pub(super) fn new(
        addr: SocketAddr,
        endpoint: Arc<Endpoint>,
        policy: BreakerPolicy,
        checked: bool,
    ) -> BackendState {
        BackendState {
            addr,
            endpoint,
            breaker: Arc::new(Breaker::new(policy)),
            checked: AtomicBool::new(checked),
            latency_us: AtomicU64::new(0),
            last_error: parking_lot::Mutex::new(None),
        }
    }

    pub fn mark_checked(&self) {
        self.checked.store(true, Ordering::Release);
    }

    pub fn checked(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }

    /// Records a response latency (EWMA, weight 1/8).
    pub fn record_latency(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn record_error(&self, what: impl Into<String>) {
        *self.last_error.lock() = Some((what.into(), SystemTime::now()));
    }

    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error.lock().clone()
    }
}
