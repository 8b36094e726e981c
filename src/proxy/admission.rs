//! Admission and local answers: the audit line of each decision, refusals, local endpoints,
//! `/metrics`, the mock, and the shared helpers of `request_filter`.

use super::ctx::RequestCtx;
use super::errors::GatewayError;
use super::{local, Gateway};
use crate::auth::audit::AuditEntry;
use crate::auth::rbac::Access;
use crate::auth::Refusal;
use crate::endpoints::EndpointGroup;
use crate::metrics::Metrics;
use crate::mock;
use crate::runtime::Runtime;
use crate::time::now_rfc3339;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;

impl Gateway {
    /// Writes the request's audit line (once). `false` when the line could not be queued and
    /// the policy says to refuse the request.
    pub(super) fn audit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        refusal: Option<Refusal>,
    ) -> bool {
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

    pub(super) fn record_metrics(
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
        // The provider that answered (after a fallback, not the route's first target).
        if let (Some(u), Some(provider)) = (upstream, ctx.provider_name()) {
            m.upstream_duration
                .with_label_values(&[provider])
                .observe(u.as_secs_f64());
        }
        m.overhead.observe(
            elapsed
                .saturating_sub(upstream.unwrap_or_default())
                .as_secs_f64(),
        );
    }

    pub(super) fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> bool {
        self.audit(session, ctx, None)
    }

    /// Refuses the caller: audit line, then the 401/403/503.
    pub(super) async fn deny(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        self.audit(session, ctx, Some(refusal));
        reject(session, ctx, GatewayError::Auth(refusal)).await
    }

    /// An authenticated request that fails for another reason (unknown path).
    pub(super) async fn admit_and_reject(
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

/// Serves a local endpoint (health, readiness, model lists) as `access` sees it.
pub(super) async fn serve_local(
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
pub(super) async fn serve_metrics(
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
    h.insert_header("content-type", crate::metrics::CONTENT_TYPE)?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    h.insert_header("x-request-id", &ctx.request_id)?;
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
pub(super) fn endpoint_label(g: &EndpointGroup) -> Cow<'static, str> {
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
pub(super) async fn reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    e: GatewayError,
) -> Result<bool> {
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

pub(super) async fn serve_mock(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Result<bool> {
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

/// A status code as three ASCII digits, without allocating.
pub(super) fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// The caller's address: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`.
/// The client's address (the peer, or `X-Forwarded-For` from a trusted proxy), worked out once
/// per request for the audit and the access log.
pub(super) fn client_addr(session: &Session, ctx: &mut RequestCtx) -> Option<IpAddr> {
    if let Some(known) = ctx.client {
        return known;
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let forwarded = session
        .req_header()
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = match &ctx.rt {
        Some(rt) => rt.trusted_proxies.client(peer, forwarded),
        None => peer,
    };
    ctx.client = Some(client);
    client
}
