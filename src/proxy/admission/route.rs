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
use crate::registry::{Model, ProviderIdx, Target};
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
    /// The built-in mock answers in place, with `body` renamed for it.
    Mock { route: Route, body: Bytes },
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
        let route = test_mode_route(rt, mock, group, &probe.model, probe.stream);
        let body = body.bytes;
        routing.outcome = Outcome::Mock { route, body };
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
        let body = if requested == &*t.upstream_model {
            body.bytes.clone()
        } else {
            model_field::rewrite_model(&body.bytes, &t.upstream_model)
                .unwrap_or_else(|| body.bytes.clone())
        };
        return Outcome::Mock {
            route: route(t),
            body,
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
fn mock_first_in_line<'m>(rt: &Runtime, model: &'m Model) -> Option<&'m Target> {
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

/// `X-Test-Mode: true` (development): the mock answers, whatever the model.
fn test_mode_route(
    rt: &Runtime,
    mock: ProviderIdx,
    group: &EndpointGroup,
    model: &str,
    stream: bool,
) -> Route {
    let name: Arc<str> = Arc::from(model);
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
        stream,
    }
}
