//! Usage in Server-Sent Events, line by line: a `data:` line that mentions `"usage"` is
//! deserialized (that one event, never the stream), and the last usage wins. Anthropic reports
//! input in `message_start` and a cumulative usage in `message_delta`; the responses API in
//! `response.completed`; OpenAI in the last chunk, when asked (`stream_options.include_usage`).
//!
//! With `hide`, the usage-only event (`"choices": []` with a `usage`) is taken out, so a client
//! that did not ask for it sees the stream as the provider would have sent it; then, and only
//! then, the end of a line that is not complete yet waits for its next chunk (an SSE client
//! acts on complete events only).

use super::{Dialect, Tokens, UsageObject};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

/// Lines longer than this are passed on but not read for usage.
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug)]
pub struct SseUsage {
    dialect: Dialect,
    hide: bool,
    /// The start of a line that the previous chunks did not finish.
    partial: Vec<u8>,
    /// The current line passed `MAX_LINE`: not read.
    overlong: bool,
    tokens: Option<Tokens>,
    /// The last line was a hidden event's `data:` line: its blank line goes too.
    hid_event: bool,
}

#[derive(Deserialize)]
struct Event {
    usage: Option<UsageObject>,
    /// The responses API (`response.completed`).
    response: Option<Nested>,
    /// Anthropic's `message_start`.
    message: Option<Nested>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Deserialize)]
struct Nested {
    usage: Option<UsageObject>,
}

impl SseUsage {
    pub fn new(dialect: Dialect, hide: bool) -> SseUsage {
        SseUsage {
            dialect,
            hide,
            partial: Vec::new(),
            overlong: false,
            tokens: None,
            hid_event: false,
        }
    }

    pub fn tokens(&self) -> Option<Tokens> {
        self.tokens
    }

    /// Reads one chunk's lines; with `hide`, replaces the chunk with what the client gets.
    pub fn feed(&mut self, chunk: &mut Bytes, end_of_stream: bool) {
        let mut out = self
            .hide
            .then(|| BytesMut::with_capacity(chunk.len() + self.partial.len()));
        let data = chunk.clone();
        let mut rest: &[u8] = &data;
        while let Some(nl) = rest.iter().position(|&c| c == b'\n') {
            let (head, tail) = rest.split_at(nl + 1);
            rest = tail;
            if self.partial.is_empty() && !self.overlong {
                self.line(head, &mut out);
            } else {
                self.extend_partial(head);
                let line = std::mem::take(&mut self.partial);
                if !std::mem::take(&mut self.overlong) {
                    self.line(&line, &mut out);
                } else if let Some(o) = &mut out {
                    // Too long to read: passed on as it came (what was held, if anything, and
                    // this end).
                    o.extend_from_slice(&line);
                    o.extend_from_slice(head);
                }
            }
        }
        if !rest.is_empty() {
            if self.hide && self.overlong {
                // Already streaming this line out unread: go on.
                if let Some(o) = &mut out {
                    o.extend_from_slice(rest);
                }
            } else {
                let was_overlong = self.overlong;
                self.extend_partial(rest);
                if self.hide && self.overlong && !was_overlong {
                    // Too long to hold back: what was held goes out, and the rest as it comes.
                    if let Some(o) = &mut out {
                        o.extend_from_slice(&self.partial);
                    }
                    self.partial.clear();
                }
            }
        }
        if end_of_stream && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, &mut out);
        }
        if let Some(o) = out {
            *chunk = o.freeze();
        }
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.overlong = true;
            if !self.hide {
                self.partial.clear();
            }
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// One complete line (with its `\n`, except at the end of the stream).
    fn line(&mut self, line: &[u8], out: &mut Option<BytesMut>) {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() && std::mem::take(&mut self.hid_event) {
            return;
        }
        self.hid_event = false;
        let hide = self.read(text);
        if hide && self.hide {
            self.hid_event = true;
            return;
        }
        if let Some(o) = out {
            o.extend_from_slice(line);
        }
    }

    /// Takes the usage out of a `data:` line; `true` for a usage-only event.
    fn read(&mut self, text: &[u8]) -> bool {
        let Some(payload) = text.strip_prefix(b"data:") else {
            return false;
        };
        if memchr_usage(payload).is_none() {
            return false;
        }
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            return false;
        };
        let usage = event
            .usage
            .as_ref()
            .or(event.response.as_ref().and_then(|r| r.usage.as_ref()))
            .or(event.message.as_ref().and_then(|m| m.usage.as_ref()));
        let Some(u) = usage else {
            return false;
        };
        let t = self.tokens.get_or_insert_with(Tokens::default);
        u.update(t, self.dialect);
        event.usage.is_some() && event.choices.is_some_and(|c| c.is_empty())
    }
}

/// Where `"usage"` appears, if it does: most events are skipped without parsing.
fn memchr_usage(payload: &[u8]) -> Option<usize> {
    payload.windows(7).position(|w| w == b"\"usage\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dialect: Dialect, hide: bool, chunks: &[&str]) -> (Option<Tokens>, String) {
        let mut s = SseUsage::new(dialect, hide);
        let mut out = String::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut b = Bytes::copy_from_slice(c.as_bytes());
            s.feed(&mut b, i + 1 == chunks.len());
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        (s.tokens(), out)
    }

    const OPENAI: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";

    #[test]
    fn the_last_usage_chunk_is_read_and_passed_on() {
        let (t, out) = run(Dialect::OpenAi, false, &[OPENAI]);
        assert_eq!(
            t,
            Some(Tokens {
                input: 7,
                output: 3,
                cached_input: 0
            })
        );
        assert_eq!(out, OPENAI);
    }

    #[test]
    fn hidden_when_the_client_did_not_ask_wherever_the_chunks_split() {
        let want = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n";
        for split in 1..OPENAI.len() {
            let (a, b) = OPENAI.split_at(split);
            let (t, out) = run(Dialect::OpenAi, true, &[a, b]);
            assert_eq!(t.map(|t| t.output), Some(3), "split at {split}");
            assert_eq!(out, want, "split at {split}");
        }
    }

    #[test]
    fn anthropic_stream_replaces_with_the_cumulative_delta() {
        let s = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"x\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        let (t, _) = run(Dialect::Anthropic, false, &[s]);
        assert_eq!(
            t,
            Some(Tokens {
                input: 30,
                output: 15,
                cached_input: 5
            })
        );
    }

    #[test]
    fn responses_api_completed_event() {
        let s = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":11,\"output_tokens\":4}}}\n\n";
        let (t, out) = run(Dialect::OpenAi, true, &[s]);
        assert_eq!(
            t,
            Some(Tokens {
                input: 11,
                output: 4,
                cached_input: 0
            })
        );
        assert_eq!(out, s, "only chat's usage-only chunk is ever hidden");
    }

    #[test]
    fn an_overlong_line_passes_unread_even_when_hiding() {
        let long = format!("data: {{\"x\":\"{}\"}}\n\n", "y".repeat(MAX_LINE + 10));
        let (mid, end) = long.split_at(MAX_LINE / 2);
        let (t, out) = run(Dialect::OpenAi, true, &[mid, end, "data: [DONE]\n\n"]);
        assert_eq!(t, None);
        let want = long + "data: [DONE]\n\n";
        assert!(
            out == want,
            "{} bytes out, {} expected",
            out.len(),
            want.len()
        );
    }
}
