//! The gateway's own upstream timers. Pingora 0.9.1 has a connect timeout but one read timeout
//! for both the first byte and each later gap, and no total. So each attempt holds three
//! deadlines: the first byte (from the request sent), the gap between chunks (re-armed by every
//! chunk), and the total. A watchdog looks at every attempt in flight each `TICK`; when a
//! deadline has passed it records which and shuts the upstream socket down (`shutdown(2)` on
//! the descriptor Pingora reports in `connected_to_upstream`), which makes Pingora's pending
//! read fail at once; the error hooks then see that the timer fired and answer 504
//! `upstream_timeout` (or end an SSE stream with an error event). An attempt is disarmed when
//! the response ends, before Pingora can recycle the connection.
//!
//! There is one watchdog per worker thread (a task spawned the first time the thread starts an
//! attempt) rather than a task and a timer per attempt: spawning, arming and aborting those took
//! about 1% of the gateway's CPU in a profile, and the work-stealing runtime woke the other
//! worker to run them. Starting an attempt is now a push onto the thread's list; disarming it a
//! flag the watchdog drops it by. The price is precision: a limit fires up to one `TICK` late.
//! And since the watchdog reads the deadlines afresh at every tick, a gap limit shorter than the
//! first-byte one holds from the first chunk on (a task sleeping until the first-byte deadline
//! did not).

use crate::upstream::timeouts::Timeouts;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How often the watchdog looks at the attempts in flight: a limit fires at most this late.
pub const TICK: Duration = Duration::from_millis(10);

/// Which limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    FirstByte,
    BetweenChunks,
    Total,
    /// The gateway's shutdown grace period ended with this attempt still running.
    Shutdown,
}

#[derive(Debug)]
struct State {
    base: Instant,
    /// Milliseconds after `base` when the current phase's limit passes.
    phase_deadline: AtomicU64,
    total_deadline: u64,
    /// 0: none; 1: first byte; 2: between chunks; 3: total; 4: shutdown.
    fired: AtomicU8,
    /// The response header arrived (the phase limit is the between-chunks one).
    streaming: AtomicBool,
    /// The shutdown's cut signal: true ends the attempt.
    cut: watch::Receiver<bool>,
    /// The socket, and whether the attempt is over, under one per-attempt lock: the watchdog
    /// shuts the socket down only while holding it and seeing the attempt still live, so a
    /// connection that went back to Pingora's pool (and may serve another request) is never
    /// touched.
    socket: Mutex<Socket>,
}

#[derive(Debug, Default)]
struct Socket {
    fd: Option<RawFd>,
    done: bool,
}

/// One attempt's limits. Dropping it disarms it.
#[derive(Debug)]
pub struct AttemptTimer {
    state: Arc<State>,
    limits: Timeouts,
}

impl AttemptTimer {
    /// Arms the first-byte and total limits, counted from now (the request being sent). `cut`
    /// (the shutdown's) ends the attempt too when it turns true.
    pub fn start(limits: Timeouts, cut: watch::Receiver<bool>) -> AttemptTimer {
        let state = Arc::new(State {
            base: Instant::now(),
            phase_deadline: AtomicU64::new(ms(limits.first_byte)),
            total_deadline: ms(limits.total),
            fired: AtomicU8::new(0),
            streaming: AtomicBool::new(false),
            cut,
            socket: Mutex::new(Socket::default()),
        });
        WATCHDOG.with(|w| w.watch(state.clone()));
        AttemptTimer { state, limits }
    }

    /// The upstream socket, once connected (or reused).
    pub fn set_fd(&self, fd: RawFd) {
        let mut socket = lock(&self.state.socket);
        if !socket.done {
            socket.fd = Some(fd);
        }
    }

    /// Bytes arrived: the between-chunks limit starts over.
    pub fn progress(&self) {
        let s = &self.state;
        s.streaming.store(true, Ordering::Release);
        let now = ms(s.base.elapsed());
        s.phase_deadline
            .store(now + ms(self.limits.between_chunks), Ordering::Release);
    }

    /// The response is complete (or failed otherwise): nothing more to watch. The watchdog
    /// drops the attempt at its next tick.
    pub fn disarm(&self) {
        let mut socket = lock(&self.state.socket);
        socket.done = true;
        socket.fd = None;
    }

    /// Which limit ran out, if one did.
    pub fn expired(&self) -> Option<Expired> {
        match self.state.fired.load(Ordering::Acquire) {
            1 => Some(Expired::FirstByte),
            2 => Some(Expired::BetweenChunks),
            3 => Some(Expired::Total),
            4 => Some(Expired::Shutdown),
            _ => None,
        }
    }
}

impl Drop for AttemptTimer {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn lock(m: &Mutex<Socket>) -> std::sync::MutexGuard<'_, Socket> {
    // The guarded data is two plain fields; a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

thread_local! {
    static WATCHDOG: Arc<Watchdog> = Arc::new(Watchdog::default());
}

/// The attempts a worker thread started, and whether a task is watching them.
#[derive(Default)]
struct Watchdog {
    attempts: parking_lot::Mutex<Vec<Arc<State>>>,
    /// A task runs `watch_attempts` for this list. Cleared when that task ends, also when its
    /// runtime drops it (a test's runtime, say), so that the next attempt starts another.
    running: AtomicBool,
    /// Wakes an idle watchdog: its list was empty.
    wake: Notify,
}

impl Watchdog {
    fn watch(self: &Arc<Self>, state: Arc<State>) {
        let first = {
            let mut attempts = self.attempts.lock();
            attempts.push(state);
            attempts.len() == 1
        };
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch_attempts(self.clone()));
        } else if first {
            // A stored permit if it is not waiting yet: no wake-up is lost.
            self.wake.notify_one();
        }
    }
}

/// Clears `running` however the watchdog task ends.
struct Running(Arc<Watchdog>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

async fn watch_attempts(w: Arc<Watchdog>) {
    let w = Running(w);
    loop {
        let idle = {
            let mut attempts = w.0.attempts.lock();
            attempts.retain(|s| still_running(s));
            attempts.is_empty()
        };
        if idle {
            w.0.wake.notified().await;
        } else {
            tokio::time::sleep(TICK).await;
        }
    }
}

/// Whether an attempt is still to be watched: false once it is over, or once a limit fired.
fn still_running(s: &State) -> bool {
    if lock(&s.socket).done {
        return false;
    }
    if *s.cut.borrow() {
        fire(s, 4);
        return false;
    }
    let now = ms(s.base.elapsed());
    let which = if now >= s.total_deadline {
        3
    } else if now >= s.phase_deadline.load(Ordering::Acquire) {
        if s.streaming.load(Ordering::Acquire) {
            2
        } else {
            1
        }
    } else {
        return true;
    };
    fire(s, which);
    false
}

/// Records which limit ran out and shuts the attempt's socket down.
fn fire(s: &State, which: u8) {
    let socket = lock(&s.socket);
    if socket.done {
        return;
    }
    s.fired.store(which, Ordering::Release);
    if let Some(fd) = socket.fd {
        // The pending read fails at once; Pingora then drops the connection.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_cut() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    fn limits(first: u64, gap: u64, total: u64) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            first_byte: Duration::from_millis(first),
            between_chunks: Duration::from_millis(gap),
            total: Duration::from_millis(total),
        }
    }

    /// Past a deadline by up to one watchdog tick.
    const LATE: Duration = TICK;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn first_byte_then_gaps_then_total() {
        let t = AttemptTimer::start(limits(1000, 200, 5000), never_cut());
        tokio::time::sleep(Duration::from_millis(990)).await;
        assert_eq!(t.expired(), None);
        t.progress();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            t.progress();
        }
        assert_eq!(t.expired(), None, "chunks 150 ms apart are fine");
        tokio::time::sleep(Duration::from_millis(200) + LATE).await;
        assert_eq!(t.expired(), Some(Expired::BetweenChunks));

        let t = AttemptTimer::start(limits(1000, 200, 5000), never_cut());
        tokio::time::sleep(Duration::from_millis(1000) + LATE).await;
        assert_eq!(t.expired(), Some(Expired::FirstByte));

        let t = AttemptTimer::start(limits(1000, 400, 1200), never_cut());
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..5 {
            t.progress();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            t.expired(),
            Some(Expired::Total),
            "a trickle cannot outlast the total"
        );
    }

    /// A gap limit shorter than the first-byte one holds from the first chunk on (the watchdog
    /// once slept until the first-byte deadline and only then saw the earlier gap deadline).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stall_after_the_header_or_a_few_events_is_cut_at_the_gap_limit() {
        let t = AttemptTimer::start(limits(30_000, 3_000, 600_000), never_cut());
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.progress(); // the response header
        tokio::time::sleep(Duration::from_millis(2_900)).await;
        assert_eq!(t.expired(), None);
        tokio::time::sleep(Duration::from_millis(100) + LATE).await;
        assert_eq!(t.expired(), Some(Expired::BetweenChunks));

        let t = AttemptTimer::start(limits(30_000, 3_000, 600_000), never_cut());
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.progress(); // the header, then three events
        }
        tokio::time::sleep(Duration::from_millis(3_000) + LATE).await;
        assert_eq!(t.expired(), Some(Expired::BetweenChunks));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn disarmed_timers_never_fire() {
        let t = AttemptTimer::start(limits(100, 100, 100), never_cut());
        t.disarm();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(t.expired(), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_shutdown_cuts_an_attempt_at_once() {
        let (tx, rx) = watch::channel(false);
        let t = AttemptTimer::start(limits(60_000, 60_000, 60_000), rx);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(t.expired(), None);
        tx.send_replace(true);
        tokio::time::sleep(LATE).await;
        assert_eq!(t.expired(), Some(Expired::Shutdown));
        // Started after the cut: ends at once too.
        let t = AttemptTimer::start(limits(60_000, 60_000, 60_000), tx.subscribe());
        tokio::time::sleep(LATE).await;
        assert_eq!(t.expired(), Some(Expired::Shutdown));
    }

    /// A runtime that ends takes its watchdog task with it; the thread's next attempt, on
    /// another runtime, gets a new one.
    #[test]
    fn a_new_runtime_on_the_same_thread_gets_a_watchdog() {
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let t = AttemptTimer::start(limits(100, 100, 1000), never_cut());
                tokio::time::sleep(Duration::from_millis(100) + LATE).await;
                assert_eq!(t.expired(), Some(Expired::FirstByte));
            });
        }
    }

    /// The watchdog goes idle when nothing is in flight and wakes for the next attempt.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_idle_watchdog_wakes_for_the_next_attempt() {
        let t = AttemptTimer::start(limits(50, 50, 50), never_cut());
        drop(t);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = AttemptTimer::start(limits(50, 50, 500), never_cut());
        tokio::time::sleep(Duration::from_millis(50) + LATE).await;
        assert_eq!(t.expired(), Some(Expired::FirstByte));
    }
}
