//! Admission decisions from inline configurations, without a Session: each step's outcome for
//! the requests that reach it.

use super::route::{route, Caller, Outcome, Routing};
use super::*;
use crate::proxy::body::ReadBody;
use crate::test_support::{caller, resolved_runtime, runtime};
use bytes::Bytes;
use std::sync::Arc;

const CONFIG: &str = r#"
auth:
  test_tokens: true
  roles:
    user:  { models: ["gpt-*", "local-*"], endpoints: [chat, models] }
    embed: { models: ["*"], endpoints: [embeddings] }
    admin: { models: ["*"], endpoints: ["*"] }
server:
  max_body_bytes: 2000
  extra_paths: [{ path: /v1/audio/speech, group: speech }]
providers:
  mock: { kind: mock }
  net:
    kind: openai-compatible
    endpoints: ["http://127.0.0.1:9"]
    health_check: { enabled: false }
models:
  - id: gpt-4o-mini
    aliases: [mini]
    targets: [{ provider: net, model: gpt-4o-mini-2024 }]
  - id: local-small
    targets: [{ provider: mock, model: mock-small }]
  - id: secret-model
    targets: [{ provider: mock }]
"#;

fn post(declared: Option<u64>) -> Head<'static> {
    static POST: http::Method = http::Method::POST;
    Head {
        method: &POST,
        declared_length: declared,
    }
}

fn get() -> Head<'static> {
    static GET: http::Method = http::Method::GET;
    Head {
        method: &GET,
        declared_length: None,
    }
}

fn authorize_path(
    rt: &Runtime,
    roles: &[&str],
    path: &str,
    head: Head<'_>,
) -> Result<Endpoint, Refused> {
    let access = caller(rt, roles).access;
    authorize(rt, access, Endpoint::of_path(rt, path), head)
}

fn body(json: &str) -> ReadBody {
    ReadBody {
        bytes: Bytes::copy_from_slice(json.as_bytes()),
        replayable: true,
    }
}

fn route_chat(rt: &Runtime, roles: &[&str], json: &str, test_mode: bool) -> Routing {
    let principal = caller(rt, roles);
    let c = Caller {
        principal: &principal,
        test_mode,
    };
    route(
        rt,
        &EndpointGroup::Chat,
        c,
        body(json),
        tokio::time::Instant::now(),
    )
}

fn refused(r: &Routing) -> Option<&Refused> {
    match &r.outcome {
        Outcome::Refuse { why, .. } => Some(why),
        _ => None,
    }
}

#[test]
fn probes_and_metrics_need_no_caller() {
    let rt = runtime(CONFIG);
    assert_eq!(entry(&rt, "/health"), Entry::Probe(Local::Health));
    assert_eq!(entry(&rt, "/readyz"), Entry::Probe(Local::Ready));
    assert_eq!(
        entry(&rt, "/metrics"),
        Entry::Metrics,
        "development default: main listener"
    );
    assert_eq!(entry(&rt, "/v1/models"), Entry::Guarded);
    assert_eq!(entry(&rt, "/v1/chat/completions"), Entry::Guarded);

    let separate = runtime(&format!("{CONFIG}metrics: {{ listen: \"127.0.0.1:0\" }}\n"));
    assert_eq!(entry(&separate, "/metrics"), Entry::Guarded);
}

#[test]
fn endpoints_by_path() {
    let rt = runtime(CONFIG);
    assert_eq!(
        Endpoint::of_path(&rt, "/v1/chat/completions"),
        Some(Endpoint::Proxied(EndpointGroup::Chat))
    );
    assert_eq!(
        Endpoint::of_path(&rt, "/v1/models/gpt-4o-mini"),
        Some(Endpoint::Local(Local::Model))
    );
    let speech = Endpoint::of_path(&rt, "/v1/audio/speech").unwrap();
    assert_eq!(
        speech,
        Endpoint::Proxied(EndpointGroup::Custom("speech".into()))
    );
    assert_eq!(speech.label(), "speech");
    assert_eq!(Endpoint::of_path(&rt, "/v1/files"), None);
    assert_eq!(Endpoint::of_path(&rt, "/v1/organization/users"), None);
}

#[test]
fn a_caller_without_known_roles_is_denied_whatever_the_path() {
    let rt = runtime(CONFIG);
    for path in ["/v1/chat/completions", "/v1/models", "/v1/files"] {
        assert_eq!(
            authorize_path(&rt, &["intern"], path, post(None)),
            Err(Refused::Denied(Refusal::NoKnownRoles)),
            "{path}"
        );
    }
}

#[test]
fn unknown_paths_are_rejected_after_authentication() {
    let rt = runtime(CONFIG);
    assert_eq!(
        authorize_path(&rt, &["admin"], "/v1/files", post(None)),
        Err(Refused::Rejected(GatewayError::UnknownEndpoint))
    );
}

#[test]
fn endpoint_groups_are_granted_by_roles() {
    let rt = runtime(CONFIG);
    assert_eq!(
        authorize_path(&rt, &["user"], "/v1/embeddings", post(Some(10))),
        Err(Refused::Denied(Refusal::EndpointForbidden))
    );
    assert_eq!(
        authorize_path(&rt, &["embed"], "/v1/embeddings", post(Some(10))),
        Ok(Endpoint::Proxied(EndpointGroup::Embeddings))
    );
    assert_eq!(
        authorize_path(&rt, &["user"], "/api/providers/health", get()),
        Err(Refused::Denied(Refusal::EndpointForbidden)),
        "provider health is admin"
    );
    assert_eq!(
        authorize_path(&rt, &["admin"], "/api/providers/health", get()),
        Ok(Endpoint::Local(Local::ProvidersHealth))
    );
    assert_eq!(
        authorize_path(&rt, &["user"], "/v1/audio/speech", post(None)),
        Err(Refused::Denied(Refusal::EndpointForbidden)),
        "a custom group needs a role that names it"
    );
}

#[test]
fn proxied_endpoints_take_post_within_the_body_limit() {
    let rt = runtime(CONFIG);
    assert_eq!(
        authorize_path(&rt, &["user"], "/v1/chat/completions", get()),
        Err(Refused::Rejected(GatewayError::MethodNotAllowed {
            allow: "POST"
        }))
    );
    assert_eq!(
        authorize_path(&rt, &["user"], "/v1/chat/completions", post(Some(2001))),
        Err(Refused::Rejected(GatewayError::RequestTooLarge {
            limit: 2000
        }))
    );
    assert!(authorize_path(&rt, &["user"], "/v1/chat/completions", post(Some(2000))).is_ok());
    assert!(
        authorize_path(&rt, &["user"], "/v1/chat/completions", post(None)).is_ok(),
        "a chunked body is measured while it is read"
    );
    // Local endpoints check their own methods.
    assert!(authorize_path(&rt, &["user"], "/v1/models", post(Some(5000))).is_ok());
}

#[test]
fn bodies_without_json_or_model_are_rejected() {
    let rt = runtime(CONFIG);
    let r = route_chat(&rt, &["user"], "{not json", false);
    assert!(matches!(
        refused(&r),
        Some(Refused::Rejected(GatewayError::InvalidJson(_)))
    ));
    assert_eq!(r.requested_model, None);
    let r = route_chat(&rt, &["user"], r#"{"messages":[]}"#, false);
    assert!(matches!(
        refused(&r),
        Some(Refused::Rejected(GatewayError::MissingModel(_)))
    ));
}

#[test]
fn unknown_models_suggest_only_what_the_caller_may_use() {
    let rt = runtime(CONFIG);
    let r = route_chat(&rt, &["user"], r#"{"model":"secret-modle"}"#, false);
    let Some(Refused::Rejected(GatewayError::ModelNotFound { model, suggestions })) = refused(&r)
    else {
        panic!("expected model_not_found, got {:?}", r.outcome);
    };
    assert_eq!(model, "secret-modle");
    assert!(
        suggestions.is_empty(),
        "secret-model is not the user's: {suggestions:?}"
    );
    assert_eq!(r.requested_model.as_deref(), Some("secret-modle"));

    let r = route_chat(&rt, &["admin"], r#"{"model":"secret-modle"}"#, false);
    let Some(Refused::Rejected(GatewayError::ModelNotFound { suggestions, .. })) = refused(&r)
    else {
        panic!("expected model_not_found, got {:?}", r.outcome);
    };
    assert_eq!(suggestions, &["secret-model".to_string()]);
}

#[test]
fn models_are_authorized_on_their_canonical_id() {
    let rt = runtime(CONFIG);
    let r = route_chat(&rt, &["user"], r#"{"model":"secret-model"}"#, false);
    assert_eq!(refused(&r), Some(&Refused::Denied(Refusal::ModelForbidden)));
    assert_eq!(
        r.model_id.as_deref(),
        Some("secret-model"),
        "the audit line names it"
    );

    // Roles that grant the endpoint and the model separately do not combine.
    let r = route_chat(&rt, &["embed"], r#"{"model":"local-small"}"#, false);
    assert_eq!(refused(&r), Some(&Refused::Denied(Refusal::ModelForbidden)));
}

#[test]
fn a_mock_first_in_line_answers_with_the_body_renamed_for_it() {
    let rt = runtime(CONFIG);
    let r = route_chat(
        &rt,
        &["user"],
        r#"{"model":"local-small","stream":true}"#,
        false,
    );
    let Outcome::Mock {
        route,
        body,
        usage_requested,
    } = r.outcome
    else {
        panic!("expected the mock, got {:?}", r.outcome);
    };
    assert_eq!(&*route.model_id, "local-small");
    assert_eq!(&*route.target.upstream_model, "mock-small");
    assert!(route.stream);
    assert!(
        usage_requested,
        "a stream whose client did not ask for usage"
    );
    assert_eq!(
        &body[..],
        br#"{"stream_options":{"include_usage":true},"model":"mock-small","stream":true}"#
    );

    let asked = r#"{"model":"local-small","stream":true,"stream_options":{"include_usage":true}}"#;
    let r = route_chat(&rt, &["user"], asked, false);
    let Outcome::Mock {
        usage_requested, ..
    } = r.outcome
    else {
        panic!("expected the mock");
    };
    assert!(!usage_requested, "the client's own");
    let off = runtime(&format!("{CONFIG}usage: {{ force_stream_usage: false }}\n"));
    let r = route_chat(
        &off,
        &["user"],
        r#"{"model":"local-small","stream":true}"#,
        false,
    );
    let Outcome::Mock { body, .. } = r.outcome else {
        panic!("expected the mock");
    };
    assert_eq!(&body[..], br#"{"model":"mock-small","stream":true}"#);
}

#[test]
fn test_mode_sends_any_name_to_the_mock_but_keeps_model_permissions() {
    let rt = runtime(CONFIG);
    let r = route_chat(&rt, &["user"], r#"{"model":"no-such-model"}"#, true);
    let Outcome::Mock { route, body, .. } = r.outcome else {
        panic!("expected the mock, got {:?}", r.outcome);
    };
    assert_eq!(&*route.model_id, "no-such-model");
    assert_eq!(&body[..], br#"{"model":"no-such-model"}"#, "not renamed");

    let r = route_chat(&rt, &["user"], r#"{"model":"secret-model"}"#, true);
    assert_eq!(refused(&r), Some(&Refused::Denied(Refusal::ModelForbidden)));
}

#[test]
fn the_default_model_serves_unknown_names_and_is_authorized_like_any() {
    let rt = runtime(&format!("{CONFIG}default_model: secret-model\n"));
    let r = route_chat(&rt, &["admin"], r#"{"model":"whatever"}"#, false);
    let Outcome::Mock { route, .. } = r.outcome else {
        panic!("expected the mock, got {:?}", r.outcome);
    };
    assert!(route.default_model_used);
    assert_eq!(&*route.model_id, "secret-model");

    let r = route_chat(&rt, &["user"], r#"{"model":"whatever"}"#, false);
    assert_eq!(refused(&r), Some(&Refused::Denied(Refusal::ModelForbidden)));
}

#[test]
fn a_provider_without_backends_is_unservable_but_the_route_is_kept_for_the_logs() {
    let rt = runtime(CONFIG);
    // Not resolved yet: the pool has no backend.
    let r = route_chat(&rt, &["user"], r#"{"model":"mini"}"#, false);
    let Outcome::Refuse { why, route } = r.outcome else {
        panic!("expected a refusal, got {:?}", r.outcome);
    };
    assert!(matches!(
        why,
        Refused::Rejected(GatewayError::NoHealthyUpstream { ref model, .. }) if model == "gpt-4o-mini"
    ));
    assert_eq!(route.map(|r| r.model_id), Some(Arc::from("gpt-4o-mini")));
    assert_eq!(r.requested_model.as_deref(), Some("mini"));
}

#[tokio::test]
async fn a_resolved_provider_gets_a_plan_with_its_first_attempt_chosen() {
    let rt = resolved_runtime(CONFIG).await;
    let r = route_chat(&rt, &["user"], r#"{"model":"mini","messages":[]}"#, false);
    let Outcome::Proxy {
        route,
        mut plan,
        body,
    } = r.outcome
    else {
        panic!("expected the proxy, got {:?}", r.outcome);
    };
    assert_eq!(&*route.target.upstream_model, "gpt-4o-mini-2024");
    assert_eq!(
        &body[..],
        br#"{"model":"mini","messages":[]}"#,
        "renamed per attempt, later"
    );
    assert_eq!(plan.made, 1);
    let (attempt, target) = plan
        .current_or_next(&rt, tokio::time::Instant::now())
        .unwrap();
    assert_eq!(attempt.backend.addr, "127.0.0.1:9".parse().unwrap());
    assert_eq!(&*target.provider_name, "net");
    assert_eq!(plan.made, 1, "the attempt in flight is not chosen twice");
}

#[tokio::test]
async fn a_chunked_body_too_large_to_replay_is_relayed() {
    let rt = resolved_runtime(CONFIG).await;
    let principal = caller(&rt, &["user"]);
    let c = Caller {
        principal: &principal,
        test_mode: false,
    };
    let mut b = body(r#"{"model":"gpt-4o-mini"}"#);
    b.replayable = false;
    let r = route(&rt, &EndpointGroup::Chat, c, b, tokio::time::Instant::now());
    let Outcome::Relay { body, principal } = r.outcome else {
        panic!("expected a relay, got {:?}", r.outcome);
    };
    assert_eq!(&body[..], br#"{"model":"gpt-4o-mini"}"#);
    assert_eq!(&*principal.subject, "alice");
}
