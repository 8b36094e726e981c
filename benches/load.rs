//! `cargo bench --bench load`: the gateway under load next to the floor it is built on.
//!
//! Starts a fast in-process upstream, a bare Pingora proxy (a minimal `ProxyHttp` to the same
//! upstream, the same thread count; this bench binary re-run with `--bare-pingora`), the release
//! gateway with a production-shaped configuration (JWT auth, roles, access and audit logs,
//! metrics), and nginx as a plain reverse proxy when `nginx` is on the PATH. Each target gets
//! the same closed-loop load (fixed concurrency, every request timed), the targets interleaved
//! over rounds; the table gives req/s, latency percentiles, CPU per request (from /proc) and
//! RSS, each as a ratio to bare Pingora, and a JSON summary goes to `target/load-summary.json`.
//!
//! Then an open loop: requests at 2,000 req/s, each timed from when it was due, against each
//! target and the upstream itself, for the latency each adds.
//!
//! `--quick` runs short rounds. Needs `target/release/ultra-gateway` (`cargo build --release`),
//! or the binary `ULTRA_GATEWAY_BIN` names.
//! Still to come (issue 11): the streamed runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}]}"#;
const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-pingora") {
        bare::run(&args[i + 1], &args[i + 2]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, secs, conns) = if quick { (1, 3, 32) } else { (3, 8, 32) };
    let upstream = start_upstream();
    let mut targets = vec![Target::bare(upstream), Target::gateway(upstream)];
    match Target::nginx(upstream) {
        Some(t) => targets.push(t),
        None => eprintln!("nginx not on the PATH: its column is skipped"),
    }
    let mut results: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (t, runs) in targets.iter().zip(results.iter_mut()) {
            let run = closed_loop(t, conns, Duration::from_secs(secs));
            eprintln!(
                "round {} {:<12} {:>9.0} req/s",
                round + 1,
                t.name,
                run.rps()
            );
            runs.push(run);
        }
    }
    report(&targets, &results, conns);
    open_loop_report(&targets, upstream, if quick { 2 } else { 5 });
}

/// Open loop: requests at a fixed rate, each timed from when it was due (so a slow response
/// delays no later measurement), against each target and the upstream directly; the added
/// latency is a target's percentile minus the upstream's.
const OPEN_RATE: f64 = 2000.0;
const OPEN_CONNS: usize = 64;

fn open_loop_report(targets: &[Target], upstream: SocketAddr, secs: u64) {
    let direct = Target {
        name: "upstream",
        addr: upstream,
        pid: std::process::id(),
        auth: None,
        _child: None,
    };
    let base = open_loop(&direct, Duration::from_secs(secs));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nopen loop, {OPEN_RATE} req/s over {OPEN_CONNS} connections; added = minus the upstream's own");
    println!(
        "{:<14} {:>9} {:>9} {:>10} {:>12} {:>12} {:>8}",
        "target", "p50 ms", "p99 ms", "p99.9 ms", "added p50", "added p99", "errors"
    );
    println!(
        "{:<14} {:>9.3} {:>9.3} {:>10.3} {:>12} {:>12} {:>8}",
        "upstream",
        ms(base.pct(0.5)),
        ms(base.pct(0.99)),
        ms(base.pct(0.999)),
        "-",
        "-",
        base.errors
    );
    for t in targets {
        let r = open_loop(t, Duration::from_secs(secs));
        println!(
            "{:<14} {:>9.3} {:>9.3} {:>10.3} {:>12.3} {:>12.3} {:>8}",
            t.name,
            ms(r.pct(0.5)),
            ms(r.pct(0.99)),
            ms(r.pct(0.999)),
            ms(r.pct(0.5)) - ms(base.pct(0.5)),
            ms(r.pct(0.99)) - ms(base.pct(0.99)),
            r.errors
        );
    }
}

fn open_loop(t: &Target, length: Duration) -> Run {
    let request = request_bytes(t);
    let start = Instant::now() + Duration::from_millis(100);
    let total = (OPEN_RATE * length.as_secs_f64()) as usize;
    let handles: Vec<_> = (0..OPEN_CONNS)
        .map(|c| {
            let (request, addr) = (request.clone(), t.addr);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0;
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return (lat, 1);
                };
                let _ = s.set_nodelay(true);
                let mut buf = Vec::with_capacity(8192);
                // This connection's requests: every OPEN_CONNS-th of the schedule.
                for k in (c..total).step_by(OPEN_CONNS) {
                    let due = start + Duration::from_secs_f64(k as f64 / OPEN_RATE);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if s.write_all(&request).is_err() || read_message(&mut s, &mut buf).is_none() {
                        errors += 1;
                        break;
                    }
                    lat.push(due.elapsed());
                }
                (lat, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    Run {
        requests: latencies.len(),
        errors,
        elapsed: length,
        latencies,
        cpu: Duration::ZERO,
        rss_kib: 0,
    }
}

/// A target under test.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
    auth: Option<String>,
    _child: Option<ChildGuard>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Target {
    fn bare(upstream: SocketAddr) -> Target {
        let addr = free_addr();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--bare-pingora", &addr.to_string(), &upstream.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bench binary re-run as a bare Pingora proxy");
        wait_listening(addr);
        Target {
            name: "pingora",
            addr,
            pid: child.id(),
            auth: None,
            _child: Some(ChildGuard(child)),
        }
    }

    fn gateway(upstream: SocketAddr) -> Target {
        // ULTRA_GATEWAY_BIN compares another build (an older commit's, say) on the same load.
        let bin = std::env::var_os("ULTRA_GATEWAY_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/ultra-gateway"),
            PathBuf::from,
        );
        assert!(
            bin.exists(),
            "build the gateway first: cargo build --release"
        );
        let dir = std::env::temp_dir().join(format!("ultra-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gw.yaml");
        std::fs::write(
            &cfg,
            format!(
                "server: {{ threads: 2 }}
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
                access = dir.join("access.log").display(),
                audit = dir.join("audit.log").display(),
            ),
        )
        .unwrap();
        let token = Command::new(&bin)
            .args(["token", "--sub", "bench", "--role", "user", "-c"])
            .arg(&cfg)
            .output()
            .expect("mint a token");
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        let addr = free_addr();
        let child = Command::new(&bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        wait_listening(addr);
        Target {
            name: "ultra-gateway",
            addr,
            pid: child.id(),
            auth: Some(format!("Bearer {token}")),
            _child: Some(ChildGuard(child)),
        }
    }

    fn nginx(upstream: SocketAddr) -> Option<Target> {
        Command::new("nginx").arg("-v").output().ok()?;
        let dir = std::env::temp_dir().join(format!("ultra-load-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let addr = free_addr();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;
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
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
  }}
}}
",
                pid = dir.join("nginx.pid").display(),
                dir = dir.display(),
            ),
        )
        .ok()?;
        let child = Command::new("nginx")
            .args(["-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_listening(addr);
        Some(Target {
            name: "nginx",
            addr,
            pid: child.id(),
            auth: None,
            _child: Some(ChildGuard(child)),
        })
    }
}

/// An upstream that answers every request at once (a thread per connection, keep-alive).
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_upstream(stream));
        }
    });
    addr
}

fn serve_upstream(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
        ANSWER.len()
    );
    let mut buf = Vec::with_capacity(8192);
    loop {
        match read_message(&mut s, &mut buf) {
            Some(_) => {
                if s.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

/// Reads one HTTP/1.1 message (header and `content-length` body) from `s`; `buf` keeps what
/// came after it. Returns the status line's or request line's first line length.
fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let first = head.find("\r\n").unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Some(first)
}

/// One closed-loop run's figures.
struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    cpu: Duration,
    rss_kib: u64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn cpu_per_request_ms(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.requests.max(1) as f64
    }
}

/// The CPU time a process has used (user + system), from /proc.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// Resident memory of a process and its children (nginx's workers), in KiB.
fn rss_of(pid: u32) -> u64 {
    let own = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    own(pid) + children(pid).into_iter().map(own).sum::<u64>()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cpu_with_children(pid: u32) -> Duration {
    cpu_of(pid) + children(pid).into_iter().map(cpu_of).sum::<Duration>()
}

/// `conns` connections each sending the next request as soon as the last is answered, for
/// `length`.
/// The request a target gets (with its credentials).
fn request_bytes(t: &Target) -> Arc<Vec<u8>> {
    let mut r = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        BODY.len()
    );
    if let Some(a) = &t.auth {
        r.push_str(&format!("authorization: {a}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(BODY);
    Arc::new(r.into_bytes())
}

fn closed_loop(t: &Target, conns: usize, length: Duration) -> Run {
    let request = request_bytes(t);
    // Warm up: connections made and pools filled.
    run_clients(
        t.addr,
        &request,
        conns,
        Duration::from_millis(500),
        &Arc::new(AtomicBool::new(false)),
    );
    let cpu0 = cpu_with_children(t.pid);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (latencies, errors) = run_clients(t.addr, &request, conns, length, &stop);
    let elapsed = started.elapsed();
    let cpu = cpu_with_children(t.pid).saturating_sub(cpu0);
    let mut latencies = latencies;
    latencies.sort_unstable();
    Run {
        requests: latencies.len(),
        errors,
        elapsed,
        latencies,
        cpu,
        rss_kib: rss_of(t.pid),
    }
}

fn run_clients(
    addr: SocketAddr,
    request: &Arc<Vec<u8>>,
    conns: usize,
    length: Duration,
    stop: &Arc<AtomicBool>,
) -> (Vec<Duration>, usize) {
    let end = Instant::now() + length;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let (request, stop) = (request.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(65536);
                let mut errors = 0;
                let mut s = match TcpStream::connect(addr) {
                    Ok(s) => s,
                    Err(_) => return (lat, 1),
                };
                let _ = s.set_nodelay(true);
                let mut buf = Vec::with_capacity(8192);
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    if s.write_all(&request).is_err() {
                        errors += 1;
                        break;
                    }
                    match read_message(&mut s, &mut buf) {
                        Some(_) => lat.push(sent.elapsed()),
                        None => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        all.extend(l);
        errors += e;
    }
    (all, errors)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// One target's line of the table.
#[derive(Clone)]
struct Row {
    name: &'static str,
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu: f64,
    rss_kib: u64,
    errors: usize,
}

fn report(targets: &[Target], results: &[Vec<Run>], conns: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rows: Vec<Row> = targets
        .iter()
        .zip(results)
        .map(|(t, runs)| {
            let best = runs
                .iter()
                .max_by(|a, b| a.rps().partial_cmp(&b.rps()).unwrap())
                .unwrap();
            let mut cpu: Vec<f64> = runs.iter().map(Run::cpu_per_request_ms).collect();
            Row {
                name: t.name,
                rps: best.rps(),
                p50: ms(best.pct(0.5)),
                p99: ms(best.pct(0.99)),
                p999: ms(best.pct(0.999)),
                cpu: median(&mut cpu),
                rss_kib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
                errors: runs.iter().map(|r| r.errors).sum(),
            }
        })
        .collect();
    let floor = rows[0].clone();
    println!("\nclosed loop, {conns} connections (best round; CPU: median of rounds)");
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>10} {:>12} {:>9} {:>8} {:>10} {:>10}",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "cpu ms/req",
        "RSS MiB",
        "errors",
        "req/s ×",
        "cpu ×"
    );
    for r in &rows {
        println!(
            "{:<14} {:>10.0} {:>9.3} {:>9.3} {:>10.3} {:>12.4} {:>9.1} {:>8} {:>10.2} {:>10.2}",
            r.name,
            r.rps,
            r.p50,
            r.p99,
            r.p999,
            r.cpu,
            r.rss_kib as f64 / 1024.0,
            r.errors,
            r.rps / floor.rps,
            r.cpu / floor.cpu
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "target": r.name, "rps": r.rps, "p50_ms": r.p50, "p99_ms": r.p99,
                "p999_ms": r.p999, "cpu_ms_per_request": r.cpu, "rss_kib": r.rss_kib,
                "errors": r.errors, "rps_vs_pingora": r.rps / floor.rps,
                "cpu_vs_pingora": r.cpu / floor.cpu,
            })
        })
        .collect();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/load-summary.json");
    let summary = serde_json::json!({ "connections": conns, "closed_loop": json });
    let _ = std::fs::write(&out, serde_json::to_vec_pretty(&summary).unwrap());
    println!("summary: {}", out.display());
}

/// The floor: Pingora with the least a proxy can do.
mod bare {
    use async_trait::async_trait;
    use pingora::prelude::*;
    use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
    use pingora::server::configuration::ServerConf;

    struct Bare(String);

    #[async_trait]
    impl ProxyHttp for Bare {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(
                self.0.as_str(),
                false,
                String::new(),
            )))
        }
    }

    pub fn run(listen: &str, upstream: &str) {
        let conf = ServerConf {
            threads: 2,
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut svc = http_proxy_service(&server.configuration, Bare(upstream.to_string()));
        svc.add_tcp(listen);
        server.add_service(svc);
        server.run_forever();
    }
}
