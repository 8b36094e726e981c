//! What admission needs from the Session, read once: the request head's facts, the caller's
//! address, and the body within `max_body_bytes` (see `body` for how Pingora can still replay
//! it). The decisions themselves are in `admission`, which never sees a Session.

use super::admission::Head;
use super::body::{self, BodyError, ReadBody};
use super::errors::GatewayError;
use super::TEST_MODE_HEADER;
use crate::config::Mode;
use crate::runtime::Runtime;
use pingora::proxy::Session;
use pingora::ErrorType;
use std::net::IpAddr;

/// The facts of the request head that authorization looks at.
pub fn head(session: &Session) -> Head<'_> {
    Head {
        method: &session.req_header().method,
        declared_length: body::declared_length(session),
    }
}

/// What the request's framing headers say. Pingora reads the first `Connection` header only;
/// the others count too (RFC 9110 §5.3: repeated fields form one list).
pub struct Framing {
    /// Why a proxy cannot pass the request on at all, if it cannot: HTTP/1.1 requires `Host`
    /// (RFC 9112 §3.2), and `Connection` names hop-by-hop fields, which `Host` is not (RFC 9110
    /// §7.6.1): a proxy that obeyed would send a request without one.
    pub problem: Option<&'static str>,
    /// A `Connection: close` that Pingora did not see (in a later `Connection` header).
    pub close: bool,
}

pub fn framing(req: &pingora::http::RequestHeader) -> Framing {
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Framing {
            problem: Some("HTTP/1.1 requires a Host header"),
            close: true,
        };
    }
    let mut framing = Framing {
        problem: None,
        close: false,
    };
    for name in req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
    {
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"host") {
            framing.problem = Some("the Connection header names Host, which a proxy must pass on");
        } else if name.eq_ignore_ascii_case(b"close") {
            framing.close = true;
        }
    }
    framing
}

/// `X-Test-Mode: true`, honoured in development only.
pub fn test_mode(session: &Session, rt: &Runtime) -> bool {
    rt.mode == Mode::Development
        && session
            .req_header()
            .headers
            .get(TEST_MODE_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// The caller's address: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`.
pub fn client_addr(session: &Session, rt: &Runtime) -> Option<IpAddr> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let forwarded = session
        .req_header()
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    rt.trusted_proxies.client(peer, forwarded)
}

/// Reads the body of an admitted proxied request, answering `Expect: 100-continue` first.
/// `Ok(Err(_))` is a body the gateway refuses (too large, stalled, malformed); `Err(_)` is a
/// client that went away.
pub async fn body(
    session: &mut Session,
    rt: &Runtime,
) -> pingora::Result<Result<ReadBody, GatewayError>> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    let limit = rt.max_body_bytes;
    match body::read_body(session, limit, rt.body_read_timeout).await {
        Ok(b) => Ok(Ok(b)),
        Err(BodyError::TooLarge) => Ok(Err(GatewayError::RequestTooLarge { limit })),
        Err(BodyError::Read(e)) => {
            // The connection's framing cannot be trusted after any of these.
            session.set_keepalive(None);
            match e.etype() {
                ErrorType::ReadTimedout => Ok(Err(GatewayError::BodyTimeout {
                    seconds: rt.body_read_timeout.as_secs(),
                })),
                ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd")
                | ErrorType::InvalidHTTPHeader => Ok(Err(GatewayError::MalformedBody)),
                // The client closed or broke the connection mid-body: it is gone.
                _ => Err(e.into_down()),
            }
        }
    }
}
