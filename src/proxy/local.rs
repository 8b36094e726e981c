//! Endpoints the gateway answers itself: `/health`, `/ready`, `/v1/models`, `/v1/models/{id}`,
//! `/api/available-models`.

use super::errors::{json_header, GatewayError};
use crate::auth::rbac::Access;
use crate::endpoints::EndpointGroup;
use crate::registry::{etag_matches, Rendered};
use crate::runtime::Runtime;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use serde_json::json;

/// A local endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Health,
    Ready,
    ModelsList,
    /// `/v1/models/{id}`: the id is the rest of the path (see [`model_id`]).
    Model,
    AvailableModels,
    /// `/api/providers/health` (admin).
    ProvidersHealth,
    /// `POST /api/admin/reload` (admin): answered by `respond::reload`.
    AdminReload,
    /// `GET /api/usage` (usage): answered by `respond::usage`.
    Usage,
    /// `POST /api/analyze` (analyze): answered by the `analyze` module.
    Analyze,
}

const MODEL_PREFIX: &str = "/v1/models/";

impl Local {
    /// The endpoint group roles grant for it.
    pub fn group(self) -> &'static EndpointGroup {
        static MODELS: EndpointGroup = EndpointGroup::Models;
        static ADMIN: EndpointGroup = EndpointGroup::Admin;
        static USAGE: EndpointGroup = EndpointGroup::Usage;
        static ANALYZE: EndpointGroup = EndpointGroup::Analyze;
        match self {
            Local::Analyze => &ANALYZE,
            Local::Usage => &USAGE,
            Local::ProvidersHealth | Local::AdminReload => &ADMIN,
            Local::Health
            | Local::Ready
            | Local::ModelsList
            | Local::Model
            | Local::AvailableModels => &MODELS,
        }
    }
}

/// The model id of a `/v1/models/{id}` path.
pub fn model_id(path: &str) -> &str {
    path.strip_prefix(MODEL_PREFIX).unwrap_or_default()
}

/// The local paths a client may call, as the `unknown_endpoint` message lists them (aliases
/// such as `/healthz` left out). `route` answers every one of them (tested below).
pub const LISTED_PATHS: &[&str] = &[
    "/v1/models",
    "/v1/models/{id}",
    "/api/available-models",
    "/api/providers/health",
    "/api/usage",
    "/health",
    "/ready",
];

/// The local paths that take a `POST`, for the same message.
pub const LISTED_POST_PATHS: &[&str] = &["/api/admin/reload", "/api/analyze"];

/// Matches a normalised path.
pub fn route(path: &str) -> Option<Local> {
    match path {
        "/health" | "/healthz" => Some(Local::Health),
        "/ready" | "/readyz" => Some(Local::Ready),
        "/v1/models" => Some(Local::ModelsList),
        "/api/available-models" => Some(Local::AvailableModels),
        "/api/providers/health" => Some(Local::ProvidersHealth),
        "/api/admin/reload" => Some(Local::AdminReload),
        "/api/usage" => Some(Local::Usage),
        "/api/analyze" => Some(Local::Analyze),
        _ if path.len() > MODEL_PREFIX.len() && path.starts_with(MODEL_PREFIX) => {
            Some(Local::Model)
        }
        _ => None,
    }
}

/// A response to send: status, headers beyond the common ones, and the body.
pub struct LocalResponse {
    pub status: u16,
    pub header: ResponseHeader,
    pub body: Bytes,
}

/// Answers a local endpoint at `path`. `if_none_match` is the request's header, if any. An
/// `Err` is for the caller to write (see `respond::error`).
pub fn respond(
    local: Local,
    path: &str,
    method: &Method,
    if_none_match: Option<&[u8]>,
    rt: &Runtime,
    request_id: &str,
    access: Access,
) -> Result<LocalResponse, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" });
    }
    Ok(match local {
        // Needs the reloader and awaits it: `respond::reload`.
        Local::AdminReload | Local::Usage | Local::Analyze => return Err(GatewayError::Internal),
        Local::Health => plain_json(200, json!({ "status": "ok" }), request_id),
        Local::Ready => ready(rt, request_id),
        Local::ModelsList => cached(&rt.models_list(access), if_none_match, rt, request_id),
        Local::AvailableModels => {
            cached(&rt.available_models(access), if_none_match, rt, request_id)
        }
        Local::ProvidersHealth => plain_json(200, super::provider_health::render(rt), request_id),
        Local::Model => {
            let id = model_id(path);
            // A model the caller may not use does not exist for it.
            let visible = |i| rt.model_visible(access, i);
            let Some(idx) = rt.registry.lookup(id).filter(|i| visible(*i)) else {
                return Err(GatewayError::ModelNotFound {
                    model: id.to_string(),
                    suggestions: rt
                        .registry
                        .suggestions(id, &visible)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                });
            };
            cached(rt.registry.model_object(idx), if_none_match, rt, request_id)
        }
    })
}

fn ready(rt: &Runtime, request_id: &str) -> LocalResponse {
    let servable = rt.servable();
    let resolved = rt.pools().all(|p| p.resolved_once());
    let unservable: Vec<&str> = rt
        .registry
        .models()
        .iter()
        .zip(&servable)
        .filter(|(_, ok)| !**ok)
        .map(|(m, _)| &*m.id)
        .collect();
    let servable_count = servable.iter().filter(|s| **s).count();
    // JWT callers cannot be served until the identity provider's keys are loaded.
    let jwks = rt.auth.jwks_url().map(|j| {
        if j.loaded() {
            json!({ "loaded": true })
        } else {
            json!({ "loaded": false, "error": j.last_error().map(|e| e.to_string()) })
        }
    });
    let jwks_ok = rt.auth.jwks_url().is_none_or(|j| j.loaded());
    let ready = resolved && servable_count > 0 && jwks_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "config_generation": rt.generation,
        "checks": {
            "config_loaded": true,
            "listening": true,
            "upstreams_resolved": resolved,
            "servable_models": servable_count,
            "jwks": jwks,
        },
        "unservable_models": unservable,
    });
    plain_json(if ready { 200 } else { 503 }, body, request_id)
}

fn plain_json(status: u16, v: serde_json::Value, request_id: &str) -> LocalResponse {
    let body = Bytes::from(serde_json::to_vec(&v).expect("JSON value serializes"));
    let mut header = json_header(status, request_id, body.len());
    let _ = header.insert_header("cache-control", "no-store");
    LocalResponse {
        status,
        header,
        body,
    }
}

fn cached(
    r: &Rendered,
    if_none_match: Option<&[u8]>,
    rt: &Runtime,
    request_id: &str,
) -> LocalResponse {
    let cache_control = format!("private, max-age={}", rt.models_max_age_seconds);
    if if_none_match.is_some_and(|v| etag_matches(v, &r.etag)) {
        let mut header = ResponseHeader::build(304, Some(4)).expect("valid status");
        let _ = header.insert_header("etag", &r.etag);
        let _ = header.insert_header("cache-control", &cache_control);
        let _ = header.insert_header("x-request-id", request_id);
        return LocalResponse {
            status: 304,
            header,
            body: Bytes::new(),
        };
    }
    let mut header = json_header(200, request_id, r.body.len());
    let _ = header.insert_header("etag", &r.etag);
    let _ = header.insert_header("cache-control", &cache_control);
    LocalResponse {
        status: 200,
        header,
        body: r.body.clone(),
    }
}

/// An error response for local endpoints and early rejections.
pub fn error(e: GatewayError, request_id: &str) -> LocalResponse {
    let body = e.body();
    let header = e.response_header(request_id, body.len());
    LocalResponse {
        status: e.status(),
        header,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/health"), Some(Local::Health));
        assert_eq!(route("/v1/models"), Some(Local::ModelsList));
        assert_eq!(route("/v1/models/meta-llama/Llama-3"), Some(Local::Model));
        assert_eq!(
            model_id("/v1/models/meta-llama/Llama-3"),
            "meta-llama/Llama-3"
        );
        assert_eq!(route("/v1/chat/completions"), None);
    }

    #[test]
    fn every_listed_path_is_served() {
        for p in LISTED_PATHS.iter().chain(LISTED_POST_PATHS) {
            let path = p.replace("{id}", "gpt-4o-mini");
            assert!(route(&path).is_some(), "{p} is listed but not routed");
        }
        let message = GatewayError::UnknownEndpoint.message();
        assert!(message.contains("/v1/chat/completions"), "{message}");
        assert!(message.contains("/api/providers/health"), "{message}");
    }
}
