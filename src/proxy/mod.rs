//! The `ProxyHttp` implementation. Each hook is a step of DESIGN.md's request flow and calls
//! into the modules that hold the decisions:
//!
//! | hook                       | does                                                | modules |
//! |----------------------------|-----------------------------------------------------|---------|
//! | `new_ctx`                  | the configuration snapshot for the whole request    | `ctx` |
//! | `request_filter`           | read, admit (probe / auth / endpoint / body / route), answer locally or hand over | `intake`, `admission`, `audit`, `respond`, `local`, `body`, `model_field`, `subrequest` |
//! | `upstream_peer`            | the next attempt: target, key, backend              | `upstream_flow`, `attempts` |
//! | `connected_to_upstream`    | arm the attempt's timers                            | `timers` |
//! | `upstream_request_filter`  | header hygiene, path, Host, key, Content-Length     | `upstream_flow`, `headers` |
//! | `request_body_filter`      | send the (renamed) body at end of stream            | `body` |
//! | `upstream_response_filter` | key ring, retries on 401/403/429/5xx, scrub, tag    | `upstream_flow`, `headers`, `response_body` |
//! | `response_body_filter`     | count, watch SSE errors, scrub error bodies         | `response_body`, `timers` |
//! | `fail_to_connect`, `error_while_proxy` | breaker, retry budget                   | `upstream_flow`, `attempts` |
//! | `fail_to_proxy`            | OpenAI-shaped error, or an SSE error event          | `upstream_flow`, `respond`, `response_body` |
//! | `logging`                  | breaker outcome, metrics, access log                | `logging`, `upstream_flow` |

mod admission;
mod analyze;
mod attempts;
mod audit;
pub mod body;
mod call;
mod ctx;
mod error_text;
pub mod errors;
pub mod headers;
mod intake;
pub mod local;
#[doc(hidden)] // public for benches/hot_path.rs only
pub mod logging;
pub mod model_field;
mod policy;
mod provider_health;
mod respond;
pub mod response_body;
mod subrequest;
mod timers;
mod upstream_flow;
mod usage_view;

pub use ctx::RequestCtx;

use crate::auth::audit::AuditLog;
use crate::auth::rbac::Access;
use crate::auth::Principal;
use crate::line_sink::LineSink;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::runtime::Runtime;
use crate::shutdown::Drain;
use admission::route::{Caller, Outcome};
use admission::{Endpoint, Entry, Refused};
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
    /// Applies `POST /api/admin/reload`; `None` where nothing can be reloaded (tests).
    reloader: Option<Arc<Reloader>>,
    /// Requests in flight, for a shutdown that waits no longer than they need.
    drain: Arc<Drain>,
    /// The gateway's own upstream calls (analyze legs), with their pooled connections.
    connector: Arc<pingora::connectors::http::Connector>,
}

impl Gateway {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        access_log: LineSink,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        reloader: Option<Arc<Reloader>>,
        drain: Arc<Drain>,
    ) -> Gateway {
        Gateway {
            runtime,
            access_log,
            audit,
            metrics,
            reloader,
            drain,
            connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        crate::connections::header_read();
        RequestCtx::new(self.runtime.load_full(), self.drain.enter())
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        subrequest::may_need(session)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let parent_caller = subrequest::adopt_parent(session, ctx)?;
        if parent_caller.is_none() {
            ctx.request_id = headers::request_id(session.req_header());
            ctx.client = intake::client_addr(session, &ctx.rt);
            let framing = intake::framing(session.req_header());
            if framing.close {
                session.set_keepalive(None);
            }
            if let Some(why) = framing.problem {
                return respond::error(session, ctx, GatewayError::InvalidHeader(why)).await;
            }
        }
        let Some(path) = crate::endpoints::normalize(session.req_header().uri.path()) else {
            return respond::error(session, ctx, GatewayError::UnknownEndpoint).await;
        };
        ctx.path = path;
        match admission::entry(&ctx.rt, &ctx.path) {
            Entry::Probe(local) => {
                ctx.endpoint = "health".into();
                return respond::local(session, ctx, local, Access::All).await;
            }
            Entry::Metrics => {
                ctx.endpoint = "metrics".into();
                return respond::metrics(session, ctx, &self.metrics).await;
            }
            Entry::Guarded => {}
        }
        let caller = match parent_caller {
            Some(p) => p,
            None => match ctx
                .rt
                .auth
                .authenticate(&session.req_header().headers)
                .await
            {
                Ok(p) => p,
                Err(refusal) => {
                    return self
                        .refuse(session, ctx, None, Refused::Denied(refusal))
                        .await
                }
            },
        };
        let handled = self.admit(session, ctx, &caller).await;
        ctx.principal = Some(caller);
        handled
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.attempt_counted = false;
        // A previous attempt that no failure hook ended (none should be left) ends here.
        self.end_attempt(ctx, Instant::now());
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
            let timer = timers::AttemptTimer::start(t.timeouts, self.drain.cut_signal());
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
        let outcome = (!resp.status.is_informational())
            .then(|| call::outcome_of_status(resp.status.as_u16()));
        let result = upstream_flow::on_response(ctx, resp);
        if let Some(outcome) = outcome {
            self.count_attempt(ctx, outcome, result.is_err());
        }
        result
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
        self.end_attempt(ctx, Instant::now());
        let e = upstream_flow::on_connect_failure(ctx, e);
        self.count_attempt(ctx, "connect_error", e.retry());
        tracing::debug!(request_id = %ctx.request_id, error = %error_text::Safe(&e), retry = e.retry(), "upstream connection failed");
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.end_attempt(ctx, Instant::now());
        let written = response_started(session);
        let e = upstream_flow::on_proxy_error(ctx, e, written, client_reused);
        if ctx.attempts() > 0 && !ctx.attempt_counted {
            self.count_attempt(ctx, "error", e.retry());
        }
        tracing::debug!(request_id = %ctx.request_id, error = %error_text::Safe(&e), retry = e.retry(), "upstream exchange failed");
        e
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
                tracing::error!(request_id = %ctx.request_id, error = %error_text::Safe(e), "request failed inside the gateway")
            }
            Some(g) => {
                tracing::debug!(request_id = %ctx.request_id, error = %error_text::Safe(e), code = g.code(), "request failed")
            }
            None => {
                tracing::debug!(request_id = %ctx.request_id, error = %error_text::Safe(e), "client went away")
            }
        }
        let code = match gerr {
            Some(gerr) if !response_started(session) => {
                let status = gerr.status();
                let _ = respond::error(session, ctx, gerr).await;
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

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        // `fail_to_proxy` logged the error already, without the raw bytes Pingora's own line
        // would quote (see `error_text`), and the access log has the request.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A failed attempt that will be retried: logged by `error_while_proxy` and
        // `fail_to_connect`, without raw bytes.
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.log_request(session, ctx);
    }
}

impl Gateway {
    /// The rest of `request_filter` once the caller is known: may it use this endpoint, and
    /// with this body; then the answer, or the hand-over to `upstream_peer` (`Ok(false)`).
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        caller: &Principal,
    ) -> Result<bool> {
        let endpoint = Endpoint::of_path(&ctx.rt, &ctx.path);
        if let Some(e) = &endpoint {
            ctx.endpoint = e.label();
        }
        let head = intake::head(session);
        let group = match admission::authorize(&ctx.rt, caller.access, endpoint, head) {
            Ok(Endpoint::Proxied(group)) => group,
            Ok(Endpoint::Local(local)) => {
                if !self.audit(session, ctx, Some(caller), None) {
                    return respond::error(session, ctx, GatewayError::AuditUnavailable).await;
                }
                match local {
                    Local::AdminReload => {
                        return respond::reload(session, ctx, self.reloader.as_deref()).await
                    }
                    Local::Usage => return respond::usage(session, ctx, caller).await,
                    Local::Analyze => return self.analyze(session, ctx, caller).await,
                    _ => {}
                }
                return respond::local(session, ctx, local, caller.access).await;
            }
            Err(why) => return self.refuse(session, ctx, Some(caller), why).await,
        };
        let rt = ctx.rt.clone();
        let body = match intake::body(session, &rt).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                return self
                    .refuse(session, ctx, Some(caller), Refused::Rejected(e))
                    .await
            }
            Err(gone) => {
                // The client left or broke the body: still one audit line.
                self.audit(session, ctx, Some(caller), None);
                return Err(gone);
            }
        };
        let test_mode = intake::test_mode(session, &rt);
        let now = tokio::time::Instant::now();
        let routing = admission::route::route(
            &rt,
            &group,
            Caller {
                principal: caller,
                test_mode,
            },
            body,
            now,
        );
        ctx.requested_model = routing.requested_model;
        ctx.model_id = routing.model_id;
        if let Outcome::Refuse { why, route } = routing.outcome {
            ctx.route = route;
            return self.refuse(session, ctx, Some(caller), why).await;
        }
        if !self.audit(session, ctx, Some(caller), None) {
            return respond::error(session, ctx, GatewayError::AuditUnavailable).await;
        }
        let routed = match &routing.outcome {
            Outcome::Proxy { route, .. } | Outcome::Mock { route, .. } => Some(route),
            Outcome::Relay { .. } | Outcome::Refuse { .. } => None,
        };
        if let Some(route) = routed {
            let body_len = session.body_bytes_read() as u64;
            if let Some(e) = self.reserve_quota(ctx, caller, route, body_len).await {
                ctx.route = Some(route.clone());
                return respond::error(session, ctx, e).await;
            }
        }
        match routing.outcome {
            Outcome::Proxy { route, plan, body } => {
                ctx.route = Some(route);
                ctx.plan = Some(plan);
                ctx.original_body = body;
                Ok(false)
            }
            Outcome::Mock {
                route,
                body,
                usage_requested,
            } => respond::mock(session, ctx, route, body, usage_requested).await,
            Outcome::Relay { body, principal } => {
                ctx.relays_to_subrequest = true;
                subrequest::relay(session, ctx, body, principal).await?;
                Ok(true)
            }
            Outcome::Refuse { why, .. } => self.refuse(session, ctx, Some(caller), why).await,
        }
    }

    /// One upstream attempt's outcome, and a retry when another attempt follows it.
    /// Ends the current upstream attempt at `end` (see `RequestCtx::end_attempt`) and records
    /// its duration, whatever its outcome: a timed-out attempt is time spent on the provider,
    /// not gateway overhead.
    fn end_attempt(&self, ctx: &mut RequestCtx, end: Instant) {
        if let Some(spent) = ctx.end_attempt(end) {
            let provider = ctx.provider_name().unwrap_or("unknown");
            self.metrics
                .upstream_duration
                .with_label_values(&[provider])
                .observe(spent.as_secs_f64());
        }
    }

    fn count_attempt(&self, ctx: &mut RequestCtx, outcome: &str, retried: bool) {
        ctx.attempt_counted = true;
        let provider = ctx.provider_name().unwrap_or("unknown");
        self.metrics
            .attempts
            .with_label_values(&[provider, outcome])
            .inc();
        if retried {
            self.metrics.retries.with_label_values(&[outcome]).inc();
        }
    }

    /// Step 4: reserves the caller's quotas for `route` (headers and reservation into `ctx`);
    /// the error to answer with when the request may not go on.
    async fn reserve_quota(
        &self,
        ctx: &mut RequestCtx,
        caller: &Principal,
        route: &admission::route::Route,
        body_len: u64,
    ) -> Option<GatewayError> {
        let checked = admission::quota::check(&ctx.rt, caller, route, body_len).await;
        ctx.quota = checked.reservation;
        ctx.ratelimit = checked.headroom;
        if checked.store_failed {
            self.metrics.quota_store_errors.inc();
        }
        if let Some(GatewayError::QuotaExceeded(e)) = &checked.refused {
            self.metrics
                .quota_rejections
                .with_label_values(&[&*e.rule])
                .inc();
        }
        checked.refused
    }

    /// Answers a refusal: the audit line (`deny`, or `allow` for a caller admitted whose
    /// request cannot be served), then the error.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        caller: Option<&Principal>,
        why: Refused,
    ) -> Result<bool> {
        let error = match why {
            Refused::Denied(r) => {
                self.audit(session, ctx, caller, Some(r));
                GatewayError::Auth(r)
            }
            Refused::Rejected(e) if self.audit(session, ctx, caller, None) => e,
            Refused::Rejected(_) => GatewayError::AuditUnavailable,
        };
        respond::error(session, ctx, error).await
    }
}

/// Whether the client has been sent a (non-1xx) response header.
fn response_started(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|h| !h.status.is_informational())
}

#[cfg(test)]
mod tests {
    /// docs/architecture.md shows the hook table of this module's documentation, row for row.
    #[test]
    fn the_architecture_doc_shows_this_hook_table() {
        let code: Vec<&str> = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! |"))
            .collect();
        let doc: Vec<&str> = include_str!("../../docs/architecture.md")
            .lines()
            .skip_while(|l| !l.starts_with("The table at the top of `src/proxy/mod.rs`"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.strip_prefix('|'))
            .collect();
        assert!(code.len() > 5, "the hook table is in the module docs");
        assert_eq!(code, doc);
    }
}
