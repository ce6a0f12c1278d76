//! Which objects need a status write, and in which order: the pure core of the status writer.
//!
//! The writer evaluates every object against the newest *plan* (the latest compile result
//! plus the latest proxy reports) and hands each one to [`Backlog::plan`] with two
//! fingerprints of the status it should carry and whether the cache already shows it. The
//! backlog then
//!
//! - **coalesces**: a new plan replaces the queue of the previous one, so the writer always
//!   works towards the newest desired state and never writes an outdated one;
//! - **skips** objects whose cached status already matches;
//! - **prioritises** by recency: an object whose status *changed* in a later plan goes before
//!   objects that have been waiting longer, so the one route a user just applied is written
//!   within a few round trips even while 100,000 first-time statuses are still queued.
//!   Recency counts changes of the *core* status only (conditions, proxies): enforcement
//!   counters change with every proxy report on every route with traffic and must not push a
//!   user's change to the back;
//! - never hands out an object that is still being written (two writes of one object in
//!   flight could land in either order); such an object is re-evaluated once its write ends;
//! - remembers which objects changed in the last few plans ([`Backlog::recent`]), so the
//!   writer can look at those first when the next plan arrives (the proxies' report that
//!   turns a just-changed route `Programmed`) and write them before comparing all 110,000.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// One object as evaluated against a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<K> {
    pub key: K,
    /// Fingerprint of the desired status without enforcement counters and timestamps.
    pub core: u64,
    /// True if the cache does not show the desired status yet (and no write of exactly this
    /// status is still on its way into the cache).
    pub pending: bool,
}

/// Plans for which a change stays "recent".
const RECENT_PLANS: u64 = 4;
/// More changes than this in one plan are a bulk update (the first pass, a proxy joining):
/// nothing to look at first.
pub const RECENT_MAX: usize = 4096;

#[derive(Debug)]
struct Seen {
    core: u64,
    /// Plan in which `core` last changed.
    changed_in: u64,
    /// Last plan that had the object.
    in_plan: u64,
}

/// The queue of status writes. `K` identifies an object; `usize` in the queue is the
/// object's position in the plan it was evaluated from (the writer looks its inputs up there).
#[derive(Debug)]
pub struct Backlog<K> {
    plans: u64,
    seen: HashMap<K, Seen>,
    queue: VecDeque<(K, usize)>,
    in_flight: HashSet<K>,
    /// Pending objects left out of the queue because a write of theirs was in flight, with
    /// their position in the latest plan.
    recheck: HashMap<K, usize>,
    /// Objects whose core status changed in the last [`RECENT_PLANS`] plans: the plan and
    /// the object's position in it.
    recent: HashMap<K, (u64, usize)>,
}

impl<K> Default for Backlog<K> {
    fn default() -> Self {
        Self {
            plans: 0,
            seen: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: HashSet::new(),
            recheck: HashMap::new(),
            recent: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Backlog<K> {
    /// Takes the evaluation of a new plan, replacing the queue: pending objects whose core
    /// status changed most recently first; ties keep the plan's order. Objects absent from the
    /// plan (deleted) are forgotten.
    pub fn plan(&mut self, items: Vec<Item<K>>) {
        self.plans += 1;
        let plan = self.plans;
        let mut pending = Vec::new();
        let mut changed = Vec::new();
        self.recheck.clear();
        for (index, item) in items.into_iter().enumerate() {
            let seen = match self.seen.get_mut(&item.key) {
                Some(seen) => seen,
                None => self.seen.entry(item.key.clone()).or_insert(Seen {
                    // Never equal to a real fingerprint's plan: counts as a change below.
                    core: item.core.wrapping_add(1),
                    changed_in: plan,
                    in_plan: plan,
                }),
            };
            if seen.core != item.core {
                seen.core = item.core;
                seen.changed_in = plan;
                if changed.len() <= RECENT_MAX {
                    changed.push((item.key.clone(), index));
                }
            }
            seen.in_plan = plan;
            let changed_in = seen.changed_in;
            if item.pending {
                if self.in_flight.contains(&item.key) {
                    self.recheck.insert(item.key, index);
                } else {
                    pending.push((changed_in, index, item.key));
                }
            }
        }
        self.seen.retain(|_, seen| seen.in_plan == plan);
        // Stable: equal recency keeps plan order.
        pending.sort_by_key(|p| std::cmp::Reverse(p.0));
        self.queue = pending
            .into_iter()
            .map(|(_, index, key)| (key, index))
            .collect();
        if changed.len() <= RECENT_MAX {
            self.recent
                .extend(changed.into_iter().map(|(key, index)| (key, (plan, index))));
        }
        let mut oldest = plan.saturating_sub(RECENT_PLANS);
        loop {
            self.recent.retain(|_, (p, _)| *p > oldest);
            if self.recent.len() <= RECENT_MAX {
                break;
            }
            oldest += 1;
        }
    }

    /// Objects whose core status changed in the last few plans, with their position in the
    /// plan where they last changed (the same in later plans from the same compile).
    pub fn recent(&self) -> impl Iterator<Item = (&K, usize)> {
        self.recent.iter().map(|(key, (_, index))| (key, *index))
    }

    /// Puts an object at the front of the queue, ahead of the next [`Backlog::plan`] (which
    /// replaces the queue), unless it is queued or being written already.
    pub fn expedite(&mut self, key: K, index: usize) {
        if self.in_flight.contains(&key) || self.queue.iter().any(|(k, _)| *k == key) {
            return;
        }
        self.queue.push_front((key, index));
    }

    /// The next object to write, now counted as in flight.
    pub fn take(&mut self) -> Option<(K, usize)> {
        let (key, index) = self.queue.pop_front()?;
        self.in_flight.insert(key.clone());
        Some((key, index))
    }

    /// A write (or the decision not to write) of `key` has ended. Returns the object's
    /// position in the latest plan if that plan wanted it written while this write was in
    /// flight: compare it again.
    pub fn done(&mut self, key: &K) -> Option<usize> {
        self.in_flight.remove(key);
        self.recheck.remove(key)
    }

    /// True if the last plan had this object.
    pub fn knows(&self, key: &K) -> bool {
        self.seen.contains_key(key)
    }

    /// Writes waiting to start.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn item(key: &'static str, core: u64, pending: bool) -> Item<&'static str> {
        Item { key, core, pending }
    }

    fn drain(backlog: &mut Backlog<&'static str>) -> Vec<&'static str> {
        let mut out = Vec::new();
        while let Some((key, _)) = backlog.take() {
            backlog.done(&key);
            out.push(key);
        }
        out
    }

    #[test]
    fn skips_what_the_cache_already_shows_and_keeps_plan_order() {
        let mut backlog = Backlog::default();
        backlog.plan(vec![
            item("a", 1, true),
            item("b", 1, false),
            item("c", 1, true),
        ]);
        assert_eq!(backlog.queued(), 2);
        assert_eq!(drain(&mut backlog), ["a", "c"]);
    }

    #[test]
    fn the_latest_change_jumps_the_backlog() {
        let mut backlog = Backlog::default();
        // The first pass over a large cluster: everything needs a first status.
        let first: Vec<_> = ["r0", "r1", "r2", "r3", "r4"]
            .into_iter()
            .map(|k| item(k, 1, true))
            .collect();
        backlog.plan(first);
        assert_eq!(backlog.take().unwrap().0, "r0");
        backlog.done(&"r0");
        // The user changes r3 while the backlog drains: the next plan puts it first; the
        // plan index points into the new plan.
        backlog.plan(vec![
            item("r0", 1, false),
            item("r1", 1, true),
            item("r2", 1, true),
            item("r3", 2, true),
            item("r4", 1, true),
        ]);
        assert_eq!(backlog.take(), Some(("r3", 3)));
        backlog.done(&"r3");
        assert_eq!(drain(&mut backlog), ["r1", "r2", "r4"]);
    }

    #[test]
    fn recency_survives_later_plans_and_counters_do_not_count() {
        let mut backlog = Backlog::default();
        backlog.plan(vec![item("a", 1, true), item("b", 1, true)]);
        backlog.plan(vec![item("a", 1, true), item("b", 2, true)]);
        // A third plan where only counters moved (same core) for "a": "b" keeps its lead.
        backlog.plan(vec![item("a", 1, true), item("b", 2, true)]);
        assert_eq!(drain(&mut backlog), ["b", "a"]);
        // An object that changed twice is as recent as its last change.
        backlog.plan(vec![item("a", 3, true), item("b", 2, true)]);
        assert_eq!(drain(&mut backlog), ["a", "b"]);
    }

    #[test]
    fn a_newer_plan_replaces_the_queue() {
        let mut backlog = Backlog::default();
        backlog.plan(vec![
            item("a", 1, true),
            item("b", 1, true),
            item("c", 1, true),
        ]);
        // Before anything was written, a newer plan says "b" already matches and "c" is gone.
        backlog.plan(vec![item("a", 1, true), item("b", 1, false)]);
        assert_eq!(drain(&mut backlog), ["a"]);
    }

    #[test]
    fn an_object_in_flight_is_not_handed_out_twice() {
        let mut backlog = Backlog::default();
        backlog.plan(vec![item("a", 1, true), item("b", 1, true)]);
        let (first, _) = backlog.take().unwrap();
        assert_eq!(first, "a");
        // A new plan changes "a" again while its first write is in flight.
        backlog.plan(vec![item("b", 1, true), item("a", 2, true)]);
        assert_eq!(backlog.take().unwrap().0, "b");
        assert_eq!(backlog.take(), None, "a is still in flight");
        assert_eq!(backlog.done(&"b"), None);
        // When its write ends, the writer compares it again (position 1 in the new plan).
        assert_eq!(backlog.done(&"a"), Some(1));
        assert_eq!(backlog.done(&"a"), None);
        // Expediting does not hand out what is queued or in flight twice either.
        backlog.expedite("a", 1);
        backlog.expedite("a", 1);
        assert_eq!(backlog.take(), Some(("a", 1)));
        backlog.expedite("a", 1);
        assert_eq!(backlog.take(), None);
    }

    #[test]
    fn recent_changes_are_remembered_for_a_few_plans() {
        let mut backlog = Backlog::default();
        let plan = |backlog: &mut Backlog<&'static str>, b: u64| {
            backlog.plan(vec![item("a", 1, false), item("b", b, false)]);
        };
        plan(&mut backlog, 1);
        plan(&mut backlog, 1);
        // A first sighting is a change, "a" and "b" alike.
        let mut recent: Vec<_> = backlog.recent().collect();
        recent.sort();
        assert_eq!(recent, [(&"a", 0), (&"b", 1)]);
        plan(&mut backlog, 2);
        assert!(backlog.recent().any(|r| r == (&"b", 1)));
        for _ in 0..RECENT_PLANS {
            plan(&mut backlog, 2);
        }
        assert_eq!(backlog.recent().count(), 0);
        // A bulk change is nobody's recent change.
        let many: Vec<_> = (0..=RECENT_MAX)
            .map(|i| Item {
                key: i,
                core: 1,
                pending: true,
            })
            .collect();
        let mut bulk = Backlog::default();
        bulk.plan(many);
        assert_eq!(bulk.recent().count(), 0);
    }

    #[test]
    fn deleted_objects_are_forgotten() {
        let mut backlog = Backlog::default();
        backlog.plan(vec![item("a", 1, false), item("b", 1, false)]);
        backlog.plan(vec![item("b", 1, false)]);
        assert_eq!(backlog.seen.len(), 1);
        // Re-created later, it counts as a fresh change.
        backlog.plan(vec![item("b", 1, true), item("a", 1, true)]);
        assert_eq!(drain(&mut backlog), ["a", "b"]);
    }
}
