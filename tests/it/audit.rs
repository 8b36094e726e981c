//! The audit log: one line per decision with who, what and why; never a secret; reopened on
//! SIGUSR1; and what happens when it cannot keep up.

use crate::common::auth::*;
use crate::common::*;
use serde_json::{json, Value};

fn files() -> Vec<(&'static str, String)> {
    key_files()
}

fn start(cfg: &str) -> TestGateway {
    let f = files();
    let f: Vec<(&str, &str)> = f.iter().map(|(n, t)| (*n, t.as_str())).collect();
    TestGateway::start_with(cfg, &f, &[])
}

#[tokio::test]
async fn audit_lines_describe_each_decision() {
    let up = MockUpstream::openai_like().await;
    let cfg = auth_config(&up.url(), "").replace(
        "logging: { level: warn }",
        "logging: { level: warn }\nserver: { trusted_proxies: [127.0.0.1] }",
    );
    let gw = start(&cfg);
    let token = hs_token("alice", &["user"]);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.7, 127.0.0.1")
        .json(&chat_body("mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let a = gw.audit_entry(&rid).await;
    assert_eq!(a["outcome"], "allow");
    assert_eq!(a["reason"], "ok");
    assert_eq!(a["subject"], "alice");
    assert_eq!(a["method"], "jwt");
    assert_eq!(a["roles"], json!(["user"]));
    assert_eq!(a["http_method"], "POST");
    assert_eq!(a["path"], "/v1/chat/completions");
    assert_eq!(a["model"], "gpt-4o-mini", "the canonical id, not the alias");
    assert_eq!(
        a["client"], "203.0.113.7",
        "X-Forwarded-For from a trusted proxy"
    );
    assert!(a["ts"].as_str().unwrap().ends_with('Z'));
    let access = gw.access_entry(&rid).await;
    assert_eq!(access["subject"], "alice");
    assert_eq!(access["provider_key_id"], "k1");

    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let a = gw.audit_entry(&rid).await;
    assert_eq!(a["outcome"], "deny");
    assert_eq!(a["reason"], "model_forbidden");
    assert_eq!(a["model"], "gpt-4o");
    assert_eq!(a["subject"], "alice");

    // One line per request.
    let count = gw
        .audit_log()
        .iter()
        .filter(|e| e["request_id"] == rid.as_str())
        .count();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn untrusted_peers_cannot_spoof_their_address() {
    let gw = start(&auth_config(&dead_url(), ""));
    let r = client()
        .get(gw.url("/v1/models"))
        .header("x-api-key", USER_KEY)
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(gw.audit_entry(&rid).await["client"], "127.0.0.1");
}

/// Every window of `n` characters of `secret`.
fn windows(secret: &str, n: usize) -> Vec<String> {
    let c: Vec<char> = secret.chars().collect();
    c.windows(n.min(c.len()))
        .map(|w| w.iter().collect())
        .collect()
}

#[tokio::test]
async fn no_token_key_or_secret_reaches_any_log() {
    let up = MockUpstream::openai_like().await;
    let gw = start(&auth_config(&up.url(), ""));
    let good = hs_token("alice", &["user"]);
    let expired = {
        let mut c = claims("alice", &["user"]);
        c["exp"] = json!(now() - 100);
        sign(
            jsonwebtoken::Algorithm::HS256,
            None,
            &c,
            Signer::Hmac(HS_SECRET),
        )
    };
    let wrong_key = "uk_this_is_not_a_configured_key_0123456789";
    let calls: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {good}")),
        ("authorization", format!("Bearer {expired}")),
        ("authorization", format!("Bearer {USER_KEY}")),
        ("x-api-key", DISABLED_KEY.to_string()),
        ("x-api-key", wrong_key.to_string()),
        (
            "authorization",
            "Bearer garbage.token.value-with-secret-looking-bits".to_string(),
        ),
    ];
    let mut rids = Vec::new();
    for (h, v) in &calls {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header(*h, v)
            .json(&chat_body("mini"))
            .send()
            .await
            .unwrap();
        rids.push(r.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    // Every request's audit and access lines are out before the output is searched.
    for rid in &rids {
        gw.audit_entry(rid).await;
        gw.access_entry(rid).await;
    }
    let out = gw.all_output();
    // The signature and payload of each token, the whole of each key and secret: no 12-char
    // window of them may appear (the header `eyJhbGciOi...` is public and not checked).
    let mut secrets: Vec<String> = vec![
        USER_KEY.into(),
        DISABLED_KEY.into(),
        wrong_key.into(),
        HS_SECRET.into(),
        UPSTREAM_KEY.into(),
        "value-with-secret-looking-bits".into(),
    ];
    for t in [&good, &expired] {
        let parts: Vec<&str> = t.split('.').collect();
        secrets.push(parts[1].to_string());
        secrets.push(parts[2].to_string());
    }
    for s in &secrets {
        for w in windows(s, 12) {
            assert!(
                !out.contains(&w),
                "`{w}` (from a secret) appears in the logs:\n{out}"
            );
        }
    }
    assert!(out.contains("billing"), "keys appear by id");
}

#[tokio::test]
async fn audit_file_is_reopened_on_sigusr1() {
    let up = MockUpstream::openai_like().await;
    let cfg = auth_config(&up.url(), "audit: { path: audit.log }\n");
    let gw = start(&cfg);
    let path = gw.dir.path().join("audit.log");
    let rotated = gw.dir.path().join("audit.log.1");
    let lines = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let wait_for = |p: std::path::PathBuf, n: usize| async move {
        let what = format!("{n} lines in {}", p.display());
        poll_until(&what, secs(10), || async {
            (lines(&p).len() >= n).then_some(())
        })
        .await
    };
    client()
        .get(gw.url("/v1/models"))
        .header("x-api-key", USER_KEY)
        .send()
        .await
        .unwrap();
    wait_for(path.clone(), 1).await;
    std::fs::rename(&path, &rotated).unwrap();
    gw.signal("USR1");
    // The writer reopens within its idle check; requests keep succeeding meanwhile.
    poll_until("a new audit file", secs(10), || async {
        client()
            .get(gw.url("/v1/models"))
            .header("x-api-key", USER_KEY)
            .send()
            .await
            .unwrap();
        (!lines(&path).is_empty()).then_some(())
    })
    .await;
    assert_eq!(lines(&rotated)[0]["key_id"], "billing");
    assert_eq!(lines(&path)[0]["key_id"], "billing");
}

async fn flood_until(gw: &TestGateway, stop: impl Fn(u16) -> bool) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..3000 {
        let s = client()
            .get(gw.url("/v1/models"))
            .header("x-api-key", USER_KEY)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        seen.push(s);
        if stop(s) {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn full_audit_queue_drops_and_counts_by_default() {
    // Nobody reads stdout: the writer blocks once the pipe is full, then the 1-line queue fills.
    let cfg = auth_config(&dead_url(), "audit: { path: stdout, queue_lines: 1 }\n").replace(
        "logging: { level: warn }",
        "logging: { level: warn, access_log: off }",
    );
    let f = files();
    let f: Vec<(&str, &str)> = f.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_opts(&cfg, &f, &[], false);
    let dropped = || async {
        let text = gw.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with("ultra_audit_dropped_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut statuses = Vec::new();
    for _ in 0..60 {
        for _ in 0..50 {
            let r = client()
                .get(gw.url("/v1/models"))
                .header("x-api-key", USER_KEY)
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        if dropped().await > 0.0 {
            break;
        }
    }
    assert!(
        dropped().await > 0.0,
        "the queue never filled after {} requests",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "drop never refuses a request"
    );
}

#[tokio::test]
async fn full_audit_queue_rejects_when_configured() {
    let cfg = auth_config(
        &dead_url(),
        "audit: { path: stdout, queue_lines: 1, on_overflow: reject }\n",
    )
    .replace(
        "logging: { level: warn }",
        "logging: { level: warn, access_log: off }",
    );
    let f = files();
    let f: Vec<(&str, &str)> = f.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_opts(&cfg, &f, &[], false);
    let seen = flood_until(&gw, |s| s == 503).await;
    assert_eq!(
        *seen.last().unwrap(),
        503,
        "never refused: {} requests",
        seen.len()
    );
    let r = client()
        .get(gw.url("/v1/models"))
        .header("x-api-key", USER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(
        !r.headers().contains_key("x-should-retry"),
        "SDKs may retry"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "audit_unavailable"
    );
    // Health is not audited and stays up.
    assert_eq!(gw.get("/health").await.status(), 200);
}
