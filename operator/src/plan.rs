//! The plan: everything the status writers work from after one compile and the newest proxy
//! reports. The reconciler builds it ([`resolve`], [`classify_reports`]); the writers
//! ([`crate::writer`], [`crate::gateway_status`]) only read it.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use kube::{Resource, ResourceExt};
use portcullis_compiler::config::{ObjectKind, ObjectRef};
use portcullis_compiler::report::{ProxyReport, REPORT_ANNOTATION};
use portcullis_compiler::ObjectStatus;
use portcullis_crds::{ApiRoute, ConsumerCredential, RateLimitPolicy, WafPolicy};

use crate::backlog::RECENT_MAX;
use crate::status::{self, Fleet, ObjectSet, Published};

/// Everything the desired statuses follow from: the newest compile result and the newest
/// proxy reports.
pub struct Plan {
    /// The compiler's verdict on every object.
    pub statuses: Arc<Vec<ObjectStatus>>,
    /// The same objects, resolved once per compile (`targets[i]` is `statuses[i]`).
    pub targets: Arc<Vec<Target>>,
    /// Generation of the compiled config, if it was published.
    pub compiled_generation: Option<String>,
    /// Positions of the objects whose verdict changed in this compile (empty when more than
    /// a few thousand did, or when the plan comes from the same compile as the last one).
    pub changed: Vec<usize>,
    pub published: Published,
    pub last_published: Option<String>,
    pub publish_error: Option<String>,
    pub replicas: Arc<Replicas>,
}

impl Plan {
    pub(crate) fn fleet(&self) -> Fleet<'_> {
        status::fleet(
            &self.replicas.live,
            self.replicas.known.len(),
            &self.published,
            self.compiled_generation.as_deref(),
        )
    }
}

/// One compiled object, resolved once per compile so that evaluating a plan allocates
/// nothing per object.
pub struct Target {
    /// The object with its generation; shared with the compiled config's set when in it.
    pub(crate) object: Arc<ObjectRef>,
    pub(crate) in_config: bool,
    pub(crate) store_key: Arc<StoreKey>,
    /// [`status::verdict_hash`] of the compiled status.
    pub(crate) verdict: u64,
}

pub(crate) enum StoreKey {
    Route(reflector::ObjectRef<ApiRoute>),
    Consumer(reflector::ObjectRef<ConsumerCredential>),
    RateLimit(reflector::ObjectRef<RateLimitPolicy>),
    Waf(reflector::ObjectRef<WafPolicy>),
    None,
}

/// Resolves every compiled object (CPU work: run it where compiling runs), reusing what the
/// previous compile resolved for objects it did not change, and lists the positions of the
/// objects whose verdict changed (empty for the first compile and for bulk changes).
///
/// The compiler sorts its statuses by kind, namespace and name, so the two lists are walked
/// side by side without a lookup table. (Unsorted input would only cost reuse and report
/// more changes, never a wrong target.)
pub fn resolve(
    statuses: &[ObjectStatus],
    in_config: &ObjectSet,
    previous: Option<&[Target]>,
) -> (Vec<Target>, Vec<usize>) {
    let mut before = previous.unwrap_or_default().iter().peekable();
    let mut changed = Vec::new();
    let mut bulk = previous.is_none();
    let targets = statuses
        .iter()
        .enumerate()
        .map(|(index, compiled)| {
            let key = (
                compiled.kind,
                compiled.namespace.as_str(),
                compiled.name.as_str(),
            );
            // Skip the previous objects that sort before this one (deleted since).
            while before
                .next_if(|t| {
                    (
                        t.object.kind,
                        t.object.namespace.as_str(),
                        t.object.name.as_str(),
                    ) < key
                })
                .is_some()
            {}
            let same = before.next_if(|t| {
                (
                    t.object.kind,
                    t.object.namespace.as_str(),
                    t.object.name.as_str(),
                ) == key
            });
            let verdict = status::verdict_hash(compiled);
            let reused = same.filter(|t| t.object.generation == compiled.generation);
            if same.is_none_or(|t| t.verdict != verdict) && !bulk {
                changed.push(index);
                bulk = changed.len() > RECENT_MAX;
            }
            let (object, store_key) = match reused {
                Some(t) => (t.object.clone(), t.store_key.clone()),
                None => (
                    Arc::new(ObjectRef {
                        kind: compiled.kind,
                        namespace: compiled.namespace.clone(),
                        name: compiled.name.clone(),
                        generation: compiled.generation,
                    }),
                    Arc::new(StoreKey::of(compiled)),
                ),
            };
            // Share the config set's allocation when it has the object.
            let shared = in_config.get(&*object).cloned();
            Target {
                in_config: shared.is_some(),
                object: shared.unwrap_or(object),
                store_key,
                verdict,
            }
        })
        .collect();
    if bulk {
        changed.clear();
    }
    (targets, changed)
}

impl StoreKey {
    fn of(compiled: &ObjectStatus) -> Self {
        let (name, namespace) = (compiled.name.as_str(), compiled.namespace.as_str());
        match compiled.kind {
            ObjectKind::ApiRoute => StoreKey::Route(store_key(name, namespace)),
            ObjectKind::ConsumerCredential => StoreKey::Consumer(store_key(name, namespace)),
            ObjectKind::RateLimitPolicy => StoreKey::RateLimit(store_key(name, namespace)),
            ObjectKind::WafPolicy => StoreKey::Waf(store_key(name, namespace)),
            ObjectKind::Secret
            | ObjectKind::Ingress
            | ObjectKind::GatewayClass
            | ObjectKind::Gateway
            | ObjectKind::HttpRoute => StoreKey::None,
        }
    }
}

fn store_key<K: Resource<DynamicType = ()>>(
    name: &str,
    namespace: &str,
) -> reflector::ObjectRef<K> {
    reflector::ObjectRef::new(name).within(namespace)
}

/// An object across plans: kind, namespace and name (not the generation).
#[derive(Debug, Clone)]
pub struct Key(pub(crate) Arc<ObjectRef>);

impl Key {
    fn parts(&self) -> (ObjectKind, &str, &str) {
        (self.0.kind, &self.0.namespace, &self.0.name)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// By default a replica that stopped reporting is still counted (as not ready) for this long
/// past its lease duration, then its Lease is deleted: long enough to see a crash in
/// `kubectl get`, short enough that a scaled down Deployment stops showing ghosts. The
/// operator's `--forget-replicas-after` sets it.
pub const FORGET_AFTER_SECONDS: i64 = 300;

/// Proxy reports by freshness.
#[derive(Debug, Default)]
pub struct Replicas {
    /// Renewed within their lease duration.
    pub live: Vec<ProxyReport>,
    /// Every replica still counted: live plus recently expired.
    pub known: Vec<ProxyReport>,
    /// Lease names expired for longer than `forget_after_seconds`.
    pub forgotten: Vec<String>,
}

pub fn classify_reports(
    leases: &[Arc<Lease>],
    now: Timestamp,
    forget_after_seconds: i64,
) -> Replicas {
    let mut replicas = Replicas::default();
    for lease in leases {
        let Some(spec) = &lease.spec else { continue };
        let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
        let age = now.as_second() - renewed;
        if age > duration + forget_after_seconds {
            replicas.forgotten.push(lease.name_any());
            continue;
        }
        let Some(report) = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REPORT_ANNOTATION))
            .and_then(|text| serde_json::from_str::<ProxyReport>(text).ok())
        else {
            continue;
        };
        if age <= duration {
            replicas.live.push(report.clone());
        }
        replicas.known.push(report);
    }
    replicas.live.sort_by(|a, b| a.replica.cmp(&b.replica));
    replicas.known.sort_by(|a, b| a.replica.cmp(&b.replica));
    replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_reuses_unchanged_objects_and_lists_changes() {
        let status = |name: &str, generation, message: &str| ObjectStatus {
            kind: ObjectKind::ApiRoute,
            namespace: "shop".into(),
            name: name.into(),
            generation: Some(generation),
            conditions: vec![portcullis_compiler::ConditionOut {
                type_: "Accepted".into(),
                status: true,
                reason: portcullis_compiler::Reason::Accepted,
                message: message.into(),
            }],
            sections: Vec::new(),
        };
        let first = [
            status("a", 1, "ok"),
            status("b", 1, "ok"),
            status("c", 1, "ok"),
            status("e", 1, "ok"),
        ];
        let empty = Published::default().intern(&[]);
        let (before, changed) = resolve(&first, &empty, None);
        assert!(changed.is_empty(), "the first compile is a bulk change");
        // b has a new generation, c is gone, d is new, e's verdict changed (a Secret it
        // references went away), a is as it was.
        let second = [
            status("a", 1, "ok"),
            status("b", 2, "ok"),
            status("d", 1, "ok"),
            status("e", 1, "missing"),
        ];
        let (after, changed) = resolve(&second, &empty, Some(&before));
        assert_eq!(changed, [1, 2, 3]);
        assert!(Arc::ptr_eq(&after[0].object, &before[0].object));
        assert!(Arc::ptr_eq(&after[3].object, &before[3].object));
        assert_eq!(after[1].object.generation, Some(2));
        assert_eq!(after[2].object.name, "d");
        assert!(after.iter().all(|t| !t.in_config));
        // Objects in the compiled config share its set's allocations.
        let objects: Vec<ObjectRef> = after.iter().map(|t| (*t.object).clone()).collect();
        let set = Published::default().intern(&objects);
        let (shared, changed) = resolve(&second, &set, Some(&after));
        assert!(changed.is_empty());
        assert!(shared
            .iter()
            .all(|t| t.in_config && set.iter().any(|o| Arc::ptr_eq(o, &t.object))));
    }
}
