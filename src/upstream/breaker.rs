//! The per-backend circuit breaker (passive): closed → open after N consecutive failures; open
//! for a cooldown that doubles on each re-open up to a maximum; then half-open, where exactly one
//! probe request goes through; its success closes the breaker, its failure re-opens it. The probe
//! slot is held by a `Ticket` whose drop gives it back when the probe ends without a verdict
//! (the client left), so the slot can never leak.
//!
//! Time is `tokio::time::Instant`, so the tests run on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A validated breaker policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    failures: u32,
    open: Duration,
    max_open: Duration,
}

impl BreakerPolicy {
    pub fn try_new(
        failures: u32,
        open: Duration,
        max_open: Duration,
    ) -> Result<BreakerPolicy, String> {
        if failures == 0 {
            return Err("consecutive_failures must be at least 1".into());
        }
        if open.is_zero() {
            return Err("open_seconds must be at least 1".into());
        }
        if max_open < open {
            return Err("max_open_seconds must be at least open_seconds".into());
        }
        Ok(BreakerPolicy {
            failures,
            open,
            max_open,
        })
    }

    fn cooldown(&self, reopenings: u32) -> Duration {
        let factor = 1u32.checked_shl(reopenings.min(16)).unwrap_or(u32::MAX);
        self.open.saturating_mul(factor).min(self.max_open)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    /// Times it re-opened since it last closed (doubles the cooldown).
    reopenings: u32,
    /// Transitions to open, half-open and closed since it was made (for the metrics).
    transitions: [u64; 3],
}

/// What the breaker says about one more request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Half-open: this request is the one probe.
    Probe,
    Refused,
}

/// A backend's breaker.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    inner: parking_lot::Mutex<Inner>,
}

/// A breaker's state as it can outlive the process (`server.state_file`): remaining time rather
/// than an instant of this process's clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BreakerSnapshot {
    /// Open for this much longer (milliseconds); `None` when closed or half-open.
    pub open_for_ms: Option<u64>,
    pub half_open: bool,
    pub consecutive_failures: u32,
    pub reopenings: u32,
}

/// The breaker's state for the provider health endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerView {
    Closed { consecutive_failures: u32 },
    Open { remaining: Duration },
    HalfOpen { probing: bool },
}

impl Breaker {
    pub fn policy(&self) -> BreakerPolicy {
        self.policy
    }

    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            inner: parking_lot::Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                reopenings: 0,
                transitions: [0; 3],
            }),
        }
    }

    /// Whether a request may be sent now (without taking the probe slot): used to skip
    /// backends while selecting.
    pub fn available(&self, now: Instant) -> bool {
        match self.inner.lock().state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probing } => !probing,
        }
    }

    /// Admits a request, taking the probe slot when half-open.
    pub fn admit(self: &Arc<Self>, now: Instant) -> (Admission, Option<Ticket>) {
        let mut inner = self.inner.lock();
        let admission = match inner.state {
            State::Closed => Admission::Allowed,
            State::Open { until } if now < until => Admission::Refused,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                if matches!(inner.state, State::Open { .. }) {
                    inner.transitions[1] += 1;
                }
                inner.state = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::HalfOpen { probing: true } => Admission::Refused,
        };
        drop(inner);
        let ticket = match admission {
            Admission::Refused => None,
            Admission::Allowed | Admission::Probe => Some(Ticket {
                breaker: self.clone(),
                probe: admission == Admission::Probe,
                resolved: false,
            }),
        };
        (admission, ticket)
    }

    fn success(&self, probe: bool) {
        let mut inner = self.inner.lock();
        match inner.state {
            State::HalfOpen { .. } if probe => {
                inner.transitions[2] += 1;
                inner.state = State::Closed;
                inner.consecutive = 0;
                inner.reopenings = 0;
            }
            State::Closed => inner.consecutive = 0,
            _ => {}
        }
    }

    fn failure(&self, probe: bool, now: Instant) {
        let mut inner = self.inner.lock();
        match inner.state {
            State::HalfOpen { .. } if probe => {
                inner.reopenings += 1;
                let until = now + self.policy.cooldown(inner.reopenings);
                inner.transitions[0] += 1;
                inner.state = State::Open { until };
            }
            State::Closed => {
                inner.consecutive += 1;
                if inner.consecutive >= self.policy.failures {
                    inner.consecutive = 0;
                    inner.transitions[0] += 1;
                    inner.state = State::Open {
                        until: now + self.policy.cooldown(0),
                    };
                }
            }
            _ => {}
        }
    }

    fn abandon(&self, probe: bool) {
        if probe {
            let mut inner = self.inner.lock();
            if inner.state == (State::HalfOpen { probing: true }) {
                inner.state = State::HalfOpen { probing: false };
            }
        }
    }

    /// Transitions to `open`, `half_open` and `closed` so far.
    pub fn transitions(&self) -> [u64; 3] {
        self.inner.lock().transitions
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let inner = self.inner.lock();
        let (open_for_ms, half_open) = match inner.state {
            State::Closed => (None, false),
            State::Open { until } if now < until => (
                Some((until - now).as_millis().min(u64::MAX as u128) as u64),
                false,
            ),
            State::Open { .. } | State::HalfOpen { .. } => (None, true),
        };
        BreakerSnapshot {
            open_for_ms,
            half_open,
            consecutive_failures: inner.consecutive,
            reopenings: inner.reopenings,
        }
    }

    /// Takes over a state saved by `snapshot` (in another process): an open breaker stays open
    /// for what was left of its time; a half-open one waits for a new probe.
    pub fn restore(&self, s: &BreakerSnapshot, now: Instant) {
        let mut inner = self.inner.lock();
        inner.state = match (s.open_for_ms, s.half_open) {
            (Some(ms), _) => State::Open {
                until: now + Duration::from_millis(ms),
            },
            (None, true) => State::HalfOpen { probing: false },
            (None, false) => State::Closed,
        };
        inner.consecutive = s.consecutive_failures;
        inner.reopenings = s.reopenings;
    }

    pub fn view(&self, now: Instant) -> BreakerView {
        let inner = self.inner.lock();
        match inner.state {
            State::Closed => BreakerView::Closed {
                consecutive_failures: inner.consecutive,
            },
            State::Open { until } if now < until => BreakerView::Open {
                remaining: until - now,
            },
            State::Open { .. } => BreakerView::HalfOpen { probing: false },
            State::HalfOpen { probing } => BreakerView::HalfOpen { probing },
        }
    }
}

/// One admitted request's claim on the breaker; report its outcome, or drop it (abandon).
#[derive(Debug)]
#[must_use = "report the outcome, or drop to abandon"]
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    resolved: bool,
}

impl Ticket {
    pub fn success(mut self) {
        self.resolved = true;
        self.breaker.success(self.probe);
    }

    pub fn failure(mut self, now: Instant) {
        self.resolved = true;
        self.breaker.failure(self.probe, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.resolved {
            self.breaker.abandon(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            BreakerPolicy::try_new(3, Duration::from_secs(10), Duration::from_secs(35)).unwrap(),
        ))
    }

    fn fail(b: &Arc<Breaker>) {
        b.admit(Instant::now()).1.unwrap().failure(Instant::now());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn closed_open_half_open_closed() {
        let b = breaker();
        fail(&b);
        fail(&b);
        b.admit(Instant::now()).1.unwrap().success();
        fail(&b);
        fail(&b);
        assert!(b.available(Instant::now()), "a success reset the count");
        fail(&b);
        assert!(!b.available(Instant::now()));
        assert_eq!(b.admit(Instant::now()).0, Admission::Refused);

        tokio::time::advance(Duration::from_secs(10)).await;
        let (a, probe) = b.admit(Instant::now());
        assert_eq!(a, Admission::Probe);
        assert_eq!(
            b.admit(Instant::now()).0,
            Admission::Refused,
            "exactly one probe"
        );
        probe.unwrap().success();
        assert_eq!(
            b.view(Instant::now()),
            BreakerView::Closed {
                consecutive_failures: 0
            }
        );
        assert_eq!(b.admit(Instant::now()).0, Admission::Allowed);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn cooldown_doubles_on_each_reopening_up_to_the_maximum() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        let expected = [10, 20, 35, 35];
        for (i, secs) in expected.iter().enumerate() {
            if i > 0 {
                // The probe fails: re-open for longer.
                let (a, t) = b.admit(Instant::now());
                assert_eq!(a, Admission::Probe);
                t.unwrap().failure(Instant::now());
            }
            tokio::time::advance(Duration::from_secs(*secs) - Duration::from_millis(1)).await;
            assert!(!b.available(Instant::now()), "round {i}: still open");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(b.available(Instant::now()), "round {i}: open for {secs} s");
        }
        let (_, t) = b.admit(Instant::now());
        t.unwrap().success();
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.available(Instant::now()), "closing reset the doubling");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_cancelled_probe_gives_its_slot_back() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let (a, t) = b.admit(Instant::now());
        assert_eq!(a, Admission::Probe);
        drop(t);
        let (a, t) = b.admit(Instant::now());
        assert_eq!(a, Admission::Probe, "the slot came back");
        t.unwrap().success();
    }

    #[test]
    fn policy_validation() {
        assert!(BreakerPolicy::try_new(0, Duration::from_secs(1), Duration::from_secs(1)).is_err());
        assert!(BreakerPolicy::try_new(1, Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(BreakerPolicy::try_new(1, Duration::from_secs(5), Duration::from_secs(1)).is_err());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_snapshot_restores_an_open_breaker_for_its_remaining_time() {
        let policy =
            BreakerPolicy::try_new(1, Duration::from_secs(30), Duration::from_secs(60)).unwrap();
        let b = Arc::new(Breaker::new(policy));
        let now = Instant::now();
        b.admit(now).1.unwrap().failure(now);
        tokio::time::advance(Duration::from_secs(10)).await;
        let snap = b.snapshot(Instant::now());
        assert_eq!(snap.open_for_ms, Some(20_000));
        let json = serde_json::to_string(&snap).unwrap();
        let restored = Breaker::new(policy);
        restored.restore(&serde_json::from_str(&json).unwrap(), Instant::now());
        assert!(!restored.available(Instant::now()));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            restored.available(Instant::now()),
            "open for what was left, not longer"
        );
    }
}
