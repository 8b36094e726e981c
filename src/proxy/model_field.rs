//! The body's top-level `model` and `stream`, read without building a JSON tree of the whole body
//! (bodies reach megabytes, and `model` may come after all the messages), and the model rewrite
//! done by splicing bytes at the value's offset.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// What the gateway needs from a request body.
#[derive(Debug, PartialEq)]
pub struct Probe<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// `stream_options.include_usage` is `true`: the client asked for the usage chunk.
    pub include_usage: bool,
    /// The most output tokens the request allows (`max_completion_tokens`, `max_tokens` or
    /// `max_output_tokens`), when it says.
    pub max_tokens: Option<u64>,
}

/// Why a body cannot be routed.
#[derive(Debug, PartialEq)]
pub enum ProbeError {
    /// Not JSON, not an object, or a duplicated top-level `model`/`stream`.
    InvalidJson(String),
    /// No `model`, or not a string.
    MissingModel(&'static str),
}

#[derive(Deserialize)]
struct RawProbe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    // Read leniently: a value of another type is the provider's to refuse, not the gateway's.
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Validates the body as a JSON object and reads its top-level `model` and `stream`.
/// Duplicate `model` keys are refused: a gateway and a provider that disagree about which one
/// counts would let a caller authorise one model and use another.
pub fn probe(body: &[u8]) -> Result<Probe<'_>, ProbeError> {
    // serde would also read a struct from a JSON array.
    if body.get(skip_ws(body, 0)) != Some(&b'{') {
        return Err(ProbeError::InvalidJson(
            "the body must be a JSON object".into(),
        ));
    }
    // JSON text is UTF-8 (RFC 8259 §8.1), but serde skips the fields it does not read without
    // looking at their bytes: invalid UTF-8 in a message would reach the provider. Checked
    // here, the body can then be read as a `str`, which spares serde its own checks.
    let body = std::str::from_utf8(body).map_err(|e| {
        ProbeError::InvalidJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    let raw: RawProbe = serde_json::from_str(body).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("invalid type") {
            ProbeError::InvalidJson("the body must be a JSON object".into())
        } else {
            ProbeError::InvalidJson(msg)
        }
    })?;
    let model = raw
        .model
        .ok_or(ProbeError::MissingModel("has no `model` field"))?;
    let model: Cow<str> = serde_json::from_str(model.get())
        .map_err(|_| ProbeError::MissingModel("has a `model` field that is not a string"))?;
    if model.is_empty() {
        return Err(ProbeError::MissingModel("has an empty `model`"));
    }
    let stream = raw.stream.is_some_and(|s| s.get() == "true");
    let include_usage = raw
        .stream_options
        .and_then(|o| serde_json::from_str::<StreamOptions>(o.get()).ok())
        .is_some_and(|o| o.include_usage == Some(true));
    let number = |v: Option<&RawValue>| v.and_then(|v| v.get().parse::<u64>().ok());
    let max_tokens = number(raw.max_completion_tokens)
        .or(number(raw.max_tokens))
        .or(number(raw.max_output_tokens));
    Ok(Probe {
        model,
        stream,
        include_usage,
        max_tokens,
    })
}

/// Byte range of the top-level `key`'s value in a body that `probe` accepted.
pub fn value_range(body: &[u8], key: &str) -> Option<Range<usize>> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_start = i;
        i = skip_string(body, i)?;
        let key_raw = &body[key_start..i];
        i = skip_ws(body, i);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        let value_start = i;
        i = skip_value(body, i)?;
        if key_equals(key_raw, key) {
            return Some(value_start..i);
        }
    }
}

/// Replaces the top-level `model` value with `new_model`. `None` if the body has no such value
/// (cannot happen after `probe`).
pub fn rewrite_model(body: &Bytes, new_model: &str) -> Option<Bytes> {
    let range = value_range(body, "model")?;
    let quoted = serde_json::to_string(new_model).ok()?;
    let mut out = Vec::with_capacity(body.len() - range.len() + quoted.len());
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[range.end..]);
    Some(Bytes::from(out))
}

/// Asks for the usage chunk of a stream (`stream_options.include_usage: true`), keeping the rest
/// of the body byte for byte: the top-level `stream_options` is added, or its value rewritten.
pub fn request_usage(body: &Bytes) -> Option<Bytes> {
    let mut out = Vec::with_capacity(body.len() + 48);
    match value_range(body, "stream_options") {
        Some(range) => {
            let mut options: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&body[range.clone()]).ok()?;
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            out.extend_from_slice(&body[..range.start]);
            out.extend_from_slice(&serde_json::to_vec(&options).ok()?);
            out.extend_from_slice(&body[range.end..]);
        }
        None => {
            let open = skip_ws(body, 0);
            if body.get(open) != Some(&b'{') {
                return None;
            }
            let empty = body.get(skip_ws(body, open + 1)) == Some(&b'}');
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(&body[open + 1..]);
        }
    }
    Some(Bytes::from(out))
}

fn key_equals(raw_with_quotes: &[u8], key: &str) -> bool {
    let inner = &raw_with_quotes[1..raw_with_quotes.len() - 1];
    if !inner.contains(&b'\\') {
        return inner == key.as_bytes();
    }
    serde_json::from_slice::<String>(raw_with_quotes).is_ok_and(|k| k == key)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `i` at an opening quote; returns the index after the closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let pos = memchr2(b'"', b'\\', &b[j..])?;
        j += pos;
        if b[j] == b'\\' {
            j += 2;
        } else {
            return Some(j + 1);
        }
    }
}

fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            Some(j)
        }
    }
}

fn memchr2(a: u8, c: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&x| x == a || x == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_model_and_stream_anywhere() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\": x"}],"stream":true,"model":"gpt-4o"}"#;
        let p = probe(body).unwrap();
        assert_eq!(p.model, "gpt-4o");
        assert!(p.stream);
        assert!(!probe(br#"{"model":"m","stream":"true"}"#).unwrap().stream);
    }

    #[test]
    fn invalid_utf8_anywhere_is_invalid_json() {
        let mut body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi "#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#""}]}"#);
        assert_eq!(
            probe(&body),
            Err(ProbeError::InvalidJson("invalid UTF-8 at byte 59".into()))
        );
        // A truncated multi-byte character, and an overlong encoding of '/'.
        assert!(probe(b"{\"model\":\"m\",\"x\":\"\xe2\x82\"}").is_err());
        assert!(probe(b"{\"model\":\"m\",\"x\":\"\xc0\xaf\"}").is_err());
        // Valid multi-byte text is fine.
        assert_eq!(
            probe("{\"model\":\"m\",\"x\":\"h\u{e9}llo \u{1F600}\"}".as_bytes())
                .unwrap()
                .model,
            "m"
        );
    }

    #[test]
    fn probe_errors() {
        assert!(matches!(
            probe(b"not json"),
            Err(ProbeError::InvalidJson(_))
        ));
        assert!(matches!(probe(b"[1,2]"), Err(ProbeError::InvalidJson(_))));
        assert!(matches!(
            probe(b"{\"model\":\"a\"} trailing"),
            Err(ProbeError::InvalidJson(_))
        ));
        assert!(matches!(
            probe(br#"{"model":"a","model":"b"}"#),
            Err(ProbeError::InvalidJson(_))
        ));
        assert_eq!(
            probe(b"{}"),
            Err(ProbeError::MissingModel("has no `model` field"))
        );
        assert!(matches!(
            probe(br#"{"model":5}"#),
            Err(ProbeError::MissingModel(_))
        ));
        assert!(matches!(
            probe(br#"{"model":""}"#),
            Err(ProbeError::MissingModel(_))
        ));
    }

    #[test]
    fn escaped_model_is_decoded() {
        let p = probe(br#"{"model":"gpt\u002d4o"}"#).unwrap();
        assert_eq!(p.model, "gpt-4o");
    }

    #[test]
    fn rewrite_touches_only_the_top_level_value() {
        let body = Bytes::from_static(
            br#"{ "messages": [{"model": "inner", "content": "{\"model\":\"x\"}"}], "meta": {"model": "nested"}, "model" : "alias", "n": 1 }"#,
        );
        let out = rewrite_model(&body, "real-name").unwrap();
        let expected = br#"{ "messages": [{"model": "inner", "content": "{\"model\":\"x\"}"}], "meta": {"model": "nested"}, "model" : "real-name", "n": 1 }"#;
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn rewrite_with_escaped_key_and_special_characters() {
        let body = Bytes::from_static(br#"{"mod\u0065l":"a","x":[1,{"y":"]"}]}"#);
        let out = rewrite_model(&body, "we\"ird").unwrap();
        assert_eq!(&out[..], br#"{"mod\u0065l":"we\"ird","x":[1,{"y":"]"}]}"#);
        assert_eq!(probe(&out).unwrap().model, "we\"ird");
    }

    #[test]
    fn value_range_of_numbers_and_literals() {
        let body = br#"{"a":12.5e3,"b":true,"model":null}"#;
        assert_eq!(&body[value_range(body, "a").unwrap()], b"12.5e3");
        assert_eq!(&body[value_range(body, "b").unwrap()], b"true");
        assert_eq!(&body[value_range(body, "model").unwrap()], b"null");
        assert_eq!(value_range(body, "zzz"), None);
    }

    #[test]
    fn usage_is_requested_without_touching_the_rest() {
        let body = Bytes::from_static(
            br#"{"model":"m","stream":true,"messages":[{"x":"stream_options"}]}"#,
        );
        let out = request_usage(&body).unwrap();
        assert_eq!(
            &out[..],
            &br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[{"x":"stream_options"}]}"#[..]
        );
        assert!(probe(&out).unwrap().include_usage);
        let with = Bytes::from_static(
            br#"{ "model":"m", "stream_options": {"include_usage": false, "x": 1} }"#,
        );
        let out = request_usage(&with).unwrap();
        let p = probe(&out).unwrap();
        assert!(p.include_usage);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["x"], 1, "other options kept");
    }

    #[test]
    fn max_tokens_in_any_of_its_names() {
        assert_eq!(
            probe(br#"{"model":"m","max_tokens":50}"#)
                .unwrap()
                .max_tokens,
            Some(50)
        );
        assert_eq!(
            probe(br#"{"model":"m","max_tokens":50,"max_completion_tokens":70}"#)
                .unwrap()
                .max_tokens,
            Some(70)
        );
        assert_eq!(
            probe(br#"{"model":"m","max_output_tokens":9}"#)
                .unwrap()
                .max_tokens,
            Some(9)
        );
        assert_eq!(probe(br#"{"model":"m"}"#).unwrap().max_tokens, None);
        let odd = probe(br#"{"model":"m","max_tokens":null,"stream_options":"x"}"#).unwrap();
        assert_eq!(
            (odd.max_tokens, odd.include_usage),
            (None, false),
            "not the gateway's to refuse"
        );
    }
}
