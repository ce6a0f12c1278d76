//! The reconciler: one level-triggered, idempotent pass over the whole cluster state.
//! Compile everything, publish the config if it changed, then bring every object's status
//! up to date, writing only what differs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use portcullis_compiler::config::{ObjectKind, ObjectRef};
use portcullis_compiler::report::{ProxyReport, REPORT_ANNOTATION};
use portcullis_compiler::{compile, delivery, ObjectStatus, Snapshot};
use portcullis_crds::{ConsumerCredential, ObjectStatusFields, API_VERSION};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::metrics::Metrics;
use crate::publish::{self, FIELD_MANAGER};
use crate::status::{self, Published};
use crate::watch::Stores;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error("writing status of {object}: {source}")]
    Status {
        object: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Metric label for the error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Publish(_) => "publish",
            ReconcileError::Status { .. } => "status",
        }
    }
}

pub struct Reconciler {
    client: Client,
    namespace: String,
    stores: Stores,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    published: Published,
    last_published: Option<String>,
    publish_error: Option<String>,
}

/// A replica that stopped reporting is still counted (as not ready) for this long, then its
/// Lease is deleted: long enough to see a crash in `kubectl get`, short enough that a scaled
/// down Deployment stops showing ghosts.
pub const FORGET_AFTER_SECONDS: i64 = 300;

/// Status writes in flight at once.
const STATUS_WRITE_CONCURRENCY: usize = 32;

/// Proxy reports by freshness.
#[derive(Debug, Default)]
pub struct Replicas {
    /// Renewed within their lease duration.
    pub live: Vec<ProxyReport>,
    /// Every replica still counted: live plus recently expired.
    pub known: Vec<ProxyReport>,
    /// Lease names expired for longer than [`FORGET_AFTER_SECONDS`].
    pub forgotten: Vec<String>,
}

pub fn classify_reports(leases: &[Arc<Lease>], now: Timestamp) -> Replicas {
    let mut replicas = Replicas::default();
    for lease in leases {
        let Some(spec) = &lease.spec else { continue };
        let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
        let age = now.as_second() - renewed;
        if age > duration + FORGET_AFTER_SECONDS {
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

fn owned<K: Clone + Resource>(objects: Vec<Arc<K>>) -> Vec<K> {
    objects
        .into_iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .map(|o| (*o).clone())
        .collect()
}

impl Reconciler {
    pub fn new(
        client: Client,
        namespace: &str,
        stores: Stores,
        metrics: Arc<Metrics>,
        recorder: Recorder,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            stores,
            metrics,
            recorder,
            published: Published::default(),
            last_published: None,
            publish_error: None,
        }
    }

    /// Forgets what this replica last published, so that a new leadership term publishes
    /// the current config even if another leader wrote something else in between.
    pub fn start_term(&mut self) {
        self.last_published = None;
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            routes: owned(self.stores.routes.state()),
            consumers: owned(self.stores.consumers.state()),
            rate_limit_policies: owned(self.stores.rate_limits.state()),
            waf_policies: owned(self.stores.wafs.state()),
            secrets: owned(self.stores.secrets.state()),
        }
    }

    pub async fn reconcile(&mut self) -> Result<(), ReconcileError> {
        let snapshot = self.snapshot();
        let started = Instant::now();
        let (config, statuses) = compile(&snapshot);
        self.metrics
            .compile_seconds
            .observe(started.elapsed().as_secs_f64());

        if self.last_published.as_deref() != Some(config.generation.as_str()) {
            match delivery::encode(&config) {
                Ok(encoded) => {
                    publish::publish(&self.client, &self.namespace, &encoded).await?;
                    self.metrics
                        .config_bytes
                        .set(encoded.compressed_bytes as i64);
                    self.published.record(&config.generation, &config.objects);
                    self.last_published = Some(config.generation.clone());
                    self.publish_error = None;
                    tracing::info!(
                        generation = %config.generation,
                        routes = config.routes.len(),
                        consumers = config.consumers.len(),
                        bytes = encoded.compressed_bytes,
                        "published config"
                    );
                }
                Err(e) => {
                    // Keep the last published config; say why on every object.
                    tracing::error!(error = %e, "cannot publish the compiled config");
                    self.publish_error = Some(e.to_string());
                }
            }
        }

        let replicas = classify_reports(&self.stores.reports.state(), Timestamp::now());
        self.metrics.proxies_live.set(replicas.live.len() as i64);
        self.forget(&replicas.forgotten).await;
        let now = Timestamp::now().to_string();
        let in_config: HashSet<&ObjectRef> = config.objects.iter().collect();
        // Most objects need no write; the ones that do go out a few at a time, so the first
        // reconcile of a large cluster is not one round trip per object in sequence.
        let results: Vec<Result<(), ReconcileError>> = futures_util::stream::iter(&statuses)
            .map(|compiled| self.update_status(compiled, &in_config, &replicas, &now))
            .buffer_unordered(STATUS_WRITE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn update_status(
        &self,
        compiled: &ObjectStatus,
        in_config: &HashSet<&ObjectRef>,
        replicas: &Replicas,
        now: &str,
    ) -> Result<(), ReconcileError> {
        let object = ObjectRef {
            kind: compiled.kind,
            namespace: compiled.namespace.clone(),
            name: compiled.name.clone(),
            generation: compiled.generation,
        };
        let in_config = in_config.contains(&object);
        let programmed = status::programmed(
            &object,
            compiled.accepted() && in_config,
            &replicas.live,
            replicas.known.len() as u32,
            &self.published,
            self.publish_error.as_deref(),
        );
        let generation = self.last_published.as_deref();
        let (name, namespace) = (compiled.name.as_str(), compiled.namespace.as_str());
        let desired_status = |current: Option<&ObjectStatusFields>, enforcement| {
            status::desired(compiled, &programmed, generation, enforcement, current, now)
        };
        match compiled.kind {
            ObjectKind::ApiRoute => {
                let Some(live) = self.stores.routes.get(&store_key(name, namespace)) else {
                    return Ok(());
                };
                let current = live.status.clone();
                let enforcement = Some(status::enforcement(
                    &format!("{}/{}", compiled.namespace, compiled.name),
                    &replicas.known,
                ));
                let desired = desired_status(current.as_ref(), enforcement);
                self.write(&*live, current, desired, None).await
            }
            ObjectKind::ConsumerCredential => {
                let Some(live) = self.stores.consumers.get(&store_key(name, namespace)) else {
                    return Ok(());
                };
                let current = live.status.as_ref().map(|s| s.common.clone());
                let desired = desired_status(current.as_ref(), None);
                self.write(&*live, current, desired, Some(credential_summary(&live)))
                    .await
            }
            ObjectKind::RateLimitPolicy => {
                let Some(live) = self.stores.rate_limits.get(&store_key(name, namespace)) else {
                    return Ok(());
                };
                let current = live.status.clone();
                let desired = desired_status(current.as_ref(), None);
                self.write(&*live, current, desired, None).await
            }
            ObjectKind::WafPolicy => {
                let Some(live) = self.stores.wafs.get(&store_key(name, namespace)) else {
                    return Ok(());
                };
                let current = live.status.clone();
                let desired = desired_status(current.as_ref(), None);
                self.write(&*live, current, desired, None).await
            }
            ObjectKind::Secret => Ok(()),
        }
    }

    /// Deletes the report Leases of replicas gone for good.
    async fn forget(&self, leases: &[String]) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        for name in leases {
            match api.delete(name, &Default::default()).await {
                Ok(_) => {
                    tracing::info!(lease = %name, "forgot a proxy replica that stopped reporting")
                }
                Err(e) => {
                    tracing::debug!(lease = %name, error = %e, "cannot delete a stale report")
                }
            }
        }
    }

    /// Writes `desired` when it differs from `current` (plus, for ConsumerCredentials, the
    /// credential summary), and records Events for condition transitions.
    async fn write<K>(
        &self,
        live: &K,
        current: Option<ObjectStatusFields>,
        desired: ObjectStatusFields,
        credentials: Option<String>,
    ) -> Result<(), ReconcileError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + serde::Serialize,
    {
        let current_credentials = serde_json::to_value(live).ok().and_then(|v| {
            v.pointer("/status/credentials")
                .and_then(|c| c.as_str().map(str::to_string))
        });
        if current.as_ref() == Some(&desired) && credentials == current_credentials {
            return Ok(());
        }
        self.record_transitions(live, current.as_ref(), &desired)
            .await;
        let mut status = serde_json::to_value(&desired).unwrap_or_default();
        if let (Some(credentials), Some(map)) = (credentials, status.as_object_mut()) {
            map.insert("credentials".into(), json!(credentials));
        }
        let kind = K::kind(&()).to_string();
        let patch = json!({"apiVersion": API_VERSION, "kind": kind, "status": status});
        let namespace = live.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let name = live.name_any();
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| ReconcileError::Status {
            object: format!("{kind} {namespace}/{name}"),
            source,
        })?;
        self.metrics.status_writes.inc();
        Ok(())
    }

    async fn record_transitions<K>(
        &self,
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
            if let Err(e) = self.recorder.publish(&event, &live.object_ref(&())).await {
                tracing::debug!(error = %e, "cannot record an event");
            }
        }
    }
}

fn store_key<K: Resource<DynamicType = ()>>(
    name: &str,
    namespace: &str,
) -> kube::runtime::reflector::ObjectRef<K> {
    kube::runtime::reflector::ObjectRef::new(name).within(namespace)
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
