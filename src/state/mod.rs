//! What must survive a configuration reload, owned outside any one `Runtime` and keyed by
//! stable ids (names, URLs, addresses), never by position:
//!
//! - each backend's state (breaker, passed-a-check, latency, last error) by provider name,
//!   endpoint URL and resolved address;
//! - each provider's health registry (Pingora's per-backend health verdicts) by provider name;
//! - each provider key's slot (current value, cooldown, disabling, counters) by provider name
//!   and key id: kept while the key's value is the same, fresh when it changes;
//! - each JWKS URL's fetched key set by URL.
//!
//! Entries are weak: the runtimes (and the requests holding a runtime) own them. `compile`
//! adopts what exists and creates what is missing; an entry that no configuration refers to
//! any more goes away with the last request that still holds the old runtime. Only compilation
//! touches these maps (never a request), so a plain mutex is enough.

pub mod file;

use crate::auth::jwks::JwksUrl;
use crate::upstream::backend::BackendState;
use crate::upstream::health::ProviderHealth;
use crate::upstream::keys::KeySlot;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

/// A backend's stable id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub provider: Arc<str>,
    pub endpoint_url: Arc<str>,
    pub addr: SocketAddr,
}

/// Weak entries by key.
pub struct Entries<K, V> {
    map: parking_lot::Mutex<HashMap<K, Weak<V>>>,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries {
            map: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Entries<K, V> {
    /// The live entry for `key`, if some runtime still holds it.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.map.lock().get(key).and_then(Weak::upgrade)
    }

    /// The entry for `key`: `make` gets the live one (if any) and returns the one to keep
    /// (the same, or a replacement), which is recorded.
    pub fn adopt(&self, key: &K, make: impl FnOnce(Option<Arc<V>>) -> Arc<V>) -> Arc<V> {
        let mut map = self.map.lock();
        let current = map.get(key).and_then(Weak::upgrade);
        let kept = make(current);
        map.insert(key.clone(), Arc::downgrade(&kept));
        kept
    }

    /// The entry for `key`, created by `make` when there is none.
    pub fn get_or_insert(&self, key: &K, make: impl FnOnce() -> Arc<V>) -> Arc<V> {
        self.adopt(key, |current| current.unwrap_or_else(make))
    }

    /// The live entries.
    pub fn live(&self) -> Vec<(K, Arc<V>)> {
        let map = self.map.lock();
        map.iter()
            .filter_map(|(k, w)| Some((k.clone(), w.upgrade()?)))
            .collect()
    }

    /// The keys of the live entries.
    pub fn live_keys(&self) -> Vec<K> {
        let map = self.map.lock();
        map.iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forgets entries nothing holds any more; returns how many are live.
    pub fn prune(&self) -> usize {
        let mut map = self.map.lock();
        map.retain(|_, w| w.strong_count() > 0);
        map.len()
    }
}

/// The carried-over state of a gateway process.
#[derive(Default)]
pub struct State {
    pub backends: Entries<BackendKey, BackendState>,
    pub health: Entries<Arc<str>, ProviderHealth>,
    pub key_slots: Entries<(Arc<str>, Arc<str>), KeySlot>,
    pub jwks: Entries<String, JwksUrl>,
    /// Quota counters of the `memory` store: one per process, whatever the configuration, so
    /// that a reload keeps every budget (rules keep their counters by id).
    pub quota_memory: Arc<crate::quota::memory::MemoryStore>,
    /// `redis` stores by URL, key prefix and timeout (a reload keeps the connection).
    pub quota_redis: Entries<(String, String, u64), crate::quota::redis::RedisStore>,
    /// What a previous process saved (`server.state_file`) for entries not created yet: taken
    /// when they are.
    seeds: parking_lot::Mutex<file::Seeds>,
}

impl State {
    /// Applies a previous process's snapshot: to the entries that exist now, and to the ones
    /// created later (their seeds are kept until then). Times count on from now.
    pub fn adopt_snapshot(&self, snapshot: file::Snapshot) {
        let now = tokio::time::Instant::now();
        let w = crate::quota::window::Windows::at(crate::quota::window::now_ms());
        self.quota_memory.import(&snapshot.quotas, w);
        let mut seeds = file::Seeds::from(snapshot);
        seeds
            .backends
            .retain(|key, seed| match self.backends.get(key) {
                Some(b) => {
                    seed.apply(&b, now);
                    false
                }
                None => true,
            });
        seeds
            .keys
            .retain(|key, seed| match self.key_slots.get(key) {
                Some(slot) => {
                    slot.restore(seed, now);
                    false
                }
                None => true,
            });
        *self.seeds.lock() = seeds;
    }

    /// The saved state of a backend about to be created, if a previous process left one.
    pub fn take_backend_seed(&self, key: &BackendKey) -> Option<file::BackendSeed> {
        self.seeds.lock().backends.remove(key)
    }

    /// The saved state of a key slot just created, if a previous process left one.
    pub fn take_key_seed(
        &self,
        key: &(Arc<str>, Arc<str>),
    ) -> Option<crate::upstream::keys::KeySnapshot> {
        self.seeds.lock().keys.remove(key)
    }

    /// What to save for a next process: every live backend and key.
    pub fn snapshot(&self) -> file::Snapshot {
        let now = tokio::time::Instant::now();
        let backends = self
            .backends
            .live()
            .into_iter()
            .map(|(k, b)| file::BackendEntry {
                provider: k.provider.to_string(),
                endpoint_url: k.endpoint_url.to_string(),
                addr: k.addr,
                checked: b.checked(),
                breaker: b.breaker.snapshot(now),
            })
            .collect();
        let keys = self
            .key_slots
            .live()
            .into_iter()
            .filter_map(|((provider, id), slot)| {
                Some(file::KeyEntry {
                    provider: provider.to_string(),
                    id: id.to_string(),
                    state: slot.snapshot(now)?,
                })
            })
            .collect();
        let mut s = file::Snapshot::new(backends, keys);
        let w = crate::quota::window::Windows::at(crate::quota::window::now_ms());
        s.quotas = self.quota_memory.export(w);
        s
    }

    /// Forgets what no runtime holds any more (after a swap, once old requests are done).
    pub fn prune(&self) {
        self.backends.prune();
        self.health.prune();
        self.key_slots.prune();
        self.jwks.prune();
        self.quota_redis.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_someone_holds_them() {
        let e: Entries<&str, u32> = Entries::default();
        let a = e.get_or_insert(&"a", || Arc::new(1));
        assert_eq!(*e.get_or_insert(&"a", || Arc::new(2)), 1, "adopted");
        assert_eq!(e.prune(), 1);
        drop(a);
        assert_eq!(e.get(&"a"), None, "nobody holds it");
        assert_eq!(e.prune(), 0);
        assert_eq!(*e.get_or_insert(&"a", || Arc::new(3)), 3, "created afresh");
    }

    #[test]
    fn adopt_may_replace_what_it_finds() {
        let e: Entries<&str, u32> = Entries::default();
        let _old = e.get_or_insert(&"k", || Arc::new(1));
        let new = e.adopt(&"k", |current| Arc::new(current.map_or(0, |c| *c + 10)));
        assert_eq!(*new, 11);
        assert_eq!(e.get(&"k"), Some(new));
    }
}
