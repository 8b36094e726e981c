//! Reading the request body in `request_filter`, bounded by `max_body_bytes`, in a way that
//! Pingora 0.9.1 can still send upstream (and replay on retries) whatever its size.
//!
//! Pingora sends a body read before `upstream_peer` only through its retry buffer, which is
//! fixed at 64 KiB and gives up (returns `None`) once more was written to it. The buffer only
//! records bytes read *after* `enable_retry_buffering()`, and a read never returns more than the
//! remaining Content-Length; so buffering is switched on once at most 64 KiB remain. The buffer
//! then holds the tail of the body, is never truncated, and Pingora replays it through
//! `request_body_filter` on every attempt, where the whole (rewritten) body is substituted.
//! A chunked body has no known end: it fits the buffer only when it is 64 KiB or less; larger
//! ones go through a subrequest (see `proxy::subrequest`).

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use std::time::Duration;

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core 0.9.1).
pub const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// A body read in full.
#[derive(Debug)]
pub struct ReadBody {
    pub bytes: Bytes,
    /// Whether Pingora's retry buffer can replay it (see the module docs).
    pub replayable: bool,
}

#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit; nothing more is read.
    TooLarge,
    /// The client went away, stalled, or sent a malformed body.
    Read(Box<pingora::Error>),
}

/// The request's declared Content-Length, if any (and not chunked).
pub fn declared_length(session: &Session) -> Option<u64> {
    let h = session.req_header();
    if h.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    h.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole body, refusing more than `max` bytes.
/// `timeout` is the longest wait for the next piece: a client that stalls is cut off.
pub async fn read_body(
    session: &mut Session,
    max: u64,
    timeout: Duration,
) -> Result<ReadBody, BodyError> {
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge);
    }
    session.set_read_timeout(Some(timeout));
    let capacity = declared.unwrap_or(16 * 1024).min(max) as usize;
    let mut buf = BytesMut::with_capacity(capacity);
    let mut buffering = false;
    loop {
        let remaining_known_small =
            declared.is_none_or(|n| n.saturating_sub(buf.len() as u64) <= RETRY_BUFFER_LIMIT);
        if !buffering && remaining_known_small {
            session.enable_retry_buffering();
            buffering = true;
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > max {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(BodyError::Read(e)),
        }
    }
    let replayable = buf.is_empty() || session.get_retry_buffer().is_some();
    Ok(ReadBody {
        bytes: buf.freeze(),
        replayable,
    })
}
