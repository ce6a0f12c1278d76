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
//!   flight could land in either order); such an object is re-evaluated once its write ends.

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
    /// Pending objects left out of the queue because a write of theirs was in flight.
    recheck: bool,
}

impl<K> Default for Backlog<K> {
    fn default() -> Self {
        Self {
            plans: 0,
            seen: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: HashSet::new(),
            recheck: false,
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
        self.recheck = false;
        for (index, item) in items.into_iter().enumerate() {
            let seen = match self.seen.get_mut(&item.key) {
                Some(seen) => seen,
                None => self.seen.entry(item.key.clone()).or_insert(Seen {
                    core: item.core,
                    changed_in: plan,
                    in_plan: plan,
                }),
            };
            if seen.core != item.core {
                seen.core = item.core;
                seen.changed_in = plan;
            }
            seen.in_plan = plan;
            let changed_in = seen.changed_in;
            if item.pending {
                if self.in_flight.contains(&item.key) {
                    self.recheck = true;
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
    }

    /// The next object to write, now counted as in flight.
    pub fn take(&mut self) -> Option<(K, usize)> {
        let (key, index) = self.queue.pop_front()?;
        self.in_flight.insert(key.clone());
        Some((key, index))
    }

    /// A write (or the decision not to write) of `key` has ended.
    pub fn done(&mut self, key: &K) {
        self.in_flight.remove(key);
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

    /// True when nothing is queued or in flight but the last plan had objects that could not
    /// be queued because they were being written: evaluate the plan again.
    pub fn needs_recheck(&self) -> bool {
        self.recheck && self.queue.is_empty() && self.in_flight.is_empty()
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
        backlog.plan(vec![item("a", 2, true), item("b", 1, true)]);
        assert_eq!(backlog.take().unwrap().0, "b");
        assert_eq!(backlog.take(), None, "a is still in flight");
        backlog.done(&"b");
        assert!(!backlog.needs_recheck(), "a's write has not ended yet");
        backlog.done(&"a");
        assert!(backlog.needs_recheck());
        backlog.plan(vec![item("a", 2, true), item("b", 1, false)]);
        assert!(!backlog.needs_recheck());
        assert_eq!(drain(&mut backlog), ["a"]);
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
