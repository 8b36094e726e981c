//! One request to one model, sent by the gateway itself rather than relayed for a client (the
//! analyze fan-out's legs). It runs the same plan as a proxied request (the model's targets in
//! order, backends, key rotation, the retry budget and deadline), decides through the same rules
//! (`policy`), feeds the same breakers and key states, honours the target's timeouts, and
//! connects through Pingora's connector and peers (TLS, SNI, CA files, pooled connections), as
//! the health checks do. The answer is read whole (non-streamed) and metered for usage.

use super::attempts::Plan;
use super::errors::GatewayError;
use super::policy::{self, Ending, Verdict};
use super::upstream_flow::address_request;
use crate::config::ProviderKind;
use crate::registry::ProviderIdx;
use crate::runtime::Runtime;
use crate::upstream::peer::http_peer;
use crate::usage::{Dialect, Tokens, UsageMeter};
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a pooled connection to a provider may stay idle.
const IDLE: Duration = Duration::from_secs(60);

/// A request to send.
pub struct Call<'a> {
    /// The plan over the model's targets (made as routing makes it).
    pub plan: Plan,
    /// The client path it stands for (`/v1/chat/completions`).
    pub path: &'a str,
    /// The body for each target: the model renamed for it (see `route::body_for`).
    pub body_for: &'a (dyn Fn(&crate::registry::Target) -> Bytes + Sync),
    pub request_id: &'a str,
    /// Largest answer body read.
    pub max_body: usize,
    /// When the whole call must be over (each attempt's `total` is cut to it): what was tried
    /// by then is still reported.
    pub deadline: Option<tokio::time::Instant>,
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    /// The provider's status, or the gateway error's.
    pub status: u16,
    /// The provider's body (when it answered).
    pub body: Bytes,
    /// Usage the provider reported.
    pub usage: Option<Tokens>,
    /// Upstream requests made.
    pub attempts: u32,
    /// Who answered (or last tried).
    pub provider: Option<Arc<str>>,
    pub key: Option<(ProviderIdx, usize, Arc<str>)>,
    pub backend: Option<SocketAddr>,
    /// Request sent to response header, of the attempt that answered.
    pub ttfb: Option<Duration>,
    pub latency: Duration,
    /// Set when no provider answer is relayed: what a client would have got.
    pub error: Option<GatewayError>,
    /// Each attempt's provider and outcome, as `ultra_upstream_attempts_total` labels them.
    pub outcomes: Vec<(Arc<str>, &'static str)>,
}

/// An attempt's outcome label (`ultra_upstream_attempts_total`).
pub fn outcome_of_status(status: u16) -> &'static str {
    match status {
        100..=399 => "2xx",
        401 => "401",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// How one attempt went.
enum Tried {
    /// A provider answer to keep (the header's status and the whole body).
    Answered {
        status: u16,
        body: Bytes,
        usage: Option<Tokens>,
        ttfb: Duration,
    },
    /// Move on as the verdict says (with the provider's header for a status).
    Next(Verdict, Ending, Option<http::HeaderMap>),
    /// The attempt failed before its answer began: blamed on the backend, and the plan goes on.
    Failed(GatewayError),
    /// The answer began and then broke (too large, cut, stalled): as for a proxied response
    /// once it began, nothing is tried again (the provider has done, and billed, the work).
    Broken(GatewayError),
}

/// Sends `call`, trying targets, backends and keys as a proxied request would.
pub async fn send(rt: &Runtime, connector: &Connector, mut call: Call<'_>) -> Answer {
    let started = Instant::now();
    let mut answer = Answer {
        status: 0,
        body: Bytes::new(),
        usage: None,
        attempts: 0,
        provider: None,
        key: None,
        backend: None,
        ttfb: None,
        latency: Duration::ZERO,
        error: None,
        outcomes: Vec::new(),
    };
    loop {
        let now = tokio::time::Instant::now();
        if call.deadline.is_some_and(|d| now >= d) {
            let provider = call
                .plan
                .target()
                .or(call.plan.targets.first())
                .map_or_else(String::new, |t| t.provider_name.to_string());
            call.plan.current = None;
            return answer.failed(
                GatewayError::UpstreamTimeout { provider },
                &call.plan,
                started,
            );
        }
        let (attempt, target) = match call.plan.current_or_next(rt, now) {
            Ok(chosen) => chosen,
            Err(e) => return answer.failed(e, &call.plan, started),
        };
        let target = target.clone();
        let provider = rt.provider(attempt.provider);
        answer.provider = Some(target.provider_name.clone());
        answer.backend = Some(attempt.backend.addr);
        answer.key = attempt
            .key
            .as_ref()
            .map(|(i, k)| (attempt.provider, *i, k.id.clone()));
        let body = (call.body_for)(&target);
        let tried = attempt_once(rt, connector, &call, &target, body).await;
        let outcome = match &tried {
            Tried::Answered { status, .. } => outcome_of_status(*status),
            Tried::Next(_, Ending::Status(s), _) => outcome_of_status(*s),
            Tried::Next(_, Ending::ConnectFailed, _) => "connect_error",
            Tried::Next(..) | Tried::Failed(_) | Tried::Broken(_) => "error",
        };
        answer
            .outcomes
            .push((target.provider_name.clone(), outcome));
        let plan = &mut call.plan;
        let now = tokio::time::Instant::now();
        match tried {
            Tried::Answered {
                status,
                body,
                usage,
                ttfb,
            } => {
                if let Some(a) = plan.current.take() {
                    if status < 500 {
                        a.backend.record_latency(a.started.elapsed());
                    }
                    if status >= 500 {
                        a.backend.record_error(format!("status {status}"));
                    }
                    if let Some(t) = a.ticket {
                        if status >= 500 {
                            t.failure(now);
                        } else {
                            t.success();
                        }
                    }
                }
                answer.status = status;
                answer.body = body;
                answer.usage = usage;
                answer.ttfb = Some(ttfb);
                answer.attempts = plan.made;
                answer.latency = started.elapsed();
                return answer;
            }
            Tried::Next(verdict, Ending::Status(status), headers) => {
                let headers = headers.unwrap_or_default();
                policy::apply_status(rt, plan, verdict, status, &headers, now);
            }
            // A pooled connection the provider had closed: again, its ticket unjudged.
            Tried::Next(Verdict::Again, _, _) => plan.current = None,
            Tried::Next(_, ending, _) => {
                let error = match ending {
                    Ending::Failed { .. } | Ending::ConnectFailed => GatewayError::BadUpstream {
                        provider: provider.name.to_string(),
                        detail: "the connection failed or the response was malformed",
                    },
                    _ => GatewayError::Internal,
                };
                if let Some(a) = &plan.current {
                    a.backend.record_error(ending_text(ending));
                }
                plan.backend_failed(error, now);
                if !plan.budget_left(now) {
                    let e = plan.last_error.clone().unwrap_or(GatewayError::Internal);
                    return answer.failed(e, plan, started);
                }
            }
            Tried::Broken(e) => {
                if let Some(a) = plan.current.take() {
                    a.backend.record_error(e.code().to_string());
                    if let Some(t) = a.ticket {
                        t.failure(now);
                    }
                }
                return answer.failed(e, plan, started);
            }
            Tried::Failed(e) => {
                if let Some(a) = plan.current.as_ref() {
                    a.backend.record_error(e.code().to_string());
                }
                plan.backend_failed(e.clone(), now);
                if !plan.budget_left(now) {
                    return answer.failed(e, plan, started);
                }
            }
        }
    }
}

impl Answer {
    fn failed(mut self, e: GatewayError, plan: &Plan, started: Instant) -> Answer {
        self.status = e.status();
        self.error = Some(e);
        self.attempts = plan.made;
        self.latency = started.elapsed();
        self
    }
}

/// One attempt at the plan's current choice: connect, send, read the header, apply the rules;
/// read the whole body of an answer to keep.
async fn attempt_once(
    rt: &Runtime,
    connector: &Connector,
    call: &Call<'_>,
    target: &crate::registry::Target,
    body: Bytes,
) -> Tried {
    let Some(a) = call.plan.current.as_ref() else {
        return Tried::Failed(GatewayError::Internal);
    };
    let provider = rt.provider(a.provider);
    let t = target.timeouts;
    let peer = http_peer(&a.backend, provider.ca.as_ref(), &t);
    let timeout_error = || GatewayError::UpstreamTimeout {
        provider: provider.name.to_string(),
    };
    let mut total = tokio::time::Instant::now() + t.total;
    if let Some(d) = call.deadline {
        total = total.min(d);
    }
    let (mut session, reused) = match connector.get_http_session(&peer).await {
        Ok(s) => s,
        Err(_) => return Tried::Next(Verdict::OtherBackend, Ending::ConnectFailed, None),
    };
    let mut req = match RequestHeader::build("POST", call.path.as_bytes(), None) {
        Ok(r) => r,
        Err(_) => return Tried::Failed(GatewayError::Internal),
    };
    let _ = req.insert_header("content-type", "application/json");
    if address_request(
        rt,
        a,
        &mut req,
        call.path,
        None,
        body.len(),
        call.request_id,
    )
    .is_err()
    {
        return Tried::Failed(GatewayError::Internal);
    }
    let sent = Instant::now();
    let exchange = async {
        session.write_request_header(Box::new(req)).await?;
        session.write_request_body(body, true).await?;
        session.finish_request_body().await?;
        tokio::time::timeout(t.first_byte, session.read_response_header())
            .await
            .map_err(|_| pingora::Error::new(pingora::ErrorType::ReadTimedout))??;
        Ok::<_, Box<pingora::Error>>(())
    };
    match tokio::time::timeout_at(total, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.etype() == &pingora::ErrorType::ReadTimedout => {
            return Tried::Failed(timeout_error())
        }
        Ok(Err(e)) => {
            // A pooled connection the provider had closed: the same errors as the hooks count.
            let stale = reused
                && matches!(
                    e.etype(),
                    pingora::ErrorType::ConnectionClosed
                        | pingora::ErrorType::WriteError
                        | pingora::ErrorType::ReadError
                );
            let ending = Ending::Failed { stale };
            return Tried::Next(
                policy::after(ending, a.key.is_some(), || false),
                ending,
                None,
            );
        }
        Err(_) => return Tried::Failed(timeout_error()),
    }
    let ttfb = sent.elapsed();
    let Some(resp) = session.response_header() else {
        return Tried::Failed(GatewayError::Internal);
    };
    let status = resp.status.as_u16();
    let headers = resp.headers.clone();
    if let Some((i, _)) = &a.key {
        provider.keys.observe_response(*i, status, &headers);
    }
    let now = tokio::time::Instant::now();
    let verdict = policy::after(Ending::Status(status), a.key.is_some(), || {
        call.plan.could_continue(rt, now)
    });
    if verdict != Verdict::Deliver {
        // Applied to the plan by the caller, which holds it mutably.
        return Tried::Next(verdict, Ending::Status(status), Some(headers));
    }
    let dialect = match provider.kind {
        ProviderKind::Anthropic => Dialect::Anthropic,
        _ => Dialect::OpenAi,
    };
    let event_stream = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut meter = UsageMeter::new(dialect, event_stream, false);
    let mut out = BytesMut::new();
    loop {
        let read = tokio::time::timeout(t.between_chunks, session.read_response_body());
        match tokio::time::timeout_at(total, read).await {
            Ok(Ok(Ok(Some(mut chunk)))) => {
                meter.chunk(&mut chunk, false);
                if out.len() + chunk.len() > call.max_body {
                    return Tried::Broken(GatewayError::BadUpstream {
                        provider: provider.name.to_string(),
                        detail: "its answer was too large",
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Ok(Ok(None))) => break,
            Ok(Ok(Err(_))) => {
                return Tried::Broken(GatewayError::BadUpstream {
                    provider: provider.name.to_string(),
                    detail: "the connection failed or the response was malformed",
                })
            }
            Ok(Err(_)) | Err(_) => return Tried::Broken(timeout_error()),
        }
    }
    let mut end = Bytes::new();
    meter.chunk(&mut end, true);
    connector
        .release_http_session(session, &peer, Some(IDLE))
        .await;
    Tried::Answered {
        status,
        body: out.freeze(),
        usage: meter.reported(),
        ttfb,
    }
}

/// A backend's last error, as `/api/providers/health` shows it.
fn ending_text(e: Ending) -> String {
    match e {
        Ending::ConnectFailed => "could not connect".into(),
        Ending::Failed { .. } => "the exchange failed".into(),
        Ending::Status(s) => format!("status {s}"),
        Ending::Shutdown | Ending::AfterResponse => "cut".into(),
    }
}

#[cfg(test)]
mod tests;
