//! The proxies under test, each a child process: bare Pingora (this bench binary re-run with
//! `--bare-pingora`), the release gateway (or each build `ULTRA_GATEWAY_BIN` lists), nginx.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Target {
    pub name: String,
    /// From spawning the process to its first 200 to a real request.
    pub startup: Duration,
    pub addr: SocketAddr,
    /// Whose CPU and memory are counted (with its children: nginx's workers).
    pub pid: u32,
    pub auth: Option<String>,
    /// For gateway builds: the binary and when it was built (an old one is measured otherwise
    /// without a word: `cargo bench` does not rebuild it).
    pub build: Option<String>,
    // Dropped in this order: the process first, then its scratch directory (logs included).
    _child: Option<ChildGuard>,
    _dir: Option<tempfile::TempDir>,
}

/// Stops a child when the bench is done with it. nginx gets SIGTERM, which takes its workers
/// down with it (SIGKILL would leave them running, holding the port).
struct ChildGuard {
    child: Child,
    terminate: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.terminate {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn guard(child: Child, terminate: bool) -> ChildGuard {
    ChildGuard { child, terminate }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Threads and runtime of every proxy under test: `ULTRA_LOAD_THREADS` (default 2, nginx's
/// worker processes too) and `ULTRA_LOAD_WORK_STEALING` (`true` or `false`, Pingora's).
pub struct Tuning {
    pub threads: usize,
    pub work_stealing: bool,
}

pub fn tuning() -> Tuning {
    Tuning {
        threads: std::env::var("ULTRA_LOAD_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(2),
        work_stealing: std::env::var("ULTRA_LOAD_WORK_STEALING").map_or(true, |v| v != "false"),
    }
}

/// Waits until `addr` answers `auth`'s request with a 200; returns how long since `spawned`.
/// A child that exits first (a configuration it refuses, a port taken) fails the bench at once,
/// with its exit status, rather than after the deadline.
fn wait_ready(
    addr: SocketAddr,
    auth: Option<&str>,
    spawned: Instant,
    child: &mut Child,
) -> Duration {
    let load = crate::client::Load::new(auth, false);
    let deadline = spawned + Duration::from_secs(30);
    loop {
        if crate::client::closed_loop_once(addr, &load) {
            return spawned.elapsed();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the target for {addr} exited before answering: {status}");
        }
        assert!(Instant::now() < deadline, "{addr} never answered 200");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A directory for a target's configuration and logs, removed with the target: a full run
/// writes hundreds of megabytes of access and audit log.
fn scratch_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ultra-load-{what}-"))
        .tempdir()
        .expect("a scratch directory")
}

impl Target {
    /// The upstream itself, for the latency the proxies add to it.
    pub fn direct(addr: SocketAddr) -> Target {
        Target {
            name: "upstream".into(),
            startup: Duration::ZERO,
            addr,
            pid: std::process::id(),
            auth: None,
            build: None,
            _child: None,
            _dir: None,
        }
    }

    pub fn bare(upstream: SocketAddr) -> Target {
        let addr = free_addr();
        let spawned = Instant::now();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--bare-pingora", &addr.to_string(), &upstream.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bench binary re-run as a bare Pingora proxy");
        // Guarded before the wait: a target that never answers is still stopped.
        let mut g = guard(child, false);
        Target {
            name: "pingora".into(),
            startup: wait_ready(addr, None, spawned, &mut g.child),
            addr,
            pid: g.child.id(),
            auth: None,
            build: None,
            _child: Some(g),
            _dir: None,
        }
    }

    /// The release gateway, or one target per build in `ULTRA_GATEWAY_BIN` (comma-separated
    /// paths: an older commit's build next to this one's, on the same load).
    pub fn gateways(upstream: SocketAddr) -> Vec<Target> {
        let bins: Vec<PathBuf> = match std::env::var("ULTRA_GATEWAY_BIN") {
            Ok(list) => list.split(',').map(PathBuf::from).collect(),
            Err(_) => {
                vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/ultra-gateway")]
            }
        };
        let named = bins.len() > 1;
        bins.iter()
            .enumerate()
            .map(|(i, bin)| {
                assert!(
                    bin.exists(),
                    "{}: build the gateway first: cargo build --release",
                    bin.display()
                );
                let name = if named {
                    let file = bin.file_name().unwrap().to_string_lossy();
                    format!("gw:{}", file.chars().take(11).collect::<String>())
                } else {
                    "ultra-gateway".into()
                };
                Target::gateway(bin, name, upstream, i)
            })
            .collect()
    }

    fn gateway(bin: &PathBuf, name: String, upstream: SocketAddr, i: usize) -> Target {
        let scratch = scratch_dir(&format!("gw{i}"));
        let dir = scratch.path();
        let cfg = dir.join("gw.yaml");
        // Production-shaped: JWT auth and roles, access and audit logs to files, pricing (so
        // usage is metered and costed), metrics; no health checks against the bench upstream.
        std::fs::write(
            &cfg,
            format!(
                "server: {{ threads: {threads}{ws} }}
logging: {{ level: warn, access_log: {access} }}
audit: {{ path: {audit} }}
reload: {{ watch: false }}
auth:
  jwt: {{ algorithms: [HS256], hmac_secret: load-bench-hmac-secret-0123456789abcdef }}
  roles:
    user: {{ models: ['*'], endpoints: [chat, models] }}
providers:
  up: {{ kind: openai, endpoints: ['http://{upstream}'], keys: [{{ id: k1, value: sk-load-0123456789 }}], health_check: {{ enabled: false }} }}
models:
  - {{ id: m, targets: [{{ provider: up }}], pricing: {{ input_per_million: 1.0, output_per_million: 2.0 }} }}
",
                threads = tuning().threads,
                // Only when not the default: builds from before the key refuse it.
                ws = if tuning().work_stealing { "" } else { ", work_stealing: false" },
                access = dir.join("access.log").display(),
                audit = dir.join("audit.log").display(),
            ),
        )
        .unwrap();
        let token = Command::new(bin)
            .args(["token", "--sub", "bench", "--role", "user", "-c"])
            .arg(&cfg)
            .output()
            .expect("mint a token");
        assert!(
            token.status.success(),
            "{} token: {}",
            bin.display(),
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        let built = std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or("built at an unknown time".to_string(), |age| {
                format!("built {} min ago", age.as_secs() / 60)
            });
        let addr = free_addr();
        let spawned = Instant::now();
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        let mut g = guard(child, false);
        let auth = format!("Bearer {token}");
        Target {
            name,
            startup: wait_ready(addr, Some(&auth), spawned, &mut g.child),
            addr,
            pid: g.child.id(),
            auth: Some(auth),
            build: Some(format!("{} ({built})", bin.display())),
            _child: Some(g),
            _dir: Some(scratch),
        }
    }

    /// nginx as a plain reverse proxy (two workers, upstream keep-alive, no access log, no
    /// response buffering, as in front of an event stream), when it is on the PATH.
    pub fn nginx(upstream: SocketAddr) -> Option<Target> {
        Command::new("nginx").arg("-v").output().ok()?;
        let scratch = scratch_dir("nginx");
        let dir = scratch.path();
        let addr = free_addr();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes {workers};
daemon off;
pid {pid};
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir};
  upstream up {{ server {upstream}; keepalive 64; }}
  server {{
    listen {addr};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }}
  }}
}}
",
                workers = tuning().threads,
                pid = dir.join("nginx.pid").display(),
                dir = dir.display(),
            ),
        )
        .ok()?;
        let spawned = Instant::now();
        let child = Command::new("nginx")
            .args(["-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut g = guard(child, true);
        Some(Target {
            name: "nginx".into(),
            startup: wait_ready(addr, None, spawned, &mut g.child),
            addr,
            pid: g.child.id(),
            auth: None,
            build: None,
            _child: Some(g),
            _dir: Some(scratch),
        })
    }

    /// For a gateway: the access-log and audit lines it dropped because their queues were full
    /// (from its `/metrics`), so that "logs on" is known to have meant all of them.
    pub fn log_lines_dropped(&self) -> Option<(u64, u64)> {
        use std::io::{Read, Write};
        self.build.as_ref()?;
        let mut s = std::net::TcpStream::connect(self.addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        Some((
            value("ultra_access_log_dropped_total"),
            value("ultra_audit_dropped_total"),
        ))
    }

    /// CPU time (user + system) the target and its children have used.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.pid) + children(self.pid).into_iter().map(cpu_of).sum::<Duration>()
    }

    /// Resident memory of the target and its children, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_of(self.pid) + children(self.pid).into_iter().map(rss_of).sum::<u64>()
    }
}

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
