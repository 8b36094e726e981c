//! Watching provider responses on their way to the client, without holding streams back:
//! in-band SSE error events (they count against the backend's breaker), and provider error
//! bodies that echo a key (`Incorrect API key provided: sk-...`), which are scrubbed before they
//! reach the client or a log. Also the SSE error event that ends a stream that broke after its
//! first byte.

use super::errors::GatewayError;
use crate::upstream::provider::ProviderKey;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// Error bodies larger than this are passed on unscrubbed rather than held in memory.
const MAX_SCRUBBED_BODY: usize = 256 * 1024;

/// How an SSE line that reports an error begins. Only a line's start counts: the same text
/// inside a model's answer is JSON-escaped data, never at the start of a line.
const SSE_ERROR_LINES: [&[u8]; 3] = [b"data: {\"error\"", b"data:{\"error\"", b"event: error"];
/// Longest of `SSE_ERROR_LINES`.
const SSE_LINE_HEAD: usize = 14;

#[derive(Debug, Default)]
pub struct ResponseWatch {
    /// The response is a `text/event-stream`.
    pub sse: bool,
    /// An SSE event carried an `error` object.
    pub error_event: bool,
    /// The first bytes of the current SSE line (a line may span chunks).
    line_head: Vec<u8>,
    /// An error body being collected for scrubbing, with the secrets to remove.
    scrub: Option<(BytesMut, Vec<Arc<ProviderKey>>)>,
}

impl ResponseWatch {
    /// Looks at the response header. Error responses are collected and scrubbed, so their
    /// length may change: `Content-Length` goes (the client gets a chunked body).
    pub fn start(&mut self, resp: &mut ResponseHeader, secrets: Vec<Arc<ProviderKey>>) {
        self.sse = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if resp.status.as_u16() >= 400 && !self.sse {
            resp.remove_header(&http::header::CONTENT_LENGTH);
            self.scrub = Some((BytesMut::new(), secrets));
        }
    }

    /// Sees one body chunk (replacing it when an error body is being scrubbed).
    pub fn chunk(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if self.sse {
            if let (Some(b), false) = (body, self.error_event) {
                self.see_sse(b);
            }
            return;
        }
        let Some((buf, secrets)) = &mut self.scrub else {
            return;
        };
        if let Some(b) = body.take() {
            buf.extend_from_slice(&b);
        }
        if buf.len() > MAX_SCRUBBED_BODY {
            // Too large to be a provider error message: pass it on as it is.
            *body = Some(std::mem::take(buf).freeze());
            self.scrub = None;
            return;
        }
        *body = if end_of_stream {
            Some(Bytes::from(scrub(buf, secrets)))
        } else {
            Some(Bytes::new())
        };
    }
}

impl ResponseWatch {
    /// Looks at the start of every SSE line in `chunk` for an error event.
    fn see_sse(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        loop {
            let newline = rest.iter().position(|&c| c == b'\n');
            let line = &rest[..newline.unwrap_or(rest.len())];
            let room = SSE_LINE_HEAD.saturating_sub(self.line_head.len());
            self.line_head
                .extend_from_slice(&line[..room.min(line.len())]);
            if SSE_ERROR_LINES
                .iter()
                .any(|m| self.line_head.starts_with(m))
            {
                self.error_event = true;
                return;
            }
            match newline {
                Some(i) => {
                    self.line_head.clear();
                    rest = &rest[i + 1..];
                }
                None => return,
            }
        }
    }
}

/// Removes the configured secrets and anything shaped like a provider key (`sk-` and at least
/// six key characters, as OpenAI echoes them, partly masked) from an error body.
pub fn scrub(body: &[u8], secrets: &[Arc<ProviderKey>]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for s in secrets {
        if !s.secret().is_empty() {
            text = text.replace(s.secret(), "***");
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("sk-") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        // Inside a word (`task-...`, `disk-...`) it is not a key.
        let in_word = out
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if in_word {
            out.push_str("sk-");
            rest = after;
            continue;
        }
        let run = after
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')))
            .map_or(after.len(), |(j, _)| j);
        if run >= 6 {
            out.push_str("sk-***");
        } else {
            out.push_str(&rest[i..i + 3 + run]);
        }
        rest = &after[run..];
    }
    out.push_str(rest);
    out.into_bytes()
}

/// The event that ends an SSE stream that broke after its first byte, so that clients see an
/// error rather than a silently truncated answer.
pub fn sse_error_event(e: &GatewayError) -> Bytes {
    let json = super::errors::error_json(&e.message(), e.error_type(), None, e.code());
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    #[test]
    fn scrubs_configured_keys_and_key_shapes() {
        let k = Arc::new(
            ProviderKey::new(ProviderKind::Openai, "a", "sk-proj-abcdefghijklmnop").unwrap(),
        );
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop. Also sk-abc***xyz1 and sk-1. See task-abcdefgh."}}"#;
        let out = String::from_utf8(scrub(body, &[k])).unwrap();
        assert!(
            out.contains("task-abcdefgh"),
            "not a key inside a word: {out}"
        );
        assert!(!out.contains("abcdefghijklmnop"), "{out}");
        assert!(!out.contains("abc***xyz1"), "{out}");
        assert!(out.contains("sk-1."), "short runs are not keys: {out}");
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn error_bodies_are_collected_then_scrubbed() {
        let mut resp = ResponseHeader::build(400, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        resp.insert_header("content-length", "99").unwrap();
        let mut w = ResponseWatch::default();
        w.start(&mut resp, vec![]);
        assert!(resp.headers.get("content-length").is_none());
        let mut first = Some(Bytes::from_static(b"{\"m\":\"key sk-abcdef"));
        w.chunk(&mut first, false);
        assert_eq!(first.as_deref(), Some(&b""[..]));
        let mut last = Some(Bytes::from_static(b"ghij\"}"));
        w.chunk(&mut last, true);
        assert_eq!(last.as_deref(), Some(&b"{\"m\":\"key sk-***\"}"[..]));
    }

    #[test]
    fn sse_error_events_are_noticed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "text/event-stream")
            .unwrap();
        let mut w = ResponseWatch::default();
        w.start(&mut resp, vec![]);
        let mut b = Some(Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
        w.chunk(&mut b, false);
        assert!(!w.error_event);
        let mut b = Some(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        ));
        w.chunk(&mut b, false);
        assert!(w.error_event);
        assert!(sse_error_event(&GatewayError::Internal).starts_with(b"data: {\"error\""));
    }

    fn watch_sse(chunks: &[&'static [u8]]) -> bool {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "text/event-stream")
            .unwrap();
        let mut w = ResponseWatch::default();
        w.start(&mut resp, vec![]);
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
