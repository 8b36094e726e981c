//! Starts the real `ultra-gateway` binary on an ephemeral loopback port with a YAML written by
//! the test, and collects its access log (stdout) and operational log (stderr).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a debug-built gateway may take to start.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct TestGateway {
    child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
    access: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Path of the binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ultra-gateway"))
}

impl TestGateway {
    /// Starts a gateway on `config` (the main YAML).
    pub fn start(config: &str) -> TestGateway {
        Self::start_with(config, &[], &[])
    }

    /// Starts a gateway with extra files written next to the config and extra environment.
    pub fn start_with(config: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> TestGateway {
        Self::start_opts(config, files, env, true)
    }

    /// Like `start_with`; with `drain_stdout: false` nobody reads the gateway's stdout, so its
    /// pipe fills up (to back up a log writer).
    pub fn start_opts(
        config: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
        drain_stdout: bool,
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ultra.yaml");
        std::fs::write(&path, config).expect("write config");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write file");
        }
        let mut cmd = Command::new(binary());
        cmd.args(["run", "-c"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gateway");

        let access = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let a = access.clone();
        if drain_stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    a.lock().unwrap().push(line);
                }
            });
        } else {
            std::mem::forget(stdout);
        }
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ultra-gateway started") {
                    let _ = tx.send(line.clone());
                }
                l.lock().unwrap().push(line);
            }
        });

        let started = match rx.recv_timeout(START_DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gateway did not start; stderr:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let addr = parse_listen(&started).unwrap_or_else(|| panic!("no listen= in {started}"));
        TestGateway {
            child,
            addr,
            dir,
            access,
            logs,
        }
    }

    /// A token minted by `ultra-gateway token` for this gateway's configuration.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        let mut cmd = Command::new(binary());
        cmd.args(["token", "--sub", sub, "--ttl", "1h", "-c"])
            .arg(self.dir.path().join("ultra.yaml"));
        for r in roles {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().expect("run token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Sends a signal (`HUP`, `USR1`, `TERM`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Access-log lines so far, parsed (stdout also carries the audit log by default).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout_json()
            .into_iter()
            .filter(|v| v.get("status").is_some())
            .collect()
    }

    /// Audit-log lines so far (when `audit.path` is stdout, the default).
    pub fn audit_log(&self) -> Vec<serde_json::Value> {
        self.stdout_json()
            .into_iter()
            .filter(|v| v.get("outcome").is_some())
            .collect()
    }

    fn stdout_json(&self) -> Vec<serde_json::Value> {
        self.access
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (polling, with a deadline) for the audit line of `request_id`.
    pub async fn audit_entry(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self
                .audit_log()
                .into_iter()
                .find(|e| e["request_id"] == request_id)
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no audit line for {request_id}: {}",
                self.all_output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (polling, with a deadline) for the access-log line of `request_id`.
    pub async fn access_entry(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self
                .access_log()
                .into_iter()
                .find(|e| e["request_id"] == request_id)
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line for {request_id}; have {:?}",
                self.access.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the gateway wrote to stderr and stdout so far.
    pub fn all_output(&self) -> String {
        let mut s = self.logs.lock().unwrap().join("\n");
        s.push('\n');
        s.push_str(&self.access.lock().unwrap().join("\n"));
        s
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listen(line: &str) -> Option<SocketAddr> {
    // JSON logs (production) or text logs (development).
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return v["listen"].as_str()?.parse().ok();
    }
    let rest = line.split("listen=").nth(1)?;
    rest.split_whitespace()
        .next()?
        .trim_matches('"')
        .parse()
        .ok()
}

impl TestGateway {
    /// POSTs a small chat request for `model`.
    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post_json("/v1/chat/completions", &super::chat_body(model))
            .await
    }

    /// GETs `path` without credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        super::client()
            .get(self.url(path))
            .send()
            .await
            .expect("request to the gateway")
    }

    /// GETs `path` with `Authorization: Bearer <token>` (a JWT or an API key).
    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        super::client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request to the gateway")
    }

    /// GETs `path` as `token` and parses the JSON body, whatever the status.
    pub async fn get_json_as(&self, path: &str, token: &str) -> serde_json::Value {
        self.get_as(path, token)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        super::client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request to the gateway")
    }
}
