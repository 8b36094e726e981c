//! Wires a Pingora `Server` from a compiled runtime: the proxy service on a listener the
//! gateway binds itself, and the upstream manager.

use crate::config::Config;
use crate::line_sink::LineSink;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use crate::upstream::manager::{self, UpstreamManager};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::proxy::{http_proxy_service_with_name, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, Server, ShutdownWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service as ListeningService;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

/// How long start-up waits for the first DNS resolution of every provider.
const FIRST_RESOLUTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the gateway and serves until a signal stops it. Returns only on a start-up error.
pub fn run(config: Config, listen_override: Option<&str>) -> Result<(), String> {
    let (runtime, warnings) = Runtime::compile(&config).map_err(|e| e.to_string())?;
    crate::telemetry::init(&config.logging, config.mode);
    for w in &warnings {
        tracing::warn!("{w}");
    }

    // Resolve every provider before accepting traffic, so /ready is true from the first request
    // when providers resolve. A failure here is not fatal: the manager keeps trying.
    let init_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    init_rt.block_on(async {
        let _ =
            tokio::time::timeout(FIRST_RESOLUTION_TIMEOUT, manager::refresh_all(&runtime)).await;
    });
    drop(init_rt);

    let listen = listen_override.unwrap_or(&config.server.listen);
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

    let access_dest = match config.logging.access_log.as_str() {
        d @ ("stdout" | "stderr" | "off") => d.to_string(),
        path => config
            .resolve_path(std::path::Path::new(path))
            .display()
            .to_string(),
    };
    let access_log = LineSink::open(&access_dest, "ultra-access-log")
        .map_err(|e| format!("cannot open access log {access_dest}: {e}"))?;

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let models = runtime.registry.models().len();
    let providers = runtime.providers.len();
    let mode = runtime.mode;
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));

    let gateway = Gateway::new(runtime.clone(), access_log);
    let mut proxy = http_proxy_service_with_name(&server.configuration, gateway, "ultra-gateway");
    let bound_str = bound.to_string();
    proxy.add_tcp(&bound_str);
    server.add_service(PreboundService {
        inner: proxy,
        addr: bound_str,
        listener: Some(listener),
    });
    server.add_service(background_service(
        "upstream-manager",
        UpstreamManager::new(runtime),
    ));

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

/// The proxy service, listening on a socket bound before Pingora starts. Binding early gives a
/// clear error when the address is taken, and lets `--listen 127.0.0.1:0` report the port the
/// kernel picked: Pingora would bind port 0 itself and never say which port it got.
struct PreboundService {
    inner: ListeningService<HttpProxy<Gateway>>,
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
        // Without a table (not the case on Unix in Pingora 0.9.1), the socket is closed so that
        // Pingora can bind the address itself.
        if let (Some(fds), Some(listener)) = (&fds, self.listener.take()) {
            fds.lock().add(self.addr.clone(), listener.into_raw_fd());
        }
        drop(self.listener.take());
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
