//! ultra-gateway: an OpenAI-compatible LLM API gateway on Cloudflare's Pingora.
//!
//! The library holds everything; `main.rs` is the command line. Start with `server::run`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clip;
pub mod config;
pub mod connections;
pub mod embedded;
pub mod endpoints;
pub mod healthcheck;
pub mod line_sink;
pub mod metrics;
pub mod mock;
#[cfg(test)]
mod proptests;
pub mod proxy;
pub mod quota;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod signals;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod time;
pub mod upstream;
pub mod usage;
