//! `POST /api/analyze` (endpoint group `analyze`): one prompt to several models, side by side,
//! each leg getting what a direct `/v1/chat/completions` call gets (authorization per model,
//! quota, the model's targets in order, breakers, key rotation, retries, timeouts, usage and
//! cost, an access-log line), concurrently; then, optionally, a synthesis call that compares
//! the answers. Answered as one JSON body, or as SSE events as the legs complete.

mod leg;
mod request;
mod respond;

use super::admission::route::Route;
use super::ctx::RequestCtx;
use super::errors::GatewayError;
use super::{intake, respond as reply, Gateway};
use crate::auth::Principal;
use crate::config::OnStoreError;
use crate::quota::{Demand, Reservation, Verdict};
use crate::registry::ModelIdx;
use crate::runtime::Runtime;
use crate::usage::estimate_tokens;
use bytes::Bytes;
use leg::{Leg, LegResult};
use pingora::proxy::Session;
use pingora::Result;
use request::Analysis;
use serde_json::{json, Value};

impl Gateway {
    /// Serves `POST /api/analyze` for `caller` (admitted to the `analyze` group).
    pub(super) async fn analyze(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        caller: &Principal,
    ) -> Result<bool> {
        if session.req_header().method != http::Method::POST {
            let allow = "POST";
            return reply::error(session, ctx, GatewayError::MethodNotAllowed { allow }).await;
        }
        let rt = ctx.rt.clone();
        let body = match intake::body(session, &rt).await? {
            Ok(b) => b.bytes,
            Err(e) => return reply::error(session, ctx, e).await,
        };
        let analysis = match request::prepare(&rt, caller.access, &body) {
            Ok(a) => a,
            Err(e) => return reply::error(session, ctx, e).await,
        };
        let bodies: Vec<Bytes> = analysis
            .models
            .iter()
            .map(|i| leg_body(&rt, *i, &analysis, &analysis.messages))
            .collect();
        let reservations = match self
            .reserve_legs(ctx, caller, &analysis.models, &bodies)
            .await
        {
            Ok(r) => r,
            Err(e) => return reply::error(session, ctx, e).await,
        };
        let legs = self.start_legs(ctx, caller, &analysis, bodies, reservations);
        respond::answer(self, session, ctx, caller, &analysis, legs).await
    }

    /// Reserves every leg's quota, all or nothing: a fan-out that does not fit is refused
    /// before anything is spent.
    async fn reserve_legs(
        &self,
        ctx: &mut RequestCtx,
        caller: &Principal,
        models: &[ModelIdx],
        bodies: &[Bytes],
    ) -> std::result::Result<Vec<Option<Reservation>>, GatewayError> {
        let rt = ctx.rt.clone();
        let mut held: Vec<Option<Reservation>> = Vec::with_capacity(models.len());
        for (idx, body) in models.iter().zip(bodies) {
            let m = rt.registry.get(*idx);
            let demand = leg_demand(&rt, *idx, body);
            let refused = match rt.quotas.reserve(caller, Some(*idx), &m.id, &demand).await {
                Verdict::Free => {
                    held.push(None);
                    continue;
                }
                Verdict::Reserved(r, h) => {
                    ctx.ratelimit = (!h.is_empty()).then_some(h);
                    held.push(Some(r));
                    continue;
                }
                Verdict::Exceeded(e, h) => {
                    ctx.ratelimit = (!h.is_empty()).then_some(h);
                    self.metrics
                        .quota_rejections
                        .with_label_values(&[&*e.rule])
                        .inc();
                    GatewayError::QuotaExceeded(e)
                }
                Verdict::StoreDown(on_error) => {
                    self.metrics.quota_store_errors.inc();
                    if on_error == OnStoreError::Allow {
                        held.push(None);
                        continue;
                    }
                    GatewayError::QuotaUnavailable
                }
            };
            for r in held.into_iter().flatten() {
                r.settle(None);
            }
            return Err(refused);
        }
        Ok(held)
    }

    /// Starts every leg on its own task; dropping them cancels the legs still running (their
    /// reservations then stay counted, as an abandoned stream's do).
    fn start_legs(
        &self,
        ctx: &RequestCtx,
        caller: &Principal,
        a: &Analysis,
        bodies: Vec<Bytes>,
        reservations: Vec<Option<Reservation>>,
    ) -> Running {
        let mut set = tokio::task::JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        for (i, (model, body)) in a.models.iter().zip(bodies).enumerate() {
            let (rt, connector) = (ctx.rt.clone(), self.connector.clone());
            let (subject, request_id) = (caller.subject.clone(), ctx.request_id.clone());
            let (model, timeout) = (*model, a.timeout);
            let task = set.spawn(async move {
                let r = leg::run(Leg {
                    rt: &rt,
                    connector: &connector,
                    model,
                    body,
                    subject,
                    request_id: &request_id,
                    timeout,
                })
                .await;
                (i, r)
            });
            ids.insert(task.id(), i);
        }
        Running {
            set,
            ids,
            reservations,
            models: a.models.clone(),
        }
    }

    /// What a finished leg costs the caller and tells the operator: its quota settled with its
    /// charge, the caller's and the key's spending, metrics and an access-log line.
    fn account_leg(
        &self,
        ctx: &RequestCtx,
        caller: &Principal,
        index: Option<usize>,
        r: &LegResult,
        reservation: Option<Reservation>,
    ) {
        let spent = r.tokens.map(|t| (t.total(), r.micro_usd.unwrap_or(0)));
        ctx.rt.quotas.close(reservation, Some(caller), spent);
        if let (Some((p, i, _)), Some((tokens, micro))) = (&r.key, spent) {
            ctx.rt.provider(*p).keys.record_usage(*i, tokens, micro);
        }
        self.leg_metrics(r);
        respond::log_leg(self, ctx, caller, index, r);
    }

    fn leg_metrics(&self, r: &LegResult) {
        let m = &self.metrics;
        let provider = r.provider.as_deref().unwrap_or("none");
        let status = r.status.min(999).to_string();
        let class = crate::metrics::status_class(r.status);
        m.requests
            .with_label_values(&["analyze_leg", &r.model, provider, &status, class])
            .inc();
        let last = r.outcomes.len().saturating_sub(1);
        for (n, (p, outcome)) in r.outcomes.iter().enumerate() {
            m.attempts.with_label_values(&[&**p, *outcome]).inc();
            if n < last {
                m.retries.with_label_values(&[outcome]).inc();
            }
        }
        if let (Some(t), Some(p)) = (r.ttfb, r.provider.as_deref()) {
            m.ttfb.with_label_values(&[p]).observe(t.as_secs_f64());
        }
        if let Some(t) = &r.tokens {
            m.record_charge(&r.model, provider, t, r.micro_usd);
        }
    }
}

/// The legs under way, and what each reserved (settled as each ends).
pub struct Running {
    set: tokio::task::JoinSet<(usize, LegResult)>,
    ids: std::collections::HashMap<tokio::task::Id, usize>,
    reservations: Vec<Option<Reservation>>,
    models: Vec<ModelIdx>,
}

impl Running {
    /// The next leg to end, with its reservation; a leg whose task failed ends with an internal
    /// error (its reservation given back).
    async fn next(&mut self, rt: &Runtime) -> Option<(usize, LegResult, Option<Reservation>)> {
        loop {
            let (i, r) = match self.set.join_next_with_id().await? {
                Ok((_, (i, r))) => (i, r),
                Err(e) => match self.ids.get(&e.id()) {
                    Some(&i) => {
                        tracing::error!(leg = i, error = %e, "an analyze leg failed inside the gateway");
                        (
                            i,
                            respond::refused(rt, self.models[i], GatewayError::Internal),
                        )
                    }
                    None => continue,
                },
            };
            return Some((i, r, self.reservations.get_mut(i).and_then(Option::take)));
        }
    }
}

/// A leg's chat body for `model`: the messages, the request's limits, not streamed.
fn leg_body(rt: &Runtime, model: ModelIdx, a: &Analysis, messages: &[Value]) -> Bytes {
    let mut body = json!({
        "model": &*rt.registry.get(model).id,
        "messages": messages,
        "stream": false,
    });
    if let Some(m) = a.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if let Some(t) = a.temperature {
        body["temperature"] = json!(t);
    }
    Bytes::from(serde_json::to_vec(&body).expect("JSON value serializes"))
}

/// What a leg is expected to use, as a direct call with this body would reserve.
fn leg_demand<'a>(rt: &'a Runtime, model: ModelIdx, body: &Bytes) -> Demand<'a> {
    let route = Route {
        group: crate::endpoints::EndpointGroup::Chat,
        model_id: rt.registry.get(model).id.clone(),
        default_model_used: false,
        target: rt.registry.get(model).targets[0].clone(),
        stream: false,
        include_usage: false,
        max_tokens: crate::proxy::model_field::probe(body)
            .ok()
            .and_then(|p| p.max_tokens),
        model: Some(model),
    };
    let mut d = super::admission::quota::demand(rt, &route, body.len() as u64);
    d.input = d.input.max(estimate_tokens(body.len() as u64));
    d
}

/// The synthesis prompt: the question and the successful answers.
fn synthesis_prompt(rt: &Runtime, a: &Analysis, results: &[LegResult]) -> Option<String> {
    let answers: Vec<String> = results
        .iter()
        .filter(|r| r.ok())
        .enumerate()
        .map(|(n, r)| {
            format!(
                "### Answer {} ({})\n{}",
                n + 1,
                r.model,
                r.content.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if answers.is_empty() {
        return None;
    }
    Some(
        rt.analyze
            .synthesis_prompt
            .replace("{{prompt}}", &a.question)
            .replace("{{answers}}", &answers.join("\n\n")),
    )
}

/// The totals over the legs (and the synthesis).
fn totals<'a>(results: impl Iterator<Item = &'a LegResult>) -> (Value, f64) {
    let (mut input, mut output, mut cached, mut micro) = (0u64, 0u64, 0u64, 0u64);
    for r in results {
        if let Some(t) = r.tokens {
            input += t.input;
            output += t.output;
            cached += t.cached_input;
        }
        micro += r.micro_usd.unwrap_or(0);
    }
    (
        json!({
            "input_tokens": input,
            "output_tokens": output,
            "cached_input_tokens": cached,
            "total_tokens": input + output,
        }),
        crate::usage::cost::usd(micro),
    )
}

/// A synthesis leg's model and body, when there is something to compare.
fn synthesis_leg(rt: &Runtime, a: &Analysis, results: &[LegResult]) -> Option<(ModelIdx, Bytes)> {
    let model = a.synthesis?;
    let prompt = synthesis_prompt(rt, a, results)?;
    let messages = vec![json!({"role": "user", "content": prompt})];
    Some((model, leg_body(rt, model, a, &messages)))
}

/// An id for the analysis, from the request id.
fn analysis_id(request_id: &str) -> String {
    let tail: String = request_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(32)
        .collect();
    format!("anl-{tail}")
}
