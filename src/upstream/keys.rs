//! A provider's key ring: round-robin over the usable keys (or one key per caller with
//! `key_affinity: caller`); a 429 cools a key down for the provider's `Retry-After`,
//! `retry-after-ms` or `x-ratelimit-reset-*` (default 30 s); a 401 takes it out until its value
//! changes; a key `file` whose content changes is re-read by the upstream manager.
//!
//! A 429 for exhausted quota (`insufficient_quota` in OpenAI's body) cannot be told apart: the
//! retry is decided on the response header, before the body is read (Pingora writes a header to
//! the client as soon as the hooks let it through). Instead, 429s that say nothing about when to
//! come back double the key's cooldown each time they follow one another (30 s, 1 min, 2 min ...
//! up to 1 h): a key whose account is out of credit is soon tried only hourly, and comes back by
//! itself once the account is topped up, which "disabled until its value changes" would not do.
//!
//! All keys of one ring must belong to one provider account/project: stored responses, files
//! and fine-tuned models are per project, and a request may move from one key to another.

use super::provider::ProviderKey;
use crate::config::{KeyAffinity, ProviderKind};
use arc_swap::ArcSwapOption;
use http::HeaderMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Cooldown after a 429 that says nothing about when to come back.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest cooldown taken from a provider's headers.
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// Where a key's secret comes from.
#[derive(Clone)]
pub enum KeySource {
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Value(_) => f.write_str("Value(<secret>)"),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

#[derive(Debug, Default)]
struct SlotState {
    cooling_until: Option<Instant>,
    /// Disabled for the value whose digest is kept here (a 401): usable again once the value
    /// changes.
    disabled: Option<(u64, &'static str)>,
    requests: u64,
    last_status: Option<u16>,
    /// 429s in a row without another answer in between.
    refusals_in_a_row: u32,
}

#[derive(Debug)]
struct Slot {
    id: Arc<str>,
    source: KeySource,
    key: ArcSwapOption<ProviderKey>,
    digest: AtomicU64,
    /// The key file could not be read at the last look (warned once, not every tick).
    file_failing: AtomicBool,
    state: parking_lot::Mutex<SlotState>,
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

/// A key's state for the provider health endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub id: String,
    /// `active`, `cooling`, `disabled` or `missing` (empty or unreadable).
    pub state: &'static str,
    pub cooling_seconds: Option<f64>,
    pub disabled_reason: Option<&'static str>,
    pub requests: u64,
    pub last_status: Option<u16>,
}

#[derive(Debug)]
pub struct KeyRing {
    kind: ProviderKind,
    affinity: KeyAffinity,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl KeyRing {
    /// Builds the ring; `read` reads a key file. Returns the ring and the ids of keys whose value
    /// is empty or unreadable (they are skipped until they change).
    pub fn new(
        kind: ProviderKind,
        affinity: KeyAffinity,
        keys: Vec<(String, KeySource)>,
    ) -> (KeyRing, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let slots = keys
            .into_iter()
            .map(|(id, source)| {
                let slot = Slot {
                    id: Arc::from(id.as_str()),
                    source,
                    key: ArcSwapOption::empty(),
                    digest: AtomicU64::new(0),
                    file_failing: AtomicBool::new(false),
                    state: parking_lot::Mutex::new(SlotState::default()),
                };
                if let Err(e) = slot.load(kind) {
                    problems.push((id, e));
                }
                slot
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
        slot.state.lock().disabled = Some((used_digest, reason));
    }

    /// Whether some key comes from a file (the manager re-reads those).
    pub fn has_files(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.source, KeySource::File(_)))
    }

    /// Re-reads file-backed keys and takes a changed content; returns whether any changed. The
    /// content is compared, not the modification time, which a rewrite within the file
    /// system's time granularity (or a restored mtime) would not change. Blocking file I/O: the
    /// manager calls it off the runtime's workers.
    pub fn refresh_files(&self) -> bool {
        let mut changed = false;
        for slot in &self.slots {
            let KeySource::File(path) = &slot.source else {
                continue;
            };
            let secret = match std::fs::read_to_string(path) {
                Ok(s) => {
                    slot.file_failing.store(false, Ordering::Relaxed);
                    s
                }
                Err(e) => {
                    // The last value read keeps serving.
                    if !slot.file_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(key_id = %slot.id, path = %path.display(), error = %e, "provider key file unreadable; keeping the last value");
                    }
                    continue;
                }
            };
            if digest(&secret) == slot.digest.load(Ordering::Acquire) {
                continue;
            }
            changed = true;
            match slot.install(self.kind, &secret) {
                Ok(()) => {
                    tracing::info!(key_id = %slot.id, "provider key file changed; key reloaded")
                }
                Err(e) => {
                    tracing::warn!(key_id = %slot.id, error = %e, "provider key file changed to an unusable value")
                }
            }
        }
        changed
    }

    pub fn view(&self, now: Instant) -> Vec<KeyView> {
        self.slots
            .iter()
            .map(|slot| {
                let st = slot.state.lock();
                let disabled = st
                    .disabled
                    .filter(|(d, _)| *d == slot.digest.load(Ordering::Acquire))
                    .map(|(_, r)| r);
                let cooling = st
                    .cooling_until
                    .filter(|u| *u > now)
                    .map(|u| (u - now).as_secs_f64());
                let state = if slot.key.load().is_none() {
                    "missing"
                } else if disabled.is_some() {
                    "disabled"
                } else if cooling.is_some() {
                    "cooling"
                } else {
                    "active"
                };
                KeyView {
                    id: slot.id.to_string(),
                    state,
                    cooling_seconds: cooling,
                    disabled_reason: disabled,
                    requests: st.requests,
                    last_status: st.last_status,
                }
            })
            .collect()
    }

    /// The current secret values (to scrub them from provider error bodies).
    pub fn secrets(&self) -> Vec<Arc<ProviderKey>> {
        self.slots
            .iter()
            .filter_map(|s| s.key.load_full())
            .collect()
    }
}

impl Slot {
    fn load(&self, kind: ProviderKind) -> Result<(), String> {
        let secret = match &self.source {
            KeySource::Value(v) => v.clone(),
            KeySource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        };
        self.install(kind, &secret)
    }

    fn install(&self, kind: ProviderKind, secret: &str) -> Result<(), String> {
        let new = digest(secret);
        if self.digest.swap(new, Ordering::AcqRel) != new {
            // A new value starts afresh: the old one's rate limits were the old one's.
            let mut st = self.state.lock();
            st.cooling_until = None;
            st.refusals_in_a_row = 0;
        }
        match ProviderKey::new(kind, &self.id, secret) {
            Some(k) => {
                self.key.store(Some(Arc::new(k)));
                Ok(())
            }
            None => {
                self.key.store(None);
                Err("empty, or not a valid header value".into())
            }
        }
    }
}

fn digest(secret: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.trim().hash(&mut h);
    h.finish()
}

/// When a rate-limited key may come back, from the provider's headers: `retry-after-ms`,
/// `retry-after` (seconds or an HTTP date), or the longest `x-ratelimit-reset-*` (OpenAI's
/// `6m0s`, `1.5s`, `20ms` durations).
pub fn cooldown_from(headers: &HeaderMap) -> Option<Duration> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let found = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        seconds(ms / 1000.0)
    } else if let Some(v) = get("retry-after") {
        v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
            let when = httpdate_secs(v)?;
            Some(Duration::from_secs(
                when.saturating_sub(crate::time::unix_now()),
            ))
        })
    } else {
        [
            "x-ratelimit-reset-requests",
            "x-ratelimit-reset-tokens",
            "x-ratelimit-reset",
        ]
        .iter()
        .filter_map(|n| get(n).and_then(parse_go_duration))
        .max()
    };
    // A zero (OpenAI has sent `x-ratelimit-reset-tokens: 0` with a 429) says nothing useful.
    found.filter(|d| !d.is_zero()).map(|d| d.min(MAX_COOLDOWN))
}

/// A provider-given number of seconds, capped; `None` for a negative, infinite or NaN one
/// (`Duration::from_secs_f64` would panic on `inf` or `1e30`).
fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_COOLDOWN.as_secs_f64())))
}

/// `6m0s`, `1h2m3.5s`, `20ms`, or a bare number of seconds.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += value * mult;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

/// Unix seconds of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_secs(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == mon)? + 1;
    let iso = format!("{year}-{m:02}-{:0>2}T{time}Z", day);
    crate::time::parse_rfc3339(&iso).and_then(|t| u64::try_from(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: usize, affinity: KeyAffinity) -> KeyRing {
        let keys = (0..n)
            .map(|i| (format!("k{i}"), KeySource::Value(format!("sk-{i}"))))
            .collect();
        KeyRing::new(ProviderKind::Openai, affinity, keys).0
    }

    /// Cools key `i` down as a 429 for its current value would.
    fn cool(r: &KeyRing, i: usize, h: &HeaderMap, now: Instant) -> Duration {
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
        let mut zero = HeaderMap::new();
        zero.insert("x-ratelimit-reset-tokens", "0".parse().unwrap());
        assert_eq!(cooldown_from(&zero), None, "a zero hint is no hint");
        for absurd in ["inf", "1e30", "NaN", "-5"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after-ms", absurd.parse().unwrap());
            assert!(
                cooldown_from(&h).is_none_or(|d| d <= MAX_COOLDOWN),
                "{absurd}: no panic, no endless cooldown"
            );
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-reset-tokens", absurd.parse().unwrap());
            assert!(cooldown_from(&h).is_none_or(|d| d <= MAX_COOLDOWN));
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset-tokens",
            "99999999999999h".parse().unwrap(),
        );
        assert_eq!(cooldown_from(&h), Some(MAX_COOLDOWN));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn disabled_until_the_value_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-old\n").unwrap();
        let (r, problems) = KeyRing::new(
            ProviderKind::Openai,
            KeyAffinity::None,
            vec![("f".into(), KeySource::File(path.clone()))],
        );
        assert!(problems.is_empty());
        assert!(r.has_live());
        let old = r.slots[0].key.load_full().unwrap();
        cool(&r, 0, &HeaderMap::new(), Instant::now());
        r.disable(0, &old, "unauthorized");
        assert!(!r.has_live(), "a refused key is not alive");
        assert!(matches!(
            r.pick(None, &[], Instant::now()),
            KeyPick::Exhausted {
                back_in: None,
                refused: true
            }
        ));
        assert!(!r.refresh_files(), "unchanged file");
        // Same length, same modification time: only the content tells.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "sk-new\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(r.refresh_files());
        assert!(!r.refresh_files(), "taken once");
        match r.pick(None, &[], Instant::now()) {
            KeyPick::Key(0, k) => assert_eq!(k.secret(), "sk-new", "and not cooling either"),
            other => panic!("{other:?}"),
        }
        // Answers to requests sent with the old value do not touch the new one.
        r.disable(0, &old, "unauthorized");
        assert_eq!(
            r.cool_down(0, &old, &HeaderMap::new(), Instant::now()),
            None
        );
        assert_eq!(r.view(Instant::now())[0].state, "active");
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

    #[test]
    fn cooldown_headers() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert_eq!(
            cooldown_from(&h(&[("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            cooldown_from(&h(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            cooldown_from(&h(&[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "20ms")
            ])),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            cooldown_from(&h(&[("x-ratelimit-reset-tokens", "1.5s")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            cooldown_from(&h(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")])),
            None,
            "a date in the past says nothing"
        );
        assert_eq!(
            cooldown_from(&h(&[("retry-after", "99999999")])),
            Some(MAX_COOLDOWN)
        );
        assert_eq!(cooldown_from(&h(&[])), None);
        assert_eq!(cooldown_from(&h(&[("retry-after", "soon")])), None);
    }
}
