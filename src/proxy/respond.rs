//! Responses the gateway writes itself, from `request_filter` and `fail_to_proxy`: every gateway
//! error (one writer: [`error`]), the local endpoints, `/metrics`, and the built-in mock.

use super::admission::route::Route;
use super::ctx::RequestCtx;
use super::errors::GatewayError;
use super::local::{self, Local, LocalResponse};
use crate::auth::rbac::Access;
use crate::metrics::Metrics;
use crate::mock;
use crate::reload::{Reloader, Trigger};
use crate::usage::{Dialect, UsageMeter};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Answers with a gateway error. `Ok(true)`: the response is written (`request_filter`'s
/// "handled").
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, e: GatewayError) -> Result<bool> {
    ctx.error_code = Some(e.code());
    let mut resp = local::error(e, &ctx.request_id);
    ctx.decorate(&mut resp.header);
    send(session, ctx, resp).await
}

/// Serves a local endpoint as `access` sees it.
pub async fn local(
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Local,
    access: Access,
) -> Result<bool> {
    let req = session.req_header();
    let inm = req.headers.get("if-none-match").map(|v| v.as_bytes());
    let answer = local::respond(
        endpoint,
        &ctx.path,
        &req.method,
        inm,
        &ctx.rt,
        &ctx.request_id,
        access,
    );
    match answer {
        Ok(resp) => send(session, ctx, resp).await,
        Err(e) => error(session, ctx, e).await,
    }
}

/// `GET /metrics` in Prometheus' text format.
pub async fn metrics(session: &mut Session, ctx: &mut RequestCtx, m: &Metrics) -> Result<bool> {
    let method = &session.req_header().method;
    if method != http::Method::GET && method != http::Method::HEAD {
        let allow = "GET, HEAD";
        return error(session, ctx, GatewayError::MethodNotAllowed { allow }).await;
    }
    let body = Bytes::from(m.render());
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header("content-type", crate::metrics::CONTENT_TYPE)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("x-request-id", &ctx.request_id)?;
    let resp = LocalResponse {
        status: 200,
        header,
        body,
    };
    send(session, ctx, resp).await
}

/// `POST /api/admin/reload`: runs a reload and says what it changed (200), or why the new
/// configuration was refused (422; the running one stays).
pub async fn reload(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reloader: Option<&Reloader>,
) -> Result<bool> {
    if session.req_header().method != http::Method::POST {
        let allow = "POST";
        return error(session, ctx, GatewayError::MethodNotAllowed { allow }).await;
    }
    let Some(reloader) = reloader else {
        return error(session, ctx, GatewayError::Internal).await;
    };
    let (status, body) = match reloader.reload(Trigger::Admin).await {
        Ok(applied) => (
            200,
            serde_json::json!({
                "result": "applied",
                "generation": applied.generation,
                "changes": applied.changes,
                "needs_restart": applied.needs_restart,
                "warnings": applied.warnings,
            }),
        ),
        Err(problems) => (
            422,
            serde_json::json!({ "result": "rejected", "errors": problems }),
        ),
    };
    let body = Bytes::from(serde_json::to_vec(&body).expect("JSON value serializes"));
    let mut header = super::errors::json_header(status, &ctx.request_id, body.len());
    header.insert_header("cache-control", "no-store")?;
    let resp = LocalResponse {
        status,
        header,
        body,
    };
    send(session, ctx, resp).await
}

/// `GET /api/usage` for `caller` (it reads the quota store, which may be Redis).
pub async fn usage(
    session: &mut Session,
    ctx: &mut RequestCtx,
    caller: &crate::auth::Principal,
) -> Result<bool> {
    let method = &session.req_header().method;
    if method != http::Method::GET && method != http::Method::HEAD {
        let allow = "GET, HEAD";
        return error(session, ctx, GatewayError::MethodNotAllowed { allow }).await;
    }
    let rendered = match super::usage_view::parse_query(session.req_header().uri.query()) {
        Ok(q) => super::usage_view::render(&ctx.rt, caller, &q).await,
        Err(e) => Err(e),
    };
    let body = match rendered {
        Ok(v) => v,
        Err(e) => return error(session, ctx, e).await,
    };
    let body = Bytes::from(serde_json::to_vec(&body).expect("JSON value serializes"));
    let mut header = super::errors::json_header(200, &ctx.request_id, body.len());
    header.insert_header("cache-control", "no-store")?;
    let resp = LocalResponse {
        status: 200,
        header,
        body,
    };
    send(session, ctx, resp).await
}

/// The built-in mock answers `route` in place with `body` (already made for it), metered for
/// usage like any provider's answer (`usage_requested`: the gateway asked for the usage chunk,
/// the client did not).
pub async fn mock(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: Route,
    body: Bytes,
    usage_requested: bool,
) -> Result<bool> {
    let provider = ctx.rt.provider(route.target.provider);
    let settings = provider.mock.clone().unwrap_or_default();
    ctx.route = Some(route.clone());
    let call = mock::MockCall {
        group: &route.group,
        body: &body,
        model: &route.target.upstream_model,
        stream: route.stream,
        settings: &settings,
        request_id: &ctx.request_id,
    };
    let decorate = |h: &mut ResponseHeader| ctx.decorate(h);
    let mut sent = mock::Sent {
        usage: Some(UsageMeter::new(
            Dialect::OpenAi,
            route.stream,
            usage_requested,
        )),
        ..mock::Sent::default()
    };
    let result = mock::serve(session, call, &decorate, &mut sent).await;
    ctx.local_status = sent.status;
    ctx.bytes_out = sent.bytes;
    ctx.response.usage = sent.usage;
    result.map(|_| true)
}

/// Writes a response the gateway made (headers only for HEAD) and records it for the logs.
async fn send(session: &mut Session, ctx: &mut RequestCtx, resp: LocalResponse) -> Result<bool> {
    ctx.local_status = Some(resp.status);
    // A body left unread cannot be skipped reliably on this connection: close it.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    let head = session.req_header().method == http::Method::HEAD;
    let has_body = !head && !resp.body.is_empty();
    session
        .write_response_header(Box::new(resp.header), !has_body)
        .await?;
    if has_body {
        let len = resp.body.len();
        session.write_response_body(Some(resp.body), true).await?;
        ctx.bytes_out += len;
    }
    Ok(true)
}
