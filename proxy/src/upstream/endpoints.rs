//! Ready endpoints of Services, for `service:` targets in cluster mode.
//!
//! A Service's virtual IP hides its pods: behind it kube-proxy picks a pod at random, so
//! weights, LeastRequest, ConsistentHash and passive health would act on one address. The
//! proxy therefore watches Services and their endpoints itself
//! ([`crate::cluster::endpoints`]) and balances over the pods.
//!
//! The registry holds what the watches saw and, per Service, the upstreams that use it
//! (weakly). A change of one Service's endpoints rebuilds only those upstreams' target sets
//! and swaps them in ([`Subscriber`], an upstream's target set): no config is reloaded and no route
//! recompiled. The request path never touches the registry or its lock; it loads the
//! upstream's current set through an `ArcSwap`.
//!
//! While the registry is disabled (standalone mode, `--endpoints-source off`) Service
//! targets dial the Service's DNS name, as `url:` targets always do.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use portcullis_compiler::config::ServiceBackendConfig;
use tokio::sync::watch;

/// `namespace`, `name` of a Service.
pub type ServiceKey = (String, String);

/// The ready addresses of a Service port, as an endpoint change hands them to subscribers.
pub type Resolver<'a> = dyn Fn(&ServiceBackendConfig) -> Result<Vec<SocketAddr>, EndpointGap> + 'a;

/// What an endpoint change rebuilds: an upstream's target set. A trait, so this registry
/// needs nothing from the upstream that subscribes to it.
pub trait Subscriber: Send + Sync {
    fn rebuild(&self, resolve: &Resolver<'_>);
}

/// One Service port: its name (`""` when unnamed) and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
}

/// Ready addresses that share one set of ports (an EndpointSlice, or an Endpoints subset).
/// Ports are named like the Service's ports, which is how a Service port finds its target
/// port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointGroup {
    pub ports: Vec<ServicePort>,
    pub addresses: Vec<IpAddr>,
}

/// Why a Service target has no address to send to; the request gets a 503 saying which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointGap {
    ServiceNotFound,
    PortNotFound,
    NoReadyEndpoints,
}

impl EndpointGap {
    /// The message of the 503: fixed text, no names or addresses.
    pub fn message(self) -> &'static str {
        match self {
            EndpointGap::ServiceNotFound => "upstream service not found",
            EndpointGap::PortNotFound => "upstream service has no such port",
            EndpointGap::NoReadyEndpoints => "upstream service has no ready endpoints",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            EndpointGap::ServiceNotFound => "service_not_found",
            EndpointGap::PortNotFound => "service_port_not_found",
            EndpointGap::NoReadyEndpoints => "no_ready_endpoints",
        }
    }
}

#[derive(Default)]
struct State {
    enabled: bool,
    services: HashMap<ServiceKey, Vec<ServicePort>>,
    /// Endpoint groups by Service, then by the object they came from (slice name).
    endpoints: HashMap<ServiceKey, BTreeMap<String, Vec<EndpointGroup>>>,
    subscribers: HashMap<ServiceKey, Vec<Weak<dyn Subscriber>>>,
    /// Kinds whose watch has listed once (Services, and EndpointSlices or Endpoints).
    listed: Vec<&'static str>,
}

/// Services plus one endpoint kind.
const KINDS_TO_LIST: usize = 2;

/// What the endpoint watches know, and who to tell when it changes.
pub struct EndpointRegistry {
    state: Mutex<State>,
    synced: watch::Sender<bool>,
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        EndpointRegistry {
            state: Mutex::new(State::default()),
            synced: watch::Sender::new(false),
        }
    }
}

/// The registry's state while locked: what an upstream reads to build its targets.
pub struct View<'a> {
    state: MutexGuard<'a, State>,
}

impl View<'_> {
    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    /// The ready addresses of a Service port, sorted, without duplicates.
    pub fn resolve(&self, backend: &ServiceBackendConfig) -> Result<Vec<SocketAddr>, EndpointGap> {
        resolve(&self.state, backend)
    }

    /// Registers `cell` to be rebuilt when `key`'s Service or endpoints change.
    pub fn subscribe<S: Subscriber + 'static>(&mut self, key: ServiceKey, cell: &Arc<S>) {
        let list = self.state.subscribers.entry(key).or_default();
        list.retain(|w| w.strong_count() > 0);
        let weak: Weak<dyn Subscriber> = Arc::<S>::downgrade(cell);
        list.push(weak);
    }
}

fn resolve(state: &State, backend: &ServiceBackendConfig) -> Result<Vec<SocketAddr>, EndpointGap> {
    let key = (backend.namespace.clone(), backend.name.clone());
    let ports = state
        .services
        .get(&key)
        .ok_or(EndpointGap::ServiceNotFound)?;
    let service_port = ports
        .iter()
        .find(|p| match &backend.port_name {
            Some(name) => &p.name == name,
            None => p.port == backend.port,
        })
        .ok_or(EndpointGap::PortNotFound)?;
    let mut addresses: Vec<SocketAddr> = state
        .endpoints
        .get(&key)
        .into_iter()
        .flat_map(|by_source| by_source.values().flatten())
        .filter_map(|group| {
            let target = group.ports.iter().find(|p| p.name == service_port.name)?;
            Some(
                group
                    .addresses
                    .iter()
                    .map(move |ip| SocketAddr::new(*ip, target.port)),
            )
        })
        .flatten()
        .collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(EndpointGap::NoReadyEndpoints);
    }
    Ok(addresses)
}

impl EndpointRegistry {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn view(&self) -> View<'_> {
        View { state: self.lock() }
    }

    /// From now on Service targets resolve to endpoints. Called before any config that
    /// could use them is built.
    pub fn enable(&self) {
        self.lock().enabled = true;
    }

    pub fn is_enabled(&self) -> bool {
        self.lock().enabled
    }

    /// A watch has listed its kind; once every kind has, the registry is synced.
    pub fn kind_listed(&self, kind: &'static str) {
        let mut state = self.lock();
        if !state.listed.contains(&kind) {
            state.listed.push(kind);
        }
        if state.listed.len() >= KINDS_TO_LIST {
            self.synced.send_replace(true);
        }
    }

    /// Waits (at most `limit`) until the first lists are in, so that the first config does
    /// not answer 503 for Services whose endpoints are merely not listed yet.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let mut rx = self.synced.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|synced| *synced))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// One Service's ports; `None` when it was deleted.
    pub fn set_service(&self, key: ServiceKey, ports: Option<Vec<ServicePort>>) {
        let mut state = self.lock();
        let changed = match ports {
            Some(ports) => state.services.insert(key.clone(), ports.clone()) != Some(ports),
            None => state.services.remove(&key).is_some(),
        };
        if changed {
            rebuild(&mut state, std::slice::from_ref(&key));
        }
    }

    /// Every Service, after a (re)list: what is not in `services` is gone.
    pub fn replace_services(&self, services: HashMap<ServiceKey, Vec<ServicePort>>) {
        let mut state = self.lock();
        let changed = changed_keys(&state.services, &services);
        state.services = services;
        rebuild(&mut state, &changed);
    }

    /// The endpoint groups one object (`source`) holds for a Service; `None` when deleted.
    pub fn set_endpoints(
        &self,
        key: ServiceKey,
        source: String,
        groups: Option<Vec<EndpointGroup>>,
    ) {
        let mut state = self.lock();
        let by_source = state.endpoints.entry(key.clone()).or_default();
        let changed = match groups {
            Some(groups) => by_source.insert(source, groups.clone()) != Some(groups),
            None => by_source.remove(&source).is_some(),
        };
        if by_source.is_empty() {
            state.endpoints.remove(&key);
        }
        if changed {
            rebuild(&mut state, std::slice::from_ref(&key));
        }
    }

    /// Every endpoint object, after a (re)list.
    pub fn replace_endpoints(
        &self,
        endpoints: HashMap<ServiceKey, BTreeMap<String, Vec<EndpointGroup>>>,
    ) {
        let mut state = self.lock();
        let changed = changed_keys(&state.endpoints, &endpoints);
        state.endpoints = endpoints;
        rebuild(&mut state, &changed);
    }
}

fn changed_keys<V: PartialEq>(
    before: &HashMap<ServiceKey, V>,
    after: &HashMap<ServiceKey, V>,
) -> Vec<ServiceKey> {
    let mut keys: Vec<ServiceKey> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Rebuilds the target sets of the upstreams that use these Services (each once).
fn rebuild(state: &mut State, keys: &[ServiceKey]) {
    let mut cells: Vec<Arc<dyn Subscriber>> = Vec::new();
    for key in keys {
        if let Some(list) = state.subscribers.get_mut(key) {
            list.retain(|w| w.strong_count() > 0);
            cells.extend(list.iter().filter_map(Weak::upgrade));
        }
    }
    cells.sort_by_key(|c| Arc::as_ptr(c).cast::<()>() as usize);
    cells.dedup_by_key(|c| Arc::as_ptr(c).cast::<()>() as usize);
    for cell in cells {
        cell.rebuild(&|backend| resolve(state, backend));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn backend(port: u16, name: Option<&str>) -> ServiceBackendConfig {
        ServiceBackendConfig {
            namespace: "ns".into(),
            name: "web".into(),
            port,
            port_name: name.map(str::to_string),
        }
    }

    fn port(name: &str, port: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
        }
    }

    #[test]
    fn service_ports_find_target_ports_by_name() {
        let registry = EndpointRegistry::default();
        let key: ServiceKey = ("ns".into(), "web".into());
        assert_eq!(
            registry.view().resolve(&backend(80, None)),
            Err(EndpointGap::ServiceNotFound)
        );
        registry.set_service(
            key.clone(),
            Some(vec![port("http", 80), port("admin", 9000)]),
        );
        assert_eq!(
            registry.view().resolve(&backend(81, None)),
            Err(EndpointGap::PortNotFound)
        );
        assert_eq!(
            registry.view().resolve(&backend(80, None)),
            Err(EndpointGap::NoReadyEndpoints)
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        registry.set_endpoints(
            key.clone(),
            "web-abc".into(),
            Some(vec![EndpointGroup {
                ports: vec![port("http", 8080), port("admin", 9901)],
                addresses: vec![ip("10.0.0.2"), ip("10.0.0.1")],
            }]),
        );
        registry.set_endpoints(
            key.clone(),
            "web-def".into(),
            Some(vec![EndpointGroup {
                ports: vec![port("http", 8081)],
                addresses: vec![ip("10.0.0.3")],
            }]),
        );
        let addrs = |b| {
            registry
                .view()
                .resolve(&b)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            addrs(backend(80, None)),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8081"]
        );
        assert_eq!(
            addrs(backend(0, Some("admin"))),
            ["10.0.0.1:9901", "10.0.0.2:9901"]
        );
        registry.set_endpoints(key.clone(), "web-abc".into(), None);
        assert_eq!(addrs(backend(80, None)), ["10.0.0.3:8081"]);
        registry.replace_endpoints(HashMap::new());
        assert_eq!(
            registry.view().resolve(&backend(80, None)),
            Err(EndpointGap::NoReadyEndpoints)
        );
    }

    #[test]
    fn an_unnamed_service_port_matches_unnamed_endpoint_ports() {
        let registry = EndpointRegistry::default();
        let key: ServiceKey = ("ns".into(), "web".into());
        registry.set_service(key.clone(), Some(vec![port("", 80)]));
        registry.set_endpoints(
            key,
            "web-x".into(),
            Some(vec![EndpointGroup {
                ports: vec![port("", 3000)],
                addresses: vec!["fd00::1".parse().unwrap()],
            }]),
        );
        let got = registry.view().resolve(&backend(80, None)).unwrap();
        assert_eq!(got, vec!["[fd00::1]:3000".parse::<SocketAddr>().unwrap()]);
    }
}
