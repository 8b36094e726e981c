//! What the upstream hooks decide: the peer of the next attempt, what a provider's status means
//! for the key ring, the breaker and the retry budget, which errors are retried, and how the last
//! attempt ends.

use super::admission::route::body_for;
use super::ctx::RequestCtx;
use super::errors::GatewayError;
use super::headers;
use super::policy::{self, Ending, Verdict};
use super::timers::Expired;
use crate::config::ProviderKind;
use crate::upstream::keys::ProviderKey;
use crate::upstream::peer::http_peer;
use crate::usage::Dialect;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, OrErr, Result};
use std::sync::Arc;
use std::time::Instant;

/// The peer for the next attempt (the first was chosen while routing).
pub fn next_peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let Some(plan) = ctx.plan.as_mut() else {
        return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
    };
    let (attempt, target) = match plan.current_or_next(&ctx.rt, tokio::time::Instant::now()) {
        Ok(chosen) => chosen,
        Err(e) => {
            ctx.pending_error = Some(e);
            return Error::e_explain(ErrorType::ConnectNoRoute, "no target left to try");
        }
    };
    if ctx.body_target != Some(attempt.target) {
        let (Some(route), Some(requested)) = (&ctx.route, &ctx.requested_model) else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let (body, usage_requested) =
            body_for(&ctx.rt, route, requested, &ctx.original_body, target);
        ctx.body = body;
        ctx.usage_requested = usage_requested;
        ctx.body_target = Some(attempt.target);
    }
    ctx.last_provider = Some(target.provider_name.clone());
    // Timings describe the attempt that answers, not one that failed before it.
    ctx.upstream_sent = None;
    ctx.upstream_header = None;
    ctx.upstream_done = None;
    ctx.attempt_started = Some(Instant::now());
    ctx.last_backend = Some(attempt.backend.addr);
    ctx.last_key_id = attempt.key.as_ref().map(|(_, k)| k.id.clone());
    ctx.last_key = attempt.key.as_ref().map(|(i, _)| (attempt.provider, *i));
    let provider = ctx.rt.provider(attempt.provider);
    Ok(Box::new(http_peer(
        &attempt.backend,
        provider.ca.as_ref(),
        &target.timeouts,
    )))
}

/// Rewrites the client's request for the current attempt's provider and backend.
pub fn prepare_request(ctx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
    let Some(plan) = &ctx.plan else {
        return Error::e_explain(ErrorType::InternalError, "upstream request without a route");
    };
    let Some(a) = plan.current.as_ref() else {
        return Error::e_explain(
            ErrorType::InternalError,
            "upstream request without an attempt",
        );
    };
    headers::scrub_request(req);
    let query = req.uri.query().map(str::to_string);
    address_request(
        &ctx.rt,
        a,
        req,
        &ctx.path,
        query.as_deref(),
        ctx.body.len(),
        &ctx.request_id,
    )?;
    ctx.upstream_sent = Some(Instant::now());
    Ok(())
}

/// Addresses a request to attempt `a`: the provider's path for `client_path` (and `query`),
/// its Host, its credentials for the attempt's key, the body's length, no compression, the
/// request id. The proxy hooks and the gateway's own calls (`call`) address requests alike.
pub fn address_request(
    rt: &crate::runtime::Runtime,
    a: &crate::proxy::attempts::Attempt,
    req: &mut RequestHeader,
    client_path: &str,
    query: Option<&str>,
    body_len: usize,
    request_id: &str,
) -> Result<()> {
    let ep = &a.backend.endpoint;
    let mut path = ep.upstream_path(client_path);
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    req.set_uri(
        http::Uri::try_from(path).or_err(ErrorType::InternalError, "building upstream URI")?,
    );
    req.insert_header("host", &ep.host_header)?;
    rt.provider(a.provider)
        .auth
        .apply(req, a.key.as_ref().map(|(_, k)| &**k))?;
    req.insert_header("content-length", body_len.to_string())?;
    req.insert_header("accept-encoding", "identity")?;
    req.insert_header("x-request-id", request_id)?;
    Ok(())
}

/// A provider's response header: keys that the provider refused rotate, a 5xx moves on while
/// another attempt is possible; anything else goes to the client.
pub fn on_response(ctx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
    if resp.status.is_informational() {
        return Ok(());
    }
    ctx.upstream_header = Some(Instant::now());
    let status = resp.status.as_u16();
    let now = tokio::time::Instant::now();
    let rt = ctx.rt.clone();
    let Some(plan) = ctx.plan.as_mut() else {
        return Error::e_explain(ErrorType::InternalError, "response without a route");
    };
    let Some(a) = plan.current.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "response without an attempt");
    };
    let provider = rt.provider(a.provider);
    let key = a.key.clone();
    let (backend, started) = (a.backend.clone(), a.started);
    if let Some((i, _)) = &key {
        provider.keys.observe_response(*i, status, &resp.headers);
    }
    let verdict = policy::after(Ending::Status(status), key.is_some(), || {
        plan.could_continue(&rt, now)
    });
    if let Verdict::OtherKey { refused, .. } = verdict {
        let why = if refused {
            "provider refused the gateway's key; trying another"
        } else {
            "provider rate-limited the gateway's key; trying another"
        };
        tracing::warn!(
            request_id = %ctx.request_id,
            provider = %provider.name,
            key_id = key.as_ref().map_or("-", |(_, k)| &*k.id),
            status,
            "{why}"
        );
    }
    policy::apply_status(&rt, plan, verdict, status, &resp.headers, now);
    match verdict {
        Verdict::OtherKey { .. } | Verdict::OtherBackend => retry(ctx, status),
        Verdict::Deliver | Verdict::Again | Verdict::Stop => {
            if status < 500 {
                backend.record_latency(started.elapsed());
            }
            // Headers of every response are scrubbed of keys; bodies of error responses only
            // (a model's answer is the caller's data), so the ring's secrets are copied for
            // those alone.
            let keys = &provider.keys;
            let each = |f: &mut dyn FnMut(&ProviderKey)| keys.for_each_secret(f);
            super::response_body::scrub_headers(resp, each, || keys.secrets());
            let secrets = if status >= 400 {
                provider.keys.secrets()
            } else {
                Vec::new()
            };
            let dialect = match provider.kind {
                ProviderKind::Anthropic => Dialect::Anthropic,
                _ => Dialect::OpenAi,
            };
            deliver(ctx, resp, secrets, dialect);
            Ok(())
        }
    }
}

/// The provider's response goes to the client: scrubbed, watched, tagged with the gateway's
/// headers. `secrets` are removed from an error body.
fn deliver(
    ctx: &mut RequestCtx,
    resp: &mut ResponseHeader,
    secrets: Vec<Arc<ProviderKey>>,
    dialect: Dialect,
) {
    headers::scrub_response(resp);
    if resp.status.is_server_error() {
        // Final: the gateway retried already; SDK retries would multiply its attempts.
        let _ = resp.insert_header("x-should-retry", "false");
    }
    ctx.response
        .start(resp, secrets, dialect, ctx.usage_requested);
    ctx.decorate(resp);
}

/// Asks Pingora to try again (it then calls `upstream_peer`, which picks the next attempt).
fn retry(ctx: &mut RequestCtx, status: u16) -> Result<()> {
    end_attempt_timer(ctx);
    ctx.retry_requested = true;
    let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying elsewhere");
    e.set_retry(true);
    Err(e)
}

/// Connecting failed (refused, TLS, timeout): the backend is at fault.
pub fn on_connect_failure(ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
    let ending = if shutting_down(ctx) {
        Ending::Shutdown
    } else {
        Ending::ConnectFailed
    };
    backend_failed(ctx, e, ending)
}

/// The shutdown cut the attempt: not the backend's failure, and nothing to retry.
fn shutting_down(ctx: &RequestCtx) -> bool {
    ctx.timer
        .as_ref()
        .is_some_and(|t| t.expired() == Some(Expired::Shutdown))
}

/// The attempt failed because of its backend: recorded against it, and retried while the
/// budget allows. Otherwise the client's error is decided now, while the attempt's timer still
/// tells whether a limit ran out.
fn backend_failed(ctx: &mut RequestCtx, mut e: Box<Error>, ending: Ending) -> Box<Error> {
    if ending == Ending::Shutdown {
        end_attempt_timer(ctx);
        if let Some(plan) = ctx.plan.as_mut() {
            // Its breaker ticket is dropped unjudged.
            plan.current = None;
        }
        ctx.pending_error = Some(GatewayError::ShuttingDown);
        e.set_retry(false);
        return e;
    }
    let now = tokio::time::Instant::now();
    let failure = classify(&e, ctx).unwrap_or(GatewayError::Internal);
    end_attempt_timer(ctx);
    let Some(plan) = ctx.plan.as_mut() else {
        e.set_retry(false);
        return e;
    };
    if let Some(a) = &plan.current {
        a.backend.record_error(e.etype().as_str());
    }
    plan.backend_failed(failure, now);
    let again = plan.budget_left(now);
    if !again {
        ctx.pending_error = plan.last_error.clone();
    }
    e.set_retry(again);
    e
}

/// An error once connected. Before the response reached the client it is retried (a 5xx we
/// asked for, a reused connection the provider had closed, a timeout before the first byte);
/// after, the stream is broken and the client gets an SSE error event (`fail_to_proxy`).
pub fn on_proxy_error(
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    written: bool,
    reused: bool,
) -> Box<Error> {
    if std::mem::take(&mut ctx.retry_requested) {
        e.set_retry(true);
        return e;
    }
    // A timer that fired shut the socket down itself: that is a timeout, whatever the error
    // Pingora saw, and it counts against the backend.
    let timed_out = ctx.timer.as_ref().is_some_and(|t| t.expired().is_some());
    let shutdown = shutting_down(ctx);
    let Some(plan) = ctx.plan.as_mut() else {
        e.set_retry(false);
        return e;
    };
    let stale = reused
        && !timed_out
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
        );
    let ending = if written || e.esource() == &ErrorSource::Downstream {
        Ending::AfterResponse
    } else if shutdown {
        Ending::Shutdown
    } else {
        Ending::Failed { stale }
    };
    let keyed = plan.current.as_ref().is_some_and(|a| a.key.is_some());
    match policy::after(ending, keyed, || false) {
        Verdict::Stop if ending == Ending::AfterResponse => {
            e.set_retry(false);
            e
        }
        Verdict::Again => {
            // The provider closed an idle pooled connection: not the backend's fault, try
            // again. The attempt's breaker ticket is dropped unjudged.
            plan.current = None;
            end_attempt_timer(ctx);
            e.set_retry(true);
            e
        }
        _ => backend_failed(ctx, e, ending),
    }
}

/// An attempt is over: its watchdog must not outlive it (the connection may go back to the pool
/// and serve another request). Dropping the timer disarms it.
fn end_attempt_timer(ctx: &mut RequestCtx) {
    ctx.timer = None;
}

/// The request is over: the last attempt's breaker gets its outcome.
pub fn finish(ctx: &mut RequestCtx, status: u16, client_gone: bool, broke: bool) {
    end_attempt_timer(ctx);
    let Some(a) = ctx.plan.as_mut().and_then(|p| p.current.take()) else {
        return;
    };
    if ctx.error_code == Some(GatewayError::ShuttingDown.code()) {
        // Cut by the shutdown, not by the backend: no verdict (the ticket is dropped).
        return;
    }
    let now = tokio::time::Instant::now();
    let failed = status >= 500 || status == 0 || broke || ctx.response.error_event;
    if let Some(t) = a.ticket {
        if client_gone && !broke {
            drop(t);
        } else if failed {
            t.failure(now);
        } else {
            t.success();
        }
    }
    if failed && !client_gone {
        a.backend.record_error(if ctx.response.error_event {
            "error event in stream".to_string()
        } else if broke {
            "response broke after it began".to_string()
        } else {
            format!("status {status}")
        });
    }
}

/// Maps a Pingora error to the gateway error the client sees; `None` when the client is gone.
pub fn classify(e: &Error, ctx: &RequestCtx) -> Option<GatewayError> {
    let provider = || ctx.provider_name().unwrap_or_default().to_string();
    match (e.esource(), e.etype()) {
        (ErrorSource::Downstream, _) => None,
        // A write to or read from the client that failed outside the proxy phase (e.g. while
        // the mock streams): the client went away.
        (
            ErrorSource::Unset | ErrorSource::Internal,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
        ) => None,
        _ if shutting_down(ctx) => Some(GatewayError::ShuttingDown),
        _ if ctx.timer.as_ref().is_some_and(|t| t.expired().is_some()) => {
            Some(GatewayError::UpstreamTimeout {
                provider: provider(),
            })
        }
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout,
        ) => Some(GatewayError::UpstreamTimeout {
            provider: provider(),
        }),
        (
            _,
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::SocketError
            | ErrorType::BindError,
        ) => Some(GatewayError::BadUpstream {
            provider: provider(),
            detail: "could not connect",
        }),
        (_, ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert) => {
            Some(GatewayError::BadUpstream {
                provider: provider(),
                detail: "TLS handshake failed",
            })
        }
        (ErrorSource::Upstream, _) => Some(GatewayError::BadUpstream {
            provider: provider(),
            detail: "the connection failed or the response was malformed",
        }),
        _ => Some(GatewayError::Internal),
    }
}

#[cfg(test)]
mod tests;
