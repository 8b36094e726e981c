//! One leg of an analysis: a chat completion for one model, as a direct call would get it (the
//! built-in mock when it is first in line, else the model's plan through `call::send`), within
//! the leg's timeout; then what the leg's result says (content, usage, cost, error).

use crate::endpoints::EndpointGroup;
use crate::mock::{self, MockCall, Reply};
use crate::proxy::admission::route::mock_first_in_line;
use crate::proxy::attempts::Plan;
use crate::proxy::call::{self, Answer, Call};
use crate::proxy::errors::{error_json, GatewayError};
use crate::proxy::model_field::rewrite_model;
use crate::registry::{ModelIdx, ProviderIdx, Target};
use crate::runtime::Runtime;
use crate::usage::{cost, estimate_tokens, Dialect, Tokens, UsageMeter};
use bytes::Bytes;
use pingora::connectors::http::Connector;
use rand::Rng;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The path a leg stands for.
pub const LEG_PATH: &str = "/v1/chat/completions";

/// What one leg gave.
#[derive(Debug, Clone)]
pub struct LegResult {
    pub model: Arc<str>,
    pub provider: Option<Arc<str>>,
    pub key: Option<(ProviderIdx, usize, Arc<str>)>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    /// Charged tokens (reported, or estimated when the provider said nothing); `None` when
    /// the leg failed (nothing is charged).
    pub tokens: Option<Tokens>,
    pub estimated: bool,
    pub micro_usd: Option<u64>,
    pub latency: Duration,
    pub attempts: u32,
    /// The OpenAI-shaped error of a failed leg.
    pub error: Option<Value>,
    /// Each upstream attempt's provider and outcome; the answering attempt's time to its
    /// first byte.
    pub outcomes: Vec<(Arc<str>, &'static str)>,
    pub ttfb: Option<Duration>,
    pub error_code: Option<String>,
}

impl LegResult {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// The leg as the response shows it.
    pub fn view(&self) -> Value {
        let mut v = json!({
            "model": &*self.model,
            "provider": self.provider.as_deref(),
            "status": if self.ok() { "ok" } else { "error" },
            "content": self.content,
            "finish_reason": self.finish_reason,
            "usage": self.tokens.map(|t| json!({
                "input_tokens": t.input,
                "output_tokens": t.output,
                "cached_input_tokens": t.cached_input,
                "total_tokens": t.total(),
                "estimated": self.estimated,
            })),
            "cost_usd": self.micro_usd.map(cost::usd),
            "latency_ms": self.latency.as_secs_f64() * 1000.0,
            "attempts": self.attempts,
        });
        if let Some(e) = &self.error {
            v["error"] = e.clone();
        }
        v
    }
}

/// A leg to run.
pub struct Leg<'a> {
    pub rt: &'a Runtime,
    pub connector: &'a Connector,
    pub model: ModelIdx,
    /// The chat body, naming the model by its canonical id.
    pub body: Bytes,
    pub subject: Arc<str>,
    pub request_id: &'a str,
    pub timeout: Duration,
}

/// Runs a leg to its end (or its timeout).
pub async fn run(leg: Leg<'_>) -> LegResult {
    let started = Instant::now();
    let rt = leg.rt;
    let model = rt.registry.get(leg.model);
    // The call itself keeps to the deadline (and reports what it tried); the outer timeout
    // bounds the mock and anything else.
    let deadline = tokio::time::Instant::now() + leg.timeout;
    let grace = Duration::from_millis(100);
    let answer = match tokio::time::timeout(leg.timeout + grace, answer(&leg, deadline)).await {
        Ok(a) => a,
        Err(_) => {
            let e = GatewayError::UpstreamTimeout {
                provider: model
                    .targets
                    .first()
                    .map_or_else(String::new, |t| t.provider_name.to_string()),
            };
            Answer {
                status: e.status(),
                body: Bytes::new(),
                usage: None,
                attempts: 0,
                provider: model.targets.first().map(|t| t.provider_name.clone()),
                key: None,
                backend: None,
                ttfb: None,
                latency: started.elapsed(),
                error: Some(e),
                outcomes: Vec::new(),
            }
        }
    };
    result(rt, leg.model, &leg.body, answer, started.elapsed())
}

/// The leg's answer: from the mock when it is first in line, else through the plan.
async fn answer(leg: &Leg<'_>, deadline: tokio::time::Instant) -> Answer {
    let rt = leg.rt;
    let model = rt.registry.get(leg.model);
    let renamed = |t: &Target| {
        if *t.upstream_model == *model.id {
            leg.body.clone()
        } else {
            rewrite_model(&leg.body, &t.upstream_model).unwrap_or_else(|| leg.body.clone())
        }
    };
    if let Some(t) = mock_first_in_line(rt, model) {
        return mock_answer(rt, t, renamed(t), leg.request_id).await;
    }
    let now = tokio::time::Instant::now();
    let plan = Plan::new(
        rt,
        model.id.clone(),
        model.targets.clone(),
        leg.subject.clone(),
        now,
    );
    let call = Call {
        plan,
        path: LEG_PATH,
        body_for: &renamed,
        request_id: leg.request_id,
        max_body: rt.max_body_bytes as usize,
        deadline: Some(deadline),
    };
    call::send(rt, leg.connector, call).await
}

/// The built-in mock's answer, with its latency and failure rate.
async fn mock_answer(rt: &Runtime, t: &Target, body: Bytes, request_id: &str) -> Answer {
    let started = Instant::now();
    let provider = rt.provider(t.provider);
    let settings = provider.mock.clone().unwrap_or_default();
    if settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    let fails =
        settings.failure_rate > 0.0 && rand::thread_rng().gen::<f64>() < settings.failure_rate;
    let (status, body) = if fails {
        let message = "The mock provider failed this request (configured failure_rate).";
        (
            500,
            error_json(message, "server_error", None, "mock_failure"),
        )
    } else {
        let call = MockCall {
            group: &EndpointGroup::Chat,
            body: &body,
            model: &t.upstream_model,
            stream: false,
            settings: &settings,
            request_id,
        };
        match mock::reply(&call, crate::time::unix_now()) {
            Reply::Json { status, body } => (status, body),
            Reply::Events(_) => (500, Bytes::new()),
        }
    };
    let mut meter = UsageMeter::new(Dialect::OpenAi, false, false);
    let mut b = body.clone();
    meter.chunk(&mut b, true);
    Answer {
        status,
        body,
        usage: meter.reported(),
        attempts: 0,
        provider: Some(t.provider_name.clone()),
        key: None,
        backend: None,
        ttfb: Some(started.elapsed()),
        latency: started.elapsed(),
        error: None,
        outcomes: Vec::new(),
    }
}

/// What an answer means for the leg: its content and charge, or its error.
fn result(rt: &Runtime, idx: ModelIdx, sent: &Bytes, a: Answer, latency: Duration) -> LegResult {
    let model = rt.registry.get(idx);
    let mut r = LegResult {
        model: model.id.clone(),
        provider: a.provider.clone(),
        key: a.key.clone(),
        backend: a.backend,
        status: a.status,
        content: None,
        finish_reason: None,
        tokens: None,
        estimated: false,
        micro_usd: None,
        latency,
        attempts: a.attempts,
        error: None,
        error_code: None,
        outcomes: a.outcomes.clone(),
        ttfb: a.ttfb.filter(|_| a.error.is_none() && a.attempts > 0),
    };
    if let Some(e) = &a.error {
        r.error = serde_json::from_slice::<Value>(&e.body())
            .ok()
            .map(|v| v["error"].clone());
        r.error_code = Some(e.code().to_string());
        return r;
    }
    let parsed: Option<Value> = serde_json::from_slice(&a.body).ok();
    if !(200..300).contains(&a.status) {
        // The provider's own error object when it sent one, else one naming its status.
        let provided = parsed
            .as_ref()
            .map(|v| v["error"].clone())
            .filter(|e| e.is_object());
        r.error = Some(provided.unwrap_or_else(|| {
            json!({
                "message": format!("The provider answered with status {}.", a.status),
                "type": "upstream_error",
                "param": null,
                "code": "bad_upstream_response",
            })
        }));
        r.error_code = Some("provider_error".into());
        return r;
    }
    let choice = parsed.as_ref().map(|v| &v["choices"][0]);
    r.content = choice.and_then(|c| c["message"]["content"].as_str().map(str::to_string));
    r.finish_reason = choice.and_then(|c| c["finish_reason"].as_str().map(str::to_string));
    let tokens = match a.usage {
        Some(t) => t,
        None => {
            r.estimated = true;
            Tokens {
                input: estimate_tokens(sent.len() as u64),
                output: estimate_tokens(a.body.len() as u64),
                cached_input: 0,
            }
        }
    };
    r.tokens = Some(tokens);
    r.micro_usd = model.pricing.as_ref().map(|p| cost::micro_usd(&tokens, p));
    r
}
