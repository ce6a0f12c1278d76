//! The reconciler: one level-triggered, idempotent pass over the whole cluster state.
//! Compile everything (only when a compiler input changed), publish the config if it
//! changed, then hand the status writer a new [`Plan`]. Publishing never waits for status
//! writes: they run in their own task ([`crate::writer`]), which always works from the
//! newest plan.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, Resource};
use portcullis_compiler::{compile_cached, delivery, CompileCache, ObjectStatus, Snapshot};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::plan::{self, classify_reports, Plan, Target};
use crate::publish;
use crate::status::Published;
use crate::trigger::Trigger;
use crate::watch::{Owned, Stores};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error("the config signing key: {0}")]
    Key(#[from] crate::outputs::KeyError),
    #[error("compile task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ReconcileError {
    /// Metric label for the error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Publish(_) => "publish",
            ReconcileError::Key(_) => "key",
            ReconcileError::Task(_) => "task",
        }
    }
}

/// The latest compile result, kept while only proxy reports change.
struct Compiled {
    statuses: Arc<Vec<ObjectStatus>>,
    targets: Arc<Vec<Target>>,
    generation: String,
    /// Objects whose verdict this compile changed; sent with the first plan only.
    changed: Vec<usize>,
}

pub struct Reconciler {
    client: Client,
    namespace: String,
    /// Owner of the published shards ([`crate::owner`]).
    owner: Option<OwnerReference>,
    stores: Stores,
    /// What the operator writes (to repair), and the undecodable objects.
    owned: Owned,
    /// The namespace rules the compiler applies in cluster mode.
    tenancy: portcullis_compiler::Tenancy,
    /// The signing key of the published configs.
    key: Option<Vec<u8>>,
    /// The undecodable objects whose status this term has written, with what was written.
    quarantine_written: std::collections::HashMap<(String, String, String), Option<i64>>,
    /// Repeated failures are logged once a minute.
    log_limiter: crate::logs::Limiter,
    metrics: Arc<Metrics>,
    trigger: Arc<Trigger>,
    plans: watch::Sender<Option<Arc<Plan>>>,
    /// True while a config is being written: the status writer starts no new writes then.
    publishing: watch::Sender<bool>,
    published: Published,
    last_published: Option<String>,
    publish_error: Option<String>,
    compiled: Option<Compiled>,
    /// The objects of the last compile, kept across a failed publish.
    last_targets: Option<Arc<Vec<Target>>>,
    /// The last encoded config: its compressed Secret half is reused while the consumers
    /// and secrets stay the same.
    last_encoded: Option<Arc<delivery::Encoded>>,
    /// What the last compile keeps for the next: a route change does not compile the
    /// 100,000 consumers again. Moved into the compile task and back.
    compile_cache: CompileCache,
    /// Past its lease duration, a silent replica still counts this long ([`plan::FORGET_AFTER_SECONDS`]).
    forget_after_seconds: i64,
}

/// The cached objects that are not being deleted (shared, not copied).
fn live<K: Resource>(objects: Vec<Arc<K>>) -> Vec<Arc<K>> {
    objects
        .into_iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .collect()
}

impl Reconciler {
    pub fn new(
        client: Client,
        namespace: &str,
        stores: Stores,
        owned: Owned,
        tenancy: portcullis_compiler::Tenancy,
        metrics: Arc<Metrics>,
        trigger: Arc<Trigger>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            owner: None,
            stores,
            owned,
            tenancy,
            key: None,
            quarantine_written: Default::default(),
            log_limiter: Default::default(),
            metrics,
            trigger,
            plans: watch::Sender::new(None),
            publishing: watch::Sender::new(false),
            published: Published::default(),
            last_published: None,
            publish_error: None,
            compiled: None,
            last_targets: None,
            last_encoded: None,
            compile_cache: CompileCache::default(),
            forget_after_seconds: plan::FORGET_AFTER_SECONDS,
        }
    }

    /// How long a replica that stopped reporting still counts, past its lease duration.
    pub fn with_forget_after(mut self, after: Duration) -> Self {
        self.forget_after_seconds = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// Publishes the shards with an ownerReference to `owner` ([`crate::owner`]).
    pub fn with_owner(mut self, owner: Option<OwnerReference>) -> Self {
        self.owner = owner;
        self
    }

    /// Plans for the status writer: the newest one wins.
    pub fn plans(&self) -> watch::Receiver<Option<Arc<Plan>>> {
        self.plans.subscribe()
    }

    /// True while a config is being published. Status writes and the config's shards go to
    /// the same API server; with 32 status writes in flight from a large backlog, a publish
    /// took several times longer, and every change waits for its publish.
    pub fn publishing(&self) -> watch::Receiver<bool> {
        self.publishing.subscribe()
    }

    /// Forgets what this replica last published, so that a new leadership term compiles and
    /// publishes the current config even if another leader wrote something else in between.
    pub fn start_term(&mut self) {
        self.last_published = None;
        self.compiled = None;
        self.quarantine_written.clear();
    }

    pub async fn reconcile(&mut self) -> Result<(), ReconcileError> {
        // Take the flags before reading the stores: a change after this point sets them again.
        let inputs_changed = self.trigger.take_inputs_changed();
        let outputs_changed = self.trigger.take_outputs_changed();
        let key = crate::outputs::ensure_key(
            &self.client,
            &self.namespace,
            &self.owned.key,
            self.owner.as_ref(),
        )
        .await?;
        if self.key.as_ref().is_some_and(|old| *old != key) {
            // A new key (someone deleted the Secret): sign and publish afresh.
            tracing::warn!("the config signing key changed; publishing the config signed with it");
            self.compiled = None;
            self.last_published = None;
        }
        self.key = Some(key);
        self.write_quarantine().await;
        let published_before = self.last_published.clone();
        if inputs_changed || self.compiled.is_none() {
            if let Err(e) = self.compile_and_publish().await {
                // Compile again on the retry: the config was not kept.
                self.compiled = None;
                return Err(e);
            }
        }
        // A publish in this pass wrote every shard anyway (and the watch has not seen those
        // writes yet); otherwise check the owned objects against what was published.
        if outputs_changed && self.compiled.is_some() && self.last_published == published_before {
            self.repair_outputs().await?;
        }
        let replicas = classify_reports(
            &self.stores.reports.state(),
            Timestamp::now(),
            self.forget_after_seconds,
        );
        self.metrics.proxies_live.set(replicas.live.len() as i64);
        self.forget(&replicas.forgotten).await;
        let Some(compiled) = &mut self.compiled else {
            return Ok(());
        };
        let changed = std::mem::take(&mut compiled.changed);
        self.plans.send_replace(Some(Arc::new(Plan {
            statuses: compiled.statuses.clone(),
            targets: compiled.targets.clone(),
            changed,
            compiled_generation: (self.last_published.as_ref() == Some(&compiled.generation))
                .then(|| compiled.generation.clone()),
            published: self.published.clone(),
            last_published: self.last_published.clone(),
            publish_error: self.publish_error.clone(),
            replicas: Arc::new(replicas),
        })));
        Ok(())
    }

    async fn compile_and_publish(&mut self) -> Result<(), ReconcileError> {
        let stores = self.stores.clone();
        let tenancy = self.tenancy.clone();
        let published = self.published.clone();
        // The last compile's objects, to tell the status writer which ones this one changed.
        let previous = self.last_targets.clone();
        let mut cache = std::mem::take(&mut self.compile_cache);
        // Snapshot, compile and encode are CPU work of up to a second at 110,000 objects:
        // off the async threads, so that watches, the leader lease and status writes go on.
        let (config, statuses, targets, changed, timings, cache) =
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let snapshot = snapshot(&stores, tenancy);
                let snapshot_took = started.elapsed();
                let started = Instant::now();
                let (config, statuses) = compile_cached(&snapshot, &mut cache);
                let compile_took = started.elapsed();
                drop(snapshot);
                let started = Instant::now();
                let in_config = published.intern(&config.objects);
                let (targets, changed) = plan::resolve(
                    &statuses,
                    &in_config,
                    previous.as_deref().map(Vec::as_slice),
                );
                let resolve_took = started.elapsed();
                (
                    config,
                    statuses,
                    (targets, in_config),
                    changed,
                    [snapshot_took, compile_took, resolve_took],
                    cache,
                )
            })
            .await?;
        self.compile_cache = cache;
        let [snapshot_took, took, resolve_took] = timings;
        let (targets, in_config) = targets;
        self.metrics.compile_seconds.observe(took.as_secs_f64());
        let generation = config.generation.clone();

        if self.last_published.as_deref() != Some(generation.as_str()) {
            let started = Instant::now();
            let previous = self.last_encoded.clone();
            let secret_digest = self.compile_cache.secret_half_digest();
            let (config, encoded) = tokio::task::spawn_blocking(move || {
                let encoded = delivery::encode_reusing(&config, previous.as_deref(), secret_digest);
                (config, encoded)
            })
            .await?;
            let encode_took = started.elapsed();
            match encoded {
                Ok(mut encoded) => {
                    if let Some(key) = &self.key {
                        encoded.sign(key);
                    }
                    let started = Instant::now();
                    self.publishing.send_replace(true);
                    let published = publish::publish(
                        &self.client,
                        &self.namespace,
                        &encoded,
                        self.owner.as_ref(),
                    )
                    .await;
                    self.publishing.send_replace(false);
                    published?;
                    self.metrics
                        .config_bytes
                        .set(encoded.compressed_bytes as i64);
                    self.published.record(&config.generation, in_config.clone());
                    self.last_published = Some(config.generation.clone());
                    self.publish_error = None;
                    let bytes = encoded.compressed_bytes;
                    self.last_encoded = Some(Arc::new(encoded));
                    tracing::info!(
                        generation = %config.generation,
                        routes = config.routes.len(),
                        consumers = config.consumers.len(),
                        bytes,
                        snapshot_ms = snapshot_took.as_millis() as u64,
                        compile_ms = took.as_millis() as u64,
                        resolve_ms = resolve_took.as_millis() as u64,
                        encode_ms = encode_took.as_millis() as u64,
                        publish_ms = started.elapsed().as_millis() as u64,
                        changed = changed.len(),
                        "published config"
                    );
                }
                Err(e) => {
                    // Keep the last published config; say why on every object.
                    if let Some(suppressed) = self.log_limiter.allow(&e.to_string()) {
                        tracing::error!(error = %e, suppressed, "cannot publish the compiled config");
                    }
                    self.publish_error = Some(e.to_string());
                }
            }
        }
        let targets = Arc::new(targets);
        self.last_targets = Some(targets.clone());
        self.compiled = Some(Compiled {
            statuses: Arc::new(statuses),
            targets,
            generation,
            changed,
        });
        Ok(())
    }

    /// Puts back the config objects when someone deleted or edited them: the published
    /// config is written again, as it was (its compressed bytes are kept).
    async fn repair_outputs(&mut self) -> Result<(), ReconcileError> {
        let Some(encoded) = self.last_encoded.clone() else {
            return Ok(());
        };
        if self.last_published.as_deref() != Some(encoded.generation.as_str()) {
            return Ok(());
        }
        let mut encoded = (*encoded).clone();
        if let Some(key) = &self.key {
            encoded.sign(key);
        }
        let differences = crate::outputs::differences(
            &encoded,
            &self.owned.config_maps.state(),
            &self.owned.config_secrets.state(),
        );
        if differences.problems.is_empty() {
            return Ok(());
        }
        crate::outputs::remove_strays(&self.client, &self.namespace, &differences).await;
        tracing::warn!(
            generation = %encoded.generation,
            problems = %differences.problems.join("; "),
            "the published config objects were changed by someone else; writing them again"
        );
        self.metrics.config_repairs.inc();
        self.publishing.send_replace(true);
        let published =
            publish::publish(&self.client, &self.namespace, &encoded, self.owner.as_ref()).await;
        self.publishing.send_replace(false);
        published?;
        Ok(())
    }

    /// Gives each undecodable object `Accepted=False` (reason `Undecodable`) once per
    /// generation, with a raw status patch (the object cannot be read as its type).
    async fn write_quarantine(&mut self) {
        let entries = self.owned.quarantine.entries();
        let current: std::collections::HashSet<_> = entries
            .iter()
            .map(|p| (p.kind.to_string(), p.namespace.clone(), p.name.clone()))
            .collect();
        self.quarantine_written.retain(|k, _| current.contains(k));
        for poisoned in entries {
            let key = (
                poisoned.kind.to_string(),
                poisoned.namespace.clone(),
                poisoned.name.clone(),
            );
            // Once per generation: the status write itself changes the object (and with it
            // where in the text the decoder gives up), which must not write again.
            let written = poisoned.generation;
            if self.quarantine_written.get(&key) == Some(&written) {
                continue;
            }
            match crate::outputs::patch_undecodable(&self.client, &poisoned).await {
                Ok(()) => {
                    tracing::warn!(
                        kind = poisoned.kind,
                        namespace = %poisoned.namespace,
                        name = %poisoned.name,
                        error = %poisoned.error,
                        "object cannot be decoded; marked Accepted=False and left out of the config"
                    );
                    self.quarantine_written.insert(key, written);
                }
                Err(e) => {
                    if let Some(suppressed) = self.log_limiter.allow(&format!("quarantine {e}")) {
                        tracing::warn!(error = %e, suppressed, "cannot write the status of an undecodable object");
                    }
                }
            }
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
}

fn snapshot(stores: &Stores, tenancy: portcullis_compiler::Tenancy) -> Snapshot {
    let gateway = stores.gateway.as_ref();
    Snapshot {
        tenancy,
        routes: live(stores.routes.state()),
        consumers: live(stores.consumers.state()),
        rate_limit_policies: live(stores.rate_limits.state()),
        waf_policies: live(stores.wafs.state()),
        secrets: live(stores.secrets.state()),
        ingresses: live(stores.ingresses.state()),
        ingress_classes: live(stores.ingress_classes.state()),
        gateway_classes: gateway.map(|g| live(g.classes.state())).unwrap_or_default(),
        gateways: gateway
            .map(|g| live(g.gateways.state()))
            .unwrap_or_default(),
        http_routes: gateway.map(|g| live(g.routes.state())).unwrap_or_default(),
        reference_grants: gateway.map(|g| live(g.grants.state())).unwrap_or_default(),
        now_unix_secs: Some(portcullis_compiler::unix_now()),
    }
}

/// How long the main loop waits before retrying a failed pass.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
