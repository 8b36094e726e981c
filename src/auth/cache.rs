//! Verified tokens, remembered until they expire so that a signature is checked and the claims
//! decoded once per token rather than once per request. Bounded, sharded (no global lock),
//! keyed by the token's SHA-256, and owned by the compiled runtime: a key or secret removed by
//! a configuration change (a reload) takes its tokens with it.

use std::collections::HashMap;
use std::sync::Arc;

const SHARDS: usize = 16;

/// What a verified token yields.
#[derive(Debug, Clone)]
pub struct Verified {
    pub subject: Arc<str>,
    pub roles: Arc<[String]>,
    /// `exp` claim, Unix seconds.
    pub exp: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    shards: Vec<parking_lot::Mutex<HashMap<[u8; 32], Verified>>>,
    per_shard: usize,
}

impl TokenCache {
    pub fn new(entries: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS)
                .map(|_| parking_lot::Mutex::new(HashMap::new()))
                .collect(),
            per_shard: entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &parking_lot::Mutex<HashMap<[u8; 32], Verified>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The cached result for `key` if it is still valid at `now` (with `leeway`).
    pub fn get(&self, key: &[u8; 32], now: u64, leeway: u64) -> Option<Verified> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(v) if now <= v.exp.saturating_add(leeway) => Some(v.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: [u8; 32], v: Verified, now: u64) {
        let mut shard = self.shard(&key).lock();
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.exp > now);
            if shard.len() >= self.per_shard {
                // Still full of live tokens: start this shard over rather than grow.
                shard.clear();
            }
        }
        shard.insert(key, v);
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(exp: u64) -> Verified {
        Verified {
            subject: "s".into(),
            roles: Arc::from(vec![]),
            exp,
        }
    }

    #[test]
    fn entries_expire_with_their_token() {
        let c = TokenCache::new(100);
        c.insert([1; 32], v(100), 0);
        assert!(c.get(&[1; 32], 100, 0).is_some());
        assert!(c.get(&[1; 32], 105, 10).is_some(), "leeway");
        assert!(c.get(&[1; 32], 101, 0).is_none());
        assert!(c.is_empty(), "expired entries are removed on access");
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(32);
        for i in 0..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.insert(k, v(u64::MAX), 0);
        }
        assert!(c.len() <= 32 + SHARDS, "{}", c.len());
    }
}
