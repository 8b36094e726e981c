//! Live configuration: SIGHUP, the file watch and `POST /api/admin/reload` apply a new
//! configuration without a restart; a broken one is refused with the old one still serving;
//! state (breakers, key cooldowns, JWKS key sets) carries over; under load, nothing fails.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const MAIN: &str = "logging: { level: info }
reload: { debounce_ms: 100 }
providers:
  local: { kind: mock }
models_file: models.yaml
";

fn models(ids: &[&str]) -> String {
    let mut s = String::from("models:\n");
    for id in ids {
        s.push_str(&format!(
            "  - {{ id: {id}, targets: [{{ provider: local }}] }}\n"
        ));
    }
    s
}

impl TestGateway {
    /// Replaces a file next to the configuration as editors do: a new file renamed over it.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    async fn admin_reload(&self) -> (u16, Value) {
        let r = client()
            .post(self.url("/api/admin/reload"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn has_model(&self, id: &str) -> bool {
        self.get(&format!("/v1/models/{id}")).await.status() == 200
    }
}

async fn wait_for_model(gw: &TestGateway, id: &str, present: bool) {
    poll_until(
        &format!("model {id} present={present}"),
        secs(10),
        || async { (gw.has_model(id).await == present).then_some(()) },
    )
    .await
}

#[tokio::test]
async fn a_model_added_to_the_models_file_appears_on_file_change() {
    let gw = TestGateway::start_with(MAIN, &[("models.yaml", &models(&["m1"]))], &[]);
    assert!(!gw.has_model("m2").await);
    gw.write("models.yaml", &models(&["m1", "m2"]));
    wait_for_model(&gw, "m2", true).await;
    assert_eq!(gw.chat("m2").await.status(), 200);
    // And removed: 404 for the list and for requests.
    gw.write("models.yaml", &models(&["m2"]));
    wait_for_model(&gw, "m1", false).await;
    assert_eq!(gw.chat("m1").await.status(), 404);
    let ready: Value = gw.get("/ready").await.json().await.unwrap();
    assert_eq!(ready["config_generation"], 3);
}

#[tokio::test]
async fn sighup_reloads_when_the_watch_is_off() {
    let main = MAIN.replace("reload: { debounce_ms: 100 }", "reload: { watch: false }");
    let gw = TestGateway::start_with(&main, &[("models.yaml", &models(&["m1"]))], &[]);
    gw.write("models.yaml", &models(&["m1", "m2"]));
    // Not watched: nothing changes until asked (the admin reload below proves the file was
    // readable all along).
    assert!(!gw.has_model("m2").await);
    gw.signal("HUP");
    wait_for_model(&gw, "m2", true).await;
    poll_until("the reload's log line", secs(10), || async {
        gw.all_output()
            .contains("configuration reloaded")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_admin_endpoint_reloads_and_says_what_changed() {
    // The admin endpoint alone: the file watch could apply an edit first on a loaded machine.
    let main = MAIN.replace("reload: { debounce_ms: 100 }", "reload: { watch: false }");
    let main = main.as_str();
    let gw = TestGateway::start_with(main, &[("models.yaml", &models(&["m1", "m2"]))], &[]);
    std::fs::write(gw.dir.path().join("models.yaml"), models(&["m1", "m3"])).unwrap();
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "applied");
    assert!(v["generation"].as_u64().unwrap() >= 2);
    assert_eq!(v["changes"]["models"]["added"], json!(["m3"]));
    assert_eq!(v["changes"]["models"]["removed"], json!(["m2"]));
    assert_eq!(v["needs_restart"], json!([]));
    // Applied by the time the answer comes.
    assert!(gw.has_model("m3").await);
    assert!(!gw.has_model("m2").await);

    // Restart-only settings are reported, the rest applies.
    gw.write(
        "ultra.yaml",
        &format!("{main}server: {{ threads: 7, max_body_bytes: 4096 }}\n"),
    );
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["needs_restart"], json!(["server.threads"]));
    assert_eq!(v["changes"]["settings"], json!(["server.max_body_bytes"]));
    let big = json!({"model": "m1", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = gw.post_json("/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 413, "the new body limit serves");

    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ultra_config_reloads_total{result=\"applied\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("ultra_config_generation"), "{metrics}");
}

#[tokio::test]
async fn broken_edits_are_refused_and_the_old_configuration_keeps_serving() {
    // Through the admin endpoint only: with the file watch on, a broken file left in place a
    // little longer on a loaded machine would be refused a second time by the watch.
    let main = MAIN.replace("reload: { debounce_ms: 100 }", "reload: { watch: false }");
    let main = main.as_str();
    let gw = TestGateway::start_with(main, &[("models.yaml", &models(&["m1"]))], &[]);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("ultra.yaml", "providers: [\n".into(), "ultra.yaml", ""),
        (
            "ultra.yaml",
            format!("{main}server: {{ nope: 1 }}\n"),
            "ultra.yaml",
            "server.nope",
        ),
        (
            "models.yaml",
            "models:\n  - { id: m1, targets: [{ provider: ghost }] }\n".into(),
            "models.yaml",
            "models[0].targets[0].provider",
        ),
        (
            "ultra.yaml",
            main.replace(
                "  local: { kind: mock }",
                "  local: { kind: mock }\n  p: { kind: openai, endpoints: [\"http://127.0.0.1:9\"], keys: [{ id: k, file: missing.key }] }",
            ),
            "ultra.yaml",
            "providers.p.keys[0].file",
        ),
        (
            "ultra.yaml",
            format!("{main}auth: {{ roles: {{ r: {{ models: ['*'], endpoints: [chatt] }} }} }}\n"),
            "ultra.yaml",
            "auth.roles.r.endpoints[0]",
        ),
        (
            "ultra.yaml",
            format!("mode: production\n{main}"),
            "ultra.yaml",
            "",
        ),
    ];
    let good_main = main.to_string();
    let good_models = models(&["m1"]);
    for (file, text, in_file, path) in cases {
        std::fs::write(gw.dir.path().join(file), &text).unwrap();
        let (status, v) = gw.admin_reload().await;
        assert_eq!(status, 422, "{file}: {text}\n{v}");
        assert_eq!(v["result"], "rejected");
        let errors = v["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["file"].as_str().unwrap().ends_with(in_file)
                    && (path.is_empty() || e["path"] == path)),
            "expected an error at {in_file}: {path}: {v}"
        );
        // The running configuration is untouched.
        assert!(gw.has_model("m1").await);
        assert_eq!(gw.chat("m1").await.status(), 200);
        std::fs::write(gw.dir.path().join("ultra.yaml"), &good_main).unwrap();
        std::fs::write(gw.dir.path().join("models.yaml"), &good_models).unwrap();
    }
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ultra_config_reloads_total{result=\"rejected\"} 6"),
        "{metrics}"
    );
    let ready: Value = gw.get("/ready").await.json().await.unwrap();
    assert_eq!(ready["config_generation"], 1, "nothing applied");
}

/// An upstream config with one provider `up` (two backends, breaker opening at the first
/// failure, no health checks) and two keys; `extra_models` is appended to the model list.
fn pool_config(a: &str, b: &str, extra_models: &str) -> String {
    format!(
        "logging: {{ level: warn }}
providers:
  up:
    kind: openai
    endpoints: [{a}, {b}]
    keys: [{{ id: one, value: sk-one }}, {{ id: two, value: sk-two }}]
    health_check: {{ enabled: false }}
    breaker: {{ consecutive_failures: 1, open_seconds: 600, max_open_seconds: 600 }}
models:
  - {{ id: m, targets: [{{ provider: up }}] }}
{extra_models}"
    )
}

#[tokio::test]
async fn open_breakers_and_cooling_keys_stay_so_across_a_reload() {
    let broken =
        MockUpstream::start(|_| Reply::Json(500, json!({"error": {"message": "down"}}))).await;
    let ok = MockUpstream::resting_key_one().await;
    let config = pool_config(&broken.url(), &ok.url(), "");
    let gw = TestGateway::start(&config);
    // Until the broken backend has failed once and sk-one has had its 429.
    poll_until("the breaker open and key one cooling", secs(10), || async {
        assert_eq!(gw.chat("m").await.status(), 200);
        let h: Value = gw.get("/api/providers/health").await.json().await.unwrap();
        let p = &h["providers"][0];
        let open = p["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["breaker"]["state"] == "open");
        (open && p["keys"][0]["state"] == "cooling").then_some(())
    })
    .await;

    gw.write(
        "ultra.yaml",
        &pool_config(
            &broken.url(),
            &ok.url(),
            "  - { id: m2, targets: [{ provider: up }] }\n",
        ),
    );
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changes"]["models"]["added"], json!(["m2"]));
    let (to_broken, with_one) = (broken.received().len(), count_key(&ok, "sk-one"));
    for _ in 0..6 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    assert_eq!(
        broken.received().len(),
        to_broken,
        "its breaker is still open"
    );
    assert_eq!(count_key(&ok, "sk-one"), with_one, "the key still rests");
    let h: Value = gw.get("/api/providers/health").await.json().await.unwrap();
    assert_eq!(h["config_generation"], 2);
    assert_eq!(h["providers"][0]["keys"][0]["state"], "cooling");
}

fn count_key(up: &MockUpstream, key: &str) -> usize {
    let bearer = format!("Bearer {key}");
    up.received()
        .iter()
        .filter(|r| r.header("authorization") == Some(bearer.as_str()))
        .count()
}

#[tokio::test]
async fn a_new_provider_is_checked_before_it_takes_traffic() {
    let first = MockUpstream::openai_like().await;
    let gw = TestGateway::start(&openai_config(&first.url()));
    let added = MockUpstream::openai_like().await;
    let config = openai_config(&first.url()).replace(
        "models:",
        &format!(
            "  added:\n    kind: openai-compatible\n    endpoints: [{}]\nmodels:\n  - {{ id: fresh, targets: [{{ provider: added }}] }}",
            added.url()
        ),
    );
    gw.write("ultra.yaml", &config);
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changes"]["providers"]["added"], json!(["added"]));
    assert!(!added.probes().is_empty(), "probed before the swap");
    assert!(added.received().is_empty());
    assert_eq!(gw.chat("fresh").await.status(), 200);
    assert_eq!(added.received().len(), 1);
}

#[tokio::test]
async fn a_jwks_url_is_not_fetched_again_by_a_reload() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let jwks: Value = serde_json::from_str(&crate::common::auth::fixture("jwks_a.json")).unwrap();
    let idp = MockUpstream::start_all(move |_| {
        f.fetch_add(1, Ordering::SeqCst);
        Reply::Json(200, jwks.clone())
    })
    .await;
    let config = format!(
        "logging: {{ level: warn }}
auth:
  jwt: {{ algorithms: [RS256], jwks_url: \"{}/jwks.json\" }}
  roles: {{ admin: {{ models: ['*'], endpoints: ['*'] }} }}
  api_keys: [{{ id: ops, sha256: \"{}\", roles: [admin] }}]
providers: {{ local: {{ kind: mock }} }}
models: [{{ id: m1, targets: [{{ provider: local }}] }}]
",
        idp.url(),
        crate::common::auth::digest("uk_reload_test_key")
    );
    let gw = TestGateway::start(&config);
    let before = fetches.load(Ordering::SeqCst);
    assert!(before >= 1);
    gw.write(
        "ultra.yaml",
        &config.replace("models: [{ id: m1,", "models: [{ id: m2,"),
    );
    let r = client()
        .post(gw.url("/api/admin/reload"))
        .header("x-api-key", "uk_reload_test_key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        before,
        "the key set was kept"
    );
    // The admin endpoint is for admins only.
    let anonymous = client()
        .post(gw.url("/api/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn nothing_fails_under_load_while_the_configuration_changes_every_100ms() {
    // Through a network provider, whose pool every reload rebuilds, with streams that span
    // several reloads (5 events 40 ms apart).
    let up = MockUpstream::start(|r| {
        let stream = r.json()["stream"] == true;
        if stream {
            Reply::Sse {
                events: (0..5).map(|n| format!("{{\"n\":{n}}}")).collect(),
                interval: std::time::Duration::from_millis(40),
            }
        } else {
            Reply::Json(200, upstream::chat_completion("m1", "ok"))
        }
    })
    .await;
    let main = format!(
        "logging: {{ level: warn }}
reload: {{ watch: false }}
providers:
  local: {{ kind: mock }}
  up: {{ kind: openai-compatible, endpoints: [{}], health_check: {{ interval_seconds: 1 }} }}
models_file: models.yaml
",
        up.url()
    );
    let models = |other: &str| {
        format!(
            "models:\n  - {{ id: m1, targets: [{{ provider: up }}] }}\n  - {{ id: {other}, targets: [{{ provider: local }}] }}\n"
        )
    };
    let gw = TestGateway::start_with(&main, &[("models.yaml", &models("a"))], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, stop, failures, done) = (
            gw.url("/v1/chat/completions"),
            stop.clone(),
            failures.clone(),
            done.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let stream = c % 2 == 1;
                let body = json!({"model": "m1", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
                let outcome = async {
                    let r = client.post(&url).json(&body).send().await.map_err(|e| e.to_string())?;
                    if r.status() != 200 {
                        return Err(format!("status {}", r.status()));
                    }
                    let mut text = String::new();
                    let mut s = r.bytes_stream();
                    while let Some(chunk) = s.next().await {
                        text.push_str(std::str::from_utf8(&chunk.map_err(|e| e.to_string())?).unwrap());
                    }
                    if stream && !text.ends_with("data: [DONE]\n\n") {
                        return Err(format!("stream cut: {text:?}"));
                    }
                    Ok(())
                }
                .await;
                match outcome {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    // 50 reloads, 100 ms apart, alternating two valid configurations.
    for i in 0..50 {
        let other = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(gw.dir.path().join("models.yaml"), models(other)).unwrap();
        let (status, v) = gw.admin_reload().await;
        assert_eq!(status, 200, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(done.load(Ordering::SeqCst) > 50, "the load ran");
    assert!(up.received().len() > 50, "through the rebuilt pools");
}
