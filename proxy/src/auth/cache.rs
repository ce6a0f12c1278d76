//! A bounded, sharded cache keyed by the SHA-256 of a credential.
//!
//! Keys are digests, so the cache never holds a credential itself. Sharding keeps the lock a
//! request takes to one of sixteen short critical sections (a lookup or an insert), so
//! concurrent requests with different credentials rarely meet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

const SHARDS: usize = 16;

pub type CacheKey = [u8; 32];
type Shard<V> = Mutex<HashMap<CacheKey, (u64, Arc<V>)>>;

pub fn key_of(parts: &[&[u8]]) -> CacheKey {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed so that ("ab","c") and ("a","bc") differ.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

pub struct TtlCache<V> {
    shards: Vec<Shard<V>>,
    per_shard: usize,
}

impl<V> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, HashMap<CacheKey, (u64, Arc<V>)>> {
        let shard = &self.shards[usize::from(key[0]) % SHARDS];
        match shard.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The value if it has not expired at `now_ms`.
    pub fn get(&self, key: &CacheKey, now_ms: u64) -> Option<Arc<V>> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some((expires, value)) if *expires > now_ms => Some(value.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: CacheKey, value: Arc<V>, expires_ms: u64, now_ms: u64) {
        if expires_ms <= now_ms {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, (expires, _)| *expires > now_ms);
            if shard.len() >= self.per_shard {
                // Still full of live entries: drop an arbitrary one. Bounded memory matters
                // more than which credential pays for one more verification.
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key, (expires_ms, value));
    }
}
