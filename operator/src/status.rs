//! The status each object should have: the compiler's conditions, `Programmed` from the
//! proxies' reports, and the proxies/enforcement summaries. Pure functions, unit-tested; the
//! reconciler compares the result with the live status and writes only differences.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use portcullis_compiler::config::ObjectRef;
use portcullis_compiler::report::{ProxyReport, RouteCounters};
use portcullis_compiler::ObjectStatus;
use portcullis_crds::{Condition, EnforcementStatus, ObjectStatusFields, ProxiesStatus};

/// How many recently published generations we remember the contents of. A replica still
/// running an older one that contains the same object generation counts as programmed.
const REMEMBERED_GENERATIONS: usize = 32;

/// The objects (with their generations) of one compiled config.
pub type ObjectSet = Arc<HashSet<Arc<ObjectRef>>>;

/// Which objects (with their generations) each recently published config contains.
///
/// Successive configs share almost all of their objects, so each set holds pointers to
/// objects shared with the previous set: remembering 32 configs of 110,000 objects costs
/// 32 hash tables of pointers, not 32 copies of every name. Cloning is cheap (the status
/// writer gets a copy with every plan).
#[derive(Default, Clone)]
pub struct Published {
    generations: VecDeque<(String, ObjectSet)>,
}

impl Published {
    /// The set of `objects`, sharing the allocations of objects already in the newest set.
    pub fn intern(&self, objects: &[ObjectRef]) -> ObjectSet {
        let newest = self.generations.back().map(|(_, set)| set);
        Arc::new(
            objects
                .iter()
                .map(|o| {
                    newest
                        .and_then(|set| set.get(o).cloned())
                        .unwrap_or_else(|| Arc::new(o.clone()))
                })
                .collect(),
        )
    }

    pub fn record(&mut self, generation: &str, objects: ObjectSet) {
        if self.generations.iter().any(|(g, _)| g == generation) {
            return;
        }
        self.generations
            .push_back((generation.to_string(), objects));
        while self.generations.len() > REMEMBERED_GENERATIONS {
            self.generations.pop_front();
        }
    }

    pub fn contains(&self, generation: &str, object: &ObjectRef) -> bool {
        self.generations
            .iter()
            .any(|(g, objects)| g == generation && objects.contains(object))
    }
}

/// The verdict on `Programmed` for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub ready: u32,
    pub total: u32,
}

/// `live` are the replicas whose reports are fresh; `known` counts those plus replicas that
/// stopped reporting recently (a crashed pod), so `kubectl get` shows `1/2`, not `1/1`.
pub fn programmed(
    object: &ObjectRef,
    accepted: bool,
    live: &[ProxyReport],
    known: u32,
    published: &Published,
    publish_error: Option<&str>,
) -> Programmed {
    let total = known.max(live.len() as u32);
    let ready = live
        .iter()
        .filter(|r| {
            r.generation
                .as_deref()
                .is_some_and(|g| published.contains(g, object))
        })
        .count() as u32;
    let (status, reason, message) = if !accepted {
        (
            false,
            "Invalid",
            "not accepted: see the Accepted condition".to_string(),
        )
    } else if let Some(error) = publish_error {
        (false, "ConfigTooLarge", error.to_string())
    } else if live.is_empty() {
        (
            false,
            "NoProxies",
            "no live proxy replica reports a loaded config".to_string(),
        )
    } else if ready == live.len() as u32 {
        // Every *live* replica enforces it; crashed ones only show in the total.
        (
            true,
            "Programmed",
            format!("enforced by {ready}/{total} proxy replicas"),
        )
    } else {
        (
            false,
            "Pending",
            format!("enforced by {ready}/{total} proxy replicas; waiting for the rest to load it"),
        )
    };
    Programmed {
        status,
        reason,
        message,
        ready,
        total,
    }
}

/// What `status.proxies.configGeneration` shows: a published config that contains this
/// generation of the object (the newest one when the operator first saw it there). It is kept
/// for as long as the object's generation does not change, so that publishing a config for
/// some other object does not rewrite the status of every object in the cluster (at 110,000
/// objects that would be 110,000 writes per change).
pub fn config_generation<'a>(
    object: &ObjectRef,
    current: Option<&'a ObjectStatusFields>,
    published: &Published,
    last_published: Option<&'a str>,
) -> Option<&'a str> {
    let kept = current
        .filter(|c| c.observed_generation == object.generation)
        .and_then(|c| c.proxies.as_ref())
        .and_then(|p| p.config_generation.as_deref());
    kept.or_else(|| last_published.filter(|g| published.contains(g, object)))
}

/// Fingerprints of a status: `core` leaves out the enforcement counters (they change with
/// every proxy report on a route with traffic), `full` does not; neither covers
/// `lastTransitionTime`, which is derived from the other fields and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    pub core: u64,
    pub full: u64,
}

pub fn fingerprints(status: &ObjectStatusFields, credentials: Option<&str>) -> Fingerprints {
    let mut hasher = DefaultHasher::new();
    status.observed_generation.hash(&mut hasher);
    for c in &status.conditions {
        (
            &c.type_,
            &c.status,
            &c.reason,
            &c.message,
            c.observed_generation,
        )
            .hash(&mut hasher);
    }
    if let Some(p) = &status.proxies {
        (p.ready, p.total, &p.summary, &p.config_generation).hash(&mut hasher);
    }
    credentials.hash(&mut hasher);
    let core = hasher.finish();
    if let Some(e) = &status.enforcement {
        (
            e.requests,
            e.auth_failures,
            e.rate_limited,
            e.waf_blocked,
            e.validation_failed,
            e.blocked,
            &e.since,
        )
            .hash(&mut hasher);
    }
    Fingerprints {
        core,
        full: hasher.finish(),
    }
}

/// Sums the counters of one route over the live replicas.
pub fn enforcement(route_id: &str, replicas: &[ProxyReport]) -> EnforcementStatus {
    let mut sum = RouteCounters::default();
    for replica in replicas {
        if let Some(counters) = replica.routes.get(route_id) {
            sum.add(counters);
        }
    }
    EnforcementStatus {
        requests: sum.requests,
        auth_failures: sum.auth_failures,
        rate_limited: sum.rate_limited,
        waf_blocked: sum.waf_blocked,
        validation_failed: sum.validation_failed,
        blocked: sum.blocked(),
        since: replicas.iter().map(|r| r.started_at.clone()).min(),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    current: &[Condition],
    now: &str,
) -> Condition {
    let status_text = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let last_transition_time = current
        .iter()
        .find(|c| c.type_ == type_ && c.status == status_text)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: type_.to_string(),
        status: status_text.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: Some(last_transition_time),
    }
}

/// The full status an object should carry.
pub fn desired(
    compiled: &ObjectStatus,
    programmed: &Programmed,
    config_generation: Option<&str>,
    enforcement: Option<EnforcementStatus>,
    current: Option<&ObjectStatusFields>,
    now: &str,
) -> ObjectStatusFields {
    let existing: &[Condition] = current.map_or(&[], |s| s.conditions.as_slice());
    let mut conditions: Vec<Condition> = compiled
        .conditions
        .iter()
        .map(|c| {
            condition(
                &c.type_,
                c.status,
                c.reason.as_str(),
                &c.message,
                compiled.generation,
                existing,
                now,
            )
        })
        .collect();
    conditions.push(condition(
        "Programmed",
        programmed.status,
        programmed.reason,
        &programmed.message,
        compiled.generation,
        existing,
        now,
    ));
    ObjectStatusFields {
        observed_generation: compiled.generation,
        conditions,
        proxies: Some(ProxiesStatus {
            ready: programmed.ready,
            total: programmed.total,
            summary: format!("{}/{}", programmed.ready, programmed.total),
            config_generation: config_generation.map(str::to_string),
        }),
        enforcement,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use portcullis_compiler::config::ObjectKind;
    use portcullis_compiler::{ConditionOut, Reason};

    use super::*;

    fn object(generation: i64) -> ObjectRef {
        ObjectRef {
            kind: ObjectKind::ApiRoute,
            namespace: "shop".into(),
            name: "users".into(),
            generation: Some(generation),
        }
    }

    fn other(generation: i64) -> ObjectRef {
        ObjectRef {
            name: "orders".into(),
            ..object(generation)
        }
    }

    fn replica(name: &str, generation: &str) -> ProxyReport {
        ProxyReport {
            replica: name.into(),
            generation: Some(generation.into()),
            started_at: format!("2026-01-01T00:00:0{}Z", name.len()),
            routes: BTreeMap::from([(
                "shop/users".to_string(),
                RouteCounters {
                    requests: 10,
                    auth_failures: 2,
                    ..RouteCounters::default()
                },
            )]),
        }
    }

    #[test]
    fn programmed_needs_every_live_replica_on_a_config_with_this_generation() {
        let mut published = Published::default();
        let g1 = published.intern(&[object(1)]);
        published.record("g1", g1);
        let g2 = published.intern(&[object(2)]);
        published.record("g2", g2);
        let both_new = [replica("a", "g2"), replica("b", "g2")];
        let one_old = [replica("a", "g2"), replica("b", "g1")];
        let p = programmed(&object(2), true, &both_new, 2, &published, None);
        assert!(p.status && p.ready == 2 && p.total == 2, "{p:?}");
        let p = programmed(&object(2), true, &one_old, 2, &published, None);
        assert!(!p.status && p.ready == 1 && p.reason == "Pending", "{p:?}");
        let p = programmed(&object(2), true, &[], 0, &published, None);
        assert_eq!(p.reason, "NoProxies");
        let p = programmed(&object(2), false, &both_new, 2, &published, None);
        assert_eq!(p.reason, "Invalid");
        let p = programmed(&object(2), true, &both_new, 2, &published, Some("too big"));
        assert_eq!(p.reason, "ConfigTooLarge");
        // An unknown generation (e.g. from before an operator restart) is not assumed to match.
        let p = programmed(&object(2), true, &[replica("a", "g0")], 1, &published, None);
        assert!(!p.status);
        // A crashed replica still counts in the total, but does not hold Programmed back.
        let p = programmed(&object(2), true, &both_new[..1], 2, &published, None);
        assert!(p.status && p.ready == 1 && p.total == 2, "{p:?}");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let compiled = ObjectStatus {
            kind: ObjectKind::ApiRoute,
            namespace: "shop".into(),
            name: "users".into(),
            generation: Some(3),
            conditions: vec![ConditionOut {
                type_: "Accepted".into(),
                status: true,
                reason: Reason::Accepted,
                message: "valid".into(),
            }],
        };
        let p = Programmed {
            status: true,
            reason: "Programmed",
            message: "ok".into(),
            ready: 1,
            total: 1,
        };
        let first = desired(&compiled, &p, Some("g"), None, None, "T1");
        let second = desired(&compiled, &p, Some("g"), None, Some(&first), "T2");
        assert_eq!(first, second, "nothing changed, so nothing to write");
        let not_programmed = Programmed {
            status: false,
            reason: "Pending",
            ..p
        };
        let third = desired(
            &compiled,
            &not_programmed,
            Some("g"),
            None,
            Some(&second),
            "T3",
        );
        let programmed_condition = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Programmed")
            .unwrap();
        assert_eq!(
            programmed_condition.last_transition_time.as_deref(),
            Some("T3")
        );
        let accepted = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap();
        assert_eq!(accepted.last_transition_time.as_deref(), Some("T1"));
        assert_eq!(accepted.observed_generation, Some(3));
    }

    #[test]
    fn published_sets_share_unchanged_objects() {
        let mut published = Published::default();
        let g1 = published.intern(&[object(1), other(1)]);
        published.record("g1", g1.clone());
        // The next config changes "users" only: "orders" is the same allocation.
        let g2 = published.intern(&[object(2), other(1)]);
        published.record("g2", g2.clone());
        let shared = |set: &ObjectSet| set.get(&other(1)).unwrap().clone();
        assert!(Arc::ptr_eq(&shared(&g1), &shared(&g2)));
        assert!(published.contains("g1", &object(1)) && !published.contains("g1", &object(2)));
        assert!(published.contains("g2", &object(2)) && published.contains("g2", &other(1)));
        // Copies handed to the status writer do not see later records.
        let copy = published.clone();
        let g3 = published.intern(&[object(3), other(1)]);
        published.record("g3", g3);
        assert!(!copy.contains("g3", &object(3)) && published.contains("g3", &object(3)));
    }

    #[test]
    fn config_generation_stays_while_the_object_generation_does() {
        let mut published = Published::default();
        let g1 = published.intern(&[object(1)]);
        published.record("g1", g1);
        // First sighting: the newest published config that contains it.
        assert_eq!(
            config_generation(&object(1), None, &published, Some("g1")),
            Some("g1")
        );
        let shown = ObjectStatusFields {
            observed_generation: Some(1),
            proxies: Some(ProxiesStatus {
                config_generation: Some("g1".into()),
                ..ProxiesStatus::default()
            }),
            ..ObjectStatusFields::default()
        };
        // A config published for another object's change does not move it.
        let g2 = published.intern(&[object(1), other(1)]);
        published.record("g2", g2);
        assert_eq!(
            config_generation(&object(1), Some(&shown), &published, Some("g2")),
            Some("g1")
        );
        // A new generation of the object moves it, once a published config contains it.
        assert_eq!(
            config_generation(&object(2), Some(&shown), &published, Some("g2")),
            None
        );
        let g3 = published.intern(&[object(2), other(1)]);
        published.record("g3", g3);
        assert_eq!(
            config_generation(&object(2), Some(&shown), &published, Some("g3")),
            Some("g3")
        );
    }

    #[test]
    fn counters_change_the_full_fingerprint_only() {
        let status = |requests| ObjectStatusFields {
            observed_generation: Some(1),
            enforcement: Some(EnforcementStatus {
                requests,
                ..EnforcementStatus::default()
            }),
            ..ObjectStatusFields::default()
        };
        let (a, b) = (
            fingerprints(&status(1), None),
            fingerprints(&status(2), None),
        );
        assert_eq!(a.core, b.core);
        assert_ne!(a.full, b.full);
        assert_ne!(a.core, fingerprints(&status(1), Some("apiKeys:1")).core);
    }

    #[test]
    fn enforcement_sums_live_replicas() {
        let e = enforcement("shop/users", &[replica("a", "g"), replica("bb", "g")]);
        assert_eq!((e.requests, e.auth_failures, e.blocked), (20, 4, 4));
        assert_eq!(e.since.as_deref(), Some("2026-01-01T00:00:01Z"));
    }
}
