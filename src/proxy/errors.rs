//! The gateway's own errors and the one place that knows their status codes and the
//! OpenAI-shaped JSON `{"error":{"message","type","param","code"}}` (DESIGN.md's error table).

use crate::auth::{Refusal, RefusalKind};
use crate::clip::clip;
use crate::endpoints::BUILTIN_PROXY_PATHS;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde_json::json;

/// Longest part of an error message that quotes the request (a parser's detail), in bytes.
const DETAIL_MAX_BYTES: usize = 256;

/// An error the gateway answers itself.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// The body is not JSON, or not a JSON object.
    InvalidJson(String),
    /// A local endpoint's query string is not one it takes.
    InvalidQuery(String),
    /// A gateway endpoint's JSON body is well-formed but asks for something it cannot do.
    InvalidRequest(String),
    /// Several models at once (`/api/analyze`) that do not exist, with close names.
    UnknownModels {
        names: Vec<String>,
        suggestions: Vec<String>,
    },
    /// Several models at once (`/api/analyze`) the caller's roles do not allow.
    ModelsForbidden(Vec<String>),
    /// No `model`, or `model` is not a string.
    MissingModel(&'static str),
    ModelNotFound {
        model: String,
        suggestions: Vec<String>,
    },
    UnknownEndpoint,
    /// The request's headers make it one a proxy must not pass on (HTTP/1.1 without `Host`,
    /// `Host` named in `Connection`).
    InvalidHeader(&'static str),
    MethodNotAllowed {
        allow: &'static str,
    },
    RequestTooLarge {
        limit: u64,
    },
    /// The request body's framing is broken (bad chunked encoding): nothing to route.
    MalformedBody,
    /// The request body stopped arriving.
    BodyTimeout {
        seconds: u64,
    },
    /// The upstream answered with something unusable, or could not be reached.
    BadUpstream {
        provider: String,
        detail: &'static str,
    },
    /// The provider refused the gateway's key (its 401/403): the gateway's problem.
    ProviderAuthFailed {
        provider: String,
    },
    NoHealthyUpstream {
        model: String,
        retry_after: u64,
    },
    /// Every key of every provider that could serve the model is rate-limited.
    ProviderRateLimited {
        retry_after: u64,
    },
    UpstreamTimeout {
        provider: String,
    },
    /// The caller was refused by authentication or authorization.
    Auth(Refusal),
    /// The audit log cannot take a line and `audit.on_overflow` is `reject`.
    AuditUnavailable,
    /// A failure inside the gateway.
    Internal,
    /// The gateway is shutting down and its grace period ended before the response did.
    ShuttingDown,
    /// A quota rule has no room for this request.
    QuotaExceeded(crate::quota::Exceeded),
    /// The quota store did not answer and `quotas.on_store_error` is `deny`.
    QuotaUnavailable,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidQuery(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::MissingModel(_)
            | GatewayError::InvalidHeader(_)
            | GatewayError::MalformedBody => 400,
            GatewayError::BodyTimeout { .. } => 408,
            GatewayError::ModelNotFound { .. }
            | GatewayError::UnknownModels { .. }
            | GatewayError::UnknownEndpoint => 404,
            GatewayError::ModelsForbidden(_) => 403,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::RequestTooLarge { .. } => 413,
            GatewayError::BadUpstream { .. } | GatewayError::ProviderAuthFailed { .. } => 502,
            GatewayError::NoHealthyUpstream { .. } => 503,
            GatewayError::ProviderRateLimited { .. } | GatewayError::QuotaExceeded(_) => 429,
            GatewayError::UpstreamTimeout { .. } => 504,
            GatewayError::Auth(r) => match r.kind() {
                RefusalKind::Forbidden => 403,
                RefusalKind::Unavailable => 503,
                RefusalKind::Missing
                | RefusalKind::Ambiguous
                | RefusalKind::InvalidToken
                | RefusalKind::InvalidApiKey => 401,
            },
            GatewayError::AuditUnavailable
            | GatewayError::ShuttingDown
            | GatewayError::QuotaUnavailable => 503,
            GatewayError::Internal => 500,
        }
    }

    /// The OpenAI error `type`. Exhaustive on purpose: a new variant must choose its type.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidQuery(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::MissingModel(_)
            | GatewayError::ModelNotFound { .. }
            | GatewayError::UnknownModels { .. }
            | GatewayError::UnknownEndpoint
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::RequestTooLarge { .. }
            | GatewayError::MalformedBody
            | GatewayError::InvalidHeader(_)
            | GatewayError::BodyTimeout { .. } => "invalid_request_error",
            GatewayError::ModelsForbidden(_) => "permission_error",
            GatewayError::BadUpstream { .. }
            | GatewayError::ProviderAuthFailed { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::QuotaUnavailable => "upstream_error",
            GatewayError::ProviderRateLimited { .. } | GatewayError::QuotaExceeded(_) => {
                "rate_limit_error"
            }
            GatewayError::Auth(r) => match r.kind() {
                RefusalKind::Forbidden => "permission_error",
                RefusalKind::Missing
                | RefusalKind::Ambiguous
                | RefusalKind::InvalidToken
                | RefusalKind::InvalidApiKey
                | RefusalKind::Unavailable => "authentication_error",
            },
            GatewayError::AuditUnavailable
            | GatewayError::Internal
            | GatewayError::ShuttingDown => "server_error",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::InvalidQuery(_) => "invalid_query",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::UnknownModels { .. } => "model_not_found",
            GatewayError::ModelsForbidden(_) => "permission_denied",
            GatewayError::MissingModel(_) => "missing_model",
            GatewayError::ModelNotFound { .. } => "model_not_found",
            GatewayError::UnknownEndpoint => "unknown_endpoint",
            GatewayError::InvalidHeader(_) => "invalid_header",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::RequestTooLarge { .. } => "request_too_large",
            GatewayError::MalformedBody => "invalid_body",
            GatewayError::BodyTimeout { .. } => "request_timeout",
            GatewayError::BadUpstream { .. } => "bad_upstream_response",
            GatewayError::ProviderAuthFailed { .. } => "provider_auth_failed",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::ProviderRateLimited { .. } => "provider_rate_limited",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::Auth(r) => match r.kind() {
                RefusalKind::Missing => "missing_credentials",
                RefusalKind::Ambiguous => "ambiguous_credentials",
                RefusalKind::InvalidToken => "invalid_token",
                RefusalKind::InvalidApiKey => "invalid_api_key",
                RefusalKind::Forbidden => "permission_denied",
                RefusalKind::Unavailable => "auth_unavailable",
            },
            GatewayError::AuditUnavailable => "audit_unavailable",
            GatewayError::Internal => "internal_error",
            GatewayError::ShuttingDown => "gateway_shutting_down",
            GatewayError::QuotaExceeded(_) => "quota_exceeded",
            GatewayError::QuotaUnavailable => "quota_unavailable",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::MissingModel(_) | GatewayError::ModelNotFound { .. } => Some("model"),
            GatewayError::UnknownModels { .. } | GatewayError::ModelsForbidden(_) => Some("models"),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            // Details can quote what the client sent (serde's "invalid type: string ..."): an
            // error body is not an echo service.
            GatewayError::InvalidJson(detail) => format!("The request body is not valid JSON: {}.", clip(detail, DETAIL_MAX_BYTES)),
            GatewayError::InvalidQuery(detail) => format!("The query string is not valid here: {}.", clip(detail, DETAIL_MAX_BYTES)),
            GatewayError::InvalidRequest(detail) => format!("{}.", clip(detail, DETAIL_MAX_BYTES)),
            GatewayError::UnknownModels { names, suggestions } => {
                let shown: Vec<String> = names.iter().map(|n| format!("`{}`", n.chars().take(128).collect::<String>())).collect();
                if suggestions.is_empty() {
                    format!("These models do not exist: {}. GET /v1/models lists the models you can use.", shown.join(", "))
                } else {
                    format!("These models do not exist: {}. Did you mean: {}?", shown.join(", "), suggestions.join(", "))
                }
            }
            GatewayError::ModelsForbidden(names) => {
                let shown: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                format!("Your roles do not allow these models: {}.", shown.join(", "))
            }
            GatewayError::MissingModel(why) => format!("The request body {why}."),
            GatewayError::ModelNotFound { model, suggestions } => {
                let shown: String = model.chars().take(128).collect();
                if suggestions.is_empty() {
                    format!("The model `{shown}` does not exist. GET /v1/models lists the models you can use.")
                } else {
                    format!("The model `{shown}` does not exist. Did you mean: {}?", suggestions.join(", "))
                }
            }
            GatewayError::UnknownEndpoint => unknown_endpoint_message(),
            GatewayError::InvalidHeader(why) => format!("The request's headers are not valid: {why}."),
            GatewayError::MethodNotAllowed { allow } => format!("This path only accepts {allow}."),
            GatewayError::RequestTooLarge { limit } => {
                format!("The request body is larger than this gateway accepts ({limit} bytes).")
            }
            GatewayError::MalformedBody => {
                "The request body could not be read: its chunked encoding is malformed.".into()
            }
            GatewayError::BodyTimeout { seconds } => {
                format!("The request body stopped arriving (nothing for {seconds} s).")
            }
            GatewayError::BadUpstream { provider, detail } => format!("Provider `{provider}` failed: {detail}."),
            GatewayError::ProviderAuthFailed { provider } => format!(
                "Provider `{provider}` rejected the gateway's credentials. This is a gateway configuration problem, not a problem with your request or credentials."
            ),
            GatewayError::NoHealthyUpstream { model, .. } => {
                format!("No provider can serve the model `{model}` right now. Try again later.")
            }
            GatewayError::UpstreamTimeout { provider } => format!("Provider `{provider}` did not answer in time."),
            GatewayError::ProviderRateLimited { retry_after } => format!(
                "Every provider key for this model is rate-limited. Try again in {retry_after} s."
            ),
            GatewayError::Auth(r) => r.message().into(),
            GatewayError::AuditUnavailable => {
                "The gateway cannot record this request in its audit log right now. Try again shortly.".into()
            }
            GatewayError::Internal => "The gateway failed to handle this request.".into(),
            GatewayError::ShuttingDown => {
                "This gateway is shutting down and could not finish the response in time. Retry; another instance will serve it.".into()
            }
            GatewayError::QuotaExceeded(e) => quota_message(e),
            GatewayError::QuotaUnavailable => {
                "The gateway cannot check your quota right now (its quota store does not answer). Try again shortly.".into()
            }
        }
    }

    /// `Retry-After` seconds, for errors that have one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::NoHealthyUpstream { retry_after, .. }
            | GatewayError::ProviderRateLimited { retry_after } => Some(*retry_after),
            GatewayError::Auth(r) => match r.kind() {
                RefusalKind::Unavailable => Some(5),
                RefusalKind::Missing
                | RefusalKind::Ambiguous
                | RefusalKind::InvalidToken
                | RefusalKind::InvalidApiKey
                | RefusalKind::Forbidden => None,
            },
            GatewayError::AuditUnavailable
            | GatewayError::ShuttingDown
            | GatewayError::QuotaUnavailable => Some(1),
            GatewayError::QuotaExceeded(e) => e.retry_after_secs,
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidQuery(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::MissingModel(_)
            | GatewayError::ModelNotFound { .. }
            | GatewayError::UnknownModels { .. }
            | GatewayError::ModelsForbidden(_)
            | GatewayError::UnknownEndpoint
            | GatewayError::InvalidHeader(_)
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::RequestTooLarge { .. }
            | GatewayError::MalformedBody
            | GatewayError::BodyTimeout { .. }
            | GatewayError::BadUpstream { .. }
            | GatewayError::ProviderAuthFailed { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::Internal => None,
        }
    }

    /// Whether an SDK should retry (`x-should-retry`); `None` leaves it to the SDK's defaults.
    /// Upstream failures are final: the gateway already retried across backends and providers,
    /// and SDK retries would multiply its attempts. Errors about the request, or the gateway's
    /// own credentials, never improve on retry either.
    pub fn should_retry(&self) -> Option<bool> {
        match self {
            // Transient on the gateway's side (another instance serves a retry), or a stalled
            // upload that may well go through the next time: the SDK's own policy decides.
            GatewayError::AuditUnavailable
            | GatewayError::ShuttingDown
            | GatewayError::QuotaUnavailable
            | GatewayError::BodyTimeout { .. } => None,
            // Waiting for the window lets it through; a request that can never fit cannot.
            GatewayError::QuotaExceeded(e) => e.retry_after_secs.is_none().then_some(false),
            GatewayError::Auth(r) => match r.kind() {
                RefusalKind::Unavailable => None,
                RefusalKind::Missing
                | RefusalKind::Ambiguous
                | RefusalKind::InvalidToken
                | RefusalKind::InvalidApiKey
                | RefusalKind::Forbidden => Some(false),
            },
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidQuery(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::MissingModel(_)
            | GatewayError::ModelNotFound { .. }
            | GatewayError::UnknownModels { .. }
            | GatewayError::ModelsForbidden(_)
            | GatewayError::UnknownEndpoint
            | GatewayError::InvalidHeader(_)
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::RequestTooLarge { .. }
            | GatewayError::MalformedBody
            | GatewayError::BadUpstream { .. }
            | GatewayError::ProviderAuthFailed { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::ProviderRateLimited { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::Internal => Some(false),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        error_json(
            &self.message(),
            self.error_type(),
            self.param(),
            self.code(),
        )
    }

    /// The response header for a body of `len` bytes.
    pub fn response_header(&self, request_id: &str, len: usize) -> ResponseHeader {
        let mut h = json_header(self.status(), request_id, len);
        if let Some(s) = self.retry_after() {
            let _ = h.insert_header("retry-after", s.to_string());
        }
        if let Some(r) = self.should_retry() {
            let _ = h.insert_header("x-should-retry", if r { "true" } else { "false" });
        }
        if let GatewayError::MethodNotAllowed { allow } = self {
            let _ = h.insert_header("allow", *allow);
        }
        if let GatewayError::Auth(r) = self {
            // RFC 6750: no error code when no credentials were sent.
            let challenge = match r.kind() {
                RefusalKind::Missing => Some("Bearer realm=\"ultra-gateway\""),
                RefusalKind::Ambiguous => {
                    Some("Bearer realm=\"ultra-gateway\", error=\"invalid_request\"")
                }
                RefusalKind::InvalidToken | RefusalKind::InvalidApiKey => {
                    Some("Bearer realm=\"ultra-gateway\", error=\"invalid_token\"")
                }
                _ => None,
            };
            if let Some(c) = challenge {
                let _ = h.insert_header("www-authenticate", c);
            }
        }
        h
    }
}

/// An OpenAI-shaped error body, `{"error":{"message","type","param","code"}}`: the gateway's
/// own errors, the SSE event that ends a broken stream, and the built-in mock's answers.
pub fn error_json(message: &str, error_type: &str, param: Option<&str>, code: &str) -> Bytes {
    let v = json!({
        "error": { "message": message, "type": error_type, "param": param, "code": code }
    });
    Bytes::from(serde_json::to_vec(&v).expect("JSON value serializes"))
}

/// Names the rule and its limit, and when to come back (or why never).
fn quota_message(e: &crate::quota::Exceeded) -> String {
    let limit = e.kind.describe(e.limit);
    match e.retry_after_secs {
        Some(s) => format!("Quota `{}` exceeded ({limit}). Try again in {s} s.", e.rule),
        None => {
            let need = if e.kind == crate::quota::LimitKind::CostPerDay {
                format!("${:.4}", crate::usage::cost::usd(e.estimate))
            } else {
                format!("{} tokens", e.estimate)
            };
            format!(
                "This request alone needs about {need}, more than quota `{}` allows ({limit}): it cannot be served under this rule. Send a shorter request or a lower max_tokens.",
                e.rule
            )
        }
    }
}

/// Lists what the gateway serves, from the same tables that route requests.
fn unknown_endpoint_message() -> String {
    let proxied: Vec<&str> = BUILTIN_PROXY_PATHS.iter().map(|(p, _)| *p).collect();
    format!(
        "This gateway does not serve this path. Proxied: POST {} and the operator's server.extra_paths; local: GET {}; POST {}.",
        proxied.join(", "),
        super::local::LISTED_PATHS.join(", "),
        super::local::LISTED_POST_PATHS.join(", ")
    )
}

/// A JSON response header with the gateway's common headers.
pub fn json_header(status: u16, request_id: &str, len: usize) -> ResponseHeader {
    let mut h = ResponseHeader::build(status, Some(6)).expect("valid status");
    let _ = h.insert_header("content-type", "application/json");
    let _ = h.insert_header("content-length", len.to_string());
    let _ = h.insert_header("x-request-id", request_id);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows() {
        let cases: Vec<(GatewayError, u16, &str, &str)> = vec![
            (
                GatewayError::InvalidJson("x".into()),
                400,
                "invalid_request_error",
                "invalid_json",
            ),
            (
                GatewayError::MissingModel("has no `model`"),
                400,
                "invalid_request_error",
                "missing_model",
            ),
            (
                GatewayError::ModelNotFound {
                    model: "m".into(),
                    suggestions: vec![],
                },
                404,
                "invalid_request_error",
                "model_not_found",
            ),
            (
                GatewayError::UnknownEndpoint,
                404,
                "invalid_request_error",
                "unknown_endpoint",
            ),
            (
                GatewayError::MethodNotAllowed { allow: "POST" },
                405,
                "invalid_request_error",
                "method_not_allowed",
            ),
            (
                GatewayError::RequestTooLarge { limit: 1 },
                413,
                "invalid_request_error",
                "request_too_large",
            ),
            (
                GatewayError::BadUpstream {
                    provider: "p".into(),
                    detail: "x",
                },
                502,
                "upstream_error",
                "bad_upstream_response",
            ),
            (
                GatewayError::ProviderAuthFailed {
                    provider: "p".into(),
                },
                502,
                "upstream_error",
                "provider_auth_failed",
            ),
            (
                GatewayError::NoHealthyUpstream {
                    model: "m".into(),
                    retry_after: 5,
                },
                503,
                "upstream_error",
                "no_healthy_upstream",
            ),
            (
                GatewayError::UpstreamTimeout {
                    provider: "p".into(),
                },
                504,
                "upstream_error",
                "upstream_timeout",
            ),
            (
                GatewayError::MalformedBody,
                400,
                "invalid_request_error",
                "invalid_body",
            ),
            (
                GatewayError::BodyTimeout { seconds: 60 },
                408,
                "invalid_request_error",
                "request_timeout",
            ),
            (
                GatewayError::ProviderRateLimited { retry_after: 3 },
                429,
                "rate_limit_error",
                "provider_rate_limited",
            ),
            (
                GatewayError::AuditUnavailable,
                503,
                "server_error",
                "audit_unavailable",
            ),
            (
                GatewayError::Internal,
                500,
                "server_error",
                "internal_error",
            ),
            (
                GatewayError::ShuttingDown,
                503,
                "server_error",
                "gateway_shutting_down",
            ),
            (
                GatewayError::Auth(Refusal::MissingCredentials),
                401,
                "authentication_error",
                "missing_credentials",
            ),
            (
                GatewayError::Auth(Refusal::JwtNotAccepted),
                401,
                "authentication_error",
                "invalid_token",
            ),
            (
                GatewayError::Auth(Refusal::ApiKeyExpired),
                401,
                "authentication_error",
                "invalid_api_key",
            ),
            (
                GatewayError::Auth(Refusal::ModelForbidden),
                403,
                "permission_error",
                "permission_denied",
            ),
            (
                GatewayError::Auth(Refusal::AuthUnavailable),
                503,
                "authentication_error",
                "auth_unavailable",
            ),
        ];
        for (e, status, ty, code) in cases {
            assert_eq!(
                (e.status(), e.error_type(), e.code()),
                (status, ty, code),
                "{e:?}"
            );
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["type"], ty);
            assert!(v["error"]["message"].as_str().unwrap().len() > 5);
        }
    }

    #[test]
    fn suggestions_are_in_the_message() {
        let e = GatewayError::ModelNotFound {
            model: "gpt-4o-mni".into(),
            suggestions: vec!["gpt-4o-mini".into(), "gpt-4o".into()],
        };
        assert!(e.message().contains("Did you mean: gpt-4o-mini, gpt-4o?"));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["param"], "model");
    }

    #[test]
    fn headers_carry_retry_hints() {
        let e = GatewayError::NoHealthyUpstream {
            model: "m".into(),
            retry_after: 7,
        };
        let h = e.response_header("rid", 10);
        assert_eq!(h.headers["retry-after"], "7");
        assert_eq!(
            h.headers["x-should-retry"], "false",
            "final: the gateway retried already"
        );
        let h = GatewayError::ProviderRateLimited { retry_after: 3 }.response_header("rid", 1);
        assert_eq!(h.status, 429);
        assert_eq!(h.headers["retry-after"], "3");
        let h = GatewayError::UnknownEndpoint.response_header("rid", 10);
        assert_eq!(h.headers["x-should-retry"], "false");
        assert_eq!(h.headers["x-request-id"], "rid");
    }
}
