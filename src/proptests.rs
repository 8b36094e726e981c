//! Property tests of the parsers on the request path, on generated inputs (proptest): model
//! extraction and rewrite, path normalisation, usage across arbitrary chunk boundaries,
//! rate-limit headers, configuration interpolation and log clipping. Each property runs a
//! bounded number of cases so that the unit tests stay fast; a failure prints the shrunk input.

use crate::proxy::model_field::{probe, rewrite_model, ProbeError};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a little, with strings that need escaping.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[\"\\\\/{}\\[\\],:\\t\\n\u{1F600}é]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_\"\\\\]{1,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A body: other top-level fields, with `model` inserted at `position` (none named `model`).
fn body_with_model(model: &str, others: &[(String, Value)], position: usize) -> String {
    let mut parts: Vec<String> = others
        .iter()
        .filter(|(k, _)| k != "model" && k != "stream")
        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
        .collect();
    let at = position % (parts.len() + 1);
    parts.insert(
        at,
        format!("\"model\":{}", Value::String(model.to_string())),
    );
    format!("{{{}}}", parts.join(" , "))
}

proptest! {
    #![proptest_config(config())]

    /// `probe` reads exactly the model serde_json reads, wherever it is and however escaped.
    #[test]
    fn probe_finds_the_model_anywhere(
        model in "\\PC{1,40}",
        others in prop::collection::vec(("[a-z_]{1,8}", any_json()), 0..6),
        position in any::<usize>(),
    ) {
        let body = body_with_model(&model, &others, position);
        let read: Value = serde_json::from_str(&body).unwrap();
        let p = probe(body.as_bytes()).unwrap();
        prop_assert_eq!(&*p.model, read["model"].as_str().unwrap());
    }

    /// Rewriting the model changes `model` and nothing else.
    #[test]
    fn rewrite_changes_only_the_model(
        model in "[a-z0-9.-]{1,20}",
        new_model in "\\PC{1,30}",
        others in prop::collection::vec(("[a-z_]{1,8}", any_json()), 0..6),
        position in any::<usize>(),
    ) {
        let body = body_with_model(&model, &others, position);
        let out = rewrite_model(&Bytes::from(body.clone()), &new_model).unwrap();
        let mut before: Map<String, Value> = serde_json::from_str(&body).unwrap();
        let after: Map<String, Value> = serde_json::from_slice(&out).unwrap();
        before.insert("model".into(), Value::String(new_model));
        prop_assert_eq!(before, after);
    }

    /// A second top-level `model`, anywhere, is refused.
    #[test]
    fn a_second_model_is_refused(
        others in prop::collection::vec(("[a-z_]{1,8}", any_json()), 0..4),
        a in any::<usize>(),
    ) {
        let once = body_with_model("m1", &others, a);
        let inner = once.trim_end_matches('}');
        let twice = if inner.ends_with('{') {
            format!("{inner}\"model\":\"m2\"}}")
        } else {
            format!("{inner},\"model\":\"m2\"}}")
        };
        prop_assert!(matches!(probe(twice.as_bytes()), Err(ProbeError::InvalidJson(_))));
    }

    /// Any bytes: an answer, never a panic; and never a model from something that is not a
    /// JSON object.
    #[test]
    fn probe_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = probe(&body) {
            let v: Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(v["model"].as_str(), Some(&*p.model));
        }
    }

    /// Normalised paths are fixed points, and hold no `..`, `.`, empty segment or backslash.
    #[test]
    fn normalize_is_idempotent_and_clean(raw in "(/|%2[fF]|%2[eE]|\\.|\\.\\.|[a-z]{1,3}|%[0-9a-fA-F]{2}|\\\\){0,12}") {
        if let Some(n) = crate::endpoints::normalize(&raw) {
            let again = crate::endpoints::normalize(&n);
            prop_assert_eq!(again.as_deref(), Some(n.as_str()));
            prop_assert!(n.starts_with('/'), "{}", n);
            prop_assert!(!n.contains('\\'), "{}", n);
            for seg in n.split('/').skip(1) {
                prop_assert!(seg != ".." && seg != ".", "{}", n);
            }
            prop_assert!(!n.contains("//"), "{}", n);
        }
    }

    #[test]
    fn normalize_never_panics(raw in "\\PC{0,40}") {
        let _ = crate::endpoints::normalize(&raw);
    }

    /// Usage is read the same whatever the chunk boundaries, SSE and JSON alike.
    #[test]
    fn usage_is_the_same_across_any_split(
        words in prop::collection::vec("[a-zé\u{1F600} ]{0,8}", 1..6),
        prompt in 1u64..10_000,
        completion in 1u64..10_000,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        crlf in any::<bool>(),
        stream in any::<bool>(),
    ) {
        use crate::usage::{Dialect, UsageMeter};
        let nl = if crlf { "\r\n" } else { "\n" };
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion});
        let body = if stream {
            let mut s = String::new();
            for w in &words {
                let e = json!({"choices": [{"index": 0, "delta": {"content": w}}]});
                s.push_str(&format!("data: {e}{nl}{nl}"));
            }
            s.push_str(&format!("data: {}{nl}{nl}", json!({"choices": [], "usage": usage})));
            s.push_str(&format!("data: [DONE]{nl}{nl}"));
            s
        } else {
            json!({"choices": [{"message": {"content": words.concat()}}], "usage": usage})
                .to_string()
        };
        let bytes = body.as_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut meter = UsageMeter::new(Dialect::OpenAi, stream, false);
        let mut start = 0;
        for &end in at.iter().chain(std::iter::once(&bytes.len())) {
            let mut chunk = Bytes::copy_from_slice(&bytes[start..end]);
            meter.chunk(&mut chunk, end == bytes.len());
            start = end;
        }
        let t = meter.reported().expect("usage found");
        prop_assert_eq!((t.input, t.output), (prompt, completion));
    }

    /// Rate-limit headers of any content never panic; well-formed numbers are read back.
    #[test]
    fn rate_limit_headers(
        limit in any::<u64>(),
        junk in "\\PC{0,60}",
        reset in "[0-9]{1,3}(ms|s|m|h)([0-9]{1,2}(ms|s))?",
    ) {
        use crate::upstream::keys::quota::ProviderLimits;
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-limit-requests", limit.to_string().parse().unwrap());
        h.insert("x-ratelimit-reset-requests", reset.parse().unwrap());
        if let Ok(v) = http::HeaderValue::from_str(&junk) {
            h.insert("x-ratelimit-remaining-tokens", v.clone());
            h.insert("anthropic-ratelimit-tokens-reset", v);
        }
        let l = ProviderLimits::from_headers(&h).unwrap();
        prop_assert_eq!(l.limit_requests, Some(limit));
        prop_assert_eq!(l.reset_requests.as_deref(), Some(reset.as_str()));
    }

    /// Interpolation: text without `$` is unchanged, `$$` is a `$`, `${NAME}` is the value, an
    /// error never quotes a value, and nothing panics.
    #[test]
    fn interpolation(
        plain in "[^$]{0,30}",
        value in "[^$]{0,20}",
        any_text in "\\PC{0,40}",
    ) {
        use crate::config::interpolate::interpolate_str;
        let secret = format!("s3cr3t-{value}");
        let lookup = |n: &str| (n == "NAME").then(|| secret.clone());
        prop_assert_eq!(interpolate_str(&plain, &lookup).unwrap(), plain.clone());
        prop_assert_eq!(
            interpolate_str(&format!("{plain}${{NAME}}$$"), &lookup).unwrap(),
            format!("{plain}{secret}$")
        );
        if let Err(e) = interpolate_str(&any_text, &lookup) {
            prop_assert!(!e.contains("s3cr3t"), "{}", e);
        }
    }

    /// Clipping: a prefix at a character boundary, then a marker; short text unchanged.
    #[test]
    fn clipping(text in "\\PC{0,400}", max in 0usize..300) {
        let c = crate::clip::clip(&text, max);
        if text.len() <= max {
            prop_assert_eq!(&*c, text.as_str());
        } else {
            let (head, marker) = c.rsplit_once("…[+").unwrap();
            prop_assert!(head.len() <= max && text.starts_with(head));
            prop_assert_eq!(marker, format!("{} bytes]", text.len() - head.len()));
        }
    }
}
