//! Authorization: the role × model × endpoint matrix on canonical ids, filtered model lists
//! and suggestions, unknown roles.

use crate::common::auth::*;
use crate::common::*;
use serde_json::{json, Value};

fn start(upstream: &str) -> TestGateway {
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    TestGateway::start_with(&auth_config(upstream, ""), &files, &[])
}

async fn call(gw: &TestGateway, token: &str, path: &str, model: &str) -> (u16, Value) {
    let r = client()
        .post(gw.url(path))
        .bearer_auth(token)
        .json(&json!({"model": model, "messages": [], "input": "x"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn role_model_endpoint_matrix() {
    let up = MockUpstream::openai_like().await;
    let gw = start(&up.url());
    let chat = "/v1/chat/completions";
    let emb = "/v1/embeddings";
    // (roles, path, model, expected status)
    let cases: &[(&[&str], &str, &str, u16)] = &[
        (&["user"], chat, "gpt-4o-mini", 200),
        (&["user"], chat, "mini", 200),
        (&["user"], chat, "claude-3-5-sonnet", 200),
        (&["user"], chat, "gpt-4o", 403),
        (&["user"], chat, "gpt4-alias", 403),
        (&["user"], emb, "gpt-4o-mini", 403),
        (&["service"], emb, "gpt-4o", 200),
        (&["service"], chat, "gpt-4o", 403),
        (&["user", "service"], emb, "gpt-4o", 200),
        (&["user", "service"], chat, "gpt-4o-mini", 200),
        (&["user", "service"], chat, "gpt-4o", 403),
        (&["admin"], chat, "gpt-4o", 200),
        (&["admin"], "/v1/moderations", "gpt-4o", 200),
        (&["nobody", "ghost"], chat, "gpt-4o-mini", 403),
        (&[], chat, "gpt-4o-mini", 403),
    ];
    for (roles, path, model, expected) in cases {
        let token = hs_token("alice", roles);
        let (status, body) = call(&gw, &token, path, model).await;
        assert_eq!(status, *expected, "{roles:?} {path} {model}: {body}");
        if status == 403 {
            assert_eq!(body["error"]["type"], "permission_error");
            assert_eq!(body["error"]["code"], "permission_denied");
        }
    }
    // A caller whose roles are all unknown is refused, and the audit says who it was.
    let r = client()
        .post(gw.url(chat))
        .bearer_auth(hs_token("ghost-user", &["nobody"]))
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let a = gw.audit_entry(&rid).await;
    assert_eq!(a["reason"], "no_known_roles");
    assert_eq!(a["subject"], "ghost-user");
    assert_eq!(a["roles"], json!(["nobody"]));

    let forwarded = up.received().len();
    let allowed = cases.iter().filter(|c| c.3 == 200).count();
    assert_eq!(
        forwarded, allowed,
        "only allowed requests reach the provider"
    );
}

#[tokio::test]
async fn model_lists_and_suggestions_show_only_allowed_models() {
    let up = MockUpstream::openai_like().await;
    let gw = start(&up.url());
    let user = hs_token("alice", &["user"]);
    let ids = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let list: Value = gw.get_json_as("/v1/models", &user).await;
    assert_eq!(ids(list), vec!["gpt-4o-mini", "claude-3-5-sonnet"]);
    let avail: Value = gw.get_json_as("/api/available-models", &user).await;
    assert_eq!(ids(avail), vec!["gpt-4o-mini", "claude-3-5-sonnet"]);
    let admin = hs_token("root", &["admin"]);
    let list: Value = gw.get_json_as("/v1/models", &admin).await;
    assert_eq!(ids(list).len(), 3);

    let (status, body) = call(&gw, &user, "/v1/chat/completions", "gpt-4").await;
    assert_eq!(status, 404);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("gpt-4o-mini") && !msg.contains("gpt-4o,") && !msg.contains("gpt-4o?"),
        "{msg}"
    );

    let r = gw.get_as("/v1/models/gpt-4o", &user).await;
    assert_eq!(
        r.status(),
        404,
        "a model the caller may not use is not in its catalogue"
    );
    let r = gw.get_as("/v1/models/gpt-4o", &admin).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn endpoint_groups_apply_to_local_endpoints_too() {
    let up = MockUpstream::openai_like().await;
    let cfg = auth_config(&up.url(), "").replace(
        "    service: { models: ['*'], endpoints: [embeddings, models] }",
        "    service: { models: ['*'], endpoints: [embeddings, models] }\n    chatonly: { models: ['*'], endpoints: [chat] }",
    );
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_with(&cfg, &files, &[]);
    let t = hs_token("bob", &["chatonly"]);
    let r = gw.get_as("/v1/models", &t).await;
    assert_eq!(r.status(), 403);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let a = gw.audit_entry(&rid).await;
    assert_eq!(a["reason"], "endpoint_forbidden");
    // Health and readiness need nothing.
    assert_eq!(gw.get("/health").await.status(), 200);
    assert_eq!(gw.get("/ready").await.status(), 200);
}
