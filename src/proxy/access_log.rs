//! The access log: one JSON line per request, written off the request path by a `LineSink`.

use serde::Serialize;
use std::time::Duration;

/// One access-log line. Never carries a credential: keys appear by id only.
#[derive(Serialize)]
pub struct AccessEntry<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Canonical model id the request was routed to.
    pub model: Option<&'a str>,
    /// The `model` the client sent, when it differs from the canonical id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub backend: Option<std::net::SocketAddr>,
    /// The caller: a token's subject, an API key's id, or `anonymous`.
    pub subject: Option<&'a str>,
    /// The caller's API key id, for key callers.
    pub caller_key_id: Option<&'a str>,
    /// Id of the provider key used (never the key).
    pub provider_key_id: Option<&'a str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Upstream requests made (retries and key rotations included).
    pub attempts: u32,
    pub stream: bool,
    pub latency_ms: f64,
    /// Request sent upstream to response complete.
    pub upstream_ms: Option<f64>,
    /// Request sent upstream to response header.
    pub upstream_ttfb_ms: Option<f64>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub client: Option<std::net::IpAddr>,
}

/// Milliseconds with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}
