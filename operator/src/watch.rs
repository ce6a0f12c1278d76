//! Reflectors for everything the operator reads; they wake the reconciler through [`Trigger`].
//!
//! Each watched kind keeps a local store (the reconciler reads only from stores, never from
//! the API server directly) and wakes the reconciler only when something that matters
//! changed: a spec (the generation), a Secret's data, a proxy report. Our own status writes
//! bump neither generation nor anything else we fingerprint, so they never retrigger.
//!
//! A proxy report changes no compiler input: it only needs `Programmed` recomputed, not a
//! compile (0.7 s at 110,000 objects). [`Trigger`] tells the two apart.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use portcullis_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use portcullis_crds::{ApiRoute, ConsumerCredential, RateLimitPolicy, WafPolicy};
use serde::de::DeserializeOwned;

use portcullis_compiler::delivery::{CONFIG_LABEL, KEY_SECRET_NAME};
use portcullis_compiler::report::REPORT_LABEL;

use crate::lenient::{Lenient, Quarantine};
use crate::trigger::Trigger;

/// The local view of the cluster.
#[derive(Clone)]
pub struct Stores {
    pub routes: Store<ApiRoute>,
    pub consumers: Store<ConsumerCredential>,
    pub rate_limits: Store<RateLimitPolicy>,
    pub wafs: Store<WafPolicy>,
    pub secrets: Store<Secret>,
    pub reports: Store<Lease>,
    pub ingresses: Store<Ingress>,
    pub ingress_classes: Store<IngressClass>,
    /// `None` where the API server does not serve the Gateway API.
    pub gateway: Option<GatewayStores>,
}

/// The Gateway API kinds.
#[derive(Clone)]
pub struct GatewayStores {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub routes: Store<HTTPRoute>,
    pub grants: Store<ReferenceGrant>,
}

impl Stores {
    /// True once every reflector has listed its objects at least once.
    pub async fn wait_ready(&self) {
        let _ = self.ingresses.wait_until_ready().await;
        let _ = self.ingress_classes.wait_until_ready().await;
        if let Some(gateway) = &self.gateway {
            let _ = gateway.classes.wait_until_ready().await;
            let _ = gateway.gateways.wait_until_ready().await;
            let _ = gateway.routes.wait_until_ready().await;
            let _ = gateway.grants.wait_until_ready().await;
        }
        let _ = self.routes.wait_until_ready().await;
        let _ = self.consumers.wait_until_ready().await;
        let _ = self.rate_limits.wait_until_ready().await;
        let _ = self.wafs.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
        let _ = self.reports.wait_until_ready().await;
    }
}

/// What the operator writes itself, watched so that it can repair them, and the objects
/// that could not be decoded.
#[derive(Clone)]
pub struct Owned {
    /// The config's ConfigMap shards.
    pub config_maps: Store<ConfigMap>,
    /// The config's Secret shards.
    pub config_secrets: Store<Secret>,
    /// The signing key Secret (at most one object).
    pub key: Store<Secret>,
    pub quarantine: Quarantine,
}

fn spec_fingerprint<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{:?}/{}",
        meta.generation,
        meta.deletion_timestamp.is_some()
    )
}

/// Generation plus annotations: Portcullis policies are attached to Ingresses and
/// HTTPRoutes by annotation, and an annotation change does not bump the generation.
fn annotated_fingerprint<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    let annotations: Vec<(&String, &String)> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| *k != "kubectl.kubernetes.io/last-applied-configuration")
        .collect();
    format!(
        "{:?}/{}/{annotations:?}",
        meta.generation,
        meta.deletion_timestamp.is_some()
    )
}

/// Objects without a generation that counts (IngressClass, ReferenceGrant): any change.
fn version_fingerprint<K: Resource>(object: &K) -> String {
    object.meta().resource_version.clone().unwrap_or_default()
}

fn data_fingerprint(object: &Secret) -> String {
    object.metadata.resource_version.clone().unwrap_or_default()
}

fn report_fingerprint(object: &Lease) -> String {
    // Renewals matter too: they keep a replica alive in the PROXIES column.
    object.metadata.resource_version.clone().unwrap_or_default()
}

/// What a change of one kind means to the reconciler.
#[derive(Clone, Copy)]
enum Role {
    /// A compiler input.
    Input,
    /// A proxy report.
    Report,
    /// An object the operator writes (the config shards, the signing key).
    Output,
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: Arc<Trigger>,
    role: Role,
    fingerprint: fn(&K) -> String,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields are never read here and are as large as the rest of a small object.
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, config)
            .default_backoff()
            .modify(|object| object.meta_mut().managed_fields = None),
    );
    tokio::spawn(watch_events(stream, trigger, role, fingerprint));
    reader
}

/// Wakes the reconciler for the events of one reflector that matter.
async fn watch_events<K>(
    stream: impl futures_util::Stream<Item = watcher::Result<Event<K>>>,
    trigger: Arc<Trigger>,
    role: Role,
    fingerprint: fn(&K) -> String,
) where
    K: Resource<DynamicType = ()>,
{
    let notify = move || match role {
        Role::Input => trigger.inputs_changed(),
        Role::Report => trigger.wake(),
        Role::Output => trigger.outputs_changed(),
    };
    let mut errors = crate::logs::Limiter::default();
    {
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => {
                    let key = format!(
                        "{}/{}",
                        object.namespace().unwrap_or_default(),
                        object.name_any()
                    );
                    let print = fingerprint(&object);
                    if seen.insert(key, print.clone()).as_ref() != Some(&print) {
                        notify();
                    }
                }
                Ok(Event::Delete(object)) => {
                    let key = format!(
                        "{}/{}",
                        object.namespace().unwrap_or_default(),
                        object.name_any()
                    );
                    seen.remove(&key);
                    notify();
                }
                Ok(Event::InitDone) => notify(),
                Ok(Event::Init) => {}
                Err(e) => {
                    // A failing watch retries every few seconds for as long as the cause
                    // lasts: one line per cause and minute, not megabytes.
                    if let Some(suppressed) = errors.allow(&e.to_string()) {
                        tracing::warn!(kind = %K::kind(&()), error = %e, suppressed, "watch failed; retrying with backoff");
                    }
                }
            }
        }
    }
}

/// Like [`spawn_reflector`] for a kind that tenants write: objects are decoded one by one
/// ([`crate::lenient`]), so an undecodable one is quarantined instead of failing the list.
fn spawn_lenient_reflector<K>(
    api: Api<Lenient<K>>,
    config: watcher::Config,
    trigger: Arc<Trigger>,
    quarantine: Quarantine,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let events = watcher::watcher(api, config).default_backoff();
    let decoded = crate::lenient::decoded(events, reader.clone(), quarantine)
        .modify(|object| object.meta_mut().managed_fields = None);
    let stream = reflector::reflector(writer, decoded);
    tokio::spawn(watch_events(stream, trigger, Role::Input, spec_fingerprint));
    reader
}

/// Starts every reflector. CRDs and Secrets are watched in all namespaces (routes reference
/// Secrets in their own namespace); proxy reports only in the operator's namespace.
///
/// With `gateway_api`, the Gateway API kinds too (their CRDs must be installed).
pub fn start(
    client: &Client,
    namespace: &str,
    trigger: Arc<Trigger>,
    gateway_api: bool,
) -> (Stores, Owned) {
    let all = watcher::Config::default();
    let quarantine = Quarantine::new(trigger.clone());
    let gateway = gateway_api.then(|| GatewayStores {
        classes: spawn_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            Role::Input,
            spec_fingerprint,
        ),
        gateways: spawn_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            Role::Input,
            spec_fingerprint,
        ),
        routes: spawn_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            Role::Input,
            annotated_fingerprint,
        ),
        grants: spawn_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            Role::Input,
            version_fingerprint,
        ),
    });
    let owned = Owned {
        config_maps: spawn_reflector(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(&format!("{CONFIG_LABEL}=true")),
            trigger.clone(),
            Role::Output,
            |o: &ConfigMap| o.metadata.resource_version.clone().unwrap_or_default(),
        ),
        config_secrets: spawn_reflector(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(&format!("{CONFIG_LABEL}=true")),
            trigger.clone(),
            Role::Output,
            data_fingerprint,
        ),
        key: spawn_reflector(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().fields(&format!("metadata.name={KEY_SECRET_NAME}")),
            trigger.clone(),
            Role::Output,
            data_fingerprint,
        ),
        quarantine: quarantine.clone(),
    };
    let stores = Stores {
        ingresses: spawn_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            Role::Input,
            annotated_fingerprint,
        ),
        ingress_classes: spawn_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            Role::Input,
            version_fingerprint,
        ),
        gateway,
        routes: spawn_lenient_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            quarantine.clone(),
        ),
        consumers: spawn_lenient_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            quarantine.clone(),
        ),
        rate_limits: spawn_lenient_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            quarantine.clone(),
        ),
        wafs: spawn_lenient_reflector(
            Api::all(client.clone()),
            all.clone(),
            trigger.clone(),
            quarantine.clone(),
        ),
        // Only Secrets that can be referenced matter; skip service-account and Helm noise.
        secrets: spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default()
                .fields("type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1")
                .labels(&format!("!{CONFIG_LABEL}")),
            trigger.clone(),
            Role::Input,
            data_fingerprint,
        ),
        reports: spawn_reflector(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(&format!("{REPORT_LABEL}=true")),
            trigger,
            Role::Report,
            report_fingerprint,
        ),
    };
    (stores, owned)
}
