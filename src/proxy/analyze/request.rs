//! `POST /api/analyze`'s body: parsed, checked, and its models resolved and authorized for the
//! caller, before anything is called.

use crate::auth::rbac::Access;
use crate::endpoints::EndpointGroup;
use crate::proxy::errors::GatewayError;
use crate::registry::ModelIdx;
use crate::runtime::Runtime;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// The longest `timeout_ms` a request may ask for (an hour).
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The body as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    synthesis_model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    stream: bool,
}

/// A checked request.
#[derive(Debug)]
pub struct Analysis {
    /// The legs' models, in the request's order.
    pub models: Vec<ModelIdx>,
    pub synthesis: Option<ModelIdx>,
    /// The chat messages every leg gets.
    pub messages: Vec<Value>,
    /// The question as text, for the synthesis prompt.
    pub question: String,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    /// Each leg's own timeout.
    pub timeout: Duration,
    pub stream: bool,
}

fn bad(msg: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest(msg.into())
}

/// Parses and checks a body for a caller with `access`: 400 for a malformed or contradictory
/// body, 404 naming every unknown model, 403 naming every model the caller may not use.
pub fn prepare(rt: &Runtime, access: Access, body: &[u8]) -> Result<Analysis, GatewayError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            bad(format!("The request body does not fit /api/analyze: {e}"))
        }
        _ => GatewayError::InvalidJson(e.to_string()),
    })?;
    let (messages, question) = match (b.prompt, b.messages) {
        (Some(_), Some(_)) => return Err(bad("Give either `prompt` or `messages`, not both")),
        (None, None) => return Err(bad("Give a `prompt` (text) or `messages` (chat messages)")),
        (Some(p), None) if p.trim().is_empty() => return Err(bad("`prompt` is empty")),
        (Some(p), None) => (vec![serde_json::json!({"role": "user", "content": p})], p),
        (None, Some(m)) if m.is_empty() => return Err(bad("`messages` is empty")),
        (None, Some(m)) => {
            if m.iter().any(|v| !v.is_object() || v.get("role").is_none()) {
                return Err(bad("Each of `messages` must be an object with a `role`"));
            }
            let question = last_user_text(&m);
            (m, question)
        }
    };
    let names = match b.models {
        Some(m) if m.is_empty() => return Err(bad("`models` is empty")),
        Some(m) => m,
        None if rt.analyze.default_models.is_empty() => {
            return Err(bad(
                "Name the `models` to ask: this gateway has no analyze.default_models",
            ))
        }
        None => rt
            .analyze
            .default_models
            .iter()
            .map(|i| rt.registry.get(*i).id.to_string())
            .collect(),
    };
    if names.len() > rt.analyze.max_models {
        return Err(bad(format!(
            "`models` names {} models; this gateway allows at most {}",
            names.len(),
            rt.analyze.max_models
        )));
    }
    let models = resolve(rt, access, &names)?;
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<&str> = models
        .iter()
        .filter(|i| !seen.insert(**i))
        .map(|i| &*rt.registry.get(*i).id)
        .collect();
    if !dups.is_empty() {
        return Err(bad(format!(
            "`models` names a model twice (aliases count as their model): {}",
            dups.join(", ")
        )));
    }
    let synthesis = match b.synthesis_model {
        Some(s) => Some(resolve(rt, access, std::slice::from_ref(&s))?[0]),
        None => rt
            .analyze
            .synthesis_model
            .filter(|i| rt.auth.rbac.allows(access, &EndpointGroup::Analyze, *i)),
    };
    let timeout = match b.timeout_ms {
        Some(0) => return Err(bad("`timeout_ms` must be at least 1")),
        Some(t) if t > MAX_TIMEOUT_MS => {
            return Err(bad(format!("`timeout_ms` may be at most {MAX_TIMEOUT_MS}")))
        }
        Some(t) => Duration::from_millis(t),
        None => rt.analyze.timeout,
    };
    if b.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(bad("`temperature` must be between 0 and 2"));
    }
    if b.max_tokens == Some(0) {
        return Err(bad("`max_tokens` must be at least 1"));
    }
    Ok(Analysis {
        models,
        synthesis,
        messages,
        question,
        max_tokens: b.max_tokens,
        temperature: b.temperature,
        timeout,
        stream: b.stream,
    })
}

/// Each name's model: 404 naming every unknown one (with what the caller could have meant),
/// then 403 naming every one the caller's roles do not allow.
fn resolve(rt: &Runtime, access: Access, names: &[String]) -> Result<Vec<ModelIdx>, GatewayError> {
    let mut unknown = Vec::new();
    let mut suggestions = Vec::new();
    let mut found = Vec::with_capacity(names.len());
    for n in names {
        match rt.registry.lookup(n) {
            Some(i) => found.push(i),
            None => {
                unknown.push(n.clone());
                for s in rt.registry.suggestions(n, &|i| rt.model_visible(access, i)) {
                    if !suggestions.iter().any(|x: &String| x == s) {
                        suggestions.push(s.to_string());
                    }
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(GatewayError::UnknownModels {
            names: unknown,
            suggestions,
        });
    }
    let refused: Vec<String> = found
        .iter()
        .filter(|i| !rt.auth.rbac.allows(access, &EndpointGroup::Analyze, **i))
        .map(|i| rt.registry.get(*i).id.to_string())
        .collect();
    if !refused.is_empty() {
        return Err(GatewayError::ModelsForbidden(refused));
    }
    Ok(found)
}

/// The last user message's text (its parts' text joined), for the synthesis prompt.
fn last_user_text(messages: &[Value]) -> String {
    let Some(m) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}
