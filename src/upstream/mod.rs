//! Upstream providers: endpoints, pools, timeouts, TLS roots and how each provider kind
//! authenticates.

pub mod endpoint;
pub mod manager;
pub mod pool;
pub mod provider;
pub mod timeouts;
pub mod tls;
