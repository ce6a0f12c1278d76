//! The status writer: brings every object's status in line with the newest [`Plan`], in its
//! own task, so that publishing a config never waits for status writes.
//!
//! The reconciler sends a plan after every compile and every proxy report (a report changes
//! `Programmed` without changing the config). The writer evaluates each object of the newest
//! plan against the reflector cache and writes, [`STATUS_WRITE_CONCURRENCY`] at a time, those
//! whose cached status differs, most recently changed first ([`Backlog`]). A plan that
//! arrives mid-way replaces the queue: writes in flight finish, nothing outdated is started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use portcullis_compiler::config::ObjectKind;
use portcullis_crds::{ApiRoute, ConsumerCredential, RateLimitPolicy, WafPolicy, API_VERSION};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backlog::{Backlog, Item, RECENT_MAX};
use crate::events::{record_transitions, EventSink};
use crate::metrics::{ErrorLabels, Metrics};
use crate::plan::{Key, Plan};
use crate::publish::FIELD_MANAGER;
use crate::status::{self, Desired, Fingerprints, Fleet};
use crate::status_kind::StatusKind;
use crate::watch::Stores;

/// Status writes in flight at once.
pub const STATUS_WRITE_CONCURRENCY: usize = 32;
/// Objects compared between two looks for a newer plan (~10-30 ms of work).
const EVALUATE_CHUNK: usize = 4096;
/// Longest wait before failed writes are tried again (doubling from 1 s).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A write we made that the cache may not show yet: if the cache still holds the version we
/// overwrote, the object is not written again for the same status.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    full: u64,
    overwrote: Option<String>,
}

/// The desired status of `live`, borrowed from the plan and the object.
fn desired<'a, K: StatusKind>(
    live: &'a K,
    plan: &'a Plan,
    fleet: &Fleet,
    index: usize,
) -> Option<Desired<'a>> {
    let compiled = plan.statuses.get(index)?;
    let target = plan.targets.get(index)?;
    let object = &*target.object;
    let programmed = status::programmed(
        object,
        compiled.accepted(),
        target.in_config,
        fleet,
        plan.publish_error.as_deref(),
    )
    .held(object.generation, live.common());
    let current = live.common();
    let enforcement = K::ENFORCEMENT.then(|| {
        status::enforcement(
            &format!("{}/{}", compiled.namespace, compiled.name),
            &plan.replicas.known,
        )
    });
    Some(Desired {
        compiled,
        programmed,
        config_generation: status::config_generation(
            object,
            current,
            &plan.published,
            plan.last_published.as_deref(),
        ),
        enforcement,
    })
}

/// How one object compares with the plan: its fingerprints, the resourceVersion of the
/// cached object, and whether the cache shows exactly the desired status.
struct Comparison {
    fingerprints: Fingerprints,
    version: Option<String>,
    matches: bool,
}

fn compare<K: StatusKind>(
    stores: &Stores,
    plan: &Plan,
    fleet: &Fleet,
    index: usize,
) -> Option<Comparison> {
    let target = plan.targets.get(index)?;
    let live = K::store(stores).get(K::key(&target.store_key)?)?;
    let desired = desired(&*live, plan, fleet, index)?;
    let matches = desired.matches(live.common())
        && live
            .credentials()
            .is_none_or(|(shown, summary)| status::shows(shown, &summary));
    Some(Comparison {
        fingerprints: desired.fingerprints(target.verdict),
        // Only needed for objects that differ.
        version: if matches {
            None
        } else {
            live.resource_version()
        },
        matches,
    })
}

fn compare_any(stores: &Stores, plan: &Plan, fleet: &Fleet, index: usize) -> Option<Comparison> {
    match plan.statuses.get(index)?.kind {
        ObjectKind::ApiRoute => compare::<ApiRoute>(stores, plan, fleet, index),
        ObjectKind::ConsumerCredential => compare::<ConsumerCredential>(stores, plan, fleet, index),
        ObjectKind::RateLimitPolicy => compare::<RateLimitPolicy>(stores, plan, fleet, index),
        ObjectKind::WafPolicy => compare::<WafPolicy>(stores, plan, fleet, index),
        // Ingress and Gateway API statuses have their own writer (gateway_status.rs).
        ObjectKind::Secret
        | ObjectKind::Ingress
        | ObjectKind::GatewayClass
        | ObjectKind::Gateway
        | ObjectKind::HttpRoute => None,
    }
}

/// What the writer shares with its write tasks.
pub struct WriterContext {
    pub client: Client,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub events: EventSink,
}

enum Outcome {
    /// Written; the cache held `overwrote` before.
    Written(Written),
    /// Nothing to write (any more), or the object is gone.
    Skipped,
    Failed(String),
}

pub struct StatusWriter {
    context: Arc<WriterContext>,
    backlog: Backlog<Key>,
    written: HashMap<Key, Written>,
}

impl StatusWriter {
    pub fn new(context: WriterContext) -> Self {
        Self {
            context: Arc::new(context),
            backlog: Backlog::default(),
            written: HashMap::new(),
        }
    }

    /// True if the object at `index` of `plan` needs a write: the cache does not show its
    /// desired status, and no write of exactly that status is on its way into the cache.
    /// Also its core fingerprint (0 if it has no status to write).
    fn needs_write(&mut self, plan: &Plan, fleet: &Fleet, index: usize, key: &Key) -> (u64, bool) {
        match compare_any(&self.context.stores, plan, fleet, index) {
            None => (0, false),
            Some(c) if c.matches => {
                self.written.remove(key);
                (c.fingerprints.core, false)
            }
            Some(c) => {
                let sent = Written {
                    full: c.fingerprints.full,
                    overwrote: c.version,
                };
                (c.fingerprints.core, self.written.get(key) != Some(&sent))
            }
        }
    }

    /// Compares every object of `plan` with the cache and rebuilds the queue; returns the
    /// plan the queue refers to.
    ///
    /// Between chunks of [`EVALUATE_CHUNK`] objects it asks `newer` for a newer plan (which
    /// `newer` has already expedited): the proxies' report that makes a just-changed route
    /// `Programmed` must not wait for a comparison of the previous plan's 110,000 objects.
    /// A newer plan from the same compile (a report) takes over where the comparison is;
    /// one from a new compile restarts it.
    fn evaluate(
        &mut self,
        mut plan: Arc<Plan>,
        newer: &mut dyn FnMut(&mut Self) -> Option<Arc<Plan>>,
    ) -> Arc<Plan> {
        let started = Instant::now();
        let total = plan.targets.len();
        let mut items: Vec<Item<Key>> = Vec::with_capacity(total);
        while items.len() < plan.targets.len() {
            let fleet = plan.fleet();
            let from = items.len();
            let to = (from + EVALUATE_CHUNK).min(plan.targets.len());
            for (index, target) in plan.targets[from..to].iter().enumerate() {
                let key = Key(target.object.clone());
                let (core, pending) = self.needs_write(&plan, &fleet, from + index, &key);
                items.push(Item { key, core, pending });
            }
            if let Some(next) = newer(self) {
                if !Arc::ptr_eq(&next.targets, &plan.targets) {
                    items.clear();
                }
                plan = next;
            }
        }
        self.backlog.plan(items);
        let backlog = &self.backlog;
        self.written.retain(|key, _| backlog.knows(key));
        self.context
            .metrics
            .status_evaluate_seconds
            .observe(started.elapsed().as_secs_f64());
        plan
    }

    /// Before comparing everything: the objects most likely to need a write now, queued
    /// first. After a compile those are the ones whose verdict changed; after a proxy
    /// report, the ones whose status changed in the last few plans (the route a user just
    /// applied, now loaded by the proxies). Their writes start while the full comparison
    /// runs.
    fn expedite(&mut self, plan: &Plan, same_compile: bool) {
        let key_at = |index: usize| plan.targets.get(index).map(|t| Key(t.object.clone()));
        let candidates: Vec<(Key, usize)> = if same_compile {
            self.backlog
                .recent()
                // A position from before the last compile may name another object now.
                .filter_map(|(key, index)| key_at(index).filter(|k| k == key).map(|k| (k, index)))
                .collect()
        } else {
            plan.changed
                .iter()
                .filter_map(|&index| key_at(index).map(|k| (k, index)))
                .collect()
        };
        if candidates.len() > RECENT_MAX {
            return;
        }
        let fleet = plan.fleet();
        for (key, index) in candidates {
            if let (_, true) = self.needs_write(plan, &fleet, index, &key) {
                self.backlog.expedite(key, index);
            }
        }
    }

    /// A new plan: its likely changes first, then everything (see [`Self::evaluate`]).
    fn take_plan(
        &mut self,
        plan: Arc<Plan>,
        previous: Option<&Arc<Plan>>,
        plans: &mut watch::Receiver<Option<Arc<Plan>>>,
        publishing: &watch::Receiver<bool>,
        writes: &mut JoinSet<(Key, Outcome)>,
    ) -> Arc<Plan> {
        let mut previous = previous.cloned();
        let mut arrived = |writer: &mut Self, plan: &Arc<Plan>| {
            let same_compile = previous
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.targets, &plan.targets));
            writer.expedite(plan, same_compile);
            if !*publishing.borrow() {
                writer.start_writes(plan, writes);
            }
            previous = Some(plan.clone());
        };
        arrived(self, &plan);
        let mut newer = |writer: &mut Self| {
            if !plans.has_changed().unwrap_or(false) {
                return None;
            }
            let next = plans.borrow_and_update().clone()?;
            arrived(writer, &next);
            Some(next)
        };
        self.evaluate_blocking(plan, &mut newer)
    }

    fn evaluate_blocking(
        &mut self,
        plan: Arc<Plan>,
        newer: &mut dyn FnMut(&mut Self) -> Option<Arc<Plan>>,
    ) -> Arc<Plan> {
        // 100,000 objects take a noticeable fraction of a second: let the runtime move other
        // tasks (reflectors, the leader lease, the writes in flight) off this thread.
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| self.evaluate(plan, newer))
        } else {
            self.evaluate(plan, newer)
        }
    }

    /// Starts queued writes up to the concurrency limit (none while a config is published).
    fn start_writes(&mut self, plan: &Arc<Plan>, writes: &mut JoinSet<(Key, Outcome)>) {
        while writes.len() < STATUS_WRITE_CONCURRENCY {
            let Some((key, index)) = self.backlog.take() else {
                break;
            };
            writes.spawn(write_one(self.context.clone(), plan.clone(), index, key));
        }
    }

    /// Runs until the plan sender is dropped (or the task is aborted at the end of a
    /// leadership term, which aborts the writes in flight too). While `publishing` is true
    /// no new write starts.
    pub async fn run(
        mut self,
        mut plans: watch::Receiver<Option<Arc<Plan>>>,
        mut publishing: watch::Receiver<bool>,
    ) {
        let mut plan: Option<Arc<Plan>> = None;
        // Writes are tasks of their own, so they go on while a plan is being compared.
        let mut writes: JoinSet<(Key, Outcome)> = JoinSet::new();
        let mut failures = 0usize;
        let mut retry_delay = Duration::from_secs(1);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let paused = *publishing.borrow_and_update();
            if let (Some(plan), false) = (&plan, paused) {
                self.start_writes(plan, &mut writes);
            }
            self.context
                .metrics
                .status_backlog
                .set((self.backlog.queued() + self.backlog.in_flight()) as i64);
            let idle = writes.is_empty();
            if idle && failures > 0 {
                tracing::warn!(
                    failures,
                    retry_in = ?retry_delay,
                    "some status writes failed; retrying"
                );
                retry_at = Some(tokio::time::Instant::now() + retry_delay);
                retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                failures = 0;
            }
            let wake_at = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + MAX_RETRY_DELAY);
            tokio::select! {
                biased;
                changed = plans.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = plans.borrow_and_update().clone();
                    if let Some(next) = next {
                        let taken = self.take_plan(
                            next,
                            plan.as_ref(),
                            &mut plans,
                            &publishing,
                            &mut writes,
                        );
                        plan = Some(taken);
                    }
                }
                changed = publishing.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(joined) = writes.join_next(), if !idle => {
                    let Ok((key, outcome)) = joined else {
                        // A write task panicked or was aborted: compare everything again.
                        failures += 1;
                        continue;
                    };
                    let recheck = self.backlog.done(&key);
                    match outcome {
                        Outcome::Written(written) => {
                            self.written.insert(key.clone(), written);
                            retry_delay = Duration::from_secs(1);
                        }
                        Outcome::Skipped => {}
                        Outcome::Failed(error) => {
                            tracing::debug!(?key, %error, "status write failed");
                            failures += 1;
                        }
                    }
                    // The latest plan wanted it written while this write was in flight.
                    if let (Some(index), Some(plan)) = (recheck, plan.clone()) {
                        let fleet = plan.fleet();
                        if let (_, true) = self.needs_write(&plan, &fleet, index, &key) {
                            self.backlog.expedite(key, index);
                        }
                    }
                }
                () = tokio::time::sleep_until(wake_at), if retry_at.is_some() && idle => {
                    retry_at = None;
                    if let Some(current) = plan.clone() {
                        let taken = self.take_plan(
                            current.clone(),
                            Some(&current),
                            &mut plans,
                            &publishing,
                            &mut writes,
                        );
                        plan = Some(taken);
                    }
                }
            }
        }
    }
}

async fn write_one(
    context: Arc<WriterContext>,
    plan: Arc<Plan>,
    index: usize,
    key: Key,
) -> (Key, Outcome) {
    let Some(compiled) = plan.statuses.get(index) else {
        return (key, Outcome::Skipped);
    };
    let outcome = match compiled.kind {
        ObjectKind::ApiRoute => write_kind::<ApiRoute>(&context, &plan, index).await,
        ObjectKind::ConsumerCredential => {
            write_kind::<ConsumerCredential>(&context, &plan, index).await
        }
        ObjectKind::RateLimitPolicy => write_kind::<RateLimitPolicy>(&context, &plan, index).await,
        ObjectKind::WafPolicy => write_kind::<WafPolicy>(&context, &plan, index).await,
        ObjectKind::Secret
        | ObjectKind::Ingress
        | ObjectKind::GatewayClass
        | ObjectKind::Gateway
        | ObjectKind::HttpRoute => Outcome::Skipped,
    };
    if let Outcome::Failed(error) = &outcome {
        context
            .metrics
            .errors
            .get_or_create(&ErrorLabels {
                reason: "status".into(),
            })
            .inc();
        tracing::debug!(kind = ?compiled.kind, namespace = %compiled.namespace, name = %compiled.name, %error, "cannot write status");
    }
    (key, outcome)
}

/// Compares the object again with the freshest cache (the queue may be a while old) and
/// writes its status if it still differs, then queues Events for condition changes.
async fn write_kind<K: StatusKind>(context: &WriterContext, plan: &Plan, index: usize) -> Outcome {
    let Some(live) = plan
        .targets
        .get(index)
        .and_then(|t| K::key(&t.store_key))
        .and_then(|key| K::store(&context.stores).get(key))
    else {
        return Outcome::Skipped;
    };
    let fleet = plan.fleet();
    let Some(desired) = desired(&*live, plan, &fleet, index) else {
        return Outcome::Skipped;
    };
    let current = live.common();
    let credentials = live.credentials();
    let shown = credentials
        .as_ref()
        .is_none_or(|(shown, summary)| status::shows(*shown, summary));
    if desired.matches(current) && shown {
        return Outcome::Skipped;
    }
    let Some(verdict) = plan.targets.get(index).map(|t| t.verdict) else {
        return Outcome::Skipped;
    };
    let full = desired.fingerprints(verdict).full;
    let built = desired.build(current, &Timestamp::now().to_string());
    let mut status = serde_json::to_value(&built).unwrap_or_default();
    if let (Some((_, summary)), Some(map)) = (&credentials, status.as_object_mut()) {
        map.insert("credentials".into(), json!(summary.to_string()));
    }
    let kind = K::kind(&()).to_string();
    let patch = json!({"apiVersion": API_VERSION, "kind": kind, "status": status});
    let namespace = live.namespace().unwrap_or_default();
    let name = live.name_any();
    let api: Api<K> = Api::namespaced(context.client.clone(), &namespace);
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Deleted since the cache saw it: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 404 => return Outcome::Skipped,
        Err(e) => return Outcome::Failed(format!("{kind} {namespace}/{name}: {e}")),
    }
    context.metrics.status_writes.inc();
    record_transitions(&context.events, &*live, current, &built);
    Outcome::Written(Written {
        full,
        overwrote: live.resource_version(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;
    use portcullis_compiler::report::ProxyReport;
    use portcullis_compiler::{compile, Snapshot};
    use serde_json::Value;

    use super::*;
    use crate::plan::{resolve, Replicas};
    use crate::status::Published;
    use crate::status_kind::CredentialSummary;
    use kube::runtime::reflector::Store;
    use kube::Resource;

    fn filled<K, T>(objects: &[T]) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
        T: std::borrow::Borrow<K>,
    {
        let mut writer: Writer<K> = Default::default();
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(object.borrow().clone()));
        }
        writer.as_reader()
    }

    fn route(i: usize) -> ApiRoute {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": format!("route-{i}"), "namespace": format!("team-{}", i % 20),
                         "generation": 1, "resourceVersion": format!("{i}")},
            "spec": {"hosts": [format!("api-{}.example.com", i % 500)],
                     "paths": [{"type": "Prefix", "value": format!("/svc-{i}/v1")}],
                     "upstream": {"targets": [{"url": "http://backend:8080"}]}}
        }))
        .unwrap()
    }

    fn consumer(i: usize) -> ConsumerCredential {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ConsumerCredential",
            "metadata": {"name": format!("consumer-{i}"), "namespace": "team-0",
                         "generation": 1, "resourceVersion": format!("{i}")},
            "spec": {"groups": ["free"]}
        }))
        .unwrap()
    }

    /// A writer over `routes` routes and `consumers` consumers without status, one proxy
    /// running their config, and the plan for them. Needs a runtime entered (the event sink).
    fn fixture(routes: usize, consumers: usize) -> (StatusWriter, Arc<Plan>, Snapshot) {
        let snapshot = Snapshot {
            routes: (0..routes).map(|i| Arc::new(route(i))).collect(),
            consumers: (0..consumers).map(|i| Arc::new(consumer(i))).collect(),
            ..Snapshot::default()
        };
        let started = Instant::now();
        let (config, statuses) = compile(&snapshot);
        println!("compile: {:?}", started.elapsed());
        let mut published = Published::default();
        let started = Instant::now();
        let in_config = published.intern(&config.objects);
        println!("intern: {:?}", started.elapsed());
        published.record(&config.generation, in_config.clone());
        let started = Instant::now();
        let (previous, _) = resolve(&statuses, &in_config, None);
        println!("resolve: {:?}", started.elapsed());
        let started = Instant::now();
        let (targets, changed) = resolve(&statuses, &in_config, Some(&previous));
        println!("resolve again (nothing changed): {:?}", started.elapsed());
        assert!(changed.is_empty());
        let report: ProxyReport = serde_json::from_value(json!({
            "replica": "a", "generation": config.generation, "startedAt": "2026-01-01T00:00:00Z",
            "routes": BTreeMap::<String, Value>::new()
        }))
        .unwrap();
        let stores = Stores {
            routes: filled::<ApiRoute, _>(&snapshot.routes),
            consumers: filled::<ConsumerCredential, _>(&snapshot.consumers),
            rate_limits: filled::<RateLimitPolicy, RateLimitPolicy>(&[]),
            wafs: filled::<WafPolicy, WafPolicy>(&[]),
            secrets: filled::<Secret, Secret>(&[]),
            reports: filled::<Lease, Lease>(&[]),
            ingresses: filled::<
                k8s_openapi::api::networking::v1::Ingress,
                k8s_openapi::api::networking::v1::Ingress,
            >(&[]),
            ingress_classes: filled::<
                k8s_openapi::api::networking::v1::IngressClass,
                k8s_openapi::api::networking::v1::IngressClass,
            >(&[]),
            gateway: None,
        };
        let plan = Arc::new(Plan {
            statuses: Arc::new(statuses),
            targets: Arc::new(targets),
            compiled_generation: Some(config.generation.clone()),
            changed: Vec::new(),
            published,
            last_published: Some(config.generation.clone()),
            publish_error: None,
            replicas: Arc::new(Replicas {
                live: vec![report.clone()],
                known: vec![report],
                forgotten: vec![],
            }),
        });
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let metrics = Arc::new(Metrics::new());
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "test".into(),
                instance: None,
            },
        );
        let writer = StatusWriter::new(WriterContext {
            client,
            stores,
            metrics: metrics.clone(),
            events: EventSink::spawn(recorder, metrics),
        });
        (writer, plan, snapshot)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_newer_plan_takes_over_the_comparison() {
        let runtime = runtime();
        let _guard = runtime.enter();
        let (mut writer, plan, _) = fixture(10, 2 * EVALUATE_CHUNK);
        let total = plan.targets.len();
        // A report arrives after the first chunk: same compile, the comparison goes on
        // against the newer plan.
        let report = Arc::new(Plan {
            statuses: plan.statuses.clone(),
            targets: plan.targets.clone(),
            compiled_generation: plan.compiled_generation.clone(),
            changed: Vec::new(),
            published: plan.published.clone(),
            last_published: plan.last_published.clone(),
            publish_error: None,
            replicas: plan.replicas.clone(),
        });
        let mut looks = 0;
        let mut offered = Some(report.clone());
        let taken = writer.evaluate(plan.clone(), &mut |_| {
            looks += 1;
            offered.take()
        });
        assert!(Arc::ptr_eq(&taken, &report));
        assert_eq!(looks, total.div_ceil(EVALUATE_CHUNK));
        assert_eq!(writer.backlog.queued(), total, "every object compared once");
        // A new compile (other objects) restarts it.
        let (targets, _) = resolve(
            &plan.statuses[..100],
            &plan
                .published
                .set(plan.last_published.as_deref().unwrap())
                .unwrap()
                .clone(),
            None,
        );
        let compile = Arc::new(Plan {
            statuses: Arc::new(plan.statuses[..100].to_vec()),
            targets: Arc::new(targets),
            compiled_generation: None,
            changed: Vec::new(),
            published: plan.published.clone(),
            last_published: plan.last_published.clone(),
            publish_error: None,
            replicas: plan.replicas.clone(),
        });
        let mut offered = Some(compile.clone());
        let taken = writer.evaluate(plan, &mut |_| offered.take());
        assert!(Arc::ptr_eq(&taken, &compile));
        assert_eq!(writer.backlog.queued(), 100);
    }

    /// Cost of one full evaluation (`cargo test --release -p portcullis-operator --lib
    /// evaluation_cost -- --ignored --nocapture`); the writer runs one per plan.
    #[test]
    #[ignore]
    fn evaluation_cost() {
        let (routes, consumers) = (10_000, 100_000);
        let runtime = runtime();
        let _guard = runtime.enter();
        let (mut writer, plan, snapshot) = fixture(routes, consumers);
        let started = Instant::now();
        writer.evaluate(plan.clone(), &mut |_| None);
        println!(
            "first pass: compared {} objects without status in {:?}",
            plan.statuses.len(),
            started.elapsed()
        );
        assert_eq!(writer.backlog.queued(), routes + consumers);
        // The settled cluster: every object already shows its desired status.
        let fleet = plan.fleet();
        let positions: HashMap<(ObjectKind, &str, &str), usize> = plan
            .statuses
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.kind, s.namespace.as_str(), s.name.as_str()), i))
            .collect();
        let index_of = |object: &dyn ResourceName, kind| {
            positions[&(kind, object.namespace_str(), object.name_str())]
        };
        let mut routes_done: Vec<ApiRoute> =
            snapshot.routes.iter().map(|r| (**r).clone()).collect();
        for route in &mut routes_done {
            let index = index_of(&*route, ObjectKind::ApiRoute);
            let built = desired(&*route, &plan, &fleet, index).map(|d| d.build(None, "T"));
            route.status = built;
        }
        let mut consumers_done: Vec<ConsumerCredential> =
            snapshot.consumers.iter().map(|c| (**c).clone()).collect();
        for consumer in &mut consumers_done {
            let index = index_of(&*consumer, ObjectKind::ConsumerCredential);
            let built = desired(&*consumer, &plan, &fleet, index).map(|d| d.build(None, "T"));
            let credentials = Some(CredentialSummary(consumer).to_string());
            consumer.status = built.map(|common| portcullis_crds::ConsumerCredentialStatus {
                common,
                credentials,
            });
        }
        writer.context = Arc::new(WriterContext {
            stores: Stores {
                routes: filled::<ApiRoute, _>(&routes_done),
                consumers: filled::<ConsumerCredential, _>(&consumers_done),
                ..writer.context.stores.clone()
            },
            client: writer.context.client.clone(),
            metrics: writer.context.metrics.clone(),
            events: writer.context.events.clone(),
        });
        for _ in 0..3 {
            let started = Instant::now();
            writer.evaluate(plan.clone(), &mut |_| None);
            println!(
                "settled: compared {} objects in {:?}; {} queued",
                plan.statuses.len(),
                started.elapsed(),
                writer.backlog.queued()
            );
        }
        assert_eq!(writer.backlog.queued(), 0);
    }

    trait ResourceName {
        fn namespace_str(&self) -> &str;
        fn name_str(&self) -> &str;
    }

    impl<K: Resource> ResourceName for K {
        fn namespace_str(&self) -> &str {
            self.meta().namespace.as_deref().unwrap_or_default()
        }
        fn name_str(&self) -> &str {
            self.meta().name.as_deref().unwrap_or_default()
        }
    }
}
