//! Watches Services and their endpoints into the [`EndpointRegistry`].
//!
//! Why the proxy watches endpoints itself rather than receiving them from the operator:
//! endpoints change far more often than routes (every rollout, every failed probe), and the
//! operator's delivery path (a compiled config in ConfigMap shards, one generation for all
//! routes) would turn each pod restart into a new config for every proxy to decode and swap.
//! A watch is one hop: an endpoint change reaches the proxy's balancers within milliseconds
//! of the API server knowing it, and only the upstreams that use that Service are rebuilt.
//! The cost is RBAC: `list`/`watch` on Services and EndpointSlices (or Endpoints),
//! cluster-wide, read-only, which is what kube-proxy itself holds on every node.
//!
//! EndpointSlices are used where the API server serves them; `v1` Endpoints otherwise
//! ([`Source::Auto`]). An endpoint counts while its `ready` condition is not false.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::upstream::endpoints::{EndpointGroup, EndpointRegistry, ServiceKey, ServicePort};

/// Label on an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where endpoints come from (`--endpoints-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// EndpointSlices if the API server serves `discovery.k8s.io/v1`, else Endpoints.
    Auto,
    Slices,
    Endpoints,
    /// Do not resolve: Service targets dial the Service's DNS name (its virtual IP).
    Off,
}

/// Runs the watches until the task is aborted.
pub async fn run(client: Client, registry: Arc<EndpointRegistry>, source: Source) {
    let source = match source {
        Source::Auto => {
            let slices: Api<EndpointSlice> = Api::all(client.clone());
            match slices
                .list(&kube::api::ListParams::default().limit(1))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 404 => Source::Endpoints,
                _ => Source::Slices,
            }
        }
        other => other,
    };
    tracing::info!(?source, "watching Services and their endpoints");
    let services = watch_kind(
        Api::<Service>::all(client.clone()),
        registry.clone(),
        ServiceHandler,
    );
    let endpoints = async {
        match source {
            Source::Endpoints => {
                watch_kind(
                    Api::<Endpoints>::all(client.clone()),
                    registry.clone(),
                    EndpointsHandler,
                )
                .await
            }
            _ => {
                watch_kind(
                    Api::<EndpointSlice>::all(client.clone()),
                    registry.clone(),
                    SliceHandler,
                )
                .await
            }
        }
    };
    tokio::join!(services, endpoints);
}

/// How one kind feeds the registry.
trait Handler<K>: Send + 'static {
    fn apply(&self, registry: &EndpointRegistry, object: &K);
    fn delete(&self, registry: &EndpointRegistry, object: &K);
    fn replace(&self, registry: &EndpointRegistry, objects: &[K]);
}

/// One watch; the registry counts as synced once Services and endpoints have both listed.
async fn watch_kind<K, H>(api: Api<K>, registry: Arc<EndpointRegistry>, handler: H)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    H: Handler<K>,
{
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| o.meta_mut().managed_fields = None);
    let mut stream = std::pin::pin!(stream);
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(object)) => listing.push(object),
            Ok(Event::InitDone) => {
                handler.replace(&registry, &std::mem::take(&mut listing));
                registry.kind_listed(std::any::type_name::<K>());
            }
            Ok(Event::Apply(object)) => handler.apply(&registry, &object),
            Ok(Event::Delete(object)) => handler.delete(&registry, &object),
            Err(error) => {
                tracing::warn!(%error, kind = std::any::type_name::<K>(), "endpoint watch failed; retrying")
            }
        }
    }
}

fn key_of<K: Resource>(object: &K, name: String) -> ServiceKey {
    (object.meta().namespace.clone().unwrap_or_default(), name)
}

struct ServiceHandler;

/// A Service's ports. ExternalName Services have no endpoints; they are left out, so routes
/// to them answer 503 "service not found" (use a `url:` target for an external name).
fn service_ports(service: &Service) -> Option<Vec<ServicePort>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    Some(
        spec.ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                })
            })
            .collect(),
    )
}

impl Handler<Service> for ServiceHandler {
    fn apply(&self, registry: &EndpointRegistry, object: &Service) {
        registry.set_service(key_of(object, object.name_any()), service_ports(object));
    }

    fn delete(&self, registry: &EndpointRegistry, object: &Service) {
        registry.set_service(key_of(object, object.name_any()), None);
    }

    fn replace(&self, registry: &EndpointRegistry, objects: &[Service]) {
        registry.replace_services(
            objects
                .iter()
                .filter_map(|s| Some((key_of(s, s.name_any()), service_ports(s)?)))
                .collect(),
        );
    }
}

struct SliceHandler;

/// The Service an EndpointSlice belongs to, and its ready endpoints.
fn slice_groups(slice: &EndpointSlice) -> Option<(ServiceKey, Vec<EndpointGroup>)> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
    if slice.address_type == "FQDN" {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let addresses = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect();
    Some((
        key_of(slice, service),
        vec![EndpointGroup { ports, addresses }],
    ))
}

impl Handler<EndpointSlice> for SliceHandler {
    fn apply(&self, registry: &EndpointRegistry, object: &EndpointSlice) {
        if let Some((key, groups)) = slice_groups(object) {
            registry.set_endpoints(key, object.name_any(), Some(groups));
        }
    }

    fn delete(&self, registry: &EndpointRegistry, object: &EndpointSlice) {
        if let Some((key, _)) = slice_groups(object) {
            registry.set_endpoints(key, object.name_any(), None);
        }
    }

    fn replace(&self, registry: &EndpointRegistry, objects: &[EndpointSlice]) {
        let mut all: HashMap<ServiceKey, BTreeMap<String, Vec<EndpointGroup>>> = HashMap::new();
        for slice in objects {
            if let Some((key, groups)) = slice_groups(slice) {
                all.entry(key).or_default().insert(slice.name_any(), groups);
            }
        }
        registry.replace_endpoints(all);
    }
}

struct EndpointsHandler;

/// `v1` Endpoints: one group per subset, ready addresses only (`addresses`, not
/// `notReadyAddresses`).
fn endpoints_groups(endpoints: &Endpoints) -> Vec<EndpointGroup> {
    endpoints
        .subsets
        .iter()
        .flatten()
        .map(|subset| EndpointGroup {
            ports: subset
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect(),
            addresses: subset
                .addresses
                .iter()
                .flatten()
                .filter_map(|a| a.ip.parse::<IpAddr>().ok())
                .collect(),
        })
        .collect()
}

impl Handler<Endpoints> for EndpointsHandler {
    fn apply(&self, registry: &EndpointRegistry, object: &Endpoints) {
        registry.set_endpoints(
            key_of(object, object.name_any()),
            String::new(),
            Some(endpoints_groups(object)),
        );
    }

    fn delete(&self, registry: &EndpointRegistry, object: &Endpoints) {
        registry.set_endpoints(key_of(object, object.name_any()), String::new(), None);
    }

    fn replace(&self, registry: &EndpointRegistry, objects: &[Endpoints]) {
        registry.replace_endpoints(
            objects
                .iter()
                .map(|e| {
                    (
                        key_of(e, e.name_any()),
                        BTreeMap::from([(String::new(), endpoints_groups(e))]),
                    )
                })
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slices_keep_ready_endpoints_and_name_their_service() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                          "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]}
            ]
        }))
        .unwrap();
        let (key, groups) = slice_groups(&slice).unwrap();
        assert_eq!(key, ("shop".to_string(), "web".to_string()));
        assert_eq!(
            groups,
            vec![EndpointGroup {
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 8080
                }],
                addresses: vec!["10.0.0.1".parse().unwrap(), "10.0.0.3".parse().unwrap()],
            }]
        );
    }

    #[test]
    fn endpoints_subsets_skip_not_ready_addresses() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{
                "addresses": [{"ip": "10.0.0.1"}],
                "notReadyAddresses": [{"ip": "10.0.0.9"}],
                "ports": [{"port": 8080}]
            }]
        }))
        .unwrap();
        assert_eq!(
            endpoints_groups(&endpoints),
            vec![EndpointGroup {
                ports: vec![ServicePort {
                    name: String::new(),
                    port: 8080
                }],
                addresses: vec!["10.0.0.1".parse().unwrap()],
            }]
        );
    }
}
