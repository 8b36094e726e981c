//! Bodies of the mock provider: deterministic, OpenAI-shaped, cheap to build.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// The fields of a chat/completions/embeddings request the mock looks at.
#[derive(Deserialize, Default)]
pub struct MockInput {
    #[serde(default)]
    pub messages: Vec<Value>,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl MockInput {
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// Token count estimate: one token per four characters, at least one.
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The reply text and prompt size for a chat request.
pub fn chat_reply(input: &MockInput) -> (String, usize) {
    let prompt_chars: usize = input
        .messages
        .iter()
        .map(|m| m.get("content").map(text_of).unwrap_or_default().len())
        .sum();
    let last_user = input
        .messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(text_of)
        .unwrap_or_default();
    (reply_for(&last_user, input), prompt_chars)
}

/// The reply text and prompt size for a legacy completion.
pub fn completion_reply(input: &MockInput) -> (String, usize) {
    let prompt = input.prompt.as_ref().map(text_of).unwrap_or_default();
    (reply_for(&prompt, input), prompt.len())
}

fn reply_for(prompt: &str, input: &MockInput) -> String {
    let shown: String = prompt.chars().take(64).collect();
    let reply = format!("This is a mock response from ultra-gateway. You said: {shown}");
    match input.max_completion_tokens.or(input.max_tokens) {
        // Respect a small max_tokens the way a model would: stop early.
        Some(n) if (n as usize) < reply.split(' ').count() => reply
            .split(' ')
            .take(n.max(1) as usize)
            .collect::<Vec<_>>()
            .join(" "),
        _ => reply,
    }
}

pub fn usage(prompt_chars: usize, completion: &str) -> Value {
    let p = estimate_tokens(prompt_chars);
    let c = completion.split_whitespace().count().max(1) as u64;
    json!({ "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c })
}

/// One generated answer, in whatever shape the endpoint returns it.
pub struct Answer<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: &'a str,
    pub prompt_chars: usize,
}

pub fn chat_completion(a: &Answer<'_>) -> Value {
    json!({
        "id": a.id,
        "object": "chat.completion",
        "created": a.created,
        "model": a.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": a.text, "refusal": null },
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage(a.prompt_chars, a.text),
        "system_fingerprint": "ultra-mock",
    })
}

/// SSE `data:` payloads of a streamed chat completion. As OpenAI does, a final chunk with
/// `usage` and no choices comes only when the request set `stream_options.include_usage`.
pub fn chat_chunks(a: &Answer<'_>, include_usage: bool) -> Vec<Value> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": a.id, "object": "chat.completion.chunk", "created": a.created, "model": a.model,
            "system_fingerprint": "ultra-mock",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    out.extend(words(a.text).map(|w| chunk(json!({ "content": w }), Value::Null)));
    out.push(chunk(json!({}), json!("stop")));
    finish_stream(a, "chat.completion.chunk", out, include_usage)
}

pub fn text_completion(a: &Answer<'_>) -> Value {
    json!({
        "id": a.id, "object": "text_completion", "created": a.created, "model": a.model,
        "choices": [{ "text": a.text, "index": 0, "logprobs": null, "finish_reason": "stop" }],
        "usage": usage(a.prompt_chars, a.text),
    })
}

/// SSE `data:` payloads of a streamed legacy completion (usage as in `chat_chunks`).
pub fn completion_chunks(a: &Answer<'_>, include_usage: bool) -> Vec<Value> {
    let chunk = |text: &str, finish: Value| {
        json!({
            "id": a.id, "object": "text_completion", "created": a.created, "model": a.model,
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }],
        })
    };
    let mut out: Vec<Value> = words(a.text).map(|w| chunk(w, Value::Null)).collect();
    out.push(chunk("", json!("stop")));
    finish_stream(a, "text_completion", out, include_usage)
}

/// With `include_usage`, every chunk carries `"usage": null` and a last one the totals.
fn finish_stream(
    a: &Answer<'_>,
    object: &str,
    mut chunks: Vec<Value>,
    include_usage: bool,
) -> Vec<Value> {
    if include_usage {
        for c in &mut chunks {
            c["usage"] = Value::Null;
        }
        chunks.push(json!({
            "id": a.id, "object": object, "created": a.created, "model": a.model,
            "choices": [], "usage": usage(a.prompt_chars, a.text),
        }));
    }
    chunks
}

/// Words with their following space, so that concatenated deltas give back the reply.
fn words(reply: &str) -> impl Iterator<Item = &str> {
    reply.split_inclusive(' ')
}

/// An embeddings response. `Err` names what is wrong with the input.
pub fn embeddings(model: &str, input: &MockInput, default_dims: usize) -> Result<Value, String> {
    let items: Vec<String> = match &input.input {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.is_empty() => return Err("`input` must not be empty".into()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        // Token arrays: one list of ints, or a list of them.
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![Value::Array(a.clone()).to_string()]
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => {
            a.iter().map(Value::to_string).collect()
        }
        _ => return Err("`input` must be a string, a list of strings, or token arrays".into()),
    };
    let dims = input.dimensions.unwrap_or(default_dims);
    if dims == 0 || dims > 16384 {
        return Err("`dimensions` must be between 1 and 16384".into());
    }
    let base64 = input.encoding_format.as_deref() == Some("base64");
    let mut chars = 0;
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, text)| {
            chars += text.len();
            let v = vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    let tokens = estimate_tokens(chars);
    Ok(json!({
        "object": "list", "data": data, "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
}

/// A unit vector derived from the text alone: equal texts give equal vectors.
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    // FNV-1a seed, splitmix64 stream.
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
    });
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let raw: Vec<f32> = (0..dims)
        .map(|_| (next() >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    raw.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_deltas_concatenate_to_the_plain_reply() {
        let input: MockInput = serde_json::from_value(json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
        }))
        .unwrap();
        let (reply, chars) = chat_reply(&input);
        assert!(reply.ends_with("You said: hello there"));
        assert_eq!(chars, "be brief".len() + "hello there".len());
        let answer = Answer {
            id: "id",
            created: 1,
            model: "m",
            text: &reply,
            prompt_chars: chars,
        };
        assert!(chat_chunks(&answer, false)
            .iter()
            .all(|c| c.get("usage").is_none()));
        let chunks = chat_chunks(&answer, true);
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"].get(0)?["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, reply);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }

    #[test]
    fn max_tokens_shortens_the_reply() {
        let input: MockInput = serde_json::from_value(json!({
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3
        }))
        .unwrap();
        assert_eq!(chat_reply(&input).0.split(' ').count(), 3);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = vector("hello", 64);
        assert_eq!(a, vector("hello", 64));
        assert_ne!(a, vector("hellp", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn embeddings_inputs_and_base64() {
        let input: MockInput = serde_json::from_value(
            json!({"input": ["a", "b"], "dimensions": 8, "encoding_format": "base64"}),
        )
        .unwrap();
        let v = embeddings("e", &input, 256).unwrap();
        let b64 = v["data"][1]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(bytes.len(), 8 * 4);
        let first = f32::from_le_bytes(bytes[0..4].try_into().unwrap());
        assert_eq!(first, vector("b", 8)[0]);
        let bad: MockInput = serde_json::from_value(json!({"input": 5})).unwrap();
        assert!(embeddings("e", &bad, 256).is_err());
        let tokens: MockInput = serde_json::from_value(json!({"input": [1, 2, 3]})).unwrap();
        assert_eq!(
            embeddings("e", &tokens, 4).unwrap()["data"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
