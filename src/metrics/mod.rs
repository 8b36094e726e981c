//! Every Prometheus metric, in one per-instance registry (no global statics: they would leak
//! between configurations and tests). Names: `ultra_` prefix, base units, counters end in
//! `_total`. No per-caller labels: label values come from the configuration (endpoint groups,
//! provider names) or small fixed sets (status codes, reason codes).

pub mod state;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

/// Fills the state metrics just before a scrape renders them.
pub type StateSource = Box<dyn Fn(&Metrics) + Send + Sync>;

/// `Content-Type` of `render`'s output (Prometheus text exposition format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds: LLM requests range from milliseconds to many minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// The gateway's own overhead is expected in microseconds to milliseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint group, model, provider, response status and status class.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Upstream exchange (request sent to response complete) by provider.
    pub upstream_duration: HistogramVec,
    /// Total time minus upstream time.
    pub overhead: Histogram,
    /// Authentication/authorization decisions by outcome and reason code.
    pub auth_decisions: IntCounterVec,
    pub audit_dropped: IntCounter,
    pub access_log_dropped: IntCounter,
    /// Tokens charged, by model, provider and kind (`input`, `output`, `cached`).
    pub tokens: IntCounterVec,
    /// Dollars charged, by model and provider.
    pub cost_usd: CounterVec,
    /// Configuration reloads by result (`applied`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// The generation of the configuration serving (1 at start, +1 per applied reload).
    pub config_generation: IntGauge,
    /// Unix time of the last applied reload (or of the start).
    pub config_last_success: IntGauge,
    /// Requests refused by a quota rule, by rule id.
    pub quota_rejections: IntCounterVec,
    /// Quota checks the store could not answer (`quotas.on_store_error` decided).
    pub quota_store_errors: IntCounter,
    /// Upstream request header to response header, by provider.
    pub ttfb: HistogramVec,
    /// Upstream attempts by provider and outcome (`2xx`, `4xx`, `401`, `429`, `5xx`,
    /// `connect_error`, `error`).
    pub attempts: IntCounterVec,
    /// Attempts followed by another, by the failed attempt's outcome.
    pub retries: IntCounterVec,
    // Set at scrape time (see `state`):
    pub backend_healthy: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub key_state: IntGaugeVec,
    pub ratelimit_remaining: IntGaugeVec,
    pub key_cooldowns: IntCounterVec,
    pub inflight: IntGauge,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Connections closed at accept because `server.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Connections closed before a request, by reason (`header_timeout`, `idle_timeout`,
    /// `header_error`: a malformed header, or the client left in the middle of one).
    pub connections_closed: IntCounterVec,
    state_source: OnceLock<StateSource>,
    /// One scrape at a time: the state metrics are reset and refilled for each.
    scrape: parking_lot::Mutex<()>,
    /// What the state counters last added up to (see `state::Counted`).
    counted: parking_lot::Mutex<state::Counted>,
}

/// A status's class label: `1xx` ... `5xx`, or `none` (no status: the client left first).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ultra_requests_total",
                "Requests by endpoint group, model, provider, status and status class",
            ),
            &["endpoint", "model", "provider", "status", "status_class"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "ultra_request_duration_seconds",
                "Request latency, first byte in to last byte out",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "ultra_upstream_duration_seconds",
                "Upstream exchange duration by provider",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "ultra_gateway_overhead_seconds",
                "Request time not spent waiting for the upstream",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "ultra_auth_decisions_total",
                "Authentication and authorization decisions",
            ),
            &["outcome", "reason"],
        )
        .expect("valid metric");
        let audit_dropped = IntCounter::new(
            "ultra_audit_dropped_total",
            "Audit lines dropped because the audit queue was full",
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "ultra_access_log_dropped_total",
            "Access-log lines dropped because the queue was full",
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "ultra_tokens_total",
                "Tokens charged, by model, provider and kind (input includes cached)",
            ),
            &["model", "provider", "kind"],
        )
        .expect("valid metric");
        let cost_usd = CounterVec::new(
            Opts::new(
                "ultra_cost_usd_total",
                "Cost charged in dollars, from the models' pricing",
            ),
            &["model", "provider"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "ultra_config_reloads_total",
                "Configuration reloads by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_generation = IntGauge::new(
            "ultra_config_generation",
            "Generation of the configuration serving: 1 at start, one more per applied reload",
        )
        .expect("valid metric");
        let config_last_success = IntGauge::new(
            "ultra_config_last_reload_success_timestamp_seconds",
            "Unix time of the last applied configuration (start or reload)",
        )
        .expect("valid metric");
        let quota_rejections = IntCounterVec::new(
            Opts::new(
                "ultra_quota_rejections_total",
                "Requests refused by a quota rule (429 quota_exceeded), by rule id",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let quota_store_errors = IntCounter::new(
            "ultra_quota_store_errors_total",
            "Quota checks the quota store could not answer",
        )
        .expect("valid metric");
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "ultra_time_to_first_byte_seconds",
                "Upstream request sent to response header, by provider",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let attempts = counter_vec(
            "ultra_upstream_attempts_total",
            "Upstream attempts by provider and outcome",
            &["provider", "outcome"],
        );
        let retries = counter_vec(
            "ultra_retries_total",
            "Upstream attempts followed by another, by why the attempt failed",
            &["reason"],
        );
        let backend_healthy = gauge_vec(
            "ultra_backend_healthy",
            "1 when a backend is healthy and has passed a health check",
            &["provider", "backend"],
        );
        let breaker_state = gauge_vec(
            "ultra_breaker_state",
            "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open",
            &["provider", "backend"],
        );
        let breaker_transitions = counter_vec(
            "ultra_breaker_transitions_total",
            "Circuit breaker transitions of a provider's backends, by the state entered",
            &["provider", "to"],
        );
        let key_state = gauge_vec(
            "ultra_provider_key_state",
            "1 for a provider key's current state (active, cooling, disabled, missing)",
            &["provider", "key_id", "state"],
        );
        let ratelimit_remaining = gauge_vec(
            "ultra_provider_ratelimit_remaining",
            "What the provider last reported left for a key (x-ratelimit-remaining-*)",
            &["provider", "key_id", "kind"],
        );
        let key_cooldowns = counter_vec(
            "ultra_key_cooldowns_total",
            "Times a provider key was taken out of rotation, by reason",
            &["provider", "key_id", "reason"],
        );
        let inflight = IntGauge::new("ultra_inflight_requests", "Requests being served")
            .expect("valid metric");
        let connections_open =
            IntGauge::new("ultra_connections_open", "Client connections open now")
                .expect("valid metric");
        let connections_refused = IntCounter::new(
            "ultra_connections_refused_total",
            "Connections closed at accept because server.max_connections were open",
        )
        .expect("valid metric");
        let connections_closed = counter_vec(
            "ultra_connections_closed_total",
            "Client connections the gateway closed, by reason",
            &["reason"],
        );
        for reason in ["header_timeout", "idle_timeout", "header_error"] {
            connections_closed.with_label_values(&[reason]);
        }
        let build_info = gauge_vec(
            "ultra_build_info",
            "Always 1; the gateway's version as a label",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Present at zero from the start, so that alerts on their rate see a series.
        for result in ["applied", "rejected"] {
            config_reloads.with_label_values(&[result]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(overhead.clone()),
            Box::new(auth_decisions.clone()),
            Box::new(audit_dropped.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(tokens.clone()),
            Box::new(cost_usd.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(config_last_success.clone()),
            Box::new(quota_rejections.clone()),
            Box::new(quota_store_errors.clone()),
            Box::new(ttfb.clone()),
            Box::new(attempts.clone()),
            Box::new(retries.clone()),
            Box::new(backend_healthy.clone()),
            Box::new(breaker_state.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(key_state.clone()),
            Box::new(ratelimit_remaining.clone()),
            Box::new(key_cooldowns.clone()),
            Box::new(inflight.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_closed.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            overhead,
            auth_decisions,
            audit_dropped,
            access_log_dropped,
            tokens,
            cost_usd,
            config_reloads,
            config_generation,
            config_last_success,
            quota_rejections,
            quota_store_errors,
            ttfb,
            attempts,
            retries,
            backend_healthy,
            breaker_state,
            breaker_transitions,
            key_state,
            ratelimit_remaining,
            key_cooldowns,
            inflight,
            connections_open,
            connections_refused,
            connections_closed,
            state_source: OnceLock::new(),
            scrape: parking_lot::Mutex::new(()),
            counted: parking_lot::Mutex::new(state::Counted::default()),
        }
    }

    /// Tokens and dollars a served request (or analyze leg) was charged.
    pub fn record_charge(
        &self,
        model: &str,
        provider: &str,
        tokens: &crate::usage::Tokens,
        micro_usd: Option<u64>,
    ) {
        for (kind, n) in [
            ("input", tokens.input),
            ("output", tokens.output),
            ("cached", tokens.cached_input),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[model, provider, kind])
                    .inc_by(n);
            }
        }
        if let Some(micro) = micro_usd.filter(|m| *m > 0) {
            self.cost_usd
                .with_label_values(&[model, provider])
                .inc_by(crate::usage::cost::usd(micro));
        }
    }

    /// Where the state metrics come from (the serving runtime); set once at start.
    pub fn set_state_source(&self, source: StateSource) {
        let _ = self.state_source.set(source);
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let families = {
            let _one = self.scrape.lock();
            if let Some(source) = self.state_source.get() {
                source(self);
            }
            self.registry.gather()
        };
        let mut out = Vec::with_capacity(8 * 1024);
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["chat", "m", "p", "200", "2xx"])
            .inc();
        m.audit_dropped.inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("ultra_requests_total{endpoint=\"chat\",model=\"m\",provider=\"p\",status=\"200\",status_class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("ultra_audit_dropped_total 1"));
    }
}
