//! The status writer: brings every object's status in line with the newest [`Plan`], in its
//! own task, so that publishing a config never waits for status writes.
//!
//! The reconciler sends a plan after every compile and every proxy report (a report changes
//! `Programmed` without changing the config). The writer evaluates each object of the newest
//! plan against the reflector cache and writes, [`STATUS_WRITE_CONCURRENCY`] at a time, those
//! whose cached status differs, most recently changed first ([`Backlog`]). A plan that
//! arrives mid-way replaces the queue: writes in flight finish, nothing outdated is started.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use portcullis_compiler::config::{ObjectKind, ObjectRef};
use portcullis_compiler::ObjectStatus;
use portcullis_crds::{
    ApiRoute, ConsumerCredential, ObjectStatusFields, RateLimitPolicy, WafPolicy, API_VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::backlog::{Backlog, Item};
use crate::events::EventSink;
use crate::metrics::{ErrorLabels, Metrics};
use crate::publish::FIELD_MANAGER;
use crate::reconcile::Replicas;
use crate::status::{self, Fingerprints, ObjectSet, Published};
use crate::watch::Stores;

/// Status writes in flight at once.
pub const STATUS_WRITE_CONCURRENCY: usize = 32;
/// Longest wait before failed writes are tried again (doubling from 1 s).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Everything the desired statuses follow from: the newest compile result and the newest
/// proxy reports.
pub struct Plan {
    /// The compiler's verdict on every object.
    pub statuses: Arc<Vec<ObjectStatus>>,
    /// The objects the compiled config contains.
    pub in_config: ObjectSet,
    pub published: Published,
    pub last_published: Option<String>,
    pub publish_error: Option<String>,
    pub replicas: Arc<Replicas>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    kind: ObjectKind,
    namespace: String,
    name: String,
}

impl Key {
    fn of(compiled: &ObjectStatus) -> Self {
        Key {
            kind: compiled.kind,
            namespace: compiled.namespace.clone(),
            name: compiled.name.clone(),
        }
    }
}

/// A write we made that the cache may not show yet: if the cache still holds the version we
/// overwrote, the object is not written again for the same status.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    full: u64,
    overwrote: Option<String>,
}

/// The four kinds that carry a status.
trait StatusKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    fn store(stores: &Stores) -> &Store<Self>;
    fn common(&self) -> Option<&ObjectStatusFields>;
    /// (shown, desired) `status.credentials`; only ConsumerCredentials have one.
    fn credentials(&self) -> (Option<&str>, Option<String>) {
        (None, None)
    }
    /// Routes carry the proxies' enforcement counters.
    const ENFORCEMENT: bool = false;
}

impl StatusKind for ApiRoute {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.routes
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref()
    }
    const ENFORCEMENT: bool = true;
}

impl StatusKind for ConsumerCredential {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.consumers
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref().map(|s| &s.common)
    }
    fn credentials(&self) -> (Option<&str>, Option<String>) {
        let shown = self.status.as_ref().and_then(|s| s.credentials.as_deref());
        (shown, Some(credential_summary(self)))
    }
}

impl StatusKind for RateLimitPolicy {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.rate_limits
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref()
    }
}

impl StatusKind for WafPolicy {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.wafs
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref()
    }
}

/// One object compared with the plan.
struct Evaluated<K> {
    live: Arc<K>,
    desired: ObjectStatusFields,
    credentials: Option<String>,
    /// The cache shows exactly the desired status.
    matches: bool,
    fingerprints: Fingerprints,
}

fn evaluate<K: StatusKind>(
    stores: &Stores,
    plan: &Plan,
    compiled: &ObjectStatus,
    now: &str,
) -> Option<Evaluated<K>> {
    let key = kube::runtime::reflector::ObjectRef::new(&compiled.name).within(&compiled.namespace);
    let live = K::store(stores).get(&key)?;
    let object = ObjectRef {
        kind: compiled.kind,
        namespace: compiled.namespace.clone(),
        name: compiled.name.clone(),
        generation: compiled.generation,
    };
    let replicas = &plan.replicas;
    let programmed = status::programmed(
        &object,
        compiled.accepted() && plan.in_config.contains(&object),
        &replicas.live,
        replicas.known.len() as u32,
        &plan.published,
        plan.publish_error.as_deref(),
    );
    let current = live.common();
    let enforcement = K::ENFORCEMENT.then(|| {
        status::enforcement(
            &format!("{}/{}", compiled.namespace, compiled.name),
            &replicas.known,
        )
    });
    let generation = status::config_generation(
        &object,
        current,
        &plan.published,
        plan.last_published.as_deref(),
    );
    let desired = status::desired(compiled, &programmed, generation, enforcement, current, now);
    let (shown, credentials) = live.credentials();
    let matches = current == Some(&desired) && shown == credentials.as_deref();
    let fingerprints = status::fingerprints(&desired, credentials.as_deref());
    Some(Evaluated {
        desired,
        credentials,
        matches,
        fingerprints,
        live,
    })
}

/// (fingerprints, resourceVersion, matches) of one object, whatever its kind.
fn evaluate_any(
    stores: &Stores,
    plan: &Plan,
    compiled: &ObjectStatus,
    now: &str,
) -> Option<(Fingerprints, Option<String>, bool)> {
    fn parts<K: StatusKind>(e: Evaluated<K>) -> (Fingerprints, Option<String>, bool) {
        (e.fingerprints, e.live.resource_version(), e.matches)
    }
    match compiled.kind {
        ObjectKind::ApiRoute => evaluate::<ApiRoute>(stores, plan, compiled, now).map(parts),
        ObjectKind::ConsumerCredential => {
            evaluate::<ConsumerCredential>(stores, plan, compiled, now).map(parts)
        }
        ObjectKind::RateLimitPolicy => {
            evaluate::<RateLimitPolicy>(stores, plan, compiled, now).map(parts)
        }
        ObjectKind::WafPolicy => evaluate::<WafPolicy>(stores, plan, compiled, now).map(parts),
        ObjectKind::Secret => None,
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

    /// Compares every object of `plan` with the cache and rebuilds the queue.
    fn evaluate(&mut self, plan: &Plan) {
        let started = Instant::now();
        let now = Timestamp::now().to_string();
        let stores = &self.context.stores;
        let written = &mut self.written;
        let items: Vec<Item<Key>> = plan
            .statuses
            .iter()
            .map(|compiled| {
                let key = Key::of(compiled);
                let (core, pending) = match evaluate_any(stores, plan, compiled, &now) {
                    None => (0, false),
                    Some((fingerprints, version, matches)) => {
                        let pending = if matches {
                            written.remove(&key);
                            false
                        } else {
                            // A write of exactly this status may still be on its way into
                            // the cache.
                            written.get(&key)
                                != Some(&Written {
                                    full: fingerprints.full,
                                    overwrote: version,
                                })
                        };
                        (fingerprints.core, pending)
                    }
                };
                Item { key, core, pending }
            })
            .collect();
        self.backlog.plan(items);
        let backlog = &self.backlog;
        self.written.retain(|key, _| backlog.knows(key));
        self.context
            .metrics
            .status_evaluate_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    fn evaluate_blocking(&mut self, plan: &Plan) {
        // 100,000 objects take a noticeable fraction of a second: let the runtime move other
        // tasks (reflectors, the leader lease) off this thread meanwhile.
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| self.evaluate(plan));
        } else {
            self.evaluate(plan);
        }
    }

    /// Runs until the plan sender is dropped (or the task is aborted at the end of a
    /// leadership term).
    pub async fn run(mut self, mut plans: watch::Receiver<Option<Arc<Plan>>>) {
        let mut plan: Option<Arc<Plan>> = None;
        let mut writes = FuturesUnordered::new();
        let mut failures = 0usize;
        let mut retry_delay = Duration::from_secs(1);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if let Some(plan) = &plan {
                while writes.len() < STATUS_WRITE_CONCURRENCY {
                    let Some((key, index)) = self.backlog.take() else {
                        break;
                    };
                    writes.push(write_one(self.context.clone(), plan.clone(), index, key));
                }
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
                    plan = plans.borrow_and_update().clone();
                    if let Some(plan) = &plan {
                        self.evaluate_blocking(plan);
                    }
                }
                Some((key, outcome)) = writes.next(), if !idle => {
                    self.backlog.done(&key);
                    match outcome {
                        Outcome::Written(written) => {
                            self.written.insert(key, written);
                            retry_delay = Duration::from_secs(1);
                        }
                        Outcome::Skipped => {}
                        Outcome::Failed(error) => {
                            tracing::debug!(?key, %error, "status write failed");
                            failures += 1;
                        }
                    }
                    if self.backlog.needs_recheck() {
                        if let Some(plan) = plan.clone() {
                            self.evaluate_blocking(&plan);
                        }
                    }
                }
                () = tokio::time::sleep_until(wake_at), if retry_at.is_some() && idle => {
                    retry_at = None;
                    if let Some(plan) = plan.clone() {
                        self.evaluate_blocking(&plan);
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
        ObjectKind::ApiRoute => write_kind::<ApiRoute>(&context, &plan, compiled).await,
        ObjectKind::ConsumerCredential => {
            write_kind::<ConsumerCredential>(&context, &plan, compiled).await
        }
        ObjectKind::RateLimitPolicy => {
            write_kind::<RateLimitPolicy>(&context, &plan, compiled).await
        }
        ObjectKind::WafPolicy => write_kind::<WafPolicy>(&context, &plan, compiled).await,
        ObjectKind::Secret => Outcome::Skipped,
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

/// Evaluates the object again against the freshest cache (the queue may be a while old) and
/// writes its status if it still differs, then records Events for condition changes.
async fn write_kind<K: StatusKind>(
    context: &WriterContext,
    plan: &Plan,
    compiled: &ObjectStatus,
) -> Outcome {
    let now = Timestamp::now().to_string();
    let Some(evaluated) = evaluate::<K>(&context.stores, plan, compiled, &now) else {
        return Outcome::Skipped;
    };
    if evaluated.matches {
        return Outcome::Skipped;
    }
    let live = &evaluated.live;
    let mut status = serde_json::to_value(&evaluated.desired).unwrap_or_default();
    if let (Some(credentials), Some(map)) = (&evaluated.credentials, status.as_object_mut()) {
        map.insert("credentials".into(), json!(credentials));
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
    record_transitions(&context.events, &**live, live.common(), &evaluated.desired);
    Outcome::Written(Written {
        full: evaluated.fingerprints.full,
        overwrote: live.resource_version(),
    })
}

/// Queues Events for the conditions whose status changed.
fn record_transitions<K>(
    events: &EventSink,
    live: &K,
    current: Option<&ObjectStatusFields>,
    desired: &ObjectStatusFields,
) where
    K: Resource<DynamicType = ()>,
{
    let was = |type_: &str| {
        current
            .and_then(|c| c.conditions.iter().find(|x| x.type_ == type_))
            .map(|c| c.status.clone())
    };
    for condition in &desired.conditions {
        if was(&condition.type_).as_deref() == Some(condition.status.as_str()) {
            continue;
        }
        let first_time = was(&condition.type_).is_none();
        let ok = condition.status == "True";
        // Quiet on a healthy first sighting; loud on every problem and every change.
        if first_time && ok && condition.type_ != "Programmed" {
            continue;
        }
        let event = Event {
            type_: if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if ok {
                condition.type_.clone()
            } else {
                format!("Not{}", condition.type_)
            },
            note: Some(truncate(&condition.message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        events.send(event, live.object_ref(&()));
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `apiKeys:2,jwt:1`: what `kubectl get consumercredentials` shows.
fn credential_summary(consumer: &ConsumerCredential) -> String {
    let spec = &consumer.spec;
    let mut parts = Vec::new();
    if !spec.api_keys.is_empty() {
        parts.push(format!("apiKeys:{}", spec.api_keys.len()));
    }
    if !spec.jwt.is_empty() {
        parts.push(format!("jwt:{}", spec.jwt.len()));
    }
    if let Some(mtls) = &spec.mtls {
        let n = mtls.subjects.len() + mtls.sans.len() + mtls.fingerprints_sha256.len();
        if n > 0 {
            parts.push(format!("mtls:{n}"));
        }
    }
    if !spec.oauth2_client_ids.is_empty() {
        parts.push(format!("oauth2:{}", spec.oauth2_client_ids.len()));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}
