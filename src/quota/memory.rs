//! The in-process store: counters in 64 independently locked shards, so that callers on
//! different shards never wait for each other and the cost stays flat however many callers
//! there are. A reservation over several rules locks its shards in index order (no deadlock),
//! checks every counter, then adds to all of them or to none.

use super::window::Windows;
use super::{take, Checked, Counts, Part, Scope, Spend};
use parking_lot::{Mutex, MutexGuard};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SHARDS: usize = 64;

type BucketKey = (Arc<str>, Scope);

/// One rule's counters for one scope, in the windows they were last touched in.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    minute: u64,
    day: u64,
    counts: Counts,
}

impl Bucket {
    /// The counts as of `w`: a window that has ended counts from zero.
    fn rolled(mut self, w: Windows) -> Bucket {
        if self.minute != w.minute {
            self.minute = w.minute;
            self.counts.requests = 0;
            self.counts.tokens_minute = 0;
        }
        if self.day != w.day {
            self.day = w.day;
            self.counts.tokens_day = 0;
            self.counts.micro_usd_day = 0;
        }
        self
    }
}

/// A caller's spending today, whatever the rules.
#[derive(Debug, Clone, Copy, Default)]
struct DaySpend {
    day: u64,
    spend: Spend,
}

/// An entry that belongs to one UTC day.
trait Dated {
    fn day(&self) -> u64;
}

impl Dated for Bucket {
    fn day(&self) -> u64 {
        self.day
    }
}

impl Dated for DaySpend {
    fn day(&self) -> u64 {
        self.day
    }
}

struct Sharded<K, V> {
    shards: Box<[Mutex<HashMap<K, V>>]>,
    /// The day each shard last forgot earlier days' entries.
    pruned_day: Box<[AtomicU64]>,
}

impl<K: Hash + Eq, V: Dated> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pruned_day: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Shard `i`, locked; on a shard's first write of a day, the entries of earlier days (callers
    /// that did not come back) are forgotten, so memory follows the day's callers.
    fn lock_for_write(&self, i: usize, day: u64) -> MutexGuard<'_, HashMap<K, V>> {
        let mut map = self.shards[i].lock();
        if self.pruned_day[i].load(Ordering::Relaxed) != day {
            map.retain(|_, v| v.day() >= day);
            self.pruned_day[i].store(day, Ordering::Relaxed);
        }
        map
    }

    fn index(key: &K) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() as usize) % SHARDS
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, V>> {
        self.shards[Self::index(key)].lock()
    }
}

/// Counters of this process.
pub struct MemoryStore {
    buckets: Sharded<BucketKey, Bucket>,
    spend: Sharded<Scope, DaySpend>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            buckets: Sharded::new(),
            spend: Sharded::new(),
        }
    }
}

impl MemoryStore {
    /// Checks every part and reserves all of them, or none.
    pub fn reserve(&self, parts: &mut [Part], w: Windows) -> Checked {
        let keys: Vec<BucketKey> = parts
            .iter()
            .map(|p| (p.rule.clone(), p.scope.clone()))
            .collect();
        let mut order: Vec<usize> = keys.iter().map(Sharded::<_, Bucket>::index).collect();
        let shard_of = order.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<MutexGuard<'_, HashMap<BucketKey, Bucket>>> = order
            .iter()
            .map(|&i| self.buckets.lock_for_write(i, w.day))
            .collect();
        let guard_of = |part: usize| order.binary_search(&shard_of[part]).unwrap_or(0);
        let mut after = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter_mut().enumerate() {
            let current = guards[guard_of(i)]
                .get(&keys[i])
                .copied()
                .unwrap_or_default()
                .rolled(w);
            match take(&current.counts, &p.limits, &p.ask) {
                Ok(t) => {
                    p.taken = t;
                    after.push(current.counts.plus(&t));
                }
                Err(kind) => {
                    return Checked::Over {
                        part: i,
                        kind,
                        counts: current.counts,
                    }
                }
            }
        }
        for (i, key) in keys.into_iter().enumerate() {
            let b = guards[guard_of(i)].entry(key).or_default();
            *b = b.rolled(w);
            b.counts = after[i];
        }
        Checked::Admitted(after)
    }

    /// Replaces what `parts` reserved in windows `w` with what was spent (`None`: nothing, and
    /// the request itself is given back). A window that has ended since is left alone.
    pub fn settle(&self, parts: &[Part], w: Windows, spent: Option<(u64, u64)>) {
        for p in parts {
            let key = (p.rule.clone(), p.scope.clone());
            let mut map = self.buckets.shard(&key);
            let Some(b) = map.get_mut(&key) else { continue };
            let (tokens, micro) = spent.unwrap_or((0, 0));
            if b.minute == w.minute {
                if spent.is_none() {
                    b.counts.requests = b.counts.requests.saturating_sub(1);
                }
                b.counts.tokens_minute =
                    adjust(b.counts.tokens_minute, p.taken.tokens_minute, tokens);
            }
            if b.day == w.day {
                b.counts.tokens_day = adjust(b.counts.tokens_day, p.taken.tokens_day, tokens);
                b.counts.micro_usd_day = adjust(b.counts.micro_usd_day, p.taken.micro_usd, micro);
            }
        }
    }

    /// Buckets held (for tests of the daily forgetting).
    #[cfg(test)]
    pub fn buckets_held(&self) -> usize {
        self.buckets.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// A rule's counts for a scope now.
    pub fn counts(&self, rule: &Arc<str>, scope: &Scope, w: Windows) -> Counts {
        let key = (rule.clone(), scope.clone());
        self.buckets
            .shard(&key)
            .get(&key)
            .map_or_else(Counts::default, |b| b.rolled(w).counts)
    }

    /// Adds a served request to its caller's spending today.
    pub fn record_spend(&self, scope: &Scope, w: Windows, add: Spend) {
        let i = Sharded::<Scope, DaySpend>::index(scope);
        let mut map = self.spend.lock_for_write(i, w.day);
        let e = map.entry(scope.clone()).or_default();
        if e.day != w.day {
            *e = DaySpend {
                day: w.day,
                spend: Spend::default(),
            };
        }
        e.spend = e.spend.plus(&add);
    }

    /// A caller's spending today.
    pub fn spend(&self, scope: &Scope, w: Windows) -> Spend {
        self.spend
            .shard(scope)
            .get(scope)
            .filter(|s| s.day == w.day)
            .map_or_else(Spend::default, |s| s.spend)
    }

    /// The `n` callers who spent the most today (by cost, then tokens).
    pub fn top(&self, n: usize, w: Windows) -> Vec<(Scope, Spend)> {
        let mut all: Vec<(Scope, Spend)> = Vec::new();
        for shard in self.spend.shards.iter() {
            let map = shard.lock();
            all.extend(
                map.iter()
                    .filter(|(_, s)| s.day == w.day)
                    .map(|(k, s)| (k.clone(), s.spend)),
            );
        }
        all.sort_by(|a, b| {
            (b.1.micro_usd, b.1.tokens, &a.0).cmp(&(a.1.micro_usd, a.1.tokens, &b.0))
        });
        all.truncate(n);
        all
    }
}

/// One bucket or spending entry of the state file: counters of the current windows, by rule
/// id (empty for spending) and scope.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedCounts {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// `shared`, `subject` or `api_key`.
    pub scope: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub minute: u64,
    pub day: u64,
    pub requests: u64,
    pub tokens_minute: u64,
    pub tokens_day: u64,
    pub micro_usd_day: u64,
}

fn scope_from(kind: &str, id: &str) -> Option<Scope> {
    match kind {
        "shared" => Some(Scope::Shared),
        "subject" => Some(Scope::Subject(Arc::from(id))),
        "api_key" => Some(Scope::ApiKey(Arc::from(id))),
        _ => None,
    }
}

impl MemoryStore {
    /// Today's counters, for the state file.
    pub fn export(&self, w: Windows) -> Vec<SavedCounts> {
        let mut out = Vec::new();
        for shard in self.buckets.shards.iter() {
            for ((rule, scope), b) in shard.lock().iter().filter(|(_, b)| b.day == w.day) {
                let b = b.rolled(w);
                out.push(SavedCounts {
                    rule: rule.to_string(),
                    scope: scope.kind().into(),
                    id: scope.name().into(),
                    minute: b.minute,
                    day: b.day,
                    requests: b.counts.requests,
                    tokens_minute: b.counts.tokens_minute,
                    tokens_day: b.counts.tokens_day,
                    micro_usd_day: b.counts.micro_usd_day,
                });
            }
        }
        for shard in self.spend.shards.iter() {
            for (scope, s) in shard.lock().iter().filter(|(_, s)| s.day == w.day) {
                out.push(SavedCounts {
                    rule: String::new(),
                    scope: scope.kind().into(),
                    id: scope.name().into(),
                    minute: 0,
                    day: s.day,
                    requests: s.spend.requests,
                    tokens_minute: 0,
                    tokens_day: s.spend.tokens,
                    micro_usd_day: s.spend.micro_usd,
                });
            }
        }
        out
    }

    /// Adds a previous process's counters (its windows still apply: they are the wall clock's).
    pub fn import(&self, saved: &[SavedCounts], w: Windows) {
        for s in saved.iter().filter(|s| s.day == w.day) {
            let Some(scope) = scope_from(&s.scope, &s.id) else {
                continue;
            };
            if s.rule.is_empty() {
                self.record_spend(
                    &scope,
                    w,
                    Spend {
                        requests: s.requests,
                        tokens: s.tokens_day,
                        micro_usd: s.micro_usd_day,
                    },
                );
                continue;
            }
            let key = (Arc::from(s.rule.as_str()), scope);
            let mut map = self.buckets.shard(&key);
            let b = map.entry(key).or_default();
            let saved = Bucket {
                minute: s.minute,
                day: s.day,
                counts: Counts {
                    requests: s.requests,
                    tokens_minute: s.tokens_minute,
                    tokens_day: s.tokens_day,
                    micro_usd_day: s.micro_usd_day,
                },
            }
            .rolled(w);
            let mine = b.rolled(w);
            *b = Bucket {
                minute: w.minute,
                day: w.day,
                counts: Counts {
                    requests: mine.counts.requests.saturating_add(saved.counts.requests),
                    tokens_minute: mine
                        .counts
                        .tokens_minute
                        .saturating_add(saved.counts.tokens_minute),
                    tokens_day: mine
                        .counts
                        .tokens_day
                        .saturating_add(saved.counts.tokens_day),
                    micro_usd_day: mine
                        .counts
                        .micro_usd_day
                        .saturating_add(saved.counts.micro_usd_day),
                },
            };
        }
    }
}

/// `current - reserved + actual`, never below zero.
fn adjust(current: u64, reserved: u64, actual: u64) -> u64 {
    current.saturating_sub(reserved).saturating_add(actual)
}
