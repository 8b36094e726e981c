//! Token usage from provider responses, as they stream past: the top-level `usage` object of a
//! JSON body (chat, completions, embeddings, responses, Anthropic messages), or the `usage` of
//! SSE events (OpenAI's last chunk, the responses API's `response.completed`, Anthropic's
//! `message_start` + cumulative `message_delta`). Never a JSON tree of a whole body: JSON bodies
//! are scanned byte by byte for the top-level key (`json`), SSE streams line by line (`sse`),
//! and only the small `usage` object is deserialized. Chunks are never held back, except that
//! `sse` can take out the usage-only event of a stream whose client did not ask for it.
//!
//! Token counts are normalised: `input` counts every prompt token (cached ones included),
//! `cached_input` the cached part, `output` the completion. Cost comes from `cost`.

pub mod cost;
mod json;
pub mod sse;

use serde::Deserialize;

/// Tokens of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    /// Part of `input` the provider served from its prompt cache.
    pub cached_input: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// How the provider writes usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI and compatible (chat, completions, embeddings, responses).
    OpenAi,
    /// Anthropic's Messages API: cached tokens reported apart from `input_tokens`.
    Anthropic,
}

/// A provider's `usage` object, in any of the dialects.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsageObject {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
}

impl UsageObject {
    pub(crate) fn tokens(&self, dialect: Dialect) -> Tokens {
        match dialect {
            Dialect::OpenAi => Tokens {
                input: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
                output: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
                cached_input: self
                    .prompt_tokens_details
                    .as_ref()
                    .or(self.input_tokens_details.as_ref())
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
            },
            Dialect::Anthropic => {
                let read = self.cache_read_input_tokens.unwrap_or(0);
                let created = self.cache_creation_input_tokens.unwrap_or(0);
                Tokens {
                    input: self.input_tokens.unwrap_or(0) + read + created,
                    output: self.output_tokens.unwrap_or(0),
                    cached_input: read,
                }
            }
        }
    }

    /// Anthropic's `message_delta` usage is cumulative and may carry only some fields: what it
    /// carries replaces what `message_start` said.
    pub(crate) fn update(&self, t: &mut Tokens, dialect: Dialect) {
        if dialect == Dialect::Anthropic && self.prompt_tokens.is_none() {
            if let Some(o) = self.output_tokens {
                t.output = o;
            }
            if self.input_tokens.is_some()
                || self.cache_read_input_tokens.is_some()
                || self.cache_creation_input_tokens.is_some()
            {
                let fresh = self.tokens(dialect);
                t.input = fresh.input;
                t.cached_input = fresh.cached_input;
            }
        } else {
            *t = self.tokens(dialect);
        }
    }
}

/// Follows one response body and finds its usage.
#[derive(Debug)]
pub struct UsageMeter {
    dialect: Dialect,
    body: Body,
    /// Bytes of the body seen (for an estimate when no usage comes).
    pub bytes: u64,
}

#[derive(Debug)]
enum Body {
    Json(json::TopLevelUsage),
    Sse(sse::SseUsage),
}

impl UsageMeter {
    /// A meter for a response of this content type from a provider of this dialect.
    /// `hide_usage_event`: take out the stream's usage-only event (the gateway asked for it,
    /// the client did not).
    pub fn new(dialect: Dialect, event_stream: bool, hide_usage_event: bool) -> UsageMeter {
        let body = if event_stream {
            Body::Sse(sse::SseUsage::new(dialect, hide_usage_event))
        } else {
            Body::Json(json::TopLevelUsage::default())
        };
        UsageMeter {
            dialect,
            body,
            bytes: 0,
        }
    }

    /// Sees one chunk; may replace it (only to take out a hidden usage event).
    pub fn chunk(&mut self, chunk: &mut bytes::Bytes, end_of_stream: bool) {
        self.bytes += chunk.len() as u64;
        match &mut self.body {
            Body::Json(j) => j.feed(chunk),
            Body::Sse(s) => s.feed(chunk, end_of_stream),
        }
    }

    /// The usage the provider reported, if it did.
    pub fn reported(&self) -> Option<Tokens> {
        match &self.body {
            Body::Json(j) => j.usage().map(|u| u.tokens(self.dialect)),
            Body::Sse(s) => s.tokens(),
        }
    }
}

/// A token estimate from bytes: about four bytes a token (no tokenizer on the hot path).
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(dialect: Dialect, sse: bool, chunks: &[&str]) -> Option<Tokens> {
        let mut m = UsageMeter::new(dialect, sse, false);
        for (i, c) in chunks.iter().enumerate() {
            let mut b = bytes::Bytes::copy_from_slice(c.as_bytes());
            m.chunk(&mut b, i + 1 == chunks.len());
            assert_eq!(&b[..], c.as_bytes(), "passed through untouched");
        }
        m.reported()
    }

    #[test]
    fn openai_json_with_cached_tokens() {
        let body = r#"{"id":"x","choices":[{"message":{"content":"usage: {\"prompt_tokens\": 999}"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let t = meter(Dialect::OpenAi, false, &[body]).unwrap();
        assert_eq!(
            t,
            Tokens {
                input: 12,
                output: 5,
                cached_input: 4
            }
        );
        // Split anywhere, even inside the key.
        let (a, b) = body.split_at(body.find("\"usage\":{").unwrap() + 3);
        assert_eq!(meter(Dialect::OpenAi, false, &[a, b]), Some(t));
    }

    #[test]
    fn a_nested_usage_is_not_the_top_level_one() {
        let body = r#"{"data":[{"usage":{"prompt_tokens":1}}],"model":"m"}"#;
        assert_eq!(meter(Dialect::OpenAi, false, &[body]), None);
        assert_eq!(meter(Dialect::OpenAi, false, &["{not json"]), None);
    }

    #[test]
    fn embeddings_and_responses_bodies() {
        let emb = r#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(
            meter(Dialect::OpenAi, false, &[emb]),
            Some(Tokens {
                input: 8,
                output: 0,
                cached_input: 0
            })
        );
        let resp = r#"{"id":"resp_1","output":[],"usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":10},"output_tokens":7,"total_tokens":27}}"#;
        assert_eq!(
            meter(Dialect::OpenAi, false, &[resp]),
            Some(Tokens {
                input: 20,
                output: 7,
                cached_input: 10
            })
        );
    }

    #[test]
    fn anthropic_message_counts_cache_reads_as_cached_input() {
        let body = r#"{"type":"message","content":[],"usage":{"input_tokens":10,"cache_read_input_tokens":30,"cache_creation_input_tokens":5,"output_tokens":9}}"#;
        assert_eq!(
            meter(Dialect::Anthropic, false, &[body]),
            Some(Tokens {
                input: 45,
                output: 9,
                cached_input: 30
            })
        );
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }
}
