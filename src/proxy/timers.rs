//! The gateway's own upstream timers. Pingora 0.9.1 has a connect timeout but one read timeout
//! for both the first byte and each later gap, and no total. So each attempt gets a watchdog
//! task holding three deadlines: the first byte (from the request sent), the gap between
//! chunks (re-armed by every chunk), and the total. When one passes, the watchdog records which
//! and shuts the upstream socket down (`shutdown(2)` on the descriptor Pingora reports in
//! `connected_to_upstream`), which makes Pingora's pending read fail at once; the error hooks
//! then see that the timer fired and answer 504 `upstream_timeout` (or end an SSE stream with
//! an error event). The watchdog is disarmed when the response ends, before Pingora can recycle
//! the connection.

use crate::upstream::timeouts::Timeouts;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

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
    /// 0: none; 1: first byte; 2: between chunks; 3: total.
    fired: AtomicU8,
    /// The response header arrived (the phase limit is the between-chunks one).
    streaming: AtomicBool,
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

/// One attempt's watchdog. Dropping it disarms it.
#[derive(Debug)]
pub struct AttemptTimer {
    state: Arc<State>,
    limits: Timeouts,
    task: tokio::task::JoinHandle<()>,
}

impl AttemptTimer {
    /// Arms the first-byte and total limits, counted from now (the request being sent). `cut`
    /// (the shutdown's) ends the attempt too when it turns true.
    pub fn start(limits: Timeouts, cut: watch::Receiver<bool>) -> AttemptTimer {
        let base = Instant::now();
        let state = Arc::new(State {
            base,
            phase_deadline: AtomicU64::new(ms(limits.first_byte)),
            total_deadline: ms(limits.total),
            fired: AtomicU8::new(0),
            streaming: AtomicBool::new(false),
            socket: Mutex::new(Socket::default()),
        });
        let s = state.clone();
        let task = tokio::spawn(async move { watch_attempt(s, cut).await });
        AttemptTimer {
            state,
            limits,
            task,
        }
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

    /// The response is complete (or failed otherwise): nothing more to watch.
    pub fn disarm(&self) {
        let mut socket = lock(&self.state.socket);
        socket.done = true;
        socket.fd = None;
        drop(socket);
        self.task.abort();
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

async fn watch_attempt(s: Arc<State>, mut cut: watch::Receiver<bool>) {
    let mut cutting = true;
    loop {
        let phase = s.phase_deadline.load(Ordering::Acquire);
        let deadline = phase.min(s.total_deadline);
        let sleep = tokio::time::sleep_until(s.base + Duration::from_millis(deadline));
        let shutdown = tokio::select! {
            _ = sleep => false,
            changed = cut.wait_for(|c| *c), if cutting => match changed {
                Ok(_) => true,
                // No shutdown can come any more: only the limits are left to watch.
                Err(_) => {
                    cutting = false;
                    continue;
                }
            },
        };
        if lock(&s.socket).done {
            return;
        }
        if shutdown {
            fire(&s, 4);
            return;
        }
        let now = ms(s.base.elapsed());
        let phase = s.phase_deadline.load(Ordering::Acquire);
        let which = if now >= s.total_deadline {
            3
        } else if now >= phase {
            if s.streaming.load(Ordering::Acquire) {
                2
            } else {
                1
            }
        } else {
            // Progress moved the deadline on: sleep again.
            continue;
        };
        fire(&s, which);
        return;
    }
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

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn first_byte_then_gaps_then_total() {
        let t = AttemptTimer::start(limits(1000, 200, 5000), never_cut());
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(t.expired(), None);
        t.progress();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            t.progress();
        }
        assert_eq!(t.expired(), None, "chunks 150 ms apart are fine");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(t.expired(), Some(Expired::BetweenChunks));

        let t = AttemptTimer::start(limits(1000, 200, 5000), never_cut());
        tokio::time::sleep(Duration::from_millis(1001)).await;
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
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(t.expired(), Some(Expired::Shutdown));
        // Started after the cut: ends at once too.
        let t = AttemptTimer::start(limits(60_000, 60_000, 60_000), tx.subscribe());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(t.expired(), Some(Expired::Shutdown));
    }
}
