//! Admission: whether and how the gateway takes a request. One decision, made in three steps by
//! plain functions over what `intake` read from the Session, so that each can be tested without
//! one:
//!
//! 1. [`entry`] (the path alone): an unauthenticated probe, `/metrics`, or a guarded endpoint;
//! 2. [`authorize`] (the caller and the request head): may this caller use this endpoint, with
//!    this method and this declared body size;
//! 3. [`route::route`] (the body): which model, whether the caller may use it, and where the
//!    request goes: a provider's retry plan, the built-in mock, or a subrequest relay;
//! 4. [`quota::check`] (the routed request): whether the caller's quotas have room for it,
//!    reserving its estimate when they do.
//!
//! `request_filter` does the I/O between the steps (authentication, reading the body, the
//! quota store) and carries the outcome out. The audit
//! line follows the outcome: a [`Refused::Denied`] is audited as `deny`, anything after a
//! successful authentication as `allow`.

pub mod quota;
pub mod route;

use super::errors::GatewayError;
use super::local::{self, Local};
use crate::auth::rbac::Access;
use crate::auth::Refusal;
use crate::endpoints::EndpointGroup;
use crate::runtime::Runtime;
use std::borrow::Cow;

/// Why a request is not served.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Authentication or authorization said no (audited as `deny`).
    Denied(Refusal),
    /// The caller is admitted, but the request cannot be served as sent (audited as `allow`).
    Rejected(GatewayError),
}

/// What a path asks for, before anyone is authenticated.
#[derive(Debug, PartialEq)]
pub enum Entry {
    /// `/health` or `/ready`: load balancers call them without credentials.
    Probe(Local),
    /// `/metrics` on the main listener (its own rules: `metrics.public`).
    Metrics,
    /// Everything else: authenticate the caller, then [`authorize`].
    Guarded,
}

/// Step 1: whether the path needs a caller at all.
pub fn entry(rt: &Runtime, path: &str) -> Entry {
    match local::route(path) {
        Some(l @ (Local::Health | Local::Ready)) => Entry::Probe(l),
        _ if path == "/metrics" && rt.metrics_on_main => Entry::Metrics,
        _ => Entry::Guarded,
    }
}

/// An endpoint a caller may be admitted to.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// Answered by the gateway itself (model lists, provider health).
    Local(Local),
    /// Proxied to a provider (or the mock) by the body's `model`.
    Proxied(EndpointGroup),
}

impl Endpoint {
    /// The endpoint a normalised path names, if the gateway serves it.
    pub fn of_path(rt: &Runtime, path: &str) -> Option<Endpoint> {
        match local::route(path) {
            Some(l) => Some(Endpoint::Local(l)),
            None => rt.proxied_group(path).map(Endpoint::Proxied),
        }
    }

    /// The group roles grant.
    pub fn group(&self) -> &EndpointGroup {
        match self {
            Endpoint::Local(l) => l.group(),
            Endpoint::Proxied(g) => g,
        }
    }

    /// Its metric label (custom groups come from the configuration: a bounded set).
    pub fn label(&self) -> Cow<'static, str> {
        let g = self.group();
        match g.static_name() {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(g.as_str().to_string()),
        }
    }
}

/// What step 2 looks at in the request head besides the path.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a http::Method,
    /// The declared Content-Length (`None` when chunked or absent).
    pub declared_length: Option<u64>,
}

/// Step 2: whether an authenticated caller with `access` may use `endpoint` (`None`: the path
/// is not served) as `head` asks. A proxied endpoint admitted here goes on to read its body.
pub fn authorize(
    rt: &Runtime,
    access: Access,
    endpoint: Option<Endpoint>,
    head: Head<'_>,
) -> Result<Endpoint, Refused> {
    if access == Access::NoKnownRoles {
        return Err(Refused::Denied(Refusal::NoKnownRoles));
    }
    let Some(endpoint) = endpoint else {
        return Err(Refused::Rejected(GatewayError::UnknownEndpoint));
    };
    if !rt.auth.rbac.allows_endpoint(access, endpoint.group()) {
        return Err(Refused::Denied(Refusal::EndpointForbidden));
    }
    if let Endpoint::Proxied(_) = &endpoint {
        if *head.method != http::Method::POST {
            return Err(Refused::Rejected(GatewayError::MethodNotAllowed {
                allow: "POST",
            }));
        }
        let limit = rt.max_body_bytes;
        if head.declared_length.is_some_and(|n| n > limit) {
            return Err(Refused::Rejected(GatewayError::RequestTooLarge { limit }));
        }
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests;
