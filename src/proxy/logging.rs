//! What the `logging` hook records once a request is over: the last attempt's breaker outcome
//! (`upstream_flow::finish`), the request metrics, and the access log's JSON line (written off
//! the request path by a `LineSink`).

use super::ctx::RequestCtx;
use super::{upstream_flow, Gateway, CLIENT_CLOSED};
use crate::time::now_rfc3339;
use crate::usage::{cost, estimate_tokens, Tokens};
use pingora::proxy::Session;
use serde::Serialize;
use std::time::{Duration, Instant};

impl Gateway {
    /// The `logging` hook's work. A request that relayed its body to a subrequest logs
    /// nothing: the subrequest is the same request and logs it.
    pub(super) fn log_request(&self, session: &Session, ctx: &mut RequestCtx) {
        if ctx.relays_to_subrequest {
            return;
        }
        let status = ctx
            .local_status
            .or_else(|| session.response_written().map(|h| h.status.as_u16()))
            .unwrap_or(0);
        let client_gone = ctx.error_code == Some(CLIENT_CLOSED);
        upstream_flow::finish(ctx, status, client_gone, ctx.stream_broken);
        let elapsed = ctx.started.elapsed();
        // The answering attempt ends with its response (or now, if it never completed).
        let end = ctx
            .upstream_done
            .or(ctx.upstream_header)
            .unwrap_or_else(Instant::now);
        self.end_attempt(ctx, end);
        self.record_metrics(ctx, status, elapsed);
        let bytes_in = session.body_bytes_read();
        let charged = charge(ctx, bytes_in as u64);
        if let Some(c) = &charged {
            self.record_usage(ctx, c);
        }
        settle_quota(ctx, charged.as_ref());
        let since_sent = |end: Option<Instant>| Some(ms(end?.duration_since(ctx.upstream_sent?)));
        let route = ctx.route.as_ref();
        let principal = ctx.principal.as_ref();
        let entry = AccessEntry {
            ts: now_rfc3339(),
            request_id: &ctx.request_id,
            method: session.req_header().method.as_str(),
            path: &ctx.path,
            model: route.map(|r| &*r.model_id),
            requested_model: ctx
                .requested_model
                .as_deref()
                .filter(|m| route.is_none_or(|r| **m != *r.model_id)),
            provider: ctx.provider_name(),
            backend: ctx.last_backend,
            subject: principal.map(|p| &*p.subject),
            caller_key_id: principal.and_then(|p| p.key_id.as_deref()),
            provider_key_id: ctx.last_key_id.as_deref(),
            status,
            error: ctx.error_code,
            attempts: ctx.attempts(),
            stream: route.is_some_and(|r| r.stream),
            latency_ms: ms(elapsed),
            upstream_ms: since_sent(ctx.upstream_done),
            upstream_ttfb_ms: since_sent(ctx.upstream_header),
            input_tokens: charged.as_ref().map(|c| c.tokens.input),
            output_tokens: charged.as_ref().map(|c| c.tokens.output),
            cached_input_tokens: charged.as_ref().map(|c| c.tokens.cached_input),
            cost_usd: charged.as_ref().and_then(|c| c.micro_usd).map(cost::usd),
            usage: charged
                .as_ref()
                .map(|c| if c.estimated { "estimated" } else { "reported" }),
            bytes_in,
            bytes_out: ctx.bytes_out,
            client: ctx.client,
        };
        self.access_log.write_json(&entry);
    }

    fn record_usage(&self, ctx: &RequestCtx, c: &Charged) {
        if let Some((p, i)) = ctx.last_key {
            let spent = c.micro_usd.unwrap_or(0);
            ctx.rt
                .provider(p)
                .keys
                .record_usage(i, c.tokens.total(), spent);
        }
        let provider = ctx.provider_name().unwrap_or("unknown");
        self.metrics
            .record_charge(model_label(ctx), provider, &c.tokens, c.micro_usd);
    }

    fn record_metrics(&self, ctx: &RequestCtx, status: u16, elapsed: Duration) {
        let buf = itoa_status(status);
        let status_label = std::str::from_utf8(&buf).unwrap_or("0");
        let m = &self.metrics;
        let class = crate::metrics::status_class(status);
        let provider = if ctx.attempts() > 0 || ctx.response.usage.is_some() {
            ctx.provider_name().unwrap_or("none")
        } else {
            "none"
        };
        m.requests
            .with_label_values(&[
                &*ctx.endpoint,
                model_label(ctx),
                provider,
                status_label,
                class,
            ])
            .inc();
        if let (Some(s), Some(h), Some(p)) =
            (ctx.upstream_sent, ctx.upstream_header, ctx.provider_name())
        {
            m.ttfb
                .with_label_values(&[p])
                .observe(h.duration_since(s).as_secs_f64());
        }
        m.request_duration
            .with_label_values(&[&*ctx.endpoint])
            .observe(elapsed.as_secs_f64());
        // Every attempt's time, failed and timed-out ones included, is the upstream's.
        m.overhead
            .observe(elapsed.saturating_sub(ctx.upstream_spent).as_secs_f64());
    }
}

/// What a request is charged: the usage the provider reported, or an estimate when it reported
/// none (a stream the client left, a provider that does not say): never zero for a response
/// that was served.
pub(super) struct Charged {
    pub tokens: Tokens,
    pub estimated: bool,
    /// `None` without `pricing` for the model.
    pub micro_usd: Option<u64>,
}

/// The charge of a request that got a successful answer from a provider (or the mock); `None`
/// for the rest (refusals, local endpoints, provider errors). Without reported usage: the
/// estimate from the bytes, or the quota reservation's estimate when that is larger (a stream
/// the client left early is charged what it reserved).
pub(super) fn charge(ctx: &RequestCtx, bytes_in: u64) -> Option<Charged> {
    let meter = ctx.response.usage.as_ref()?;
    let (tokens, estimated) = match meter.reported() {
        Some(t) => (t, false),
        None => {
            let reserved = ctx.quota.as_ref().map(|r| r.estimate).unwrap_or_default();
            let tokens = Tokens {
                input: estimate_tokens(bytes_in).max(reserved.input),
                output: estimate_tokens(meter.bytes).max(reserved.output),
                cached_input: 0,
            };
            (tokens, true)
        }
    };
    let pricing = ctx
        .route
        .as_ref()
        .and_then(|r| r.model)
        .and_then(|idx| ctx.rt.registry.get(idx).pricing.as_ref());
    Some(Charged {
        tokens,
        estimated,
        micro_usd: pricing.map(|p| cost::micro_usd(&tokens, p)),
    })
}

/// Replaces the request's quota reservation with what it spent (gives it back when it spent
/// nothing), or records a served request that reserved nothing, for `/api/usage`.
fn settle_quota(ctx: &mut RequestCtx, charged: Option<&Charged>) {
    let spent = charged.map(|c| (c.tokens.total(), c.micro_usd.unwrap_or(0)));
    let reservation = ctx.quota.take();
    ctx.rt
        .quotas
        .close(reservation, ctx.principal.as_ref(), spent);
}

/// The model label of metrics: a configured model's id (never a name a client made up).
fn model_label(ctx: &RequestCtx) -> &str {
    match ctx.route.as_ref() {
        Some(r) if r.model.is_some() => &r.model_id,
        _ => "unknown",
    }
}

/// A status code as three ASCII digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// One access-log line. Never carries a credential: keys appear by id only. Text a caller
/// controls is clipped (see `crate::clip`).
#[derive(Serialize)]
pub struct AccessEntry<'a> {
    pub ts: String,
    pub request_id: &'a str,
    #[serde(serialize_with = "crate::clip::field")]
    pub method: &'a str,
    #[serde(serialize_with = "crate::clip::field")]
    pub path: &'a str,
    /// Canonical model id the request was routed to.
    #[serde(serialize_with = "crate::clip::opt_field")]
    pub model: Option<&'a str>,
    /// The `model` the client sent, when it differs from the canonical id.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::clip::opt_field"
    )]
    pub requested_model: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub backend: Option<std::net::SocketAddr>,
    /// The caller: a token's subject, an API key's id, or `anonymous`.
    #[serde(serialize_with = "crate::clip::opt_field")]
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
    /// Tokens charged (reported by the provider, or estimated: see `usage`); null when the
    /// request got no successful answer.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    /// Cost in dollars from the model's `pricing`; null without pricing.
    pub cost_usd: Option<f64>,
    /// `reported` or `estimated`; absent when nothing was charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<&'static str>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub client: Option<std::net::IpAddr>,
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_digits() {
        assert_eq!(&itoa_status(200), b"200");
        assert_eq!(&itoa_status(0), b"000");
        assert_eq!(&itoa_status(5000), b"999");
    }
}
