//! In-process counters: sharded maps behind short mutexes, bounded in size per policy.
//!
//! Counters are keyed by a 64-bit foldhash (quality variant, seeded at random per process) of
//! policy, key and rule; the hot path allocates nothing. Unlike SipHash it is not a keyed PRF,
//! but no client ever sees a counter id, so none can aim for a collision with another's
//! counter. The policy part is hashed once per config load ([`LocalStore::seed`]), so a request
//! hashes only its key material and two small numbers. A decision locks the
//! shards of all its counters in ascending order (no deadlock), checks every rule, and
//! writes only if all admit, so a denied request consumes nothing and concurrent requests
//! never overshoot.
//!
//! Memory is bounded per policy: each policy has its own [`Partition`] of shards with its
//! own capacity, so a flood of distinct keys on one policy (random header values, a block
//! of IPv6 addresses) can only evict that policy's counters, never another's (a strict
//! limit on a login route keeps counting whatever happens on a search route). A shard that
//! reaches its capacity first drops counters idle long enough to no longer matter, then, if
//! still full, the counters that expire soonest.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use foldhash::quality::RandomState;
use smallvec::SmallVec;

use super::algorithms::{evaluate, Rule, State, Verdict, Verdicts};
use super::clock::Clock;

const SHARDS: usize = 64;
/// Counters per policy, at most (a client has one per rule of the policy): about 20-40 MB
/// for a policy flooded with distinct keys.
pub const DEFAULT_MAX_COUNTERS_PER_POLICY: usize = 1 << 18;

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

/// A shard of one partition: (partition address, shard index) orders the locks of a
/// decision that spans several policies.
type ShardId = (usize, usize);

/// The shard locks one decision holds (a request has a few counters).
type Guards<'a> = SmallVec<[(ShardId, MutexGuard<'a, Shard>); 4]>;

/// One policy's counters, with their own capacity.
pub struct Partition {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl Partition {
    fn new(max_counters: usize) -> Self {
        Partition {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (max_counters / SHARDS).max(16),
        }
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
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Live counters (tests and the admin summary).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct LocalStore {
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    per_policy: usize,
    /// Weak, as for Redis connections: the configs that use a partition own it, a reload
    /// finds the partitions the running config holds (counters survive reloads), and the
    /// counters of a policy no config uses any more are freed with the last config.
    partitions: Mutex<HashMap<String, Weak<Partition>>>,
}

/// One counter of one request: which (hashed) counter of which policy, under which rule.
#[derive(Clone, Copy)]
pub struct Check<'a> {
    pub partition: &'a Partition,
    pub counter: u64,
    pub rule: Rule,
}

impl Check<'_> {
    fn shard(&self) -> ShardId {
        (
            std::ptr::from_ref(self.partition).addr(),
            Partition::shard_of(self.counter),
        )
    }
}

impl LocalStore {
    /// `max_counters_per_policy`: the capacity of each policy's partition.
    pub fn new(clock: Arc<dyn Clock>, max_counters_per_policy: usize) -> Self {
        LocalStore {
            hasher: RandomState::default(),
            clock,
            per_policy: max_counters_per_policy,
            partitions: Mutex::new(HashMap::new()),
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

    fn partitions(&self) -> MutexGuard<'_, HashMap<String, Weak<Partition>>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of policy `id`: the ones a loaded config already holds, or new ones.
    /// Only at config load, never per request.
    pub fn partition(&self, id: &str) -> Arc<Partition> {
        let mut map = self.partitions();
        map.retain(|_, p| p.strong_count() > 0);
        if let Some(p) = map.get(id).and_then(Weak::upgrade) {
            return p;
        }
        let p = Arc::new(Partition::new(self.per_policy));
        map.insert(id.to_owned(), Arc::downgrade(&p));
        p
    }

    /// Decides all `checks` atomically; writes `verdicts[i]` for `checks[i]`. Returns
    /// whether every rule admitted (and the counters were charged).
    pub fn decide(&self, checks: &[Check<'_>], verdicts: &mut Verdicts) -> bool {
        let now = self.clock.now_ms();
        verdicts.clear();
        if let [check] = checks {
            let verdict = decide_one(check, now);
            verdicts.push(verdict);
            return verdict.allowed;
        }
        let mut order: [ShardId; 8] = [(0, 0); 8];
        let mut shard_ids: Vec<ShardId> = Vec::new();
        let few = checks.len() <= order.len();
        if few {
            for (slot, c) in order.iter_mut().zip(checks) {
                *slot = c.shard();
            }
            order[..checks.len()].sort_unstable();
        } else {
            shard_ids = checks.iter().map(Check::shard).collect();
            shard_ids.sort_unstable();
        }
        let ids: &[ShardId] = if few {
            &order[..checks.len()]
        } else {
            &shard_ids
        };
        let mut guards: Guards<'_> = SmallVec::new();
        for &id in ids {
            if guards.last().is_some_and(|(last, _)| *last == id) {
                continue;
            }
            // The check that names this shard holds the partition's reference.
            let Some(c) = checks.iter().find(|c| c.shard() == id) else {
                continue;
            };
            guards.push((id, c.partition.lock(id.1)));
        }
        let guard_of = |guards: &mut Guards<'_>, c: &Check<'_>| -> usize {
            let id = c.shard();
            guards.iter().position(|(g, _)| *g == id).unwrap_or(0)
        };
        let mut all = true;
        let mut next_states: [State; 8] = [State::default(); 8];
        let mut many_states: Vec<State> = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            let g = guard_of(&mut guards, c);
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
                let g = guard_of(&mut guards, c);
                let state = if few { next_states[i] } else { many_states[i] };
                let entry = Entry {
                    state,
                    idle_until_ms: now.saturating_add(c.rule.idle_ms()),
                };
                let capacity = c.partition.per_shard;
                let shard = &mut guards[g].1;
                if shard.len() >= capacity && !shard.contains_key(&c.counter) {
                    evict(shard, now, capacity);
                }
                shard.insert(c.counter, entry);
            }
        }
        all
    }

    /// Live counters of every policy a loaded config holds (tests and the admin summary).
    pub fn len(&self) -> usize {
        let live: Vec<Arc<Partition>> = self
            .partitions()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        live.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One counter, the usual case: one lock and one probe of its map.
fn decide_one(check: &Check<'_>, now: u64) -> Verdict {
    let partition = check.partition;
    let mut shard = partition.lock(Partition::shard_of(check.counter));
    if shard.len() >= partition.per_shard && !shard.contains_key(&check.counter) {
        evict(&mut shard, now, partition.per_shard);
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
        let (pa, pb) = (store.partition("a"), store.partition("b"));
        let (a, b) = (store.counter("a"), store.counter("b"));
        let mut v = Verdicts::new();
        let both = [
            Check {
                partition: &pa,
                counter: a,
                rule: rule(5),
            },
            Check {
                partition: &pb,
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
            partition: &pa,
            counter: a,
            rule: rule(5),
        }];
        assert_eq!((0..10).filter(|_| store.decide(&only_a, &mut v)).count(), 4);
    }

    #[test]
    fn idle_counters_are_evicted_when_full() {
        let clock = ManualClock::new(1_000_000);
        let store = LocalStore::new(Arc::new(clock.clone()), 64 * 16);
        let p = store.partition("p");
        let mut v = Verdicts::new();
        for i in 0..20_000u64 {
            if i % 1000 == 0 {
                clock.advance(5_000);
            }
            let c = Check {
                partition: &p,
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
        let (p1, p2, p3) = (
            one.partition("p"),
            general.partition("p"),
            general.partition("other"),
        );
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
                partition: &p1,
                counter: one.counter(i % 3),
                rule: r,
            };
            // Same counter in the other store, decided alongside one that never limits.
            let both = [
                Check {
                    partition: &p2,
                    counter: general.counter(i % 3),
                    rule: r,
                },
                Check {
                    partition: &p3,
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

    /// A flood of distinct keys on one policy fills and evicts that policy's partition
    /// only: another policy's live counter keeps its count.
    #[test]
    fn a_flood_on_one_policy_never_evicts_another_policys_counters() {
        let clock = ManualClock::new(1_000_000);
        let store = LocalStore::new(Arc::new(clock.clone()), 64 * 16);
        let (login, search) = (store.partition("login"), store.partition("search"));
        let mut v = Verdicts::new();
        let strict = Check {
            partition: &login,
            counter: store.counter("attacker"),
            rule: Rule {
                kind: Kind::Fixed,
                limit: 3,
                period_ms: 3_600_000,
                burst: 3,
            },
        };
        for _ in 0..3 {
            assert!(store.decide(&[strict], &mut v));
        }
        // Long-lived flood counters: nothing of it is idle when the shards fill.
        for i in 0..50_000u64 {
            let c = Check {
                partition: &search,
                counter: store.counter(i),
                rule: Rule {
                    kind: Kind::Fixed,
                    limit: 10,
                    period_ms: 86_400_000,
                    burst: 10,
                },
            };
            assert!(store.decide(&[c], &mut v));
        }
        assert!(search.len() <= 64 * 16, "{}", search.len());
        assert_eq!(login.len(), 1);
        assert!(
            !store.decide(&[strict], &mut v),
            "the strict limit started over"
        );
        // The same partition is found again for the same policy (counters survive reloads),
        // and freed once nothing holds it.
        assert!(Arc::ptr_eq(&login, &store.partition("login")));
        drop(search);
        assert_eq!(store.len(), 1);
    }
}
