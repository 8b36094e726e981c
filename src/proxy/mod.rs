//! The `ProxyHttp` implementation. Each hook is a step of DESIGN.md's request flow and calls
//! into the modules that hold the decisions:
//!
//! | hook                       | does                                                | module |
//! |----------------------------|-----------------------------------------------------|--------|
//! | `request_filter`           | snapshot, local endpoints, auth, body, route, mock  | `admission`, `local`, `body`, `model_field`, `route`, `mock` |
//! | `upstream_peer`            | the next attempt: target, key, backend              | `attempts`, `upstream_flow` |
//! | `connected_to_upstream`    | arm the attempt's timers                            | `timers` |
//! | `upstream_request_filter`  | header hygiene, path, Host, key, Content-Length     | `upstream_flow`, `headers` |
//! | `request_body_filter`      | send the (renamed) body at end of stream            | `body` |
//! | `upstream_response_filter` | key ring, retries on 401/403/429/5xx, scrub, tag    | `upstream_flow` |
//! | `response_body_filter`     | count, watch SSE errors, scrub error bodies         | `response_body` |
//! | `fail_to_connect`, `error_while_proxy` | breaker, retry budget                   | `upstream_flow` |
//! | `fail_to_proxy`            | OpenAI-shaped error, or an SSE error event          | `errors`, `response_body` |
//! | `logging`                  | breaker outcome, metrics, access log                | `access_log` |

mod access_log;
mod admission;
mod attempts;
pub mod body;
mod ctx;
pub mod errors;
pub mod headers;
pub mod local;
pub mod model_field;
mod provider_health;
mod response_body;
mod route;
mod subrequest;
mod timers;
mod upstream_flow;

pub use ctx::RequestCtx;

use crate::auth::audit::AuditLog;
use crate::auth::rbac::Access;
use crate::auth::Refusal;
use crate::config::Mode;
use crate::line_sink::LineSink;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::time::now_rfc3339;
use access_log::{ms, AccessEntry};
use admission::{client_addr, endpoint_label, reject, serve_local, serve_metrics, serve_mock};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use errors::GatewayError;
use local::Local;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::Error;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// Access-log `error` of a request whose client went away before the response was complete.
const CLIENT_CLOSED: &str = "client_closed";

/// Response header naming the model that served a request for an unknown model name.
pub const DEFAULT_MODEL_HEADER: &str = "x-ultra-default-model";

/// Request header that, in development mode, has the mock answer whatever the model.
pub const TEST_MODE_HEADER: &str = "x-test-mode";

/// The gateway's proxy logic.
pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    access_log: LineSink,
    audit: AuditLog,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        access_log: LineSink,
        audit: AuditLog,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        Gateway {
            runtime,
            access_log,
            audit,
            metrics,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        subrequest::may_need(session)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = self.runtime.load_full();
        let relayed = subrequest::adopt_relay(session)?;
        ctx.request_id = match &relayed {
            Some(r) => r.request_id.clone(),
            None => headers::request_id(session.req_header()),
        };
        ctx.rt = Some(rt.clone());
        let Some(path) = crate::endpoints::normalize(session.req_header().uri.path()) else {
            return reject(session, ctx, GatewayError::UnknownEndpoint).await;
        };
        ctx.path = path;
        let local = local::route(&ctx.path);

        // Unauthenticated: probes and the scrape endpoint.
        if matches!(local, Some(Local::Health | Local::Ready)) {
            ctx.endpoint = Cow::Borrowed("health");
            return serve_local(session, ctx, &rt, Access::All).await;
        }
        if ctx.path == "/metrics" && rt.metrics_on_main {
            ctx.endpoint = Cow::Borrowed("metrics");
            return serve_metrics(session, ctx, &self.metrics).await;
        }

        // Who is calling, and may they use this endpoint at all.
        let principal = match relayed {
            Some(r) => {
                ctx.audited = true;
                r.principal
            }
            None => match rt.auth.authenticate(&session.req_header().headers).await {
                Ok(p) => p,
                Err(refusal) => return self.deny(session, ctx, refusal).await,
            },
        };
        let access = principal.access;
        ctx.principal = Some(principal);
        if access == Access::Roles(0) {
            return self.deny(session, ctx, Refusal::NoKnownRoles).await;
        }
        let group = match (&local, rt.proxied_group(&ctx.path)) {
            (Some(l), _) => local::group(l),
            (None, Some(g)) => g,
            (None, None) => {
                return self
                    .admit_and_reject(session, ctx, GatewayError::UnknownEndpoint)
                    .await
            }
        };
        ctx.endpoint = endpoint_label(&group);
        if !rt.auth.rbac.allows_endpoint(access, &group) {
            return self.deny(session, ctx, Refusal::EndpointForbidden).await;
        }
        if local.is_some() {
            if !self.admit(session, ctx) {
                return reject(session, ctx, GatewayError::AuditUnavailable).await;
            }
            return serve_local(session, ctx, &rt, access).await;
        }

        ctx.test_mode = rt.mode == Mode::Development
            && session
                .req_header()
                .headers
                .get(TEST_MODE_HEADER)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let routed = match route::route(session, ctx, &rt, group, access).await {
            Ok(r) => r,
            Err(e) => {
                // The body could not be read (the client left or stalled): still one audit line.
                self.admit(session, ctx);
                return Err(e);
            }
        };
        if let route::Routed::Denied(refusal) = routed {
            return self.deny(session, ctx, refusal).await;
        }
        if !self.admit(session, ctx) {
            return reject(session, ctx, GatewayError::AuditUnavailable).await;
        }
        match routed {
            route::Routed::Proxy => Ok(false),
            route::Routed::Rejected(e) => reject(session, ctx, e).await,
            route::Routed::Mock => serve_mock(session, ctx, &rt).await,
            route::Routed::NeedsSubrequest(body) => {
                ctx.relayed = true;
                let principal = ctx.principal.clone().expect("authenticated above");
                subrequest::relay(session, ctx, body, principal).await?;
                Ok(true)
            }
            route::Routed::Denied(_) => unreachable!("handled above"),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        upstream_flow::next_peer(ctx)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(t) = ctx.plan.as_ref().and_then(|p| p.target()) {
            let timer = timers::AttemptTimer::start(t.timeouts);
            timer.set_fd(fd);
            ctx.timer = Some(timer);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_flow::prepare_request(ctx, req)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora replays the tail kept in its retry buffer; the whole body goes at its end.
        // `None` before the end would tell Pingora the body is over, hence the empty chunk.
        *body = Some(if end_of_stream {
            ctx.body.clone()
        } else {
            Bytes::new()
        });
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(t) = &ctx.timer {
            t.progress();
        }
        upstream_flow::on_response(ctx, resp)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            // Dropping the watchdog disarms it, before the connection can be reused.
            ctx.timer = None;
        } else if let Some(t) = &ctx.timer {
            t.progress();
        }
        ctx.response.chunk(body, end_of_stream);
        if let Some(b) = body {
            ctx.bytes_out += b.len();
        }
        if end_of_stream && ctx.upstream_header.is_some() {
            ctx.upstream_done = Some(Instant::now());
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream_flow::on_connect_failure(ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let written = response_started(session);
        upstream_flow::on_proxy_error(ctx, e, written, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let gerr = ctx
            .pending_error
            .take()
            .or_else(|| upstream_flow::classify(e, ctx));
        ctx.timer = None;
        match &gerr {
            Some(GatewayError::Internal) => {
                tracing::error!(request_id = %ctx.request_id, error = %e, "request failed inside the gateway")
            }
            Some(g) => {
                tracing::debug!(request_id = %ctx.request_id, error = %e, code = g.code(), "request failed")
            }
            None => tracing::debug!(request_id = %ctx.request_id, error = %e, "client went away"),
        }
        let code = match gerr {
            Some(gerr) if !response_started(session) => {
                ctx.error_code = Some(gerr.code());
                let status = gerr.status();
                let body = gerr.body();
                let mut h = gerr.response_header(&ctx.request_id, body.len());
                ctx.decorate(&mut h);
                ctx.bytes_out += body.len();
                if session
                    .write_response_header(Box::new(h), false)
                    .await
                    .is_ok()
                {
                    let _ = session.write_response_body(Some(body), true).await;
                }
                status
            }
            Some(gerr) => {
                // The response had begun: a stream ends with an error event rather than being
                // silently cut; other bodies can only be cut.
                ctx.error_code = Some(gerr.code());
                ctx.stream_broken = true;
                if ctx.response.sse {
                    let event = response_body::sse_error_event(&gerr);
                    ctx.bytes_out += event.len();
                    let _ = session.write_response_body(Some(event), true).await;
                }
                session
                    .response_written()
                    .map_or(gerr.status(), |h| h.status.as_u16())
            }
            None => {
                ctx.error_code = Some(CLIENT_CLOSED);
                0
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        // Errors the gateway turned into a response are in the access log already.
        ctx.error_code.is_some()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.relayed {
            return;
        }
        let status = ctx
            .local_status
            .or_else(|| session.response_written().map(|h| h.status.as_u16()))
            .unwrap_or(0);
        let client_gone = ctx.error_code == Some(CLIENT_CLOSED);
        upstream_flow::finish(ctx, status, client_gone, ctx.stream_broken);
        let client = client_addr(session, ctx);
        let route = ctx.route.as_ref();
        let elapsed = ctx.started.elapsed();
        let upstream = ctx
            .upstream_sent
            .zip(ctx.upstream_done.or(ctx.upstream_header))
            .map(|(s, e)| e.duration_since(s));
        self.record_metrics(ctx, status, elapsed, upstream);
        let since_sent = |end: Option<Instant>| Some(ms(end?.duration_since(ctx.upstream_sent?)));
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
            bytes_in: session.body_bytes_read(),
            bytes_out: ctx.bytes_out,
            client,
        };
        self.access_log.write_json(&entry);
    }
}

/// Whether the client has been sent a (non-1xx) response header.
fn response_started(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|h| !h.status.is_informational())
}
