//! Restarts and binary upgrades keep what the gateway learnt (`server.state_file`), and an
//! upgrade (`run --upgrade` + SIGQUIT to the old process) refuses no connection and fails no
//! request.

use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A gateway process started by hand (the harness binds its own port; these tests need a
/// fixed one that two processes share).
struct Process {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(config: &Path, listen: &str, upgrade: bool) -> Process {
        let mut cmd = Command::new(gateway::binary());
        cmd.args(["run", "-c"])
            .arg(config)
            .args(["--listen", listen])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if upgrade {
            cmd.arg("--upgrade");
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let l = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Process { child, logs }
    }

    fn logged(&self, text: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(text))
    }

    async fn wait_for_log(&self, text: &str) {
        poll_until(&format!("`{text}` in the log"), secs(30), || async {
            self.logged(text).then_some(())
        })
        .await;
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    async fn wait_for_exit(&mut self) {
        poll_until("the process to exit", secs(30), || {
            let gone = matches!(self.child.try_wait(), Ok(Some(_)));
            async move { gone.then_some(()) }
        })
        .await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, up: &str) -> std::path::PathBuf {
    let text = format!(
        "logging: {{ level: info }}
server: {{ grace_period_seconds: 5, state_file: state.json, upgrade_sock: upgrade.sock }}
providers:
  up:
    kind: openai
    endpoints: [{up}]
    keys: [{{ id: one, value: sk-one }}, {{ id: two, value: sk-two }}]
    health_check: {{ enabled: false }}
models:
  - {{ id: m, targets: [{{ provider: up }}] }}
quotas:
  rules:
    - {{ id: daily, tokens_per_day: 100000000 }}
"
    );
    let path = dir.join("ultra.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn key_one_state(base: &str) -> Value {
    let h: Value = client()
        .get(format!("{base}/api/providers/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    h["providers"][0]["keys"][0]["state"].clone()
}

async fn usage(base: &str) -> Value {
    client()
        .get(format!("{base}/api/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn chat(base: &str) -> u16 {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("m"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn rest_key_one(base: &str) {
    poll_until("key one to rest", secs(10), || async {
        assert_eq!(chat(base).await, 200);
        (key_one_state(base).await == "cooling").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_resting_keys_through_the_state_file() {
    let up = MockUpstream::resting_key_one().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &up.url());
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let mut first = Process::spawn(&path, &listen, false);
    first.wait_for_log("ultra-gateway started").await;
    rest_key_one(&base).await;
    let usage_before = usage(&base).await;
    assert!(usage_before["today"]["requests"].as_u64().unwrap() > 0);
    first.signal("TERM");
    first.wait_for_exit().await;
    assert!(first.logged("state saved"));
    let saved = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        !saved.contains("sk-one"),
        "no key value in the file: {saved}"
    );

    let second = Process::spawn(&path, &listen, false);
    second.wait_for_log("ultra-gateway started").await;
    assert!(second.logged("state taken over from the state file"));
    // The day's quota counters and spending carry over (the memory store's).
    let usage_after = usage(&base).await;
    assert_eq!(usage_after["today"], usage_before["today"]);
    assert_eq!(
        usage_after["rules"][0]["day"]["tokens"],
        usage_before["rules"][0]["day"]["tokens"]
    );
    assert_eq!(
        key_one_state(&base).await,
        "cooling",
        "still resting; saved: {saved}\nfirst: {:?}\nsecond: {:?}",
        first.logs.lock().unwrap(),
        second.logs.lock().unwrap()
    );
    let before = up.received().len();
    for _ in 0..4 {
        assert_eq!(chat(&base).await, 200);
    }
    let tried_one = up.received()[before..]
        .iter()
        .any(|r| r.header("authorization") == Some("Bearer sk-one"));
    assert!(!tried_one, "the resting key is not tried again");

    // A corrupt file is ignored, not fatal.
    drop(second);
    std::fs::write(dir.path().join("state.json"), "{garbage").unwrap();
    let third = Process::spawn(&path, &listen, false);
    third.wait_for_log("ultra-gateway started").await;
    assert!(third.logged("corrupt state file"));
    assert_eq!(key_one_state(&base).await, "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_fails_no_request_and_keeps_state() {
    let up = MockUpstream::resting_key_one().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &up.url());
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let mut old = Process::spawn(&path, &listen, false);
    old.wait_for_log("ultra-gateway started").await;
    rest_key_one(&base).await;

    // Load throughout the upgrade, a new connection per request (a pooled connection to the
    // old process would only test the client's retry on a closed idle connection).
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (base, stop, failures, done) =
            (base.clone(), stop.clone(), failures.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                let r = client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&chat_body("m"))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    let mut new = Process::spawn(&path, &listen, true);
    new.wait_for_log("waiting for the running gateway's sockets")
        .await;
    old.signal("QUIT");
    new.wait_for_log("ultra-gateway started").await;
    old.wait_for_exit().await;
    let served_before = done.load(Ordering::SeqCst);
    poll_until("requests served by the new process", secs(10), || async {
        (done.load(Ordering::SeqCst) > served_before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(new.logged("state taken over from the state file"));
    assert_eq!(
        key_one_state(&base).await,
        "cooling",
        "the resting key came along"
    );
    let h: Value = client()
        .get(format!("{base}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ready");
    new.signal("TERM");
    new.wait_for_exit().await;
}
