//! Provider keys echoed in what a provider sends back (`Incorrect API key provided: sk-...`,
//! `www-authenticate: ... key=...`): removed before they reach the client or a log. Error bodies
//! are scrubbed as they stream, whatever their size and content type, holding back only the
//! bytes that could be the start of a key; header values are scrubbed in place.

use crate::upstream::keys::ProviderKey;
use bytes::{Buf, Bytes, BytesMut};
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// What replaces a configured key.
const MASK: &[u8] = b"***";
/// The shape of a key as OpenAI echoes it, partly masked (`sk-proj-abc***xyz`), after `sk-`.
const SHAPE_PREFIX: &[u8] = b"sk-";
/// Key characters after `sk-` that make it a key shape.
const SHAPE_MIN_RUN: usize = 6;
/// A run of key characters longer than this is decided without waiting for its end: no key is
/// that long, and holding it back would let a provider make the gateway buffer without bound.
const SHAPE_MAX_RUN: usize = 4096;

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'*' | b'.')
}

/// Inside a word (`task-...`, `disk-...`), `sk-` does not start a key.
fn in_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The secrets to remove and how to find them fast.
#[derive(Debug)]
struct Needles {
    secrets: Vec<Arc<ProviderKey>>,
    /// Whether a byte can start a secret or a key shape.
    starts: [bool; 256],
    /// Longest needle: bytes closer than this to the end of what has arrived may start one.
    longest: usize,
}

impl Needles {
    fn new(secrets: Vec<Arc<ProviderKey>>) -> Needles {
        let secrets: Vec<_> = secrets
            .into_iter()
            .filter(|s| !s.secret().is_empty())
            .collect();
        let mut starts = [false; 256];
        starts[SHAPE_PREFIX[0] as usize] = true;
        for s in &secrets {
            starts[s.secret().as_bytes()[0] as usize] = true;
        }
        let longest = secrets
            .iter()
            .map(|s| s.secret().len())
            .max()
            .unwrap_or(0)
            .max(SHAPE_PREFIX.len());
        Needles {
            secrets,
            starts,
            longest,
        }
    }

    /// Scrubs `buf` into `out`, from its start up to where a match could continue beyond it
    /// (everything when `end`). `last` is the byte passed on before `buf`: whether `sk-` is
    /// inside a word is judged on what the client sees (after a mask, it is not), so that a
    /// body is scrubbed the same however it is cut. Returns how much was consumed.
    fn scan(&self, buf: &[u8], mut last: Option<u8>, end: bool, out: &mut Vec<u8>) -> usize {
        let limit = if end {
            buf.len()
        } else {
            buf.len().saturating_sub(self.longest - 1)
        };
        let mut i = 0;
        while i < limit {
            let plain = buf[i..limit]
                .iter()
                .position(|&c| self.starts[c as usize])
                .unwrap_or(limit - i);
            if plain > 0 {
                out.extend_from_slice(&buf[i..i + plain]);
                i += plain;
                last = out.last().copied();
                continue;
            }
            let rest = &buf[i..];
            if let Some(s) = self
                .secrets
                .iter()
                .find(|s| rest.starts_with(s.secret().as_bytes()))
            {
                out.extend_from_slice(MASK);
                i += s.secret().len();
                last = out.last().copied();
                continue;
            }
            if rest.starts_with(SHAPE_PREFIX) && !last.is_some_and(in_word) {
                let after = &rest[SHAPE_PREFIX.len()..];
                let run = after.iter().position(|&c| !is_key_char(c));
                if run.is_none() && !end && after.len() < SHAPE_MAX_RUN {
                    // The run may go on in the next chunk.
                    break;
                }
                let run = run.unwrap_or(after.len());
                if run >= SHAPE_MIN_RUN {
                    out.extend_from_slice(b"sk-***");
                } else {
                    out.extend_from_slice(&rest[..SHAPE_PREFIX.len() + run]);
                }
                i += SHAPE_PREFIX.len() + run;
                last = out.last().copied();
                continue;
            }
            out.push(buf[i]);
            last = Some(buf[i]);
            i += 1;
        }
        i
    }
}

/// An error body being scrubbed as it passes.
#[derive(Debug)]
pub struct ErrorBody {
    needles: Needles,
    /// Arrived, not yet passed on: it may hold the start of a key.
    held: BytesMut,
    /// The last byte passed on.
    last: Option<u8>,
}

impl ErrorBody {
    pub fn new(secrets: Vec<Arc<ProviderKey>>) -> ErrorBody {
        ErrorBody {
            needles: Needles::new(secrets),
            held: BytesMut::new(),
            last: None,
        }
    }

    /// What of the body so far can go to the client, scrubbed; the rest is held back until the
    /// next chunk shows whether it starts a key (at most the longest key, or a key shape's
    /// run, is held). Everything goes at the end of the body.
    pub fn pass(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Bytes {
        let chunk = chunk.unwrap_or_default();
        let mut out = Vec::with_capacity(self.held.len() + chunk.len());
        if self.held.is_empty() {
            let used = self
                .needles
                .scan(&chunk, self.last, end_of_stream, &mut out);
            self.held.extend_from_slice(&chunk[used..]);
        } else {
            self.held.extend_from_slice(&chunk);
            let used = self
                .needles
                .scan(&self.held, self.last, end_of_stream, &mut out);
            self.held.advance(used);
        }
        if let Some(&c) = out.last() {
            self.last = Some(c);
        }
        Bytes::from(out)
    }
}

/// The whole of `body`, scrubbed.
#[cfg(test)]
pub fn scrub(body: &[u8], secrets: &[Arc<ProviderKey>]) -> Vec<u8> {
    let mut out = Vec::new();
    Needles::new(secrets.to_vec()).scan(body, None, true, &mut out);
    out
}

/// Scrubs the values of a response's headers: configured keys and key shapes. Done for every
/// relayed response, so the common case (no header holds one) is one search for `sk-` per value
/// and one per key among values long enough to hold it, without allocating or copying the
/// secrets (`each_secret` walks the key ring in place).
pub fn scrub_headers(
    resp: &mut ResponseHeader,
    each_secret: impl Fn(&mut dyn FnMut(&ProviderKey)),
    secrets: impl FnOnce() -> Vec<Arc<ProviderKey>>,
) {
    let shape = shape_finder();
    let mut tainted = resp
        .headers
        .values()
        .any(|v| shape.find(v.as_bytes()).is_some());
    if !tainted {
        each_secret(&mut |k| {
            tainted = tainted || resp.headers.values().any(|v| k.found_in(v.as_bytes()));
        });
    }
    if !tainted {
        return;
    }
    let needles = Needles::new(secrets());
    let names: Vec<http::HeaderName> = resp
        .headers
        .iter()
        .filter(|(_, v)| {
            shape.find(v.as_bytes()).is_some()
                || needles.secrets.iter().any(|k| k.found_in(v.as_bytes()))
        })
        .map(|(n, _)| n.clone())
        .collect();
    for name in names {
        let values: Vec<Vec<u8>> = resp
            .headers
            .get_all(&name)
            .iter()
            .map(|v| {
                let mut out = Vec::with_capacity(v.len());
                needles.scan(v.as_bytes(), None, true, &mut out);
                out
            })
            .collect();
        resp.remove_header(&name);
        for v in values {
            // A scrubbed value is the original with ASCII swapped in: still a valid value.
            if let Ok(v) = http::HeaderValue::from_bytes(&v) {
                let _ = resp.append_header(name.clone(), v);
            }
        }
    }
}

fn shape_finder() -> &'static memchr::memmem::Finder<'static> {
    static SHAPE: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| memchr::memmem::Finder::new(SHAPE_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    fn key(secret: &str) -> Arc<ProviderKey> {
        Arc::new(ProviderKey::new(ProviderKind::Openai, "a", secret).unwrap())
    }

    #[test]
    fn scrubs_configured_keys_and_key_shapes() {
        let k = key("sk-proj-abcdefghijklmnop");
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
    fn a_key_of_any_shape_is_removed() {
        let out = scrub(b"x=AIzaSecretValue42; y", &[key("AIzaSecretValue42")]);
        assert_eq!(out, b"x=***; y");
    }

    /// Every split of a body into two or three chunks scrubs it as the whole body is.
    #[test]
    fn chunk_boundaries_do_not_matter() {
        let secrets = [key("AIzaSecretValue42"), key("sk-proj-abcdefghijklmnop")];
        let body: &[u8] = "é AIzaSecretValue42 then sk-proj-abcdefghijklmnop, sk-ab***cdef, task-abcdefgh, AIzaSecretValue4 ü".as_bytes();
        let whole = scrub(body, &secrets);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut e = ErrorBody::new(secrets.to_vec());
                let mut out = Vec::new();
                out.extend_from_slice(&e.pass(Some(Bytes::copy_from_slice(&body[..i])), false));
                out.extend_from_slice(&e.pass(Some(Bytes::copy_from_slice(&body[i..j])), false));
                out.extend_from_slice(&e.pass(Some(Bytes::copy_from_slice(&body[j..])), true));
                assert_eq!(out, whole, "split at {i}, {j}");
            }
        }
        let whole = String::from_utf8(whole).unwrap();
        assert!(!whole.contains("AIzaSecretValue42") && !whole.contains("abcdefghijklmnop"));
        assert!(
            whole.contains("AIzaSecretValue4 ü"),
            "a near miss is left: {whole}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any body with keys in it, cut anywhere: scrubbed as a whole and no key left.
        #[test]
        fn any_split_of_any_body(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("AIzaSecretValue42".to_string()),
                    proptest::strategy::Just("sk-proj-abcdefghij".to_string()),
                    "[a-zA-Z0-9 _*.:-]{0,12}",
                    "\\PC{0,6}",
                ],
                0..10,
            ),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..6),
        ) {
            let secrets = [key("AIzaSecretValue42")];
            let body = parts.concat().into_bytes();
            let whole = scrub(&body, &secrets);
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            at.sort_unstable();
            let mut e = ErrorBody::new(secrets.to_vec());
            let (mut out, mut start) = (Vec::new(), 0);
            for &end in at.iter().chain(std::iter::once(&body.len())) {
                let chunk = Bytes::copy_from_slice(&body[start..end]);
                out.extend_from_slice(&e.pass(Some(chunk), end == body.len()));
                start = end;
            }
            proptest::prop_assert_eq!(&out, &whole);
            let text = String::from_utf8_lossy(&out);
            proptest::prop_assert!(!text.contains("AIzaSecretValue42"), "{}", text);
        }
    }

    #[test]
    fn only_a_possible_key_start_is_held_back() {
        let mut e = ErrorBody::new(vec![key("AIzaSecretValue42")]);
        // 17-byte key: up to 16 bytes wait for the next chunk.
        let out = e.pass(Some(Bytes::from(vec![b'x'; 1000])), false);
        assert_eq!(out.len(), 1000 - 16);
        // A long key-character run after `sk-` is decided at 4 KiB, not held for ever.
        let mut e = ErrorBody::new(vec![]);
        let mut body = b"sk-".to_vec();
        body.extend(std::iter::repeat_n(b'a', 10_000));
        let out = e.pass(Some(Bytes::from(body)), false);
        assert_eq!(&out[..], b"sk-***");
        let out = e.pass(Some(Bytes::from_static(b"aaa end")), true);
        assert_eq!(&out[..], b"aaa end");
    }

    #[test]
    fn header_values_are_scrubbed_and_others_left_alone() {
        let secrets = [key("AIzaSecretValue42")];
        let mut resp = ResponseHeader::build(401, None).unwrap();
        resp.append_header(
            "www-authenticate",
            "Bearer realm=\"p\", key=AIzaSecretValue42",
        )
        .unwrap();
        resp.append_header("x-echo-key", "sk-proj-abcdefghij")
            .unwrap();
        resp.append_header("x-echo-key", "plain").unwrap();
        resp.append_header("x-task", "task-abcdefgh").unwrap();
        let each = |f: &mut dyn FnMut(&ProviderKey)| secrets.iter().for_each(|k| f(k));
        scrub_headers(&mut resp, each, || secrets.to_vec());
        assert_eq!(
            resp.headers["www-authenticate"],
            "Bearer realm=\"p\", key=***"
        );
        let echoed: Vec<_> = resp.headers.get_all("x-echo-key").iter().collect();
        assert_eq!(echoed, ["sk-***", "plain"]);
        assert_eq!(resp.headers["x-task"], "task-abcdefgh");
    }
}
