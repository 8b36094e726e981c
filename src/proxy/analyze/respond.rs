//! An analysis's answer: one JSON body once every leg (and the synthesis) is done, or SSE
//! events as they finish; and each leg's access-log line.

use super::leg::{self, Leg, LegResult};
use super::request::Analysis;
use super::{analysis_id, synthesis_leg, totals, Gateway};
use crate::auth::Principal;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::errors::{json_header, GatewayError};
use crate::quota::{Demand, Reservation, Verdict};
use crate::time::now_rfc3339;
use crate::usage::cost;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Serialize;
use serde_json::{json, Value};

type Legs = super::Running;

/// Waits for the legs (and the synthesis) and answers: JSON, or SSE when the request asked.
pub async fn answer(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    caller: &Principal,
    a: &Analysis,
    mut legs: Legs,
) -> Result<bool> {
    if a.stream {
        return stream(gw, session, ctx, caller, a, legs).await;
    }
    let mut results: Vec<Option<LegResult>> = vec![None; a.models.len()];
    while let Some((i, r, reservation)) = next_leg(session, ctx, &mut legs).await? {
        gw.account_leg(ctx, caller, Some(i), &r, reservation);
        results[i] = Some(r);
    }
    let results: Vec<LegResult> = results.into_iter().flatten().collect();
    let synthesis = synthesize(gw, ctx, caller, a, &results).await;
    let (outcome, usage, cost_usd) = summary(&results, synthesis.as_ref());
    let mut body = json!({
        "id": analysis_id(&ctx.request_id),
        "object": "analysis",
        "created": crate::time::unix_now(),
        "status": outcome,
        "results": results.iter().map(LegResult::view).collect::<Vec<_>>(),
        "usage": usage,
        "cost_usd": cost_usd,
    });
    if let Some(s) = &synthesis {
        body["synthesis"] = s.view();
    }
    // Every leg failed: the same body, with the status of a gateway error.
    let status = if outcome == "failed" {
        ctx.error_code = Some("analysis_failed");
        502
    } else {
        200
    };
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("JSON value serializes"));
    let mut header = json_header(status, &ctx.request_id, bytes.len());
    header.insert_header("cache-control", "no-store")?;
    ctx.decorate(&mut header);
    write(session, ctx, status, header, Some(bytes)).await
}

/// SSE: a `result` event per leg as it completes, then `synthesis`, then `done`, then
/// `[DONE]`. A client that leaves ends the wait, and dropping the set cancels the legs.
async fn stream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    caller: &Principal,
    a: &Analysis,
    mut legs: Legs,
) -> Result<bool> {
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header("content-type", "text/event-stream")?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("x-request-id", &ctx.request_id)?;
    ctx.decorate(&mut header);
    ctx.local_status = Some(200);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let mut results: Vec<Option<LegResult>> = vec![None; a.models.len()];
    while let Some((i, r, reservation)) = next_leg(session, ctx, &mut legs).await? {
        gw.account_leg(ctx, caller, Some(i), &r, reservation);
        let mut event = r.view();
        event["type"] = json!("result");
        event["index"] = json!(i);
        results[i] = Some(r);
        if let Err(e) = send_event(session, ctx, &event).await {
            ctx.error_code = Some(super::super::CLIENT_CLOSED);
            return Err(e);
        }
    }
    let results: Vec<LegResult> = results.into_iter().flatten().collect();
    let synthesis = synthesize(gw, ctx, caller, a, &results).await;
    if let Some(s) = &synthesis {
        let mut event = s.view();
        event["type"] = json!("synthesis");
        send_event(session, ctx, &event).await?;
    }
    let (status, usage, cost_usd) = summary(&results, synthesis.as_ref());
    let done = json!({
        "type": "done",
        "id": analysis_id(&ctx.request_id),
        "status": status,
        "usage": usage,
        "cost_usd": cost_usd,
    });
    send_event(session, ctx, &done).await?;
    let end = Bytes::from_static(b"data: [DONE]\n\n");
    ctx.bytes_out += end.len();
    session.write_response_body(Some(end), true).await?;
    Ok(true)
}

/// The next leg to finish (`None` once all have), watching the client meanwhile: a client that
/// goes away ends the wait with an error, and the caller's dropping the set cancels the legs
/// still running (their upstream connections close).
async fn next_leg(
    session: &mut Session,
    ctx: &mut RequestCtx,
    legs: &mut Legs,
) -> Result<Option<(usize, LegResult, Option<Reservation>)>> {
    loop {
        let rt = ctx.rt.clone();
        tokio::select! {
            done = legs.next(&rt) => return Ok(done),
            read = session.read_body_or_idle(true) => {
                if let Ok(Some(_)) = read {
                    continue;
                }
                ctx.error_code = Some(super::super::CLIENT_CLOSED);
                return pingora::Error::e_explain(
                    pingora::ErrorType::ConnectionClosed,
                    "the client left the analysis",
                );
            }
        }
    }
}

/// The analysis's status (`complete`: every leg and the synthesis succeeded; `failed`: no leg
/// did; `partial` otherwise), its usage and its cost.
fn summary(results: &[LegResult], synthesis: Option<&LegResult>) -> (&'static str, Value, f64) {
    let ok = results.iter().filter(|r| r.ok()).count();
    let status = if ok == 0 {
        "failed"
    } else if ok == results.len() && synthesis.is_none_or(LegResult::ok) {
        "complete"
    } else {
        "partial"
    };
    let (usage, cost_usd) = totals(results.iter().chain(synthesis));
    (status, usage, cost_usd)
}

async fn send_event(session: &mut Session, ctx: &mut RequestCtx, event: &Value) -> Result<()> {
    let mut line = b"data: ".to_vec();
    line.extend_from_slice(&serde_json::to_vec(event).expect("JSON value serializes"));
    line.extend_from_slice(b"\n\n");
    ctx.bytes_out += line.len();
    session
        .write_response_body(Some(Bytes::from(line)), false)
        .await
}

async fn write(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    header: ResponseHeader,
    body: Option<Bytes>,
) -> Result<bool> {
    ctx.local_status = Some(status);
    session
        .write_response_header(Box::new(header), body.is_none())
        .await?;
    if let Some(b) = body {
        ctx.bytes_out += b.len();
        session.write_response_body(Some(b), true).await?;
    }
    Ok(true)
}

/// The synthesis call, when a model is named and some answer came back; its quota is reserved
/// as any leg's (a refusal is the synthesis's error, not the analysis's).
async fn synthesize(
    gw: &Gateway,
    ctx: &RequestCtx,
    caller: &Principal,
    a: &Analysis,
    results: &[LegResult],
) -> Option<LegResult> {
    let rt = &ctx.rt;
    let (model, body) = synthesis_leg(rt, a, results)?;
    // The answers together may be more than a client could send: refused as its body would be.
    if body.len() as u64 > rt.max_body_bytes {
        let limit = rt.max_body_bytes;
        return Some(refused(rt, model, GatewayError::RequestTooLarge { limit }));
    }
    let demand: Demand<'_> = super::leg_demand(rt, model, &body);
    let m = rt.registry.get(model);
    let reservation = match rt.quotas.reserve(caller, Some(model), &m.id, &demand).await {
        Verdict::Reserved(r, _) => Some(r),
        Verdict::Free => None,
        Verdict::Exceeded(e, _) => {
            gw.metrics
                .quota_rejections
                .with_label_values(&[&*e.rule])
                .inc();
            return Some(refused(rt, model, GatewayError::QuotaExceeded(e)));
        }
        Verdict::StoreDown(on_error) => {
            gw.metrics.quota_store_errors.inc();
            if on_error == crate::config::OnStoreError::Deny {
                return Some(refused(rt, model, GatewayError::QuotaUnavailable));
            }
            None
        }
    };
    let r = leg::run(Leg {
        rt,
        connector: &gw.connector,
        model,
        body,
        subject: caller.subject.clone(),
        request_id: &ctx.request_id,
        timeout: a.timeout,
    })
    .await;
    gw.account_leg(ctx, caller, None, &r, reservation);
    Some(r)
}

/// A leg refused before it ran.
pub(super) fn refused(
    rt: &crate::runtime::Runtime,
    model: crate::registry::ModelIdx,
    e: crate::proxy::errors::GatewayError,
) -> LegResult {
    LegResult {
        model: rt.registry.get(model).id.clone(),
        provider: None,
        key: None,
        backend: None,
        status: e.status(),
        content: None,
        finish_reason: None,
        tokens: None,
        estimated: false,
        micro_usd: None,
        latency: std::time::Duration::ZERO,
        attempts: 0,
        outcomes: Vec::new(),
        ttfb: None,
        error: serde_json::from_slice::<Value>(&e.body())
            .ok()
            .map(|v| v["error"].clone()),
        error_code: Some(e.code().to_string()),
    }
}

/// One leg's access-log line: the parent's request id, the leg's index (`null` for the
/// synthesis), and what a direct call's line says.
#[derive(Serialize)]
struct LegEntry<'a> {
    ts: String,
    request_id: &'a str,
    leg: Option<usize>,
    synthesis: bool,
    path: &'static str,
    model: &'a str,
    provider: Option<&'a str>,
    backend: Option<std::net::SocketAddr>,
    subject: &'a str,
    caller_key_id: Option<&'a str>,
    provider_key_id: Option<&'a str>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    attempts: u32,
    latency_ms: f64,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cached_input_tokens: Option<u64>,
    cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'static str>,
}

pub fn log_leg(
    gw: &Gateway,
    ctx: &RequestCtx,
    caller: &Principal,
    index: Option<usize>,
    r: &LegResult,
) {
    let entry = LegEntry {
        ts: now_rfc3339(),
        request_id: &ctx.request_id,
        leg: index,
        synthesis: index.is_none(),
        path: leg::LEG_PATH,
        model: &r.model,
        provider: r.provider.as_deref(),
        backend: r.backend,
        subject: &caller.subject,
        caller_key_id: caller.key_id.as_deref(),
        provider_key_id: r.key.as_ref().map(|(_, _, id)| &**id),
        status: r.status,
        error: r.error_code.as_deref(),
        attempts: r.attempts,
        latency_ms: r.latency.as_secs_f64() * 1000.0,
        input_tokens: r.tokens.map(|t| t.input),
        output_tokens: r.tokens.map(|t| t.output),
        cached_input_tokens: r.tokens.map(|t| t.cached_input),
        cost_usd: r.micro_usd.map(cost::usd),
        usage: r
            .tokens
            .map(|_| if r.estimated { "estimated" } else { "reported" }),
    };
    gw.access_log.write_json(&entry);
}
