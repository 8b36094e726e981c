//! Wires a Pingora `Server` from a compiled runtime: the proxy service on a listener the
//! gateway binds itself, and the upstream manager.

use crate::auth::audit::AuditLog;
use crate::config::Config;
use crate::connections::Guarded;
use crate::line_sink::LineSink;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::reload::service::ReloadService;
use crate::reload::{Reloader, Source};
use crate::runtime::Runtime;
use crate::shutdown::{self, Drain};
use crate::signals::Signals;
use crate::upstream::manager::UpstreamManager;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ListenFds, Server, ShutdownWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service as ListeningService;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

/// How much longer than the configured grace period Pingora's own sleep lasts (it never does:
/// `shutdown::supervise` exits first).
const PINGORA_GRACE_MARGIN: u64 = 5;

/// Longest wait, after an upgrade hand-over, for the old process's state file.
const STATE_HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// Longest wait for each log's last lines at exit.
const LOG_FLUSH: Duration = Duration::from_secs(2);

/// Starts the gateway and serves until a signal stops it. Returns only on a start-up error.
/// How the process was started.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// `--listen`: overrides `server.listen`.
    pub listen: Option<String>,
    /// `--upgrade`: take the listening sockets from the running process (Pingora's hand-over,
    /// triggered by sending it SIGQUIT) instead of binding them.
    pub upgrade: bool,
}

pub fn run(
    config: Config,
    source: Source,
    opts: RunOptions,
    signals: &Signals,
) -> Result<(), String> {
    let state = Arc::new(crate::state::State::default());
    let (runtime, warnings) = Runtime::compile(&config, &state).map_err(|e| e.to_string())?;
    crate::telemetry::init(&config.logging, config.mode);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let state_file = config
        .server
        .state_file
        .as_ref()
        .map(|p| config.resolve_path(p));
    let listen = opts.listen.as_deref().unwrap_or(&config.server.listen);
    // A new binary taking over (`--upgrade`) finds the sockets in what the old process sends;
    // otherwise the gateway binds them itself (see `PreboundService`).
    let (listener, bound) = if opts.upgrade {
        let addr = listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("invalid listen address `{listen}`: expected IP:PORT"))?;
        (None, addr)
    } else {
        let (l, addr) = bind(listen)?;
        (Some(l), addr)
    };
    if config.auth.as_ref().is_some_and(|a| a.test_tokens) && !bound.ip().is_loopback() {
        tracing::warn!(
            listen = %bound,
            "auth.test_tokens is on and the gateway listens beyond loopback: the development secret is public, so anyone who can reach this address can mint tokens with any role"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let (access_log, audit) = open_logs(&config, &metrics, signals)?;

    let mut server = Server::new_with_opt_and_conf(
        Some(Opt {
            upgrade: opts.upgrade,
            ..Opt::default()
        }),
        server_conf(&config),
    );
    let started_at = std::time::SystemTime::now();
    if opts.upgrade {
        tracing::info!(
            sock = %config.server.upgrade_sock.display(),
            "waiting for the running gateway's sockets: send it SIGQUIT"
        );
    }
    // With `--upgrade`, this is where the old process's listening sockets arrive.
    server.bootstrap();
    if let Some(path) = &state_file {
        // After an upgrade hand-over, the old process writes the file as it hands over: wait
        // briefly for that write rather than read an older one.
        if opts.upgrade {
            wait_for_write_after(path, started_at, STATE_HANDOVER_WAIT);
        }
        if let Some(snapshot) = crate::state::file::Snapshot::read(path) {
            tracing::info!(
                path = %path.display(),
                backends = snapshot.backends.len(),
                keys = snapshot.keys.len(),
                quota_counters = snapshot.quotas.len(),
                age_seconds = snapshot.age_ms() / 1000,
                "state taken over from the state file"
            );
            state.adopt_snapshot(snapshot);
        }
    }
    let init_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    init_rt.block_on(runtime.warm_up());
    drop(init_rt);

    let models = runtime.registry.models().len();
    let providers = config.providers.len();
    let mode = runtime.mode;
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    let reloader = Arc::new(Reloader::new(
        source,
        opts.listen.is_some(),
        config.clone(),
        runtime.clone(),
        state.clone(),
        metrics.clone(),
    ));

    let drain = Drain::new();
    {
        let (serving, drain) = (runtime.clone(), drain.clone());
        metrics.set_state_source(Box::new(move |m| {
            crate::metrics::state::refresh(m, &serving.load(), drain.in_flight())
        }));
    }
    let logs = (access_log.clone(), audit.clone());
    let grace = Duration::from_secs(config.server.grace_period_seconds);
    // Holds the serving runtime: the state's entries are weak, and Pingora drops its services
    // (and their runtimes) while the process winds down.
    let serving = runtime.clone();
    let save = move || {
        let _alive = serving.load_full();
        if let Some(path) = &state_file {
            match state.snapshot().write(path) {
                Ok(()) => tracing::info!(path = %path.display(), "state saved"),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the state file")
                }
            }
        }
    };
    let hooks = shutdown::Hooks {
        on_handover: Box::new(save.clone()),
        at_exit: Box::new(move || {
            save();
            // The last requests' lines, before the process ends.
            logs.0.flush(LOG_FLUSH);
            logs.1.flush(LOG_FLUSH);
        }),
    };
    shutdown::supervise(server.watch_execution_phase(), drain.clone(), grace, hooks)
        .map_err(|e| format!("cannot start the shutdown supervisor: {e}"))?;
    let connections = crate::connections::Connections::new(runtime.clone(), metrics.clone());
    let doorman = Arc::new(crate::connections::Doorman {
        connections: connections.clone(),
        drain: drain.clone(),
    });
    let accept_drain = drain.clone();
    let gateway = Gateway::new(
        runtime.clone(),
        access_log,
        audit,
        metrics.clone(),
        Some(reloader.clone()),
        drain,
    );
    let app = shutdown::LateCleanup {
        app: Arc::new(Guarded::new(
            Arc::new(http_proxy(&server.configuration, gateway)),
            connections,
        )),
        drain: accept_drain,
    };
    let mut proxy = ListeningService::new("ultra-gateway".to_string(), app);
    let bound_str = bound.to_string();
    proxy.add_tcp(&bound_str);
    proxy.set_connection_filter(doorman);
    server.add_service(PreboundService {
        inner: proxy,
        addr: bound_str,
        listener,
    });
    server.add_service(background_service(
        "upstream-manager",
        UpstreamManager::new(runtime),
    ));
    server.add_service(background_service(
        "config-reload",
        ReloadService::new(reloader, signals.hangups()),
    ));
    if let (true, Some(listen)) = (config.metrics.enabled, &config.metrics.listen) {
        let mut svc = ListeningService::new("metrics".into(), MetricsApp(metrics));
        svc.add_tcp(listen);
        server.add_service(svc);
    }

    tracing::info!(
        target: crate::telemetry::STARTUP_TARGET,
        mode = %mode.as_str(),
        listen = %bound,
        models,
        providers,
        "ultra-gateway started"
    );
    server.run_forever()
}

/// Waits (at most `wait`) until `path` was written after `since`.
fn wait_for_write_after(path: &std::path::Path, since: std::time::SystemTime, wait: Duration) {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        let fresh = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if fresh {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Binds the listening socket (see `PreboundService`).
fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("invalid listen address `{listen}`: expected IP:PORT"))?;
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure the listener: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    Ok((listener, bound))
}

/// Opens the access log and the audit log, each on its own writer thread, reopened on SIGUSR1,
/// their dropped lines counted.
fn open_logs(
    config: &Config,
    metrics: &Arc<Metrics>,
    signals: &Signals,
) -> Result<(LineSink, AuditLog), String> {
    let destination = |d: &str, named: &[&str]| {
        if named.contains(&d) {
            d.to_string()
        } else {
            config
                .resolve_path(std::path::Path::new(d))
                .display()
                .to_string()
        }
    };
    let access_dest = destination(&config.logging.access_log, &["stdout", "stderr", "off"]);
    let m = metrics.clone();
    let access_log = LineSink::open(&access_dest, "ultra-access-log")
        .map_err(|e| format!("cannot open access log {access_dest}: {e}"))?
        .on_drop(Arc::new(move || m.access_log_dropped.inc()));
    let audit_dest = destination(&config.audit.path, &["stdout", "stderr"]);
    let m = metrics.clone();
    let audit_sink =
        LineSink::open_with_queue(&audit_dest, "ultra-audit-log", config.audit.queue_lines)
            .map_err(|e| format!("cannot open audit log {audit_dest}: {e}"))?
            .on_drop(Arc::new(move || m.audit_dropped.inc()));
    signals.reopen_on_usr1(access_log.clone());
    signals.reopen_on_usr1(audit_sink.clone());
    Ok((
        access_log,
        AuditLog::new(audit_sink, config.audit.on_overflow),
    ))
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        // A backstop only: `shutdown::supervise` ends the process once nothing is in flight, or
        // at the end of the configured grace period after cutting what remains.
        grace_period_seconds: Some(config.server.grace_period_seconds + PINGORA_GRACE_MARGIN),
        upgrade_sock: config
            .resolve_path(&config.server.upgrade_sock)
            .display()
            .to_string(),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        // Pingora's cap on upstream round trips per request (16 by default). The gateway's own
        // plan bounds them (retry.max_attempts, plus one free try per provider key and per
        // stale pooled connection); this is only a backstop that a large key ring must not hit.
        max_retries: 256,
        ..ServerConf::default()
    }
}

/// The proxy service, listening on a socket bound before Pingora starts. Binding early gives a
/// clear error when the address is taken, and lets `--listen 127.0.0.1:0` report the port the
/// kernel picked: Pingora would bind port 0 itself and never say which port it got.
struct PreboundService {
    inner: ListeningService<shutdown::LateCleanup<Guarded<HttpProxy<Gateway>>>>,
    addr: String,
    listener: Option<TcpListener>,
}

#[async_trait]
impl ServiceWithDependents for PreboundService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        // Pingora takes listening sockets it finds in this table (its zero-downtime upgrade
        // path) instead of binding them.
        // Without a table (not the case on Unix in Pingora 0.9.1), the socket taken here is
        // dropped (closed) so that Pingora can bind the address itself.
        if let (Some(fds), Some(listener)) = (&fds, self.listener.take()) {
            fds.lock().add(self.addr.clone(), listener.into_raw_fd());
        }
        ServiceWithDependents::start_service(
            &mut self.inner,
            fds,
            shutdown,
            listeners_per_fd,
            ready_notifier,
        )
        .await
    }

    fn name(&self) -> &str {
        ServiceWithDependents::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        ServiceWithDependents::threads(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        ServiceWithDependents::listen_addresses(&self.inner)
    }
}

/// `/metrics` on its own listener (`metrics.listen`).
struct MetricsApp(Arc<Metrics>);

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let (status, ctype, body) = if req.uri.path() != "/metrics" {
            (404, "text/plain", b"only /metrics here\n".to_vec())
        } else if req.method != http::Method::GET && req.method != http::Method::HEAD {
            (405, "text/plain", b"GET or HEAD\n".to_vec())
        } else {
            (200, crate::metrics::CONTENT_TYPE, self.0.render())
        };
        let mut resp = http::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .header("cache-control", "no-store");
        if status == 405 {
            resp = resp.header("allow", "GET, HEAD");
        }
        resp.body(body).expect("valid response")
    }
}
