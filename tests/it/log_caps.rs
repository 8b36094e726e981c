//! Log flooding: a client's text (model, path, subject, roles) is clipped in every log line,
//! no line exceeds the hard cap, and error messages do not echo a request at length.

use crate::common::auth::*;
use crate::common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

/// Every log line's cap (`clip::LINE_MAX_BYTES`), and each client field's (`FIELD_MAX_BYTES`).
const LINE_MAX: usize = 8 * 1024;
const FIELD_MAX: usize = 256;

fn start(upstream: &str) -> TestGateway {
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    TestGateway::start_with(&auth_config(upstream, ""), &files, &[])
}

/// A clipped field: its first 256 bytes and a marker with the number of bytes cut.
fn assert_clipped(field: &Value, original: &str) {
    let s = field
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {field}"));
    let cut = original.len() - FIELD_MAX;
    assert_eq!(s, format!("{}…[+{cut} bytes]", &original[..FIELD_MAX]));
}

fn assert_no_long_line(gw: &TestGateway) {
    for line in gw.all_output().lines() {
        assert!(line.len() <= LINE_MAX, "a {}-byte log line", line.len());
    }
}

#[tokio::test]
async fn a_megabyte_model_and_a_long_path_give_short_log_lines() {
    let up = MockUpstream::openai_like().await;
    let gw = start(&up.url());

    // Unauthenticated, with a 60 KiB path: one audit line and one access line, both short.
    let path = format!("/v1/{}", "p".repeat(60_000));
    let r = client().get(gw.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_clipped(&gw.audit_entry(&rid).await["path"], &path);
    assert_clipped(&gw.access_entry(&rid).await["path"], &path);

    // Authenticated, with a 1,000,000-character model.
    let model = "m".repeat(1_000_000);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(hs_token("alice", &["admin"]))
        .json(&json!({"model": model, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.len() < 1024, "the error echoes {} bytes", body.len());
    assert_clipped(&gw.audit_entry(&rid).await["model"], &model);
    let access = gw.access_entry(&rid).await;
    assert_eq!(access["model"], Value::Null, "routed nowhere");
    assert_clipped(&access["requested_model"], &model);
    assert_no_long_line(&gw);
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn a_token_with_a_long_subject_and_many_roles_gives_a_short_audit_line() {
    let up = MockUpstream::openai_like().await;
    let gw = start(&up.url());
    let subject = "s".repeat(4000);
    let roles: Vec<String> = std::iter::once("user".to_string())
        .chain((0..150).map(|i| format!("r{i}")))
        .collect();
    let mut c = claims(&subject, &[]);
    c["roles"] = json!(roles);
    let token = sign(Algorithm::HS256, None, &c, Signer::Hmac(HS_SECRET));
    assert!(token.len() < 8192, "under the token limit: {}", token.len());
    let r = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let audit = gw.audit_entry(&rid).await;
    assert_clipped(&audit["subject"], &subject);
    let logged = audit["roles"].as_array().unwrap();
    assert_eq!(logged.len(), 17, "16 roles and a marker");
    assert_eq!(logged[0], "user");
    assert_eq!(logged[16], "…[+135 more]");
    assert_clipped(&gw.access_entry(&rid).await["subject"], &subject);
    assert_no_long_line(&gw);
}

/// A parser's detail that quotes the request is clipped in the error message.
#[tokio::test]
async fn an_error_message_does_not_echo_the_request_at_length() {
    let up = MockUpstream::openai_like().await;
    let gw = start(&up.url());
    let big = "q".repeat(100_000);
    // `/api/analyze` parses a typed body: serde's error quotes the string it did not expect.
    let r = client()
        .post(gw.url("/api/analyze"))
        .bearer_auth(hs_token("alice", &["admin"]))
        .json(&json!({"prompt": 1, "models": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.len() < 600,
        "{} bytes: {message:.300}",
        message.len()
    );
    assert_no_long_line(&gw);
}
