//! Routing a proxied request: allow-list and method, bounded body read, `model`, registry lookup
//! (or `default_model`), the first usable target, and the model rewrite.

use super::attempts::Plan;
use super::body::{self, BodyError};
use super::errors::GatewayError;
use super::model_field::{self, ProbeError};
use super::RequestCtx;
use crate::auth::rbac::Access;
use crate::auth::Refusal;
use crate::config::ProviderKind;
use crate::endpoints::EndpointGroup;
use crate::registry::{ProviderId, Target};
use crate::runtime::Runtime;
use crate::upstream::timeouts::Timeouts;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::ErrorType;
use std::sync::Arc;

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub group: EndpointGroup,
    pub model_id: Arc<str>,
    pub default_model_used: bool,
    pub target: Target,
    pub stream: bool,
}

/// The routing decision.
pub enum Routed {
    /// To `upstream_peer` with `ctx.route` and `ctx.body` set.
    Proxy,
    /// To the built-in mock provider.
    Mock,
    Rejected(GatewayError),
    /// The caller's roles do not allow the model.
    Denied(Refusal),
    /// A chunked body too large for Pingora's retry buffer: relay it through a subrequest.
    NeedsSubrequest(Bytes),
}

/// Routes the request, reading its body. Sets `ctx.route` and `ctx.body` when it routes.
pub async fn route(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
    group: EndpointGroup,
    access: Access,
) -> pingora::Result<Routed> {
    if session.req_header().method != http::Method::POST {
        return Ok(Routed::Rejected(GatewayError::MethodNotAllowed {
            allow: "POST",
        }));
    }
    let limit = rt.max_body_bytes;
    if body::declared_length(session).is_some_and(|n| n > limit) {
        return Ok(Routed::Rejected(GatewayError::RequestTooLarge { limit }));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    let read = match body::read_body(session, limit, rt.body_read_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Ok(Routed::Rejected(GatewayError::RequestTooLarge { limit }))
        }
        Err(BodyError::Read(e)) => {
            // The connection's framing cannot be trusted after any of these.
            session.set_keepalive(None);
            return match e.etype() {
                ErrorType::ReadTimedout => Ok(Routed::Rejected(GatewayError::BodyTimeout {
                    seconds: rt.body_read_timeout.as_secs(),
                })),
                ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd")
                | ErrorType::InvalidHTTPHeader => Ok(Routed::Rejected(GatewayError::MalformedBody)),
                // The client closed or broke the connection mid-body: it is gone.
                _ => Err(e.into_down()),
            };
        }
    };
    let probe = match model_field::probe(&read.bytes) {
        Ok(p) => p,
        Err(ProbeError::InvalidJson(d)) => {
            return Ok(Routed::Rejected(GatewayError::InvalidJson(d)))
        }
        Err(ProbeError::MissingModel(w)) => {
            return Ok(Routed::Rejected(GatewayError::MissingModel(w)))
        }
    };
    ctx.requested_model = Some(probe.model.as_ref().into());
    if ctx.test_mode {
        if let Some(mock) = rt.test_mock {
            // The mock answers any name, but a known model the caller may not use stays refused.
            if let Some(idx) = rt.registry.lookup(&probe.model) {
                ctx.model_id = Some(rt.registry.get(idx).id.clone());
                if !rt.auth.rbac.allows(access, &group, idx) {
                    return Ok(Routed::Denied(Refusal::ModelForbidden));
                }
            }
            let route = test_mode_route(rt, mock, group, &probe.model, probe.stream);
            ctx.route = Some(route);
            ctx.body = read.bytes;
            return Ok(Routed::Mock);
        }
    }
    let (idx, default_model_used) = match rt.registry.lookup(&probe.model) {
        Some(i) => (i, false),
        None => match rt.registry.default_model() {
            Some(d) => (d, true),
            None => {
                let suggestions = rt
                    .registry
                    .suggestions(&probe.model, &|i| rt.model_visible(access, i))
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                return Ok(Routed::Rejected(GatewayError::ModelNotFound {
                    model: probe.model.into_owned(),
                    suggestions,
                }));
            }
        },
    };
    let model = rt.registry.get(idx);
    ctx.model_id = Some(model.id.clone());
    // Authorised on the canonical id: an alias (or the default model) cannot bypass a pattern.
    if !rt.auth.rbac.allows(access, &group, idx) {
        return Ok(Routed::Denied(Refusal::ModelForbidden));
    }
    let stream = probe.stream;
    let route = |target: &Target| Route {
        group: group.clone(),
        model_id: model.id.clone(),
        default_model_used,
        target: target.clone(),
        stream,
    };
    // A mock first in line answers in place; other targets go through the retry plan. Only a
    // model with a mock target pays for the availability scan.
    let is_mock = |t: &&Target| rt.provider(t.provider).kind == ProviderKind::Mock;
    let mock_first = model
        .targets
        .iter()
        .any(|t| is_mock(&t))
        .then(|| {
            model
                .targets
                .iter()
                .find(|t| rt.provider(t.provider).can_take_now())
        })
        .flatten()
        .filter(is_mock);
    if let Some(t) = mock_first {
        ctx.route = Some(route(t));
        ctx.body = if *probe.model == *t.upstream_model {
            read.bytes
        } else {
            model_field::rewrite_model(&read.bytes, &t.upstream_model).unwrap_or(read.bytes)
        };
        return Ok(Routed::Mock);
    }
    if !read.replayable {
        return Ok(Routed::NeedsSubrequest(read.bytes));
    }
    ctx.original_body = read.bytes;
    // Validation guarantees at least one target.
    ctx.route = Some(route(&model.targets[0]));
    let now = tokio::time::Instant::now();
    let subject = ctx
        .principal
        .as_ref()
        .map_or_else(|| Arc::from(""), |p| p.subject.clone());
    let mut plan = Plan::new(rt, model.id.clone(), model.targets.clone(), subject, now);
    let outcome = plan.next(rt, now);
    ctx.plan = Some(plan);
    Ok(match outcome {
        Ok(()) => Routed::Proxy,
        Err(e) => Routed::Rejected(e),
    })
}

/// `X-Test-Mode: true` (development): the mock answers, whatever the model.
fn test_mode_route(
    rt: &Runtime,
    mock: ProviderId,
    group: EndpointGroup,
    model: &str,
    stream: bool,
) -> Route {
    let name: Arc<str> = Arc::from(model);
    Route {
        group,
        model_id: name.clone(),
        default_model_used: false,
        target: Target {
            provider: mock,
            provider_name: rt.provider(mock).name.clone(),
            upstream_model: name,
            timeouts: Timeouts::DEFAULT,
        },
        stream,
    }
}
