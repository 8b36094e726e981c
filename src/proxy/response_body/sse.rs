//! Server-Sent Events framing, both ways: finding where each line of a stream begins while the
//! chunks pass (a line may span chunks), and writing the event that ends a broken stream.

use crate::proxy::errors::{error_json, GatewayError};
use bytes::Bytes;

/// Follows the lines of an SSE stream chunk by chunk, keeping at most `CAP` bytes of the
/// current line: enough to recognise what a line is, never the stream.
#[derive(Debug, Default)]
pub struct LineHeads<const CAP: usize> {
    /// The first bytes of the current line, carried over from earlier chunks.
    head: Vec<u8>,
}

impl<const CAP: usize> LineHeads<CAP> {
    /// Feeds one chunk. `seen` gets the head of every line as it grows (up to `CAP` bytes,
    /// possibly several times for a line split across chunks) and stops the scan by returning
    /// `true`.
    pub fn feed(&mut self, chunk: &[u8], mut seen: impl FnMut(&[u8]) -> bool) -> bool {
        let mut rest = chunk;
        loop {
            let newline = rest.iter().position(|&c| c == b'\n');
            let line = &rest[..newline.unwrap_or(rest.len())];
            let room = CAP.saturating_sub(self.head.len());
            self.head.extend_from_slice(&line[..room.min(line.len())]);
            if seen(&self.head) {
                return true;
            }
            match newline {
                Some(i) => {
                    self.head.clear();
                    rest = &rest[i + 1..];
                }
                None => return false,
            }
        }
    }
}

/// The event that ends an SSE stream that broke after its first byte, so that clients see an
/// error rather than a silently truncated answer.
pub fn error_event(e: &GatewayError) -> Bytes {
    let json = error_json(&e.message(), e.error_type(), None, e.code());
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = LineHeads::<4>::default();
        let mut seen = Vec::new();
        for c in chunks {
            lines.feed(c, |h| {
                seen.push(h.to_vec());
                false
            });
        }
        seen
    }

    #[test]
    fn line_heads_are_capped_and_carried_across_chunks() {
        let seen = heads(&[b"data: x\n\nev", b"ent: y\n"]);
        assert_eq!(seen[0], b"data");
        assert_eq!(seen[1], b"", "the blank line between events");
        assert_eq!(seen[2], b"ev", "a line cut by the chunk");
        assert_eq!(seen[3], b"even", "completed by the next chunk");
        assert_eq!(seen.last().unwrap(), b"", "after the last newline");
    }

    #[test]
    fn the_scan_stops_when_asked() {
        let mut lines = LineHeads::<8>::default();
        let mut calls = 0;
        assert!(lines.feed(b"a\nb\nc\n", |_| {
            calls += 1;
            calls == 2
        }));
        assert_eq!(calls, 2);
    }

    #[test]
    fn the_error_event_is_one_data_line() {
        let e = error_event(&GatewayError::Internal);
        assert!(e.starts_with(b"data: {\"error\""));
        assert!(e.ends_with(b"}\n\n"));
        let json: serde_json::Value = serde_json::from_slice(&e[6..e.len() - 2]).unwrap();
        assert_eq!(json["error"]["code"], "internal_error");
    }
}
