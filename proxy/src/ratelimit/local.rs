//! In-process counters: sharded maps behind short mutexes, bounded in size.
//!
//! Counters are keyed by a 64-bit foldhash (quality variant, seeded at random per process) of
//! policy, key and rule; the hot path allocates nothing. Unlike SipHash it is not a keyed PRF,
//! but no client ever sees a counter id, so none can aim for a collision with another's
//! counter. The policy part is hashed once per config load ([`LocalStore::seed`]), so a request
//! hashes only its key material and two small numbers. A decision locks the
//! shards of all its counters in ascending order (no deadlock), checks every rule, and
//! writes only if all admit, so a denied request consumes nothing and concurrent requests
//! never overshoot. Memory is bounded: a shard that reaches its capacity first drops
//! counters idle long enough to no longer matter, then, if still full, the counters that
//! expire soonest.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::quality::RandomState;
use smallvec::SmallVec;

use super::algorithms::{evaluate, Rule, State, Verdict, Verdicts};
use super::clock::Clock;

const SHARDS: usize = 64;
pub const DEFAULT_MAX_COUNTERS: usize = 1 << 20;

#[derive(Clone, Copy)]
struct Entry {
    state: State,
    /// After this instant the counter no longer influences any decision.
    idle_until_ms: u64,
}

/// Map keys are already hash outputs; hashing them again would be wasted work.
#[derive(Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone, Copy)]
struct BuildPreHashed;

impl BuildHasher for BuildPreHashed {
    type Hasher = PreHashed;
    fn build_hasher(&self) -> PreHashed {
        PreHashed(0)
    }
}

type Shard = HashMap<u64, Entry, BuildPreHashed>;

/// The shard locks one decision holds (a request has a few counters).
type Guards<'a> = SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>;

pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    per_shard: usize,
}

/// One counter of one request: which (hashed) counter, under which rule.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub counter: u64,
    pub rule: Rule,
}

impl LocalStore {
    pub fn new(clock: Arc<dyn Clock>, max_counters: usize) -> Self {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::default(),
            clock,
            per_shard: (max_counters / SHARDS).max(16),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The counter id for anything hashable (policy seed, key material, rule index).
    pub fn counter(&self, parts: impl Hash) -> u64 {
        self.hasher.hash_one(parts)
    }

    /// A policy's part of its counter ids, computed at config load. The same id gives the
    /// same seed for the life of the process, so counters survive reloads.
    pub fn seed(&self, policy: &str) -> u64 {
        self.hasher.hash_one(policy)
    }

    fn shard_of(counter: u64) -> usize {
        // The low bits pick the bucket inside a shard's map; use the high ones here.
        (counter >> 58) as usize % SHARDS
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a counter half-written (entries are
        // Copy and written whole), so a poisoned lock is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides all `checks` atomically; writes `verdicts[i]` for `checks[i]`. Returns
    /// whether every rule admitted (and the counters were charged).
    pub fn decide(&self, checks: &[Check], verdicts: &mut Verdicts) -> bool {
        let now = self.clock.now_ms();
        verdicts.clear();
        if let [check] = checks {
            let verdict = self.decide_one(check, now);
            verdicts.push(verdict);
            return verdict.allowed;
        }
        let mut order: [usize; 8] = [0; 8];
        let mut shard_ids: Vec<usize> = Vec::new();
        let few = checks.len() <= order.len();
        if few {
            for (slot, c) in order.iter_mut().zip(checks) {
                *slot = Self::shard_of(c.counter);
            }
            order[..checks.len()].sort_unstable();
        } else {
            shard_ids = checks.iter().map(|c| Self::shard_of(c.counter)).collect();
            shard_ids.sort_unstable();
        }
        let ids: &[usize] = if few {
            &order[..checks.len()]
        } else {
            &shard_ids
        };
        let mut guards: Guards<'_> = SmallVec::new();
        for &id in ids {
            if guards.last().is_some_and(|(last, _)| *last == id) {
                continue;
            }
            guards.push((id, self.lock(id)));
        }
        let guard_of = |guards: &mut Guards<'_>, counter: u64| -> usize {
            let id = Self::shard_of(counter);
            guards.iter().position(|(g, _)| *g == id).unwrap_or(0)
        };
        let mut all = true;
        let mut next_states: [State; 8] = [State::default(); 8];
        let mut many_states: Vec<State> = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            let g = guard_of(&mut guards, c.counter);
            let current = guards[g]
                .1
                .get(&c.counter)
                .filter(|e| e.idle_until_ms > now)
                .map(|e| e.state);
            let (verdict, next) = evaluate(&c.rule, current, now);
            all &= verdict.allowed;
            verdicts.push(verdict);
            if few {
                next_states[i] = next;
            } else {
                many_states.push(next);
            }
        }
        if all {
            for (i, c) in checks.iter().enumerate() {
                let g = guard_of(&mut guards, c.counter);
                let state = if few { next_states[i] } else { many_states[i] };
                let entry = Entry {
                    state,
                    idle_until_ms: now.saturating_add(c.rule.idle_ms()),
                };
                let shard = &mut guards[g].1;
                if shard.len() >= self.per_shard && !shard.contains_key(&c.counter) {
                    evict(shard, now, self.per_shard);
                }
                shard.insert(c.counter, entry);
            }
        }
        all
    }

    /// One counter, the usual case: one lock and one probe of its map.
    fn decide_one(&self, check: &Check, now: u64) -> Verdict {
        let mut shard = self.lock(Self::shard_of(check.counter));
        if shard.len() >= self.per_shard && !shard.contains_key(&check.counter) {
            evict(&mut shard, now, self.per_shard);
        }
        let entry = shard.entry(check.counter);
        let current = match &entry {
            MapEntry::Occupied(stored) => Some(*stored.get())
                .filter(|e| e.idle_until_ms > now)
                .map(|e| e.state),
            MapEntry::Vacant(_) => None,
        };
        let (verdict, state) = evaluate(&check.rule, current, now);
        if verdict.allowed {
            entry.insert_entry(Entry {
                state,
                idle_until_ms: now.saturating_add(check.rule.idle_ms()),
            });
        }
        verdict
    }

    /// Number of live counters (tests and the admin summary).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn evict(shard: &mut Shard, now: u64, capacity: usize) {
    shard.retain(|_, e| e.idle_until_ms > now);
    if shard.len() < capacity {
        return;
    }
    // Still full of live counters: drop the eighth that would expire soonest. Those
    // clients get a fresh allowance, which is the least harmful way to stay bounded.
    let mut expiries: Vec<u64> = shard.values().map(|e| e.idle_until_ms).collect();
    let cut = expiries.len() / 8;
    let (_, &mut threshold, _) = expiries.select_nth_unstable(cut);
    shard.retain(|_, e| e.idle_until_ms > threshold);
    tracing::warn!(
        capacity,
        "rate-limit counter shard full of live counters; evicted the soonest-expiring"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::algorithms::Kind;
    use super::super::clock::ManualClock;
    use super::*;

    fn rule(limit: u64) -> Rule {
        Rule {
            kind: Kind::Fixed,
            limit,
            period_ms: 1000,
            burst: limit,
        }
    }

    #[test]
    fn denied_requests_consume_no_other_counter() {
        let clock = ManualClock::new(1_000_000);
        let store = LocalStore::new(Arc::new(clock), 10_000);
        let (a, b) = (store.counter("a"), store.counter("b"));
        let mut v = Verdicts::new();
        let both = [
            Check {
                counter: a,
                rule: rule(5),
            },
            Check {
                counter: b,
                rule: rule(1),
            },
        ];
        assert!(store.decide(&both, &mut v));
        for _ in 0..3 {
            assert!(!store.decide(&both, &mut v));
        }
        // `a` was charged once only: four more fit.
        let only_a = [Check {
            counter: a,
            rule: rule(5),
        }];
        assert_eq!((0..10).filter(|_| store.decide(&only_a, &mut v)).count(), 4);
    }

    #[test]
    fn idle_counters_are_evicted_when_full() {
        let clock = ManualClock::new(1_000_000);
        let store = LocalStore::new(Arc::new(clock.clone()), 64 * 16);
        let mut v = Verdicts::new();
        for i in 0..20_000u64 {
            if i % 1000 == 0 {
                clock.advance(5_000);
            }
            let c = Check {
                counter: store.counter(i),
                rule: rule(1),
            };
            assert!(store.decide(&[c], &mut v));
        }
        assert!(store.len() <= 64 * 16, "{}", store.len());
    }

    #[test]
    fn one_counter_path_decides_as_the_general_path() {
        let clock = ManualClock::new(1_000_000);
        let one = LocalStore::new(Arc::new(clock.clone()), 10_000);
        let general = LocalStore::new(Arc::new(clock.clone()), 10_000);
        let rules = [
            rule(5),
            Rule {
                kind: Kind::Sliding,
                limit: 5,
                period_ms: 1000,
                burst: 5,
            },
            Rule {
                kind: Kind::Gcra,
                limit: 5,
                period_ms: 1000,
                burst: 3,
            },
        ];
        let (mut v1, mut v2) = (Verdicts::new(), Verdicts::new());
        let mut step = 7u64;
        let mut denied = 0;
        for i in 0..3_000u64 {
            step = step
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            clock.advance((step >> 33) % 60);
            let r = rules[(i % 3) as usize];
            let c = Check {
                counter: one.counter(i % 3),
                rule: r,
            };
            // Same counter in the other store, decided alongside one that never limits.
            let both = [
                Check {
                    counter: general.counter(i % 3),
                    rule: r,
                },
                Check {
                    counter: general.counter("other"),
                    rule: rule(u64::MAX),
                },
            ];
            assert_eq!(one.decide(&[c], &mut v1), general.decide(&both, &mut v2));
            assert_eq!(v1[0], v2[0], "request {i}");
            denied += usize::from(!v1[0].allowed);
        }
        assert!((300..2_700).contains(&denied), "{denied} denied");
    }
}
