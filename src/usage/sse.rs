//! Usage in Server-Sent Events, line by line: a `data:` line that mentions `"usage"` is
//! deserialized (that one event, never the stream), and the last usage wins. Anthropic reports
//! input in `message_start` and a cumulative usage in `message_delta`; the responses API in
//! `response.completed`; OpenAI in the last chunk, when asked (`stream_options.include_usage`).
//!
//! With `hide` (the gateway asked for usage, the client did not), the client gets the stream
//! the provider sends to clients that do not ask: the usage-only event (`"choices":[]` with a
//! `usage`) is taken out, and the `"usage":null` that every other chunk then carries is taken
//! off its end. That needs a line's start until it shows whether the event is usage-only (up
//! to `"choices":[` and the next byte) and its last 14 bytes until it ends; nothing else is
//! held, and never a complete event (an SSE client acts on complete events only).

use super::{Dialect, Tokens, UsageObject};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

/// Lines longer than this are passed on but not read for usage.
const MAX_LINE: usize = 1024 * 1024;
/// A line start that still does not show whether its event is usage-only after this many bytes
/// is passed on.
const MAX_UNDECIDED: usize = 4 * 1024;
/// `,"usage":null}` with a `\r`: the end of a line held until the line ends.
const HOLD_TAIL: usize = 15;

/// What of the current line a hidden-usage stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Its start, until it shows what the event is.
    Start,
    /// All of it: it may be the usage-only event.
    Whole,
    /// Its last bytes only.
    Tail,
}

enum Decision {
    Wait,
    UsageOnly,
    Other,
}

/// What a line's start says: `"choices":[]` may be the usage-only event; other choices are not.
fn decide(start: &[u8]) -> Decision {
    let Some(i) = find(start, b"\"choices\":[") else {
        return Decision::Wait;
    };
    match start[i + 11..].iter().find(|c| !c.is_ascii_whitespace()) {
        None => Decision::Wait,
        Some(b']') => Decision::UsageOnly,
        Some(_) => Decision::Other,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Writes an event's line without the `,"usage":null` a client that did not ask never gets.
fn put_without_usage_null(line: &[u8], out: &mut BytesMut) {
    const NULL: &[u8] = b",\"usage\":null}";
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    match body.strip_suffix(NULL) {
        Some(kept) => {
            out.extend_from_slice(kept);
            out.extend_from_slice(b"}");
            // The line's `\r\n` or `\n`, as it came.
            out.extend_from_slice(&line[body.len()..]);
        }
        None => out.extend_from_slice(line),
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let t = line.strip_suffix(b"\n").unwrap_or(line);
    t.strip_suffix(b"\r").unwrap_or(t)
}

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
    /// Hidden-usage streams: what of the current line is held.
    held: Held,
    /// The current line's start was passed on already (only its tail is held).
    passed_start: bool,
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
            held: Held::Start,
            passed_start: false,
        }
    }

    pub fn tokens(&self) -> Option<Tokens> {
        self.tokens
    }

    /// Reads one chunk's lines; with `hide`, replaces the chunk with what the client gets.
    pub fn feed(&mut self, chunk: &mut Bytes, end_of_stream: bool) {
        if self.hide {
            // Line by line, a slice at a time (memchr for the newline): byte by byte, this was
            // a tenth of the gateway's CPU on streamed load (`cargo bench --bench load`).
            let mut out = BytesMut::with_capacity(chunk.len() + HOLD_TAIL);
            let mut rest: &[u8] = chunk;
            while let Some(nl) = memchr::memchr(b'\n', rest) {
                self.hide_segment(&rest[..nl], &mut out);
                self.partial.push(b'\n');
                self.hide_line_end(&mut out);
                rest = &rest[nl + 1..];
            }
            self.hide_segment(rest, &mut out);
            if end_of_stream {
                self.hide_end(&mut out);
            }
            *chunk = out.freeze();
            return;
        }
        let mut rest: &[u8] = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(nl + 1);
            rest = tail;
            if self.partial.is_empty() && !self.overlong {
                self.read(trim_line(head));
            } else {
                self.extend_partial(head);
                let line = std::mem::take(&mut self.partial);
                if !std::mem::take(&mut self.overlong) {
                    self.read(trim_line(&line));
                }
            }
        }
        self.extend_partial(rest);
        if end_of_stream && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.read(trim_line(&line));
        }
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        if self.overlong || bytes.is_empty() {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.overlong = true;
            self.partial.clear();
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Part of a line of a hidden-usage stream (no newline in it).
    fn hide_segment(&mut self, seg: &[u8], out: &mut BytesMut) {
        if seg.is_empty() {
            return;
        }
        self.partial.extend_from_slice(seg);
        match self.held {
            Held::Start => {
                // Decided on at most the first MAX_UNDECIDED bytes, however the chunks split.
                let start = &self.partial[..self.partial.len().min(MAX_UNDECIDED)];
                match decide(start) {
                    Decision::Wait if self.partial.len() < MAX_UNDECIDED => {}
                    Decision::UsageOnly => {
                        self.held = Held::Whole;
                        self.release_if_overlong(out);
                    }
                    Decision::Wait | Decision::Other => {
                        // Pass on all but the last bytes, where a `"usage":null` would end.
                        self.held = Held::Tail;
                        self.release_all_but_tail(out);
                    }
                }
            }
            Held::Whole => self.release_if_overlong(out),
            Held::Tail => self.release_all_but_tail(out),
        }
    }

    /// A held line too long to be a usage event goes on as it comes.
    fn release_if_overlong(&mut self, out: &mut BytesMut) {
        if self.partial.len() > MAX_LINE {
            self.held = Held::Tail;
            self.release_all_but_tail(out);
        }
    }

    fn release_all_but_tail(&mut self, out: &mut BytesMut) {
        if self.partial.len() > HOLD_TAIL {
            let n = self.partial.len() - HOLD_TAIL;
            out.extend_from_slice(&self.partial[..n]);
            self.partial.drain(..n);
            self.passed_start = true;
        }
    }

    /// A line of a hidden-usage stream ended (`partial` holds what is left of it, with `\n`).
    fn hide_line_end(&mut self, out: &mut BytesMut) {
        let line = std::mem::take(&mut self.partial);
        let held = std::mem::replace(&mut self.held, Held::Start);
        let passed_start = std::mem::take(&mut self.passed_start);
        let text = trim_line(&line);
        if text.is_empty() && std::mem::take(&mut self.hid_event) {
            return;
        }
        self.hid_event = false;
        if !passed_start && held != Held::Tail && self.read(text) {
            self.hid_event = true;
            return;
        }
        put_without_usage_null(&line, out);
    }

    /// The stream ended: what is held goes out (an unfinished line cannot be a usage event).
    fn hide_end(&mut self, out: &mut BytesMut) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            if !self.passed_start && self.read(trim_line(&line)) {
                return;
            }
            out.extend_from_slice(&line);
        }
        self.held = Held::Start;
        self.passed_start = false;
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
    memchr::memmem::find(payload, b"\"usage\"")
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

    const OPENAI: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi there, a longer answer\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";

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
        let want = "data: {\"choices\":[{\"delta\":{\"content\":\"hi there, a longer answer\"}}]}\n\ndata: [DONE]\n\n";
        for split in 1..OPENAI.len() {
            let (a, b) = OPENAI.split_at(split);
            let (t, out) = run(Dialect::OpenAi, true, &[a, b]);
            assert_eq!(t.map(|t| t.output), Some(3), "split at {split}");
            assert_eq!(out, want, "split at {split}");
        }
    }

    #[test]
    fn hidden_the_same_when_every_byte_is_a_chunk() {
        let whole = run(Dialect::OpenAi, true, &[OPENAI]);
        let bytes: Vec<String> = OPENAI.chars().map(String::from).collect();
        let bytes: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(run(Dialect::OpenAi, true, &bytes), whole);
        let crlf = OPENAI.replace('\n', "\r\n");
        let (t, out) = run(Dialect::OpenAi, true, &[&crlf]);
        assert_eq!(t.map(|t| t.output), Some(3));
        assert_eq!(out, whole.1.replace('\n', "\r\n"));
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

    #[test]
    fn a_usage_only_line_past_the_limit_is_let_through_unread() {
        let pad = "x".repeat(MAX_LINE);
        let line = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}},\"pad\":\"{pad}\"}}\n\n"
        );
        let pieces: Vec<&str> = line
            .as_bytes()
            .chunks(64 * 1024)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let (t, out) = run(Dialect::OpenAi, true, &pieces);
        assert_eq!(t, None);
        assert!(out == line, "{} bytes out of {}", out.len(), line.len());
    }

    #[test]
    fn a_line_undecided_after_4_kib_in_small_chunks_passes_as_it_came() {
        let line = format!(
            "data: {{\"id\":\"{}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":1}}}}\n\n",
            "y".repeat(MAX_UNDECIDED)
        );
        let pieces: Vec<&str> = line
            .as_bytes()
            .chunks(7)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let (t, out) = run(Dialect::OpenAi, true, &pieces);
        assert_eq!(
            out, line,
            "not decided within 4 KiB: passed on, never hidden"
        );
        assert_eq!(t, None, "held no longer, so not read either");
    }

    #[test]
    fn hiding_holds_only_an_undecided_start_and_the_last_bytes() {
        let mut s = SseUsage::new(Dialect::OpenAi, true);
        let line = "data: {\"choices\":[{\"delta\":{\"content\":\"a long answer going on and on\"}}],\"usage\":null}\n";
        let (a, b) = line.split_at(40);
        let mut first = Bytes::copy_from_slice(a.as_bytes());
        s.feed(&mut first, false);
        assert_eq!(
            std::str::from_utf8(&first).unwrap(),
            &a[..a.len() - HOLD_TAIL],
            "past `\"choices\":[{{`, everything but the tail goes at once"
        );
        let mut rest = Bytes::copy_from_slice(b.as_bytes());
        s.feed(&mut rest, false);
        let all = format!(
            "{}{}",
            std::str::from_utf8(&first).unwrap(),
            std::str::from_utf8(&rest).unwrap()
        );
        assert_eq!(all, line.replace(",\"usage\":null}", "}"));
        let mut undecided = Bytes::from_static(b"data: {\"id\":\"x\",\"cho");
        s.feed(&mut undecided, false);
        assert!(undecided.is_empty(), "not decided yet: held");
    }
}
