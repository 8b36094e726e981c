//! Authentication: every refusal of a JWT, the accepted algorithms and key kinds, JWKS URLs
//! (rotation, floods of unknown kids, an identity provider that is down), service API keys.

use crate::common::auth::*;
use crate::common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

async fn get_models(gw: &TestGateway, auth: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = client().get(gw.url("/v1/models"));
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    req.send().await.unwrap()
}

async fn bearer(gw: &TestGateway, token: &str) -> reqwest::Response {
    get_models(gw, Some(("authorization", &format!("Bearer {token}")))).await
}

fn start() -> TestGateway {
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    TestGateway::start_with(&auth_config(&dead_url(), ""), &files, &[])
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_with_a_reason() {
    let gw = start();
    let good = claims("alice", &["user"]);
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 60);
    let mut early = good.clone();
    early["nbf"] = json!(now() + 600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut iss_list = good.clone();
    iss_list["iss"] = json!([good["iss"].clone(), "https://evil.test"]);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut huge = good.clone();
    huge["pad"] = json!("x".repeat(9000));
    let rsa_public = fixture("rsa_public.pem");

    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "not-a-jwt".into(), "malformed_token"),
        ("two parts", "abc.def".into(), "malformed_token"),
        ("garbage", "a.b.c".into(), "malformed_token"),
        (
            "alg none",
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &good, ""),
            "alg_none",
        ),
        (
            "alg None",
            raw_token(&json!({"alg": "None"}), &good, ""),
            "alg_none",
        ),
        (
            "alg off the list",
            sign(Algorithm::HS512, None, &good, Signer::Hmac(HS_SECRET)),
            "alg_not_allowed",
        ),
        (
            "alg unknown",
            raw_token(&json!({"alg": "XX999"}), &good, "sig"),
            "alg_not_allowed",
        ),
        (
            "HS256 keyed with the RSA public key",
            sign(Algorithm::HS256, None, &good, Signer::Hmac(&rsa_public)),
            "bad_signature",
        ),
        (
            "wrong HMAC secret",
            sign(
                Algorithm::HS256,
                None,
                &good,
                Signer::Hmac("another-secret-another-secret-123"),
            ),
            "bad_signature",
        ),
        (
            "RS256 by an unknown key",
            sign(Algorithm::RS256, None, &good, Signer::Rsa2),
            "bad_signature",
        ),
        (
            "tampered payload",
            {
                let t = hs_token("alice", &["user"]);
                let parts: Vec<&str> = t.split('.').collect();
                raw_token(
                    &json!({"alg": "HS256", "typ": "JWT"}),
                    &claims("mallory", &["admin"]),
                    parts[2],
                )
            },
            "bad_signature",
        ),
        (
            // Static keys have no kid: a token naming one is checked against them all.
            "kid with static keys only, wrong key",
            sign(Algorithm::RS256, Some("nope"), &good, Signer::Rsa2),
            "bad_signature",
        ),
        (
            "expired",
            sign(Algorithm::HS256, None, &expired, Signer::Hmac(HS_SECRET)),
            "expired",
        ),
        (
            "not yet valid",
            sign(Algorithm::HS256, None, &early, Signer::Hmac(HS_SECRET)),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            sign(Algorithm::HS256, None, &wrong_iss, Signer::Hmac(HS_SECRET)),
            "wrong_issuer",
        ),
        (
            // RFC 7519: a string. jsonwebtoken alone takes a list holding the issuer.
            "iss as a list holding the issuer",
            sign(Algorithm::HS256, None, &iss_list, Signer::Hmac(HS_SECRET)),
            "issuer_not_string",
        ),
        (
            // RFC 7515 §4.1.11: an extension the gateway does not understand is refused; it
            // understands none, so any `crit` is.
            "crit header",
            sign_with_header(
                &json!({"alg": "HS256", "typ": "JWT", "crit": ["exp-ext"], "exp-ext": 1}),
                &good,
                HS_SECRET,
            ),
            "unsupported_critical_header",
        ),
        (
            "empty crit header",
            sign_with_header(&json!({"alg": "HS256", "crit": []}), &good, HS_SECRET),
            "unsupported_critical_header",
        ),
        (
            "wrong audience",
            sign(Algorithm::HS256, None, &wrong_aud, Signer::Hmac(HS_SECRET)),
            "wrong_audience",
        ),
        (
            "no subject",
            sign(Algorithm::HS256, None, &no_sub, Signer::Hmac(HS_SECRET)),
            "missing_claims",
        ),
        (
            "no exp",
            sign(Algorithm::HS256, None, &no_exp, Signer::Hmac(HS_SECRET)),
            "missing_claims",
        ),
        (
            "over 8 KiB",
            sign(Algorithm::HS256, None, &huge, Signer::Hmac(HS_SECRET)),
            "token_too_large",
        ),
    ];
    let mut messages = std::collections::HashSet::new();
    for (label, token, reason) in &cases {
        let r = bearer(&gw, token).await;
        assert_eq!(r.status(), 401, "{label}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"ultra-gateway\", error=\"invalid_token\"",
            "{label}"
        );
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "authentication_error", "{label}");
        assert_eq!(v["error"]["code"], "invalid_token", "{label}");
        messages.insert(v["error"]["message"].as_str().unwrap().to_string());
        let audit = gw.audit_entry(&rid).await;
        assert_eq!(audit["outcome"], "deny", "{label}");
        assert_eq!(audit["reason"], *reason, "{label}");
    }
    assert!(messages.len() >= 8, "reasons are told apart: {messages:?}");

    let r = get_models(&gw, None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"ultra-gateway\""
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "missing_credentials"
    );
    let r = get_models(
        &gw,
        Some(("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"ultra-gateway\", error=\"invalid_token\""
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_token"
    );
    assert_eq!(gw.audit_entry(&rid).await["reason"], "unsupported_scheme");

    // Present but empty credentials are missing ones.
    for (name, value) in [("authorization", "Bearer "), ("x-api-key", "  ")] {
        let r = get_models(&gw, Some((name, value))).await;
        assert_eq!(r.status(), 401, "{name}");
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "missing_credentials",
            "{name}"
        );
        assert_eq!(gw.audit_entry(&rid).await["reason"], "missing_credentials");
    }

    // A header that is not text is a malformed token.
    let r = raw::send(
        gw.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_token");
    let rid = r.header("x-request-id").unwrap().to_string();
    assert_eq!(gw.audit_entry(&rid).await["reason"], "malformed_token");
}

#[tokio::test]
async fn a_jwt_sent_to_a_gateway_without_jwt_is_refused_as_such() {
    let cfg = format!(
        "logging: {{ level: warn }}
auth:
  api_keys: [{{ id: svc, sha256: '{}', roles: [user] }}]
  roles: {{ user: {{ models: ['*'], endpoints: ['*'] }} }}
providers: {{ m: {{ kind: mock }} }}
models: [{{ id: m1, targets: [{{ provider: m }}] }}]
",
        digest(USER_KEY)
    );
    let gw = TestGateway::start(&cfg);
    let r = bearer(&gw, &hs_token("alice", &["user"])).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"ultra-gateway\", error=\"invalid_token\""
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_token");
    assert_eq!(v["error"]["message"], "This gateway does not accept JWTs.");
    assert_eq!(gw.audit_entry(&rid).await["reason"], "jwt_not_accepted");
    // The API key still works.
    let r = get_models(&gw, Some(("x-api-key", USER_KEY))).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_key_kind_and_algorithm_is_accepted() {
    let gw = start();
    let c = claims("alice", &["user"]);
    let tokens = [
        (
            "HS256",
            sign(Algorithm::HS256, None, &c, Signer::Hmac(HS_SECRET)),
        ),
        ("RS256", sign(Algorithm::RS256, None, &c, Signer::Rsa)),
        (
            "RS256 with a kid",
            sign(Algorithm::RS256, Some("any"), &c, Signer::Rsa),
        ),
        ("ES256", sign(Algorithm::ES256, None, &c, Signer::Ec)),
        ("EdDSA", sign(Algorithm::EdDSA, None, &c, Signer::Ed)),
    ];
    for (label, t) in &tokens {
        let r = bearer(&gw, t).await;
        assert_eq!(r.status(), 200, "{label}: {:?}", r.text().await);
    }
    // Cached: the same RS256 token again.
    assert_eq!(bearer(&gw, &tokens[1].1).await.status(), 200);
    // Within the leeway.
    let mut recent = c.clone();
    recent["exp"] = json!(now() - 2);
    assert_eq!(
        bearer(
            &gw,
            &sign(Algorithm::HS256, None, &recent, Signer::Hmac(HS_SECRET))
        )
        .await
        .status(),
        200
    );
    // Lowercase scheme.
    let r = get_models(
        &gw,
        Some(("authorization", &format!("bearer {}", tokens[0].1))),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn roles_from_a_nested_claim_and_a_single_string() {
    let extra_jwt = "    subject_claim: preferred_username\n    roles_claim: realm_access.roles\n";
    let cfg = auth_config(&dead_url(), "").replace(
        "    leeway_seconds: 5\n",
        &format!("    leeway_seconds: 5\n{extra_jwt}"),
    );
    let files = key_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = TestGateway::start_with(&cfg, &files, &[]);
    let mut c = claims("ignored", &[]);
    c["preferred_username"] = json!("kc-user");
    c["realm_access"] = json!({"roles": ["offline_access", "user"]});
    let r = bearer(
        &gw,
        &sign(Algorithm::HS256, None, &c, Signer::Hmac(HS_SECRET)),
    )
    .await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(gw.audit_entry(&rid).await["subject"], "kc-user");
    c["realm_access"] = json!({"roles": "user"});
    assert_eq!(
        bearer(
            &gw,
            &sign(Algorithm::HS256, None, &c, Signer::Hmac(HS_SECRET))
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn api_keys_in_both_headers_and_their_refusals() {
    let gw = start();
    for r in [
        get_models(&gw, Some(("authorization", &format!("Bearer {USER_KEY}")))).await,
        get_models(&gw, Some(("x-api-key", USER_KEY))).await,
    ] {
        assert_eq!(r.status(), 200);
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let a = gw.audit_entry(&rid).await;
        assert_eq!(a["method"], "api_key");
        assert_eq!(a["key_id"], "billing");
        assert_eq!(a["roles"], json!(["service"]));
    }
    let cases = [
        (
            "uk_wrong_key_0000000000000000000000000000",
            "unknown_api_key",
        ),
        (EXPIRED_KEY, "api_key_expired"),
        (DISABLED_KEY, "api_key_disabled"),
    ];
    for (key, reason) in cases {
        for header in ["authorization", "x-api-key"] {
            let value = if header == "authorization" {
                format!("Bearer {key}")
            } else {
                key.to_string()
            };
            let r = get_models(&gw, Some((header, &value))).await;
            assert_eq!(r.status(), 401, "{reason} via {header}");
            assert_eq!(
                r.headers()["www-authenticate"],
                "Bearer realm=\"ultra-gateway\", error=\"invalid_token\""
            );
            let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "invalid_api_key");
            assert_eq!(gw.audit_entry(&rid).await["reason"], reason);
        }
    }
}

/// A JWKS server whose document the test can change, counting its fetches.
async fn jwks_server(initial: Value) -> (MockUpstream, std::sync::Arc<std::sync::Mutex<Value>>) {
    let doc = std::sync::Arc::new(std::sync::Mutex::new(initial));
    let d = doc.clone();
    let up = MockUpstream::start(move |_| Reply::Json(200, d.lock().unwrap().clone())).await;
    (up, doc)
}

fn jwks_config(url: &str) -> String {
    format!(
        "logging: {{ level: warn }}
auth:
  jwt: {{ algorithms: [RS256], jwks_url: '{url}/jwks.json', issuer: {ISSUER}, audience: {AUDIENCE} }}
  api_keys: [{{ id: svc, sha256: '{}', roles: [user] }}]
  roles: {{ user: {{ models: ['*'], endpoints: ['*'] }} }}
providers: {{ m: {{ kind: mock }} }}
models: [{{ id: m1, targets: [{{ provider: m }}] }}]
",
        digest(USER_KEY)
    )
}

// Multi-threaded: the gateway fetches the JWKS from this test's server while the test thread
// waits for it to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_and_a_kid_flood_costs_one_fetch() {
    let jwks_a: Value = serde_json::from_str(&fixture("jwks_a.json")).unwrap();
    let jwks_ab: Value = serde_json::from_str(&fixture("jwks_ab.json")).unwrap();
    let (idp, doc) = jwks_server(jwks_a).await;
    let gw = TestGateway::start(&jwks_config(&idp.url()));
    let c = claims("alice", &["user"]);
    assert_eq!(idp.received().len(), 1, "fetched once at start");
    assert_eq!(
        bearer(&gw, &sign(Algorithm::RS256, Some("key-a"), &c, Signer::Rsa))
            .await
            .status(),
        200
    );
    assert_eq!(idp.received().len(), 1);

    // The identity provider rotates in key-b: its first token triggers one fetch.
    *doc.lock().unwrap() = jwks_ab;
    assert_eq!(
        bearer(
            &gw,
            &sign(Algorithm::RS256, Some("key-b"), &c, Signer::Rsa2)
        )
        .await
        .status(),
        200
    );
    assert_eq!(idp.received().len(), 2);

    // A flood of random kids within 30 s of that fetch: no more fetches.
    for i in 0..25 {
        let r = bearer(
            &gw,
            &sign(
                Algorithm::RS256,
                Some(&format!("random-{i}")),
                &c,
                Signer::Rsa2,
            ),
        )
        .await;
        assert_eq!(r.status(), 401);
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(gw.audit_entry(&rid).await["reason"], "unknown_kid");
    }
    assert_eq!(
        idp.received().len(),
        2,
        "a kid flood cannot hammer the identity provider"
    );
    assert!(idp
        .received()
        .iter()
        .all(|r| r.method == "GET" && r.path == "/jwks.json"));
}

#[tokio::test]
async fn identity_provider_down_at_start_then_recovering() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let gw = TestGateway::start(&jwks_config(&url));
    let c = claims("alice", &["user"]);
    let token = sign(Algorithm::RS256, Some("key-a"), &c, Signer::Rsa);

    let r = bearer(&gw, &token).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(
        !r.headers().contains_key("x-should-retry"),
        "SDKs may retry"
    );
    assert!(!r.headers().contains_key("www-authenticate"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "auth_unavailable"
    );
    assert_eq!(
        get_models(&gw, Some(("x-api-key", USER_KEY)))
            .await
            .status(),
        200,
        "API keys keep working"
    );
    let ready = gw.get("/ready").await;
    assert_eq!(ready.status(), 503);
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v["checks"]["jwks"]["loaded"], false);
    assert!(v["checks"]["jwks"]["error"].as_str().is_some());

    // The identity provider comes up on that port; the gateway's retry loads the keys.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&fixture("jwks_a.json")).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = serde_json::to_vec(&doc).unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    poll_until("the JWKS to load", secs(20), || async {
        (gw.get("/ready").await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(bearer(&gw, &token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_jwks_stops_its_cached_tokens() {
    let jwks_ab: Value = serde_json::from_str(&fixture("jwks_ab.json")).unwrap();
    let jwks_a: Value = serde_json::from_str(&fixture("jwks_a.json")).unwrap();
    let (idp, doc) = jwks_server(jwks_ab).await;
    let gw = TestGateway::start(&jwks_config(&idp.url()));
    let c = claims("alice", &["user"]);
    let b_token = sign(Algorithm::RS256, Some("key-b"), &c, Signer::Rsa2);
    assert_eq!(bearer(&gw, &b_token).await.status(), 200);
    assert_eq!(
        bearer(&gw, &b_token).await.status(),
        200,
        "served from the cache"
    );

    // key-b is revoked at the identity provider; an unknown kid makes the gateway re-fetch.
    *doc.lock().unwrap() = jwks_a;
    let probe = sign(Algorithm::RS256, Some("other"), &c, Signer::Rsa);
    assert_eq!(bearer(&gw, &probe).await.status(), 401);
    let r = bearer(&gw, &b_token).await;
    assert_eq!(
        r.status(),
        401,
        "the cached token of a removed key is refused"
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(gw.audit_entry(&rid).await["reason"], "unknown_kid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_replaced_under_the_same_kid_stops_its_cached_tokens() {
    let jwks_a: Value = serde_json::from_str(&fixture("jwks_a.json")).unwrap();
    let jwks_ab: Value = serde_json::from_str(&fixture("jwks_ab.json")).unwrap();
    let (idp, doc) = jwks_server(jwks_a.clone()).await;
    let gw = TestGateway::start(&jwks_config(&idp.url()));
    let c = claims("alice", &["user"]);
    let token = sign(Algorithm::RS256, Some("key-a"), &c, Signer::Rsa);
    assert_eq!(bearer(&gw, &token).await.status(), 200);
    assert_eq!(bearer(&gw, &token).await.status(), 200, "cached");

    // The identity provider re-issues `key-a` with other key material (key-b's).
    let mut reissued = jwks_ab["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "key-b")
        .unwrap()
        .clone();
    reissued["kid"] = json!("key-a");
    *doc.lock().unwrap() = json!({ "keys": [reissued] });
    let probe = sign(Algorithm::RS256, Some("other"), &c, Signer::Rsa);
    assert_eq!(bearer(&gw, &probe).await.status(), 401);
    let r = bearer(&gw, &token).await;
    assert_eq!(
        r.status(),
        401,
        "the cached token of the old material is refused"
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(gw.audit_entry(&rid).await["reason"], "bad_signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwk_verifies_only_the_algorithm_it_names() {
    let jwks_a: Value = serde_json::from_str(&fixture("jwks_a.json")).unwrap();
    assert_eq!(jwks_a["keys"][0]["alg"], "RS256");
    let (idp, _doc) = jwks_server(jwks_a).await;
    let cfg = jwks_config(&idp.url()).replace("algorithms: [RS256]", "algorithms: [RS256, PS256]");
    let gw = TestGateway::start(&cfg);
    let c = claims("alice", &["user"]);
    let rs = sign(Algorithm::RS256, Some("key-a"), &c, Signer::Rsa);
    assert_eq!(bearer(&gw, &rs).await.status(), 200);
    // Same RSA key, another algorithm of its family: refused, as RFC 8725 asks.
    let ps = sign(Algorithm::PS256, Some("key-a"), &c, Signer::Rsa);
    let r = bearer(&gw, &ps).await;
    assert_eq!(r.status(), 401);
}

/// Two credential headers: a front proxy that reads the other one would authorize someone
/// else, so neither is used. Whatever the pair, valid or not, the answer is the same.
#[tokio::test]
async fn two_credential_headers_are_refused_as_ambiguous() {
    let gw = start();
    let user = hs_token("alice", &["user"]);
    let admin = hs_token("root", &["admin"]);
    let pairs = [
        format!("Authorization: Bearer {user}\r\nAuthorization: Bearer {admin}"),
        format!("x-api-key: {USER_KEY}\r\nx-api-key: uk_other_key_000000000000000000000000"),
        format!("Authorization: Bearer {user}\r\nx-api-key: {USER_KEY}"),
        // The same credential twice is refused too: the rule has no exception to reason about.
        format!("Authorization: Bearer {user}\r\nAuthorization: Bearer {user}"),
    ];
    for pair in pairs {
        let req =
            format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{pair}\r\nConnection: close\r\n\r\n");
        let r = raw::send(gw.addr, req.as_bytes()).await;
        assert_eq!(r.status, 401, "{pair}");
        assert_eq!(r.json()["error"]["code"], "ambiguous_credentials", "{pair}");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"ultra-gateway\", error=\"invalid_request\"")
        );
        let rid = r.header("x-request-id").unwrap().to_string();
        let a = gw.audit_entry(&rid).await;
        assert_eq!(a["reason"], "ambiguous_credentials", "{pair}");
        assert_eq!(a["outcome"], "deny");
    }
    // One of them alone still works.
    assert_eq!(bearer(&gw, &user).await.status(), 200);
}
