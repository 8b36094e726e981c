//! Provider error bodies that echo a key (`Incorrect API key provided: sk-...`): collected while
//! they pass (error bodies are small) and scrubbed before they reach the client or a log.

use crate::upstream::keys::ProviderKey;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// Error bodies larger than this are passed on unscrubbed rather than held in memory.
const MAX_SCRUBBED_BODY: usize = 256 * 1024;

/// An error body being collected for scrubbing, with the secrets to remove.
#[derive(Debug)]
pub struct ErrorBody {
    buf: BytesMut,
    secrets: Vec<Arc<ProviderKey>>,
}

/// What to do with the error body after a chunk.
#[derive(Debug, PartialEq)]
pub enum Collected {
    /// Still collecting: the chunk is held back.
    Holding,
    /// The end: the scrubbed body.
    Done(Bytes),
    /// Too large to be a provider's error message: what was held, passed on as it is, and
    /// nothing more to collect.
    TooLarge(Bytes),
}

impl ErrorBody {
    pub fn new(secrets: Vec<Arc<ProviderKey>>) -> ErrorBody {
        ErrorBody {
            buf: BytesMut::new(),
            secrets,
        }
    }

    pub fn collect(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Collected {
        if let Some(b) = chunk {
            self.buf.extend_from_slice(&b);
        }
        if self.buf.len() > MAX_SCRUBBED_BODY {
            return Collected::TooLarge(std::mem::take(&mut self.buf).freeze());
        }
        if end_of_stream {
            return Collected::Done(Bytes::from(scrub(&self.buf, &self.secrets)));
        }
        Collected::Holding
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
    fn an_oversized_body_is_released_as_it_is() {
        let mut body = ErrorBody::new(vec![]);
        let big = Bytes::from(vec![b'x'; MAX_SCRUBBED_BODY]);
        assert_eq!(body.collect(Some(big), false), Collected::Holding);
        let Collected::TooLarge(all) =
            body.collect(Some(Bytes::from_static(b"sk-abcdefgh")), false)
        else {
            panic!("expected the body to be released");
        };
        assert_eq!(all.len(), MAX_SCRUBBED_BODY + 11);
    }
}
