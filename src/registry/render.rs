//! The JSON bodies about models, rendered once per configuration with a strong ETag.

use super::{Model, ModelIdx, Registry};
use bytes::Bytes;
use serde_json::{json, Value};
use std::hash::{Hash, Hasher};

/// A rendered response body and its ETag.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Bytes,
    /// Quoted strong validator, e.g. `"1f2e3d4c5b6a7988"`.
    pub etag: String,
}

impl Rendered {
    pub fn new(value: &Value) -> Rendered {
        let body = serde_json::to_vec(value).expect("a serde_json::Value always serializes");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        Rendered {
            etag: format!("\"{:016x}\"", h.finish()),
            body: Bytes::from(body),
        }
    }
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, RFC 9110 13.1.2).
pub fn etag_matches(if_none_match: &[u8], etag: &str) -> bool {
    let Ok(s) = std::str::from_utf8(if_none_match) else {
        return false;
    };
    let etag = etag.trim_start_matches("W/");
    s.split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

fn openai_model(m: &Model) -> Value {
    json!({
        "id": &*m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
    })
}

pub(super) fn models_list<'a>(models: impl Iterator<Item = &'a Model>) -> Rendered {
    let data: Vec<Value> = models.map(openai_model).collect();
    Rendered::new(&json!({ "object": "list", "data": data }))
}

pub(super) fn model_object(m: &Model) -> Rendered {
    Rendered::new(&openai_model(m))
}

pub(super) fn available_models(
    reg: &Registry,
    servable: &[bool],
    visible: &dyn Fn(ModelIdx) -> bool,
) -> Rendered {
    let data: Vec<Value> = reg
        .models
        .iter()
        .enumerate()
        .filter(|(i, _)| visible(ModelIdx(*i)))
        .map(|(i, m)| {
            let providers: Vec<Value> = m
                .targets
                .iter()
                .map(|t| json!({ "provider": &*t.provider_name, "model": &*t.upstream_model }))
                .collect();
            json!({
                "id": &*m.id,
                "aliases": m.aliases,
                "owned_by": m.owned_by,
                "description": m.description,
                "providers": providers,
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                "pricing": m.pricing.as_ref().map(|p| json!({
                    "input_per_million": p.input_per_million,
                    "output_per_million": p.output_per_million,
                })),
                "capabilities": m.capabilities,
                "available": servable.get(i).copied().unwrap_or(false),
            })
        })
        .collect();
    let default = reg
        .default_model
        .filter(|d| visible(*d))
        .map(|d| reg.models[d.0].id.to_string());
    Rendered::new(&json!({ "object": "list", "data": data, "default_model": default }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching() {
        let etag = "\"abc\"";
        assert!(etag_matches(b"\"abc\"", etag));
        assert!(etag_matches(b"W/\"abc\"", etag));
        assert!(etag_matches(b"\"x\", \"abc\"", etag));
        assert!(etag_matches(b"*", etag));
        assert!(!etag_matches(b"\"abd\"", etag));
        assert!(!etag_matches(b"", etag));
    }

    #[test]
    fn same_body_same_etag() {
        let a = Rendered::new(&json!({"a": 1}));
        let b = Rendered::new(&json!({"a": 1}));
        let c = Rendered::new(&json!({"a": 2}));
        assert_eq!(a.etag, b.etag);
        assert_ne!(a.etag, c.etag);
    }
}
