//! The `ProxyHttp` implementation. Each hook is a step of DESIGN.md's request flow and calls
//! into the modules that hold the decisions:
//!
//! | hook                       | does                                            | module          |
//! |----------------------------|-------------------------------------------------|-----------------|
//! | `request_filter`           | snapshot, local endpoints, body, route, mock    | `local`, `body`, `model_field`, `route`, `mock` |
//! | `upstream_peer`            | pick a backend of the target's pool             | `upstream::pool`|
//! | `upstream_request_filter`  | header hygiene, path, Host, key, Content-Length | `headers`, `upstream::provider` |
//! | `request_body_filter`      | send the (rewritten) body at end of stream      | `body`          |
//! | `upstream_response_filter` | scrub, tag, provider 401/403 -> 502             | `headers`       |
//! | `response_body_filter`     | count bytes                                     |                 |
//! | `fail_to_proxy`            | OpenAI-shaped error, 504 for timeouts           | `errors`        |
//! | `logging`                  | access log                                      | `access_log`    |

mod access_log;
pub mod body;
pub mod errors;
pub mod headers;
pub mod local;
pub mod model_field;
mod route;
mod subrequest;

use crate::auth::audit::{AuditEntry, AuditLog};
use crate::auth::rbac::Access;
use crate::auth::{Principal, Refusal};
use crate::config::Mode;
use crate::endpoints::EndpointGroup;
use crate::line_sink::LineSink;
use crate::metrics::Metrics;
use crate::mock;
use crate::registry::Target;
use crate::runtime::Runtime;
use crate::time::now_rfc3339;
use crate::upstream::pool::Selected;
use access_log::{ms, AccessEntry};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use errors::GatewayError;
use local::Local;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
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

    /// Writes the request's audit line (once). `false` when the line could not be queued and
    /// the policy says to refuse the request.
    fn audit(&self, session: &Session, ctx: &mut RequestCtx, refusal: Option<Refusal>) -> bool {
        if ctx.audited {
            return true;
        }
        ctx.audited = true;
        let (outcome, reason) = match refusal {
            None => ("allow", "ok"),
            Some(r) => ("deny", r.code()),
        };
        self.metrics
            .auth_decisions
            .with_label_values(&[outcome, reason])
            .inc();
        let client = client_addr(session, ctx);
        let p = ctx.principal.as_ref();
        let entry = AuditEntry {
            ts: now_rfc3339(),
            request_id: &ctx.request_id,
            outcome,
            reason,
            subject: p.map(|p| &*p.subject),
            key_id: p.and_then(|p| p.key_id.as_deref()),
            roles: p.map(|p| &p.roles[..]).unwrap_or(&[]),
            method: p.map(|p| p.method).unwrap_or("none"),
            http_method: session.req_header().method.as_str(),
            path: &ctx.path,
            model: ctx.model_id.as_deref().or(ctx.requested_model.as_deref()),
            client,
        };
        self.audit.record(&entry).is_ok()
    }

    fn record_metrics(
        &self,
        ctx: &RequestCtx,
        status: u16,
        elapsed: std::time::Duration,
        upstream: Option<std::time::Duration>,
    ) {
        let buf = itoa_status(status);
        let status_label = std::str::from_utf8(&buf).unwrap_or("0");
        let m = &self.metrics;
        m.requests
            .with_label_values(&[&*ctx.endpoint, status_label])
            .inc();
        m.request_duration
            .with_label_values(&[&*ctx.endpoint])
            .observe(elapsed.as_secs_f64());
        if let (Some(u), Some(r)) = (upstream, &ctx.route) {
            m.upstream_duration
                .with_label_values(&[&*r.target.provider_name])
                .observe(u.as_secs_f64());
        }
        m.overhead.observe(
            elapsed
                .saturating_sub(upstream.unwrap_or_default())
                .as_secs_f64(),
        );
    }

    fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> bool {
        self.audit(session, ctx, None)
    }

    /// Refuses the caller: audit line, then the 401/403/503.
    async fn deny(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        self.audit(session, ctx, Some(refusal));
        reject(session, ctx, GatewayError::Auth(refusal)).await
    }

    /// An authenticated request that fails for another reason (unknown path).
    async fn admit_and_reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: GatewayError,
    ) -> Result<bool> {
        let e = if self.admit(session, ctx) {
            e
        } else {
            GatewayError::AuditUnavailable
        };
        reject(session, ctx, e).await
    }
}

/// Per-request state: plain data, no locks.
pub struct RequestCtx {
    started: Instant,
    rt: Option<Arc<Runtime>>,
    request_id: String,
    /// Normalised path.
    path: String,
    route: Option<route::Route>,
    /// The body's `model`, once read.
    requested_model: Option<Box<str>>,
    body: Bytes,
    backend: Option<Selected>,
    upstream_sent: Option<Instant>,
    upstream_header: Option<Instant>,
    upstream_done: Option<Instant>,
    /// Status of a response the gateway wrote itself.
    local_status: Option<u16>,
    bytes_out: usize,
    error_code: Option<&'static str>,
    /// The error `fail_to_proxy` should answer with, set by the hook that failed.
    pending_error: Option<GatewayError>,
    /// This request only relays a subrequest that does the proxying (and the logging).
    relayed: bool,
    principal: Option<Principal>,
    /// The canonical model id, once resolved (for the audit log).
    model_id: Option<Arc<str>>,
    /// Metric label: the endpoint group or local endpoint.
    endpoint: Cow<'static, str>,
    audited: bool,
    /// `X-Test-Mode: true` in development.
    test_mode: bool,
}

impl RequestCtx {
    fn target(&self) -> Option<&Target> {
        self.route.as_ref().map(|r| &r.target)
    }

    /// Adds the gateway's headers to a response for this request.
    fn decorate(&self, h: &mut ResponseHeader) {
        let _ = h.insert_header("x-request-id", &self.request_id);
        if let Some(r) = &self.route {
            let _ = h.insert_header("x-ultra-provider", &*r.target.provider_name);
            if r.default_model_used {
                let _ = h.insert_header(DEFAULT_MODEL_HEADER, &*r.model_id);
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            rt: None,
            request_id: String::new(),
            path: String::new(),
            route: None,
            requested_model: None,
            body: Bytes::new(),
            backend: None,
            upstream_sent: None,
            upstream_header: None,
            upstream_done: None,
            local_status: None,
            bytes_out: 0,
            error_code: None,
            pending_error: None,
            relayed: false,
            principal: None,
            model_id: None,
            endpoint: Cow::Borrowed("unknown"),
            audited: false,
            test_mode: false,
        }
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
            (Some(_), _) => EndpointGroup::Models,
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
        let (rt, target) = match (&ctx.rt, ctx.target()) {
            (Some(rt), Some(t)) => (rt.clone(), t.clone()),
            _ => {
                return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route")
            }
        };
        let provider = rt.provider(target.provider);
        let selected = provider.pool.as_ref().and_then(|p| p.select());
        let Some(sel) = selected else {
            ctx.pending_error = Some(GatewayError::NoHealthyUpstream {
                model: ctx
                    .route
                    .as_ref()
                    .map(|r| r.model_id.to_string())
                    .unwrap_or_default(),
                retry_after: 5,
            });
            return Error::e_explain(ErrorType::ConnectNoRoute, "no backend available");
        };
        let mut peer = HttpPeer::new(sel.addr, sel.endpoint.tls, sel.endpoint.sni.clone());
        let t = target.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect * 2);
        // Pingora 0.9 has one read timeout for the first byte and for each later gap.
        peer.options.read_timeout = Some(t.first_byte.max(t.between_chunks));
        peer.options.write_timeout = Some(t.between_chunks);
        peer.options.alpn = ALPN::H1;
        peer.options.ca = provider.ca.clone();
        ctx.backend = Some(sel);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(rt), Some(target), Some(sel)) = (&ctx.rt, ctx.target(), &ctx.backend) else {
            return Error::e_explain(ErrorType::InternalError, "upstream request without a route");
        };
        headers::scrub_request(req);
        let mut path = sel.endpoint.upstream_path(&ctx.path);
        if let Some(q) = req.uri.query() {
            path.push('?');
            path.push_str(q);
        }
        let uri =
            http::Uri::try_from(path).or_err(ErrorType::InternalError, "building upstream URI")?;
        req.set_uri(uri);
        req.insert_header("host", &sel.endpoint.host_header)?;
        rt.provider(target.provider).apply_auth(req)?;
        req.insert_header("content-length", ctx.body.len().to_string())?;
        req.insert_header("accept-encoding", "identity")?;
        req.insert_header("x-request-id", &ctx.request_id)?;
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
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
        if resp.status.is_informational() {
            return Ok(());
        }
        ctx.upstream_header = Some(Instant::now());
        let status = resp.status.as_u16();
        if status == 401 || status == 403 {
            let provider = ctx
                .target()
                .map(|t| t.provider_name.to_string())
                .unwrap_or_default();
            let key_id = ctx.route.as_ref().and_then(|r| r.key_id.clone());
            tracing::warn!(
                request_id = %ctx.request_id,
                provider = %provider,
                key_id = key_id.as_deref().unwrap_or("-"),
                status,
                "provider refused the gateway's credentials"
            );
            ctx.pending_error = Some(GatewayError::ProviderAuthFailed { provider });
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                "provider refused credentials",
            );
        }
        headers::scrub_response(resp);
        ctx.decorate(resp);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(b) = body {
            ctx.bytes_out += b.len();
        }
        if end_of_stream && ctx.upstream_header.is_some() {
            ctx.upstream_done = Some(Instant::now());
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let gerr = ctx.pending_error.take().or_else(|| classify(e, ctx));
        match &gerr {
            Some(GatewayError::Internal) => {
                tracing::error!(request_id = %ctx.request_id, error = %e, "request failed inside the gateway")
            }
            Some(g) => {
                tracing::debug!(request_id = %ctx.request_id, error = %e, code = g.code(), "request failed")
            }
            None => tracing::debug!(request_id = %ctx.request_id, error = %e, "client went away"),
        }
        let written = session
            .response_written()
            .is_some_and(|h| !h.status.is_informational());
        let code = match gerr {
            Some(gerr) if !written => {
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
                ctx.error_code = Some(gerr.code());
                gerr.status()
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
            provider: route.map(|r| &*r.target.provider_name),
            backend: ctx.backend.as_ref().map(|b| b.addr.to_string()),
            subject: principal.map(|p| &*p.subject),
            caller_key_id: principal.and_then(|p| p.key_id.as_deref()),
            provider_key_id: route.and_then(|r| r.key_id.as_deref()),
            status,
            error: ctx.error_code,
            stream: route.is_some_and(|r| r.stream),
            latency_ms: ms(elapsed),
            upstream_ms: since_sent(ctx.upstream_done),
            upstream_ttfb_ms: since_sent(ctx.upstream_header),
            bytes_in: session.body_bytes_read(),
            bytes_out: ctx.bytes_out,
            client: client_addr(session, ctx),
        };
        self.access_log.write_json(&entry);
    }
}

/// Serves a local endpoint (health, readiness, model lists) as `access` sees it.
async fn serve_local(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
    access: Access,
) -> Result<bool> {
    let Some(l) = local::route(&ctx.path) else {
        return reject(session, ctx, GatewayError::UnknownEndpoint).await;
    };
    let method = session.req_header().method.clone();
    let inm = session
        .req_header()
        .headers
        .get("if-none-match")
        .map(|v| v.as_bytes().to_vec());
    let resp = local::respond(l, &method, inm.as_deref(), rt, &ctx.request_id, access);
    ctx.local_status = Some(resp.status);
    ctx.bytes_out = local::send(session, resp, method == http::Method::HEAD).await?;
    Ok(true)
}

/// `GET /metrics` in Prometheus' text format.
async fn serve_metrics(
    session: &mut Session,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<bool> {
    let method = &session.req_header().method;
    if method != http::Method::GET && method != http::Method::HEAD {
        return reject(
            session,
            ctx,
            GatewayError::MethodNotAllowed { allow: "GET, HEAD" },
        )
        .await;
    }
    let body = Bytes::from(metrics.render());
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", "text/plain; version=0.0.4; charset=utf-8")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    ctx.local_status = Some(200);
    ctx.bytes_out = body.len();
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(h), head).await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// Metric label of an endpoint group (custom groups come from the configuration: bounded).
fn endpoint_label(g: &EndpointGroup) -> Cow<'static, str> {
    match g {
        EndpointGroup::Custom(s) => Cow::Owned(s.to_string()),
        EndpointGroup::Chat => Cow::Borrowed("chat"),
        EndpointGroup::Completions => Cow::Borrowed("completions"),
        EndpointGroup::Embeddings => Cow::Borrowed("embeddings"),
        EndpointGroup::Responses => Cow::Borrowed("responses"),
        EndpointGroup::Moderations => Cow::Borrowed("moderations"),
        EndpointGroup::Models => Cow::Borrowed("models"),
        EndpointGroup::Analyze => Cow::Borrowed("analyze"),
        EndpointGroup::Usage => Cow::Borrowed("usage"),
        EndpointGroup::Admin => Cow::Borrowed("admin"),
    }
}

/// Answers with a gateway error from `request_filter`.
async fn reject(session: &mut Session, ctx: &mut RequestCtx, e: GatewayError) -> Result<bool> {
    ctx.error_code = Some(e.code());
    let mut resp = local::error(e, &ctx.request_id);
    ctx.decorate(&mut resp.header);
    ctx.local_status = Some(resp.status);
    // A body left unread cannot be skipped reliably on this connection: close it.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    let head = session.req_header().method == http::Method::HEAD;
    ctx.bytes_out = local::send(session, resp, head).await?;
    Ok(true)
}

async fn serve_mock(session: &mut Session, ctx: &mut RequestCtx, rt: &Runtime) -> Result<bool> {
    let Some(route) = ctx.route.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "mock without a route");
    };
    let provider = rt.provider(route.target.provider);
    let settings = provider.mock.clone().unwrap_or_default();
    let call = mock::MockCall {
        group: &route.group,
        body: &ctx.body,
        model: &route.target.upstream_model,
        stream: route.stream,
        settings: &settings,
        request_id: &ctx.request_id,
    };
    let decorate = |h: &mut ResponseHeader| ctx.decorate(h);
    let mut sent = mock::Sent::default();
    let result = mock::serve(session, call, &decorate, &mut sent).await;
    ctx.local_status = sent.status;
    ctx.bytes_out = sent.bytes;
    result.map(|_| true)
}

/// Maps a Pingora error to the gateway error the client sees; `None` when the client is gone.
fn classify(e: &Error, ctx: &RequestCtx) -> Option<GatewayError> {
    let provider = || {
        ctx.target()
            .map(|t| t.provider_name.to_string())
            .unwrap_or_default()
    };
    match (e.esource(), e.etype()) {
        (ErrorSource::Downstream, _) => None,
        // A write to or read from the client that failed outside the proxy phase (e.g. while
        // the mock streams): the client went away.
        (
            ErrorSource::Unset | ErrorSource::Internal,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
        ) => None,
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout,
        ) => Some(GatewayError::UpstreamTimeout {
            provider: provider(),
        }),
        (
            _,
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::SocketError
            | ErrorType::BindError,
        ) => Some(GatewayError::BadUpstream {
            provider: provider(),
            detail: "could not connect",
        }),
        (_, ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert) => {
            Some(GatewayError::BadUpstream {
                provider: provider(),
                detail: "TLS handshake failed",
            })
        }
        (ErrorSource::Upstream, _) => Some(GatewayError::BadUpstream {
            provider: provider(),
            detail: "the connection failed or the response was malformed",
        }),
        _ => Some(GatewayError::Internal),
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

/// The caller's address: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`.
fn client_addr(session: &Session, ctx: &RequestCtx) -> Option<String> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let forwarded = session
        .req_header()
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    match &ctx.rt {
        Some(rt) => rt.trusted_proxies.client(peer, forwarded),
        None => peer,
    }
    .map(|ip| ip.to_string())
}
