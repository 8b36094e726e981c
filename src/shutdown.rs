//! Graceful shutdown that takes as long as the work needs. On SIGTERM Pingora 0.9 stops
//! accepting, then sleeps the whole `grace_period_seconds` whether or not requests are in
//! flight. The gateway counts the requests in flight itself and exits as soon as none is left;
//! at the end of the grace period it cuts what still runs (a stream ends with an SSE error event
//! rather than silently) and exits. Before exiting it flushes its logs and runs its exit hooks
//! (the state file).

use pingora::server::ExecutionPhase;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Time given to cut requests to end (their error responses and log lines) before the exit.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// How long nothing must be in flight before the process exits.
const QUIET: Duration = Duration::from_millis(300);

/// How long a connection accepted just before the listener closed is given to send its first
/// request header: it counts as a request in flight only once that header is read, so until
/// then the exit waits for it (a slow or loaded client could otherwise be cut before it is
/// counted, which an upgrade under load showed).
const FIRST_HEADER_WAIT: Duration = Duration::from_secs(2);

/// The requests in flight, and the signal that cuts them.
pub struct Drain {
    in_flight: AtomicUsize,
    cut: watch::Sender<bool>,
    /// When the last connection was accepted, in milliseconds since `born` (0: never).
    last_accept_ms: AtomicU64,
    born: Instant,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain {
            in_flight: AtomicUsize::new(0),
            cut: watch::channel(false).0,
            last_accept_ms: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// A connection was accepted (see `connections::Doorman`).
    pub fn accepted(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_accept_ms.store(ms.max(1), Ordering::Release);
    }

    /// When the last connection was accepted, if one was.
    fn last_accept(&self) -> Option<Instant> {
        match self.last_accept_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.born + Duration::from_millis(ms)),
        }
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Becomes `true` when what is still in flight must end now.
    pub fn cut_signal(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

/// The proxy application, with a later clean-up. Pingora cleans an HTTP service up as soon as
/// its listeners stop accepting, and the clean-up drops every connection still waiting for a
/// request header: idle keep-alive ones, but also one accepted a moment before whose request
/// has not arrived yet, which its client sees as a connection closed without an answer (an
/// upgrade under load lost requests this way). The clean-up waits until no connection accepted
/// in the last `FIRST_HEADER_WAIT` may still send its request; requests that do arrive meanwhile
/// are served.
pub struct LateCleanup<A> {
    pub app: Arc<A>,
    pub drain: Arc<Drain>,
}

#[async_trait::async_trait]
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> pingora::apps::ServerApp
    for LateCleanup<A>
{
    async fn process_new(
        self: &Arc<Self>,
        session: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        self.app.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        if let Some(t) = self.drain.last_accept() {
            let due = t + FIRST_HEADER_WAIT;
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        self.app.cleanup().await;
    }
}

/// One request in flight (see `Drain::enter`).
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

/// What to do on the way out.
pub struct Hooks {
    /// When a new process takes the listening sockets over (SIGQUIT), before they are sent.
    pub on_handover: Box<dyn Fn() + Send>,
    /// Last thing before the process exits.
    pub at_exit: Box<dyn FnOnce() + Send>,
}

/// Watches Pingora's execution phases on a thread of its own; once shutdown has started (the
/// listeners no longer accept), waits for the requests in flight, for at most `grace`, cuts the
/// rest, runs the exit hook and ends the process.
pub fn supervise(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    drain: Arc<Drain>,
    grace: Duration,
    hooks: Hooks,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ultra-shutdown".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownStarted) => break,
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => (hooks.on_handover)(),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            let started = Instant::now();
            tracing::info!(
                in_flight = drain.in_flight(),
                grace_seconds = grace.as_secs(),
                "shutting down: waiting for the requests in flight"
            );
            let idle = wait_until_idle(&drain, started + grace);
            if !idle {
                tracing::warn!(
                    in_flight = drain.in_flight(),
                    "grace period over: ending the requests still in flight"
                );
                drain.cut();
                wait_until_idle(&drain, Instant::now() + CUT_WAIT);
            }
            (hooks.at_exit)();
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "ultra-gateway stopped"
            );
            std::process::exit(0);
        })?;
    Ok(())
}

/// Whether nothing has been in flight for `QUIET` (and no connection accepted in the last
/// `FIRST_HEADER_WAIT` is still to send its request) before `deadline`.
fn wait_until_idle(drain: &Drain, deadline: Instant) -> bool {
    let mut idle_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let fresh_connection = drain
            .last_accept()
            .is_some_and(|t| now.duration_since(t) < FIRST_HEADER_WAIT);
        if drain.in_flight() == 0 && !fresh_connection {
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= QUIET {
                return true;
            }
        } else {
            idle_since = None;
        }
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_just_accepted_holds_the_exit_until_its_header_is_due() {
        let d = Drain::new();
        assert!(
            wait_until_idle(&d, Instant::now() + QUIET * 4),
            "never accepted"
        );
        d.accepted();
        assert!(
            !wait_until_idle(&d, Instant::now() + QUIET * 2),
            "its request may still come"
        );
        // Once its request is counted, that request holds the exit instead.
        let request = d.enter();
        assert!(!wait_until_idle(&d, Instant::now() + QUIET));
        drop(request);
    }

    #[test]
    fn requests_are_counted_while_their_guard_lives() {
        let d = Drain::new();
        let a = d.enter();
        let b = d.enter();
        assert_eq!(d.in_flight(), 2);
        drop(a);
        assert_eq!(d.in_flight(), 1);
        let cut = d.cut_signal();
        assert!(!*cut.borrow());
        d.cut();
        assert!(*cut.borrow());
        drop(b);
        assert!(wait_until_idle(&d, Instant::now() + QUIET * 4));
    }

    #[test]
    fn waiting_ends_at_the_deadline() {
        let d = Drain::new();
        let _busy = d.enter();
        let t = Instant::now();
        assert!(!wait_until_idle(&d, t + Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
