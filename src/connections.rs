//! Client connections before Pingora reads a request: how many may be open, how long one may
//! sit idle between requests, and how long a request header may take once it has begun.
//!
//! Pingora 0.9.1 times single reads only (60 s each), so a client sending one header byte a
//! second was held forever, and it accepts every connection. [`Guarded`] replaces Pingora's
//! per-connection HTTP/1 loop with one that waits for each request's first byte under the idle
//! limit, then gives the whole header `server.header_read_timeout_seconds`; [`Doorman`] refuses
//! connections beyond `server.max_connections` at accept, so the ones already open keep being
//! served.

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::shutdown::Drain;
use arc_swap::ArcSwap;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The configured limits (`server.max_connections`, `server.header_read_timeout_seconds`,
/// `server.keepalive_timeout_seconds`), read for each connection and each request, so that a
/// reload applies them to what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// At most one refusal warning per this interval: a flood must not become a log flood.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// The open connections, shared by the accept filter and the connection loop.
pub struct Connections {
    open: AtomicUsize,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    born: Instant,
    /// Milliseconds after `born` of the last refusal warning (0: none yet).
    last_warning_ms: AtomicU64,
}

impl Connections {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            runtime,
            metrics,
            born: Instant::now(),
            last_warning_ms: AtomicU64::new(0),
        })
    }

    fn limits(&self) -> Limits {
        self.runtime.load().connections
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn enter(self: &Arc<Self>) -> Open {
        let now = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.connections_open.set(now as i64);
        Open(self.clone())
    }

    fn refused(&self, max: usize) {
        self.metrics.connections_refused.inc();
        let now_ms = (self.born.elapsed().as_millis() as u64).max(1);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= REFUSAL_WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warning_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = max,
                "server.max_connections reached: new connections are closed at accept until some end (counted in ultra_connections_refused_total)"
            );
        }
    }

    fn closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
    }
}

/// One open connection, counted until it drops.
struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        let now = self.0.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.metrics.connections_open.set(now as i64);
    }
}

/// The accept filter: refuses a connection when `server.max_connections` are open, and tells
/// the drain that one was accepted (see `shutdown::LateCleanup`).
pub struct Doorman {
    pub connections: Arc<Connections>,
    pub drain: Arc<Drain>,
}

impl std::fmt::Debug for Doorman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Doorman")
    }
}

#[async_trait::async_trait]
impl pingora::listeners::ConnectionFilter for Doorman {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        let max = self.connections.limits().max_connections;
        if self.connections.open() >= max {
            self.connections.refused(max);
            return false;
        }
        self.drain.accepted();
        true
    }
}

/// The HTTP application behind the connection limits. HTTP/2 and custom protocols keep
/// Pingora's own handling; HTTP/1 connections go through [`Guarded::serve_http1`].
pub struct Guarded<A> {
    pub app: Arc<A>,
    pub connections: Arc<Connections>,
    /// Set, and the waiters woken, when the service stops accepting: idle connections close.
    closing: AtomicBool,
    closing_now: Notify,
}

impl<A> Guarded<A> {
    pub fn new(app: Arc<A>, connections: Arc<Connections>) -> Guarded<A> {
        Guarded {
            app,
            connections,
            closing: AtomicBool::new(false),
            closing_now: Notify::new(),
        }
    }
}

#[async_trait::async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.connections.enter();
        let h1 = stream.get_ssl_digest().is_none()
            && self
                .app
                .server_options()
                .is_none_or(|o| !o.h2c && !o.force_custom)
            && matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
        if !h1 {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closing_now.notify_waiters();
        ServerApp::cleanup(&*self.app).await;
    }
}

impl<A> Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Pingora's HTTP/1 keep-alive loop (`apps::ServerApp for HttpServerApp`), with a wait for
    /// each request's first byte under the idle limit and a deadline on its whole header.
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        // Whether a request was served on this connection already, and what Pingora carries
        // from it to the next.
        let mut reused = false;
        let mut carried: Option<pingora::apps::HttpPersistentSettings> = None;
        loop {
            let limits = self.connections.limits();
            // Before the first request the idle limit is the header one: a connection that
            // never sends anything is a slow header too.
            let idle = if reused {
                limits.keepalive_timeout
            } else {
                limits.header_read_timeout
            };
            match self.first_byte(&mut stream, idle).await {
                FirstByte::Arrived => {}
                FirstByte::IdleTimeout => {
                    let reason = if reused {
                        "idle_timeout"
                    } else {
                        "header_timeout"
                    };
                    self.connections.closed(reason);
                    return;
                }
                FirstByte::Gone => return,
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = carried.take() {
                settings.apply_to_session(&mut session);
            }
            // Pingora's own per-read limit while the header arrives; the whole-header deadline
            // below is the one that matters.
            let keepalive = if *shutdown.borrow() {
                None
            } else {
                Some(limits.keepalive_timeout.as_secs().max(1))
            };
            session.set_keepalive(keepalive);
            let request = self.app.process_new_http(session, shutdown);
            match header_deadline(request, limits.header_read_timeout).await {
                Served::Done(Some(next), _) => {
                    (stream, carried) = next.consume();
                    reused = true;
                }
                Served::Done(None, header_read) => {
                    if !header_read && !*shutdown.borrow() {
                        // Pingora answered a malformed header with a 400, or the client closed
                        // or broke the connection in the middle of one.
                        self.connections.closed("header_error");
                    }
                    return;
                }
                Served::HeaderTimedOut => {
                    self.connections.closed("header_timeout");
                    return;
                }
            }
        }
    }

    async fn first_byte(&self, stream: &mut Stream, idle: Duration) -> FirstByte {
        let closing = self.closing_now.notified();
        let mut closing = pin!(closing);
        closing.as_mut().enable();
        if self.closing.load(Ordering::Acquire) {
            return FirstByte::Gone;
        }
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            peeked = stream.try_peek(&mut byte) => match peeked {
                // `false`: this stream cannot peek; the header deadline still applies.
                Ok(_) => FirstByte::Arrived,
                Err(_) => FirstByte::Gone,
            },
            _ = closing => FirstByte::Gone,
            _ = pingora::time::fast_timeout::fast_sleep(idle) => FirstByte::IdleTimeout,
        }
    }
}

enum FirstByte {
    Arrived,
    IdleTimeout,
    /// The client closed, or the service is stopping.
    Gone,
}

thread_local! {
    /// Set by [`header_read`] while a [`HeaderDeadline`] polls the request it guards.
    static HEADER_READ: Cell<bool> = const { Cell::new(false) };
}

/// Tells the connection loop that the request header has been read: called from the proxy's
/// first hook (`new_ctx`), which Pingora runs right after it parsed the header, on the task
/// (hence the thread) that polls the request.
pub fn header_read() {
    HEADER_READ.with(|h| h.set(true));
}

enum Served<T> {
    /// The request ended; whether its header had been read.
    Done(T, bool),
    HeaderTimedOut,
}

/// Polls one request's processing; ends it (dropping the connection) if its header is not read
/// within `limit`. Once the header is read, the deadline is not looked at again.
async fn header_deadline<F: Future + Unpin>(mut request: F, limit: Duration) -> Served<F::Output> {
    let started = Instant::now();
    // Made only when the header is not read at the first poll: a kept-alive client's header
    // usually arrives in one piece, and then no timer is registered at all.
    let deadline = None;
    let mut deadline = pin!(deadline);
    let mut watching = true;
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if watching {
            HEADER_READ.with(|h| h.set(false));
        }
        let polled = Pin::new(&mut request).poll(cx);
        if watching && HEADER_READ.with(|h| h.get()) {
            watching = false;
        }
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Served::Done(out, !watching));
        }
        if watching {
            if deadline.is_none() {
                let left = limit.saturating_sub(started.elapsed());
                deadline.set(Some(pingora::time::fast_timeout::fast_sleep(left)));
            }
            let due = deadline
                .as_mut()
                .as_pin_mut()
                .is_some_and(|d| d.poll(cx).is_ready());
            if due {
                return Poll::Ready(Served::HeaderTimedOut);
            }
        }
        Poll::Pending
    })
    .await
}
