//! Chunked uploads larger than Pingora's 64 KiB retry buffer (see `proxy::body`): the body is
//! already read in full, so the request is re-run as a Pingora subrequest whose body is that
//! buffer, declared with a Content-Length and handed over in two pieces (head, then the last
//! 64 KiB). The subrequest goes through the same hooks as any request, where the tail technique
//! of `proxy::body` applies; this request only relays its response.
//!
//! Pingora 0.9.1 calls its subrequest pipe unstable (`pingora_proxy::subrequest::pipe`); this
//! module is the only user.

use super::body::RETRY_BUFFER_LIMIT;
use super::RequestCtx;
use crate::auth::Principal;
use crate::runtime::Runtime;
use bytes::Bytes;
use pingora::proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use std::net::IpAddr;
use std::sync::Arc;

/// What a relaying request hands to its subrequest: the subrequest is the same request, already
/// authenticated and audited, served by the same configuration snapshot.
struct RelayInfo {
    request_id: String,
    body_len: usize,
    principal: Principal,
    rt: Arc<Runtime>,
    client: Option<IpAddr>,
}

/// Whether this request might need a subrequest: a body without a declared length.
pub fn may_need(session: &Session) -> bool {
    session.subrequest_ctx.is_none()
        && session.req_header().method == http::Method::POST
        && super::body::declared_length(session).is_none()
}

/// In a subrequest that relays for a client request: takes over that request's identity (its
/// request id, so that both log as one request; its configuration snapshot; its client
/// address; its audit line), declares the body by its length, and returns the caller. `None`
/// for any other request. The subrequest starts from the client's raw header bytes (Pingora
/// 0.9.1 `to_h1_raw`), so the chunked framing has to be replaced here, before its body is read,
/// not in the relaying request.
pub fn adopt_parent(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<Option<Principal>> {
    let Some(info) = session
        .subrequest_ctx
        .as_ref()
        .and_then(|c| c.user_ctx())
        .and_then(|u| u.downcast_ref::<RelayInfo>())
    else {
        return Ok(None);
    };
    ctx.request_id = info.request_id.clone();
    ctx.rt = info.rt.clone();
    ctx.client = info.client;
    ctx.audited = true;
    let principal = info.principal.clone();
    let len = info.body_len;
    let h = session.req_header_mut();
    h.remove_header(&http::header::TRANSFER_ENCODING);
    h.remove_header(&http::header::EXPECT);
    h.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    Ok(Some(principal))
}

/// Runs the request again as a subrequest with `body`, relaying its response to the client.
pub async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
    principal: Principal,
) -> pingora::Result<()> {
    let sub_ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(RelayInfo {
            request_id: ctx.request_id.clone(),
            body_len: body.len(),
            principal,
            rt: ctx.rt.clone(),
            client: ctx.client,
        }))
        .build();
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Error::e_explain(
            ErrorType::InternalError,
            "subrequests are not enabled for this request",
        );
    };
    let (prepared, handle) = spawner.create_subrequest(&session.downstream_session, sub_ctx);
    let split = body.len().saturating_sub(RETRY_BUFFER_LIMIT as usize);
    let pieces = if split > 0 {
        vec![body.slice(..split), body.slice(split..)]
    } else {
        vec![body]
    };
    match pipe_subrequest(
        session,
        prepared,
        handle,
        |task| Ok(Some(task)),
        InputBodyType::Preset(InputBody::Bytes(pieces)),
    )
    .await
    {
        Ok(state) => {
            if let Some(j) = state.join_handle {
                let _ = j.await;
            }
            Ok(())
        }
        Err(e) => Err(e.error),
    }
}
