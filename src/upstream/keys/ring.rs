//! The ring itself: which key the next request uses (round robin, or one key per caller with
//! `key_affinity: caller`), skipping keys that rest after a 429 or were refused with a 401, and
//! what each answer does to a key's state.

use super::hints::{cooldown_from, MAX_COOLDOWN};
use super::key::ProviderKey;
use super::source::KeySource;
use crate::config::{KeyAffinity, ProviderKind};
use arc_swap::ArcSwapOption;
use http::HeaderMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Cooldown after a 429 that says nothing about when to come back.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
pub(super) struct SlotState {
    pub(super) cooling_until: Option<Instant>,
    /// Disabled for the value whose digest is kept here (a 401): usable again once the value
    /// changes.
    pub(super) disabled: Option<(u64, &'static str)>,
    pub(super) requests: u64,
    pub(super) last_status: Option<u16>,
    /// 429s in a row without another answer in between.
    pub(super) refusals_in_a_row: u32,
    /// The provider's last word on this key's limits.
    pub(super) limits: Option<super::quota::ProviderLimits>,
    /// What went through the key today.
    pub(super) today: super::quota::KeyDay,
    /// Times taken out, by `quota::COOLDOWN_REASONS`.
    pub(super) cooldowns: [u64; 2],
}

/// One key of a ring: its value and what the provider said about it. Shared by the rings of
/// successive configurations while the key's id, source and provider kind stay the same
/// (`crate::state`).
#[derive(Debug)]
pub struct KeySlot {
    pub(super) id: Arc<str>,
    pub(super) source: KeySource,
    /// The provider kind its value was installed for (it decides the header).
    pub(super) kind: ProviderKind,
    pub(super) key: ArcSwapOption<ProviderKey>,
    pub(super) digest: AtomicU64,
    /// The key file could not be read at the last look (warned once, not every tick).
    pub(super) file_failing: AtomicBool,
    pub(super) state: parking_lot::Mutex<SlotState>,
}

/// The result of asking for a key.
#[derive(Debug, Clone)]
pub enum KeyPick {
    /// Use key `index`.
    Key(usize, Arc<ProviderKey>),
    /// The provider takes no key.
    NoneNeeded,
    /// Every key is cooling down or out: the soonest one is back after `back_in` (`None`: none
    /// will come back by itself); `refused` when the provider refused one (401).
    Exhausted {
        back_in: Option<Duration>,
        refused: bool,
    },
}

#[derive(Debug)]
pub struct KeyRing {
    pub(super) kind: ProviderKind,
    pub(super) affinity: KeyAffinity,
    pub(super) slots: Vec<Arc<KeySlot>>,
    pub(super) next: AtomicUsize,
}

/// A key's state as it can outlive the process (`server.state_file`), for the value it was
/// learnt with (`fingerprint`: a SHA-256 prefix of the value, never the value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeySnapshot {
    pub fingerprint: String,
    /// Resting for this much longer (milliseconds).
    pub cooling_for_ms: Option<u64>,
    /// Refused by the provider (its reason) until the value changes.
    pub disabled: Option<String>,
    pub refusals_in_a_row: u32,
    pub requests: u64,
    pub last_status: Option<u16>,
}

impl KeySlot {
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The slot's state, for its current value (`None` without a value).
    pub fn snapshot(&self, now: Instant) -> Option<KeySnapshot> {
        let key = self.key.load_full()?;
        let st = self.state.lock();
        let current = self.digest.load(Ordering::Acquire);
        Some(KeySnapshot {
            fingerprint: fingerprint(key.secret()),
            cooling_for_ms: st
                .cooling_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_millis().min(u64::MAX as u128) as u64),
            disabled: st
                .disabled
                .filter(|(d, _)| *d == current)
                .map(|(_, r)| r.to_string()),
            refusals_in_a_row: st.refusals_in_a_row,
            requests: st.requests,
            last_status: st.last_status,
        })
    }

    /// Takes over a state saved by `snapshot` when it was learnt with the value the slot holds
    /// now; `false` (nothing taken) for another value.
    pub fn restore(&self, s: &KeySnapshot, now: Instant) -> bool {
        let Some(key) = self.key.load_full() else {
            return false;
        };
        if fingerprint(key.secret()) != s.fingerprint {
            return false;
        }
        let mut st = self.state.lock();
        st.cooling_until = s.cooling_for_ms.map(|ms| now + Duration::from_millis(ms));
        st.disabled = s.disabled.as_ref().map(|r| {
            let reason = if r == "unauthorized" {
                "unauthorized"
            } else {
                "refused"
            };
            (self.digest.load(Ordering::Acquire), reason)
        });
        st.refusals_in_a_row = s.refusals_in_a_row;
        st.requests = s.requests;
        st.last_status = s.last_status;
        true
    }

    fn digest(&self) -> u64 {
        self.digest.load(Ordering::Acquire)
    }
}

impl KeyRing {
    /// Builds the ring, loading each value (reading key files). `previous` gives the slot a key
    /// id had in the configuration before (if any): it is kept as it is when its source and
    /// kind are the same, and its state (cooldown, disabling, counters) carries over to a new
    /// slot whose value turns out the same. Returns the ring and the ids of keys whose value is
    /// empty or unreadable (they are skipped until they change).
    pub fn new(
        kind: ProviderKind,
        affinity: KeyAffinity,
        keys: Vec<(String, KeySource)>,
        previous: &dyn Fn(&str) -> Option<Arc<KeySlot>>,
    ) -> (KeyRing, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let slots = keys
            .into_iter()
            .map(|(id, source)| {
                let prev = previous(&id);
                if let Some(p) = prev
                    .as_ref()
                    .filter(|p| p.source == source && p.kind == kind)
                {
                    if p.key.load().is_none() {
                        problems.push((id, "empty, or not a valid header value".to_string()));
                    }
                    return p.clone();
                }
                let slot = KeySlot {
                    id: Arc::from(id.as_str()),
                    source,
                    kind,
                    key: ArcSwapOption::empty(),
                    digest: AtomicU64::new(0),
                    file_failing: AtomicBool::new(false),
                    state: parking_lot::Mutex::new(SlotState::default()),
                };
                if let Err(e) = slot.load(kind) {
                    problems.push((id, e));
                }
                // The same value from another source: what the provider said still holds.
                if let Some(p) = prev.filter(|p| p.digest() == slot.digest()) {
                    *slot.state.lock() = p.state.lock().clone();
                }
                Arc::new(slot)
            })
            .collect();
        (
            KeyRing {
                kind,
                affinity,
                slots,
                next: AtomicUsize::new(0),
            },
            problems,
        )
    }

    /// The slots, with their ids (to record them for the next configuration).
    pub fn slots(&self) -> impl Iterator<Item = &Arc<KeySlot>> {
        self.slots.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A usable key, skipping `exclude` (keys this request already tried). `caller` is a hash of
    /// the caller's subject, used with `key_affinity: caller`.
    pub fn pick(&self, caller: Option<u64>, exclude: &[usize], now: Instant) -> KeyPick {
        if self.slots.is_empty() {
            return KeyPick::NoneNeeded;
        }
        let n = self.slots.len();
        let start = match (self.affinity, caller) {
            (KeyAffinity::Caller, Some(h)) => (h % n as u64) as usize,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        self.scan(start, exclude, now)
    }

    /// A usable key without moving the rotation on (health probes: they must not shift which
    /// key traffic gets next).
    pub fn peek(&self, now: Instant) -> Option<(usize, Arc<ProviderKey>)> {
        match self.scan(0, &[], now) {
            KeyPick::Key(i, k) => Some((i, k)),
            _ => None,
        }
    }

    /// The first usable key from `start` on (in ring order), or why there is none.
    fn scan(&self, start: usize, exclude: &[usize], now: Instant) -> KeyPick {
        let n = self.slots.len();
        let mut soonest: Option<Duration> = None;
        let mut refused = false;
        for i in (0..n).map(|k| (start + k) % n) {
            let slot = &self.slots[i];
            let Some(key) = slot.key.load_full() else {
                continue;
            };
            let st = slot.state.lock();
            if st
                .disabled
                .is_some_and(|(d, _)| d == slot.digest.load(Ordering::Acquire))
            {
                refused = true;
                continue;
            }
            match st.cooling_until {
                // A key this request tried still tells when it comes back.
                Some(until) if until > now => {
                    let left = until - now;
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                }
                _ if exclude.contains(&i) => {}
                _ => return KeyPick::Key(i, key),
            }
        }
        KeyPick::Exhausted {
            back_in: soonest,
            refused,
        }
    }

    /// Whether some key not in `exclude` could be used now (without advancing the rotation).
    pub fn has_usable(&self, exclude: &[usize], now: Instant) -> bool {
        self.slots.is_empty() || !matches!(self.scan(0, exclude, now), KeyPick::Exhausted { .. })
    }

    /// Whether some key has a value the provider has not refused, cooling or not: a provider
    /// whose keys are only rate-limited is still up (readiness must not flap with 429s).
    pub fn has_live(&self) -> bool {
        self.slots.is_empty()
            || self.slots.iter().any(|slot| {
                let refused = slot
                    .state
                    .lock()
                    .disabled
                    .is_some_and(|(d, _)| d == slot.digest.load(Ordering::Acquire));
                slot.key.load().is_some() && !refused
            })
    }

    /// Records a response status for key `index`.
    pub fn observe(&self, index: usize, status: u16) {
        let mut st = self.slots[index].state.lock();
        st.requests += 1;
        st.last_status = Some(status);
        if status != 429 {
            st.refusals_in_a_row = 0;
        }
    }

    /// A provider response through key `index`: its status and the limits it reports.
    pub fn observe_response(&self, index: usize, status: u16, headers: &HeaderMap) {
        let day = crate::quota::window::today();
        let limits = super::quota::ProviderLimits::from_headers(headers);
        let mut st = self.slots[index].state.lock();
        st.requests += 1;
        st.last_status = Some(status);
        if status != 429 {
            st.refusals_in_a_row = 0;
        }
        if limits.is_some() {
            st.limits = limits;
        }
        st.today = st.today.on(day);
        st.today.requests += 1;
    }

    /// Tokens and cost a request served through key `index` was charged.
    pub fn record_usage(&self, index: usize, tokens: u64, micro_usd: u64) {
        let day = crate::quota::window::today();
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let mut st = slot.state.lock();
        st.today = st.today.on(day);
        st.today.tokens = st.today.tokens.saturating_add(tokens);
        st.today.micro_usd = st.today.micro_usd.saturating_add(micro_usd);
    }

    /// A 429 for the value `used`: the key rests until the provider says it may come back; when
    /// it does not say, for 30 s, doubled for each such 429 in a row (up to 1 h). `None` when
    /// the slot holds another value by now (a rotated file): the new value is not punished.
    pub fn cool_down(
        &self,
        index: usize,
        used: &ProviderKey,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<Duration> {
        let slot = &self.slots[index];
        let hint = cooldown_from(headers);
        let mut st = slot.state.lock();
        if digest(used.secret()) != slot.digest.load(Ordering::Acquire) {
            return None;
        }
        // Only 429s that say nothing about when to come back count towards the doubling.
        st.refusals_in_a_row = match hint {
            Some(_) => 0,
            None => st.refusals_in_a_row.saturating_add(1),
        };
        let in_a_row = st.refusals_in_a_row;
        let wait = hint.unwrap_or_else(|| {
            let doubled = DEFAULT_COOLDOWN.saturating_mul(1 << (in_a_row - 1).min(16));
            doubled.min(MAX_COOLDOWN)
        });
        st.cooling_until = Some(now + wait);
        st.cooldowns[0] += 1;
        drop(st);
        if in_a_row >= 3 {
            tracing::warn!(key_id = %slot.id, seconds = wait.as_secs_f64(), in_a_row, "provider key rate-limited again; cooling down (a key refused this often may be out of quota)");
        } else {
            tracing::warn!(key_id = %slot.id, seconds = wait.as_secs_f64(), "provider key rate-limited; cooling down");
        }
        Some(wait)
    }

    /// A 401 for the value `used`: that value is out until the key changes (a value installed
    /// since is not affected).
    pub fn disable(&self, index: usize, used: &ProviderKey, reason: &'static str) {
        let slot = &self.slots[index];
        let used_digest = digest(used.secret());
        if used_digest != slot.digest.load(Ordering::Acquire) {
            return;
        }
        tracing::error!(key_id = %slot.id, reason, "provider key refused; taken out until it changes");
        let mut st = slot.state.lock();
        st.disabled = Some((used_digest, reason));
        st.cooldowns[1] += 1;
    }

    /// Calls `f` with each current secret value, without copying the ring: every relayed
    /// response's headers are searched for them.
    pub fn for_each_secret(&self, mut f: impl FnMut(&ProviderKey)) {
        for s in &self.slots {
            if let Some(k) = s.key.load().as_ref() {
                f(k);
            }
        }
    }

    /// The current secret values (to scrub them from what a provider sends back).
    pub fn secrets(&self) -> Vec<Arc<ProviderKey>> {
        self.slots
            .iter()
            .filter_map(|s| s.key.load_full())
            .collect()
    }
}

/// A value's fingerprint for the state file: enough to tell values apart, nothing to recover
/// one from.
fn fingerprint(secret: &str) -> String {
    let d = crate::auth::api_key::sha256(secret.trim().as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn digest(secret: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.trim().hash(&mut h);
    h.finish()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn ring(n: usize, affinity: KeyAffinity) -> KeyRing {
        let keys = (0..n)
            .map(|i| (format!("k{i}"), KeySource::Value(format!("sk-{i}"))))
            .collect();
        KeyRing::new(ProviderKind::Openai, affinity, keys, &|_| None).0
    }

    /// Cools key `i` down as a 429 for its current value would.
    pub(in crate::upstream::keys) fn cool(
        r: &KeyRing,
        i: usize,
        h: &HeaderMap,
        now: Instant,
    ) -> Duration {
        let used = r.slots[i].key.load_full().unwrap();
        r.cool_down(i, &used, h, now).unwrap()
    }

    fn picked(r: &KeyRing, exclude: &[usize], now: Instant) -> Option<usize> {
        match r.pick(None, exclude, now) {
            KeyPick::Key(i, _) => Some(i),
            _ => None,
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn round_robin_and_cooldown() {
        let r = ring(2, KeyAffinity::None);
        let now = Instant::now();
        let a = picked(&r, &[], now).unwrap();
        let b = picked(&r, &[], now).unwrap();
        assert_ne!(a, b, "round robin");
        let mut h = HeaderMap::new();
        h.insert("retry-after", "20".parse().unwrap());
        assert_eq!(cool(&r, 0, &h, now), Duration::from_secs(20));
        for _ in 0..4 {
            assert_eq!(
                picked(&r, &[], now),
                Some(1),
                "traffic moves to the other key"
            );
        }
        cool(&r, 1, &HeaderMap::new(), now);
        match r.pick(None, &[], now) {
            KeyPick::Exhausted {
                back_in: Some(d), ..
            } => assert_eq!(d, Duration::from_secs(20), "the soonest"),
            other => panic!("{other:?}"),
        }
        assert!(!r.has_usable(&[], now));
        assert!(r.has_live(), "resting keys are still alive");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            picked(&r, &[], Instant::now()),
            Some(0),
            "back after its cooldown"
        );
        assert_eq!(r.view(Instant::now())[1].state, "cooling");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn unexplained_429s_in_a_row_double_the_cooldown_until_another_answer() {
        let r = ring(1, KeyAffinity::None);
        let none = HeaderMap::new();
        let waits: Vec<u64> = (0..9)
            .map(|_| {
                r.observe(0, 429);
                cool(&r, 0, &none, Instant::now()).as_secs()
            })
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        let mut hinted = HeaderMap::new();
        hinted.insert("retry-after", "4".parse().unwrap());
        r.observe(0, 429);
        assert_eq!(
            cool(&r, 0, &hinted, Instant::now()),
            Duration::from_secs(4),
            "a provider that says when is believed"
        );
        r.observe(0, 429);
        assert_eq!(
            cool(&r, 0, &none, Instant::now()),
            DEFAULT_COOLDOWN,
            "a hinted 429 ended the run of unexplained ones"
        );
        r.observe(0, 200);
        r.observe(0, 429);
        assert_eq!(
            cool(&r, 0, &none, Instant::now()),
            DEFAULT_COOLDOWN,
            "an answer in between starts over"
        );
    }

    #[test]
    fn affinity_keeps_a_caller_on_one_key_and_exclusions_apply() {
        let r = ring(3, KeyAffinity::Caller);
        let now = Instant::now();
        let first = match r.pick(Some(7), &[], now) {
            KeyPick::Key(i, _) => i,
            _ => unreachable!(),
        };
        for _ in 0..5 {
            assert!(matches!(r.pick(Some(7), &[], now), KeyPick::Key(i, _) if i == first));
        }
        assert!(matches!(r.pick(Some(7), &[first], now), KeyPick::Key(i, _) if i != first));
        assert!(matches!(
            r.pick(None, &[0, 1, 2], now),
            KeyPick::Exhausted {
                back_in: None,
                refused: false
            }
        ));
        let empty = ring(0, KeyAffinity::None);
        assert!(matches!(empty.pick(None, &[], now), KeyPick::NoneNeeded));
    }
}
