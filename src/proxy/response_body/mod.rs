//! Watching provider responses on their way to the client, without holding streams back:
//! in-band SSE error events (they count against the backend's breaker; framing in `sse`), and
//! provider keys echoed in error bodies or in headers, scrubbed before they reach the client or
//! a log (`scrub`). `sse::error_event` ends a stream that broke after its first byte.

mod scrub;
mod sse;

pub use sse::error_event as sse_error_event;

use crate::upstream::keys::ProviderKey;
use crate::usage::{Dialect, UsageMeter};
use bytes::Bytes;
use pingora::http::ResponseHeader;
pub use scrub::{scrub_headers, ErrorBody};
use sse::LineHeads;
use std::sync::Arc;

/// How an SSE line that reports an error begins. Only a line's start counts: the same text
/// inside a model's answer is JSON-escaped data, never at the start of a line.
const SSE_ERROR_LINES: [&[u8]; 3] = [b"data: {\"error\"", b"data:{\"error\"", b"event: error"];
/// Longest of `SSE_ERROR_LINES`.
const SSE_LINE_HEAD: usize = 14;

#[derive(Debug, Default)]
pub struct ResponseWatch {
    /// The response is a `text/event-stream`.
    pub sse: bool,
    /// Follows a successful response's token usage.
    pub usage: Option<UsageMeter>,
    /// An SSE event carried an `error` object.
    pub error_event: bool,
    lines: LineHeads<SSE_LINE_HEAD>,
    /// An error body being collected for scrubbing.
    scrub: Option<ErrorBody>,
}

impl ResponseWatch {
    /// Looks at the response header. Error responses are scrubbed of keys as they pass, so
    /// their length may change: `Content-Length` goes (the client gets a chunked body). A
    /// successful one is metered for usage (`dialect`); `hide_usage` takes out a stream's usage
    /// chunk that the gateway asked for, which changes the length too.
    pub fn start(
        &mut self,
        resp: &mut ResponseHeader,
        secrets: Vec<Arc<ProviderKey>>,
        dialect: Dialect,
        hide_usage: bool,
    ) {
        self.sse = is_event_stream(resp);
        let status = resp.status.as_u16();
        if status >= 400 {
            resp.remove_header(&http::header::CONTENT_LENGTH);
            self.scrub = Some(ErrorBody::new(secrets));
        }
        if (200..300).contains(&status) {
            let hide = hide_usage && self.sse;
            if hide {
                resp.remove_header(&http::header::CONTENT_LENGTH);
            }
            self.usage = Some(UsageMeter::new(dialect, self.sse, hide));
        }
    }

    /// Sees one body chunk (replacing it when an error body is being scrubbed, or a hidden
    /// usage chunk taken out).
    pub fn chunk(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if let Some(meter) = &mut self.usage {
            match body {
                Some(b) => meter.chunk(b, end_of_stream),
                None if end_of_stream => {
                    let mut empty = Bytes::new();
                    meter.chunk(&mut empty, true);
                    if !empty.is_empty() {
                        *body = Some(empty);
                    }
                }
                None => {}
            }
        }
        if self.sse {
            if let (Some(b), false) = (&*body, self.error_event) {
                self.error_event = self.lines.feed(b, |head| {
                    SSE_ERROR_LINES.iter().any(|m| head.starts_with(m))
                });
            }
        }
        if let Some(scrubbing) = &mut self.scrub {
            *body = Some(scrubbing.pass(body.take(), end_of_stream));
        }
    }
}

/// Whether a response is a Server-Sent Events stream.
pub fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_scrubbed_as_they_pass() {
        let mut resp = ResponseHeader::build(400, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        resp.insert_header("content-length", "99").unwrap();
        let mut w = ResponseWatch::default();
        w.start(&mut resp, vec![], Dialect::OpenAi, false);
        assert!(resp.headers.get("content-length").is_none());
        let mut first = Some(Bytes::from_static(b"{\"m\":\"key sk-abcdef"));
        w.chunk(&mut first, false);
        // What cannot be part of a key goes on; the key's start waits for its end.
        assert_eq!(first.as_deref(), Some(&b"{\"m\":\"key "[..]));
        let mut last = Some(Bytes::from_static(b"ghij\"}"));
        w.chunk(&mut last, true);
        assert_eq!(last.as_deref(), Some(&b"sk-***\"}"[..]));
    }

    #[test]
    fn sse_error_events_are_noticed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "text/event-stream")
            .unwrap();
        let mut w = ResponseWatch::default();
        w.start(&mut resp, vec![], Dialect::OpenAi, false);
        let mut b = Some(Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
        w.chunk(&mut b, false);
        assert!(!w.error_event);
        let mut b = Some(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        ));
        w.chunk(&mut b, false);
        assert!(w.error_event);
    }

    fn watch_sse(chunks: &[&'static [u8]]) -> bool {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "text/event-stream")
            .unwrap();
        let mut w = ResponseWatch::default();
        w.start(&mut resp, vec![], Dialect::OpenAi, false);
        for c in chunks {
            w.chunk(&mut Some(Bytes::from_static(c)), false);
        }
        w.error_event
    }

    #[test]
    fn only_a_line_that_starts_an_error_event_counts() {
        // A model that writes about SSE errors is not failing.
        assert!(!watch_sse(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"an SSE event: error line; data: {\\\"error\\\"\"}}]}\n\n"
        ]));
        assert!(watch_sse(&[b"event: error\ndata: {}\n\n"]));
        // Split across chunks, even in the middle of the marker.
        assert!(watch_sse(&[
            b"data: {\"choices\":[]}\n\nda",
            b"ta: {\"er",
            b"ror\":{}}\n\n"
        ]));
        assert!(!watch_sse(&[
            b"data: {\"choices\":[]}\n",
            b"\n",
            b"data: {\"e",
            b"x\":1}\n"
        ]));
    }
}
