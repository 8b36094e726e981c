//! Upstream providers: endpoints, pools, timeouts, TLS roots and how each provider kind
//! authenticates.

pub mod backend;
pub mod breaker;
pub mod discovery;
pub mod endpoint;
pub mod health;
pub mod keys;
pub mod manager;
pub mod peer;
pub mod pool;
pub mod provider;
pub mod timeouts;
pub mod tls;
