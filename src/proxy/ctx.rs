//! Per-request state, carried from hook to hook: plain data, no locks.

use super::admission::route::Route;
use super::attempts::Plan;
use super::errors::GatewayError;
use super::response_body::ResponseWatch;
use super::timers::AttemptTimer;
use super::DEFAULT_MODEL_HEADER;
use crate::auth::Principal;
use crate::quota::{window, Headroom, Reservation};
use crate::runtime::Runtime;
use crate::shutdown::InFlight;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct RequestCtx {
    pub(super) started: Instant,
    /// The configuration this request is served by, from start to end (a reload swaps in a new
    /// one for later requests).
    pub(super) rt: Arc<Runtime>,
    /// Counts this request in flight until the context drops (see `shutdown`).
    _in_flight: InFlight,
    pub(super) request_id: String,
    /// Normalised path.
    pub(super) path: String,
    pub(super) route: Option<Route>,
    /// The body's `model`, once read.
    pub(super) requested_model: Option<Box<str>>,
    /// The body as the client sent it.
    pub(super) original_body: Bytes,
    /// The body for the current attempt (model renamed for its target).
    pub(super) body: Bytes,
    /// The target index `body` was made for.
    pub(super) body_target: Option<usize>,
    /// `body` asks for the stream's usage chunk on the gateway's behalf (the client did not):
    /// the chunk is taken out of the response.
    pub(super) usage_requested: bool,
    /// Targets, backends and keys tried; the attempt in flight.
    pub(super) plan: Option<Plan>,
    /// Our `upstream_response_filter` asked Pingora to retry (a status, not an I/O error).
    pub(super) retry_requested: bool,
    /// The current attempt's outcome is in the metrics already (Pingora reports an attempt
    /// our response filter ended, or a response that broke after its header, once more as an
    /// error).
    pub(super) attempt_counted: bool,
    /// Who served the last attempt, for headers and logs.
    pub(super) last_provider: Option<Arc<str>>,
    pub(super) last_backend: Option<SocketAddr>,
    pub(super) last_key_id: Option<Arc<str>>,
    /// The provider and key index of the last attempt (its use today is counted per key).
    pub(super) last_key: Option<(crate::registry::ProviderIdx, usize)>,
    pub(super) upstream_sent: Option<Instant>,
    /// When the current attempt began (its peer chosen): what follows, connecting included, is
    /// time spent on the upstream, until the attempt ends (see `end_attempt`).
    pub(super) attempt_started: Option<Instant>,
    /// Time spent on upstream attempts that ended, failed ones included.
    pub(super) upstream_spent: std::time::Duration,
    pub(super) upstream_header: Option<Instant>,
    pub(super) upstream_done: Option<Instant>,
    pub(super) response: ResponseWatch,
    /// The current attempt's own timers (first byte, between chunks, total).
    pub(super) timer: Option<AttemptTimer>,
    /// The response broke after it had begun (upstream error or timeout mid-body).
    pub(super) stream_broken: bool,
    /// Status of a response the gateway wrote itself.
    pub(super) local_status: Option<u16>,
    pub(super) bytes_out: usize,
    pub(super) error_code: Option<&'static str>,
    /// The error `fail_to_proxy` should answer with, set by the hook that failed.
    pub(super) pending_error: Option<GatewayError>,
    /// This request only relays its body to a subrequest, which does the proxying (and the
    /// logging).
    pub(super) relays_to_subrequest: bool,
    /// The caller, once authenticated (for the access log).
    pub(super) principal: Option<Principal>,
    /// The canonical model id, once resolved (for the audit log).
    pub(super) model_id: Option<Arc<str>>,
    /// Metric label: the endpoint group or local endpoint.
    pub(super) endpoint: Cow<'static, str>,
    pub(super) audited: bool,
    /// The client's address (the peer, or `X-Forwarded-For` from a trusted proxy), worked out
    /// once at the start of `request_filter`; `None` when unknown.
    pub(super) client: Option<std::net::IpAddr>,
    /// What this request reserved of its quotas, settled in `logging`.
    pub(super) quota: Option<Reservation>,
    /// The tightest rule's `x-ratelimit-*` values, when a quota rule applies.
    pub(super) ratelimit: Option<Headroom>,
}

impl RequestCtx {
    pub fn new(rt: Arc<Runtime>, in_flight: InFlight) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            rt,
            _in_flight: in_flight,
            request_id: String::new(),
            path: String::new(),
            route: None,
            requested_model: None,
            original_body: Bytes::new(),
            body: Bytes::new(),
            body_target: None,
            usage_requested: false,
            plan: None,
            retry_requested: false,
            attempt_counted: false,
            last_provider: None,
            last_backend: None,
            last_key_id: None,
            last_key: None,
            upstream_sent: None,
            attempt_started: None,
            upstream_spent: std::time::Duration::ZERO,
            upstream_header: None,
            upstream_done: None,
            response: ResponseWatch::default(),
            timer: None,
            stream_broken: false,
            local_status: None,
            bytes_out: 0,
            error_code: None,
            pending_error: None,
            relays_to_subrequest: false,
            principal: None,
            model_id: None,
            endpoint: Cow::Borrowed("unknown"),
            audited: false,
            client: None,
            quota: None,
            ratelimit: None,
        }
    }

    /// The provider that served (or last tried to serve) this request.
    /// Ends the current attempt at `end`, if one is running: its time is added to
    /// `upstream_spent` and returned.
    pub(super) fn end_attempt(&mut self, end: Instant) -> Option<std::time::Duration> {
        let spent = end.saturating_duration_since(self.attempt_started.take()?);
        self.upstream_spent += spent;
        Some(spent)
    }

    pub(super) fn provider_name(&self) -> Option<&str> {
        self.last_provider
            .as_deref()
            .or_else(|| self.route.as_ref().map(|r| &*r.target.provider_name))
    }

    /// Upstream requests made for this request.
    pub(super) fn attempts(&self) -> u32 {
        self.plan.as_ref().map_or(0, |p| p.made)
    }

    /// Adds the gateway's headers to a response for this request.
    pub(super) fn decorate(&self, h: &mut ResponseHeader) {
        let _ = h.insert_header("x-request-id", &self.request_id);
        if let Some(p) = self.provider_name() {
            let _ = h.insert_header("x-ultra-provider", p);
        }
        if self.attempts() > 0 {
            let _ = h.insert_header("x-ultra-attempts", self.attempts().to_string());
        }
        if let Some(r) = &self.route {
            if r.default_model_used {
                let _ = h.insert_header(DEFAULT_MODEL_HEADER, &*r.model_id);
            }
        }
        if let Some(room) = &self.ratelimit {
            ratelimit_headers(h, room);
        }
    }
}

const ANTHROPIC_RATELIMIT: [&str; 12] = [
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];

/// OpenAI's rate-limit headers from the tightest quota rule. They replace the provider's, which
/// describe the gateway's own key, not this caller.
fn ratelimit_headers(h: &mut ResponseHeader, room: &Headroom) {
    let now = window::now_ms();
    const NAMES: [[&str; 3]; 2] = [
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ];
    // Anthropic's own spelling describes the gateway's key as well: it goes.
    for name in ANTHROPIC_RATELIMIT {
        if h.headers.contains_key(name) {
            h.remove_header(name);
        }
    }
    for ([limit, remaining, reset], head) in NAMES.into_iter().zip([room.requests, room.tokens]) {
        match head {
            Some(head) => {
                let left = head.reset_at_ms.saturating_sub(now);
                let _ = h.insert_header(limit, head.limit.to_string());
                let _ = h.insert_header(remaining, head.remaining.to_string());
                let _ = h.insert_header(reset, window::openai_duration(left));
            }
            None => {
                for name in [limit, remaining, reset] {
                    h.remove_header(name);
                }
            }
        }
    }
}
