//! Step 3 of admission: the body's `model`, the registry (or `default_model`), whether the
//! caller may use that model on this endpoint, and where the request goes: the built-in mock
//! when it is first in line, a subrequest relay for a body Pingora cannot replay, or the retry
//! plan over the model's targets with its first attempt chosen.

use super::Refused;
use crate::auth::Principal;
use crate::auth::Refusal;
use crate::config::ProviderKind;
use crate::endpoints::EndpointGroup;
use crate::proxy::attempts::Plan;
use crate::proxy::body::ReadBody;
use crate::proxy::errors::GatewayError;
use crate::proxy::model_field::{self, ProbeError};
use crate::registry::{Model, ModelIdx, ProviderIdx, Target};
use crate::runtime::Runtime;
use crate::upstream::timeouts::Timeouts;
use bytes::Bytes;
use std::sync::Arc;

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub group: EndpointGroup,
    pub model_id: Arc<str>,
    pub default_model_used: bool,
    /// The first target (the one that answers may be a later one: see the plan).
    pub target: Target,
    pub stream: bool,
    /// The client asked for the stream's usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The most output tokens the request allows, when it says.
    // Read by quota reservations (issue 9, next).
    #[allow(dead_code)]
    pub max_tokens: Option<u64>,
    /// The registry's model (`None` for a test-mode name the registry does not know).
    pub model: Option<ModelIdx>,
}

/// What routing found out, whatever it decided: the audit and access logs name the model.
#[derive(Debug)]
pub struct Routing {
    /// The body's `model`, once read.
    pub requested_model: Option<Box<str>>,
    /// The canonical model id, once resolved.
    pub model_id: Option<Arc<str>>,
    pub outcome: Outcome,
}

/// Where the request goes.
// Transient: moved into the request's context at once. Boxing the plan would cost an allocation
// per request for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// To `upstream_peer`, with the plan's first attempt chosen. `body` is the body as the
    /// client sent it (each attempt renames the model for its target).
    Proxy {
        route: Route,
        plan: Plan,
        body: Bytes,
    },
    /// The built-in mock answers in place, with `body` made for it (see `body_for`).
    Mock {
        route: Route,
        body: Bytes,
        usage_requested: bool,
    },
    /// A chunked body too large for Pingora's retry buffer: the same request runs again as a
    /// subrequest with this body, on behalf of `principal`.
    Relay { body: Bytes, principal: Principal },
    /// Not served. `route` is set when the model resolved but no provider can take it now.
    Refuse { why: Refused, route: Option<Route> },
}

impl Outcome {
    fn refuse(why: Refused) -> Outcome {
        Outcome::Refuse { why, route: None }
    }
}

/// The caller as routing sees it.
pub struct Caller<'a> {
    pub principal: &'a Principal,
    /// `X-Test-Mode: true` in development: the mock answers any model name.
    pub test_mode: bool,
}

impl Routing {
    fn refuse(mut self, why: Refused) -> Routing {
        self.outcome = Outcome::refuse(why);
        self
    }
}

/// Step 3: routes a request for `group` whose body has been read.
pub fn route(
    rt: &Runtime,
    group: &EndpointGroup,
    caller: Caller<'_>,
    body: ReadBody,
    now: tokio::time::Instant,
) -> Routing {
    let routing = Routing {
        requested_model: None,
        model_id: None,
        outcome: Outcome::refuse(Refused::Rejected(GatewayError::Internal)),
    };
    let probe = match model_field::probe(&body.bytes) {
        Ok(p) => p,
        Err(ProbeError::InvalidJson(d)) => {
            return routing.refuse(Refused::Rejected(GatewayError::InvalidJson(d)))
        }
        Err(ProbeError::MissingModel(w)) => {
            return routing.refuse(Refused::Rejected(GatewayError::MissingModel(w)))
        }
    };
    let mut routing = Routing {
        requested_model: Some(probe.model.as_ref().into()),
        ..routing
    };
    let access = caller.principal.access;
    let known = rt.registry.lookup(&probe.model);
    if let (true, Some(mock)) = (caller.test_mode, rt.test_mock) {
        // The mock answers any name, but a known model the caller may not use stays refused.
        if let Some(idx) = known {
            routing.model_id = Some(rt.registry.get(idx).id.clone());
            if !rt.auth.rbac.allows(access, group, idx) {
                return routing.refuse(Refused::Denied(Refusal::ModelForbidden));
            }
        }
        let route = test_mode_route(rt, mock, group, &probe, known);
        let (body, usage_requested) =
            body_for(rt, &route, &probe.model, &body.bytes, &route.target);
        routing.outcome = Outcome::Mock {
            route,
            body,
            usage_requested,
        };
        return routing;
    }
    let found = match (known, rt.registry.default_model()) {
        (Some(i), _) => Some((i, false)),
        (None, Some(d)) => Some((d, true)),
        (None, None) => None,
    };
    let Some((idx, default_model_used)) = found else {
        let suggestions = rt
            .registry
            .suggestions(&probe.model, &|i| rt.model_visible(access, i))
            .into_iter()
            .map(str::to_string)
            .collect();
        let model = probe.model.into_owned();
        let e = GatewayError::ModelNotFound { model, suggestions };
        return routing.refuse(Refused::Rejected(e));
    };
    let model = rt.registry.get(idx);
    routing.model_id = Some(model.id.clone());
    // Authorised on the canonical id: an alias (or the default model) cannot bypass a pattern.
    if !rt.auth.rbac.allows(access, group, idx) {
        return routing.refuse(Refused::Denied(Refusal::ModelForbidden));
    }
    let route = |target: &Target| Route {
        group: group.clone(),
        model_id: model.id.clone(),
        default_model_used,
        target: target.clone(),
        stream: probe.stream,
        include_usage: probe.include_usage,
        max_tokens: probe.max_tokens,
        model: Some(idx),
    };
    routing.outcome = destination(rt, model, route, &probe.model, &body, caller, now);
    routing
}

/// Where a request for `model` goes: the mock when it is first in line, a relay for a body
/// Pingora cannot replay, else the retry plan with its first attempt chosen.
fn destination(
    rt: &Runtime,
    model: &Model,
    route: impl Fn(&Target) -> Route,
    requested: &str,
    body: &ReadBody,
    caller: Caller<'_>,
    now: tokio::time::Instant,
) -> Outcome {
    if let Some(t) = mock_first_in_line(rt, model) {
        let route = route(t);
        let (body, usage_requested) = body_for(rt, &route, requested, &body.bytes, t);
        return Outcome::Mock {
            route,
            body,
            usage_requested,
        };
    }
    if !body.replayable {
        return Outcome::Relay {
            body: body.bytes.clone(),
            principal: caller.principal.clone(),
        };
    }
    // Validation guarantees at least one target; the plan reports the lack of one.
    let first = model.targets.first().map(&route);
    let subject = caller.principal.subject.clone();
    let mut plan = Plan::new(rt, model.id.clone(), model.targets.clone(), subject, now);
    let chosen = plan.current_or_next(rt, now).map(|_| ());
    match (chosen, first) {
        (Ok(()), Some(route)) => Outcome::Proxy {
            route,
            plan,
            body: body.bytes.clone(),
        },
        (Err(e), route) => Outcome::Refuse {
            why: Refused::Rejected(e),
            route,
        },
        (Ok(()), None) => Outcome::refuse(Refused::Rejected(GatewayError::Internal)),
    }
}

/// The mock target that would answer now, when a mock comes first among the targets that can
/// take a request. Only a model with a mock target pays for the availability scan.
pub fn mock_first_in_line<'m>(rt: &Runtime, model: &'m Model) -> Option<&'m Target> {
    let is_mock = |t: &Target| rt.provider(t.provider).kind == ProviderKind::Mock;
    if !model.targets.iter().any(is_mock) {
        return None;
    }
    model
        .targets
        .iter()
        .find(|t| rt.provider(t.provider).can_take_now())
        .filter(|t| is_mock(t))
}

/// The body an attempt at `target` sends: `model` renamed for the target when it expects
/// another name, and, for a stream to an OpenAI-kind provider whose client did not ask for the
/// usage chunk, the chunk asked for (`usage.force_stream_usage`). `true` when it was: the
/// response's usage chunk is then the gateway's, not the client's.
pub fn body_for(
    rt: &Runtime,
    route: &Route,
    requested: &str,
    original: &Bytes,
    target: &Target,
) -> (Bytes, bool) {
    let renamed = if requested == &*target.upstream_model {
        original.clone()
    } else {
        model_field::rewrite_model(original, &target.upstream_model)
            .unwrap_or_else(|| original.clone())
    };
    let openai_kind = matches!(
        rt.provider(target.provider).kind,
        ProviderKind::Openai
            | ProviderKind::OpenaiCompatible
            | ProviderKind::Azure
            | ProviderKind::Mock
    );
    let chat_like = matches!(
        route.group,
        EndpointGroup::Chat | EndpointGroup::Completions
    );
    if !(rt.force_stream_usage && route.stream && !route.include_usage && openai_kind && chat_like)
    {
        return (renamed, false);
    }
    match model_field::request_usage(&renamed) {
        Some(b) => (b, true),
        None => (renamed, false),
    }
}

/// `X-Test-Mode: true` (development): the mock answers, whatever the model.
fn test_mode_route(
    rt: &Runtime,
    mock: ProviderIdx,
    group: &EndpointGroup,
    probe: &model_field::Probe<'_>,
    known: Option<ModelIdx>,
) -> Route {
    let name: Arc<str> = Arc::from(probe.model.as_ref());
    Route {
        group: group.clone(),
        model_id: name.clone(),
        default_model_used: false,
        target: Target {
            provider: mock,
            provider_name: rt.provider(mock).name.clone(),
            upstream_model: name,
            timeouts: Timeouts::DEFAULT,
        },
        stream: probe.stream,
        include_usage: probe.include_usage,
        max_tokens: probe.max_tokens,
        model: known,
    }
}
