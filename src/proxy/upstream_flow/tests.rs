//! What the upstream hooks decide, called as Pingora calls them, on a request context with a
//! plan over inline configurations (pools of IP literals): provider statuses, connect and proxy
//! errors, the error a client sees, and the breaker's verdict at the end.

use super::*;
use crate::proxy::admission::route::Route;
use crate::proxy::attempts::Plan;
use crate::runtime::Runtime;
use crate::test_support::resolved_runtime;
use std::sync::Arc;

const CONFIG: &str = r#"
providers:
  a:
    kind: openai
    endpoints: ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    keys: [{ id: k1, value: sk-aaaaaaaa1 }, { id: k2, value: sk-aaaaaaaa2 }]
    health_check: { enabled: false }
    retry: { max_attempts: 2, deadline_ms: 60000 }
  b:
    kind: openai-compatible
    endpoints: ["http://127.0.0.1:11"]
    health_check: { enabled: false }
models:
  - id: m
    targets: [{ provider: a }]
  - id: keyless
    targets: [{ provider: b }]
"#;

/// A request for `model` routed and its first attempt chosen, as `request_filter` leaves it.
fn routed(rt: &Arc<Runtime>, model: &str) -> RequestCtx {
    let mut ctx = RequestCtx::new(rt.clone(), crate::shutdown::Drain::new().enter());
    ctx.request_id = "rid".into();
    ctx.requested_model = Some(model.into());
    let m = rt.registry.get(rt.registry.lookup(model).unwrap());
    let now = tokio::time::Instant::now();
    let mut plan = Plan::new(rt, m.id.clone(), m.targets.clone(), Arc::from("alice"), now);
    plan.current_or_next(rt, now).unwrap();
    ctx.route = Some(Route {
        group: crate::endpoints::EndpointGroup::Chat,
        model_id: m.id.clone(),
        default_model_used: false,
        target: m.targets[0].clone(),
        stream: false,
        include_usage: false,
        max_tokens: None,
        model: Some(rt.registry.lookup(model).unwrap()),
    });
    ctx.plan = Some(plan);
    ctx
}

async fn runtime() -> Arc<Runtime> {
    Arc::new(resolved_runtime(CONFIG).await)
}

fn response(status: u16) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    r.insert_header("content-type", "application/json").unwrap();
    r
}

fn key_state(rt: &Runtime, id: &str) -> &'static str {
    let provider = rt.providers.iter().find(|p| &*p.name == "a").unwrap();
    let now = tokio::time::Instant::now();
    provider
        .keys
        .view(now)
        .into_iter()
        .find(|k| k.id == id)
        .unwrap()
        .state
}

fn current_key(ctx: &RequestCtx) -> Option<String> {
    let a = ctx.plan.as_ref()?.current.as_ref()?;
    a.key.as_ref().map(|(_, k)| k.id.to_string())
}

#[tokio::test]
async fn a_401_disables_the_key_and_retries_with_another() {
    let rt = runtime().await;
    let mut ctx = routed(&rt, "m");
    let used = current_key(&ctx).unwrap();
    let e = on_response(&mut ctx, &mut response(401)).unwrap_err();
    assert!(e.retry(), "Pingora is asked to try again");
    assert!(ctx.retry_requested);
    assert_eq!(key_state(&rt, &used), "disabled");
    // error_while_proxy keeps the retry Pingora would refuse for a POST.
    let e = on_proxy_error(&mut ctx, e, false, false);
    assert!(e.retry());
    next_peer(&mut ctx).unwrap();
    assert_ne!(current_key(&ctx).unwrap(), used, "the other key");
}

#[tokio::test]
async fn a_429_cools_the_key_but_a_keyless_providers_429_goes_to_the_client() {
    let rt = runtime().await;
    let mut ctx = routed(&rt, "m");
    let used = current_key(&ctx).unwrap();
    let mut r = response(429);
    r.insert_header("retry-after", "30").unwrap();
    assert!(on_response(&mut ctx, &mut r).unwrap_err().retry());
    assert_eq!(key_state(&rt, &used), "cooling");

    let mut ctx = routed(&rt, "keyless");
    let mut r = response(429);
    r.insert_header("retry-after", "30").unwrap();
    on_response(&mut ctx, &mut r).expect("relayed");
    assert_eq!(
        r.headers["retry-after"], "30",
        "the provider's hint for the caller"
    );
    assert_eq!(r.headers["x-request-id"], "rid");
    assert_eq!(r.headers["x-ultra-provider"], "b");
}

#[tokio::test]
async fn a_5xx_is_retried_while_the_budget_allows_and_the_last_one_is_relayed() {
    let rt = runtime().await;
    let mut ctx = routed(&rt, "m");
    let e = on_response(&mut ctx, &mut response(503)).unwrap_err();
    assert!(e.retry(), "another backend is left");
    next_peer(&mut ctx).unwrap();
    let mut last = response(503);
    on_response(&mut ctx, &mut last).expect("max_attempts 2: the second 5xx is the answer");
    assert_eq!(last.headers["x-should-retry"], "false");
    assert_eq!(ctx.attempts(), 2);
}

#[tokio::test]
async fn connect_failures_retry_until_the_budget_is_spent_then_decide_the_error() {
    let rt = runtime().await;
    let mut ctx = routed(&rt, "m");
    let refused = || Error::explain(ErrorType::ConnectRefused, "test");
    assert!(on_connect_failure(&mut ctx, refused()).retry());
    assert_eq!(ctx.pending_error, None);
    next_peer(&mut ctx).unwrap();
    assert!(!on_connect_failure(&mut ctx, refused()).retry());
    assert_eq!(
        ctx.pending_error,
        Some(GatewayError::BadUpstream {
            provider: "a".into(),
            detail: "could not connect"
        })
    );
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried_without_spending_or_blaming() {
    let rt = runtime().await;
    let mut ctx = routed(&rt, "m");
    let closed = Error::explain(ErrorType::ConnectionClosed, "test");
    assert!(on_proxy_error(&mut ctx, closed, false, true).retry());
    let plan = ctx.plan.as_ref().unwrap();
    assert!(plan.budget_left(tokio::time::Instant::now()));
    assert!(plan.current.is_none(), "picked afresh by upstream_peer");
    // The same error on a new connection is the backend's failure.
    next_peer(&mut ctx).unwrap();
    let closed = Error::explain(ErrorType::ConnectionClosed, "test");
    assert!(on_proxy_error(&mut ctx, closed, false, false).retry());
}

#[tokio::test]
async fn nothing_is_retried_once_the_response_began_or_when_the_client_failed() {
    let rt = runtime().await;
    let mut ctx = routed(&rt, "m");
    let e = Error::explain(ErrorType::ReadError, "test");
    assert!(!on_proxy_error(&mut ctx, e, true, false).retry());
    let mut e = Error::explain(ErrorType::ReadError, "test");
    e.esource = ErrorSource::Downstream;
    assert!(!on_proxy_error(&mut ctx, e, false, false).retry());
}

#[tokio::test]
async fn errors_map_to_what_the_client_sees() {
    let rt = runtime().await;
    let ctx = routed(&rt, "m");
    let upstream = |t: ErrorType| {
        let mut e = Error::explain(t, "test");
        e.esource = ErrorSource::Upstream;
        classify(&e, &ctx)
    };
    let timeout = Some(GatewayError::UpstreamTimeout {
        provider: "a".into(),
    });
    assert_eq!(upstream(ErrorType::ReadTimedout), timeout);
    assert_eq!(upstream(ErrorType::ConnectTimedout), timeout);
    assert_eq!(upstream(ErrorType::TLSHandshakeTimedout), timeout);
    assert!(matches!(
        upstream(ErrorType::ConnectRefused),
        Some(GatewayError::BadUpstream {
            detail: "could not connect",
            ..
        })
    ));
    assert!(matches!(
        upstream(ErrorType::InvalidCert),
        Some(GatewayError::BadUpstream {
            detail: "TLS handshake failed",
            ..
        })
    ));
    assert!(matches!(
        upstream(ErrorType::InvalidHTTPHeader),
        Some(GatewayError::BadUpstream { .. })
    ));
    let mut gone = Error::explain(ErrorType::WriteError, "test");
    gone.esource = ErrorSource::Downstream;
    assert_eq!(classify(&gone, &ctx), None, "the client went away");
    let internal = Error::explain(ErrorType::InternalError, "test");
    assert_eq!(classify(&internal, &ctx), Some(GatewayError::Internal));
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_gets_its_breaker_verdict_at_the_end() {
    let rt = runtime().await;
    let backend_of = |ctx: &RequestCtx| {
        ctx.plan
            .as_ref()
            .unwrap()
            .current
            .as_ref()
            .unwrap()
            .backend
            .clone()
    };

    // A 5xx that reached the client is a failure.
    let mut ctx = routed(&rt, "m");
    let backend = backend_of(&ctx);
    finish(&mut ctx, 502, false, false);
    assert!(backend.last_error().is_some());

    // A client that left says nothing about the backend.
    let mut ctx = routed(&rt, "keyless");
    let backend = backend_of(&ctx);
    finish(&mut ctx, 0, true, false);
    assert!(backend.last_error().is_none());
    assert!(
        ctx.plan.as_ref().unwrap().current.is_none(),
        "the ticket is settled once"
    );

    // A stream broken after it began is a failure even with a 200.
    let mut ctx = routed(&rt, "keyless");
    finish(&mut ctx, 200, false, true);
    assert_eq!(
        backend.last_error().map(|(e, _)| e),
        Some("response broke after it began".to_string())
    );
}
