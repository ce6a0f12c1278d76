//! Orchestrates one compilation: policies first (routes reference them), then consumers,
//! then routes, then cross-route conflicts, then the generation hash.

mod annotations;
mod auth;
mod budgets;
mod cache;
mod conflicts;
mod consumer;
mod derived;
pub mod gateway;
pub mod ingress;
mod issues;
mod policy;
mod rate_limit;
mod route;
mod secrets;
mod tls;
mod waf;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube_meta::Meta;
use portcullis_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use portcullis_crds::{ApiRoute, ConsumerCredential, RateLimitPolicy, WafPolicy};
use sha2::{Digest, Sha256};

use crate::config::{GatewayConfig, ObjectKind};
use crate::ObjectStatus;
pub use cache::CompileCache;
pub use consumer::hash_api_key;
pub(crate) use issues::Issues;

/// Everything the compiler reads: the four kinds plus the Secrets they reference.
///
/// Objects are shared (`Arc`), as in kube's reflector stores: the operator hands the compiler
/// its cached objects without copying them (a deep copy of 110,000 objects took 0.3-0.9 s of
/// every compile).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub routes: Vec<Arc<ApiRoute>>,
    pub consumers: Vec<Arc<ConsumerCredential>>,
    pub rate_limit_policies: Vec<Arc<RateLimitPolicy>>,
    pub waf_policies: Vec<Arc<WafPolicy>>,
    pub secrets: Vec<Arc<Secret>>,
    /// Ingresses and IngressClasses: the Ingresses of a Portcullis class compile into routes.
    pub ingresses: Vec<Arc<Ingress>>,
    pub ingress_classes: Vec<Arc<IngressClass>>,
    /// Gateway API objects: HTTPRoutes attached to Gateways of a Portcullis GatewayClass
    /// compile into routes.
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// Seconds since the epoch at which time-dependent statuses are judged (a certificate
    /// outside its validity period gets a warning condition). The caller supplies it so
    /// that `compile` stays pure; `None` skips those warnings (golden tests).
    pub now_unix_secs: Option<i64>,
    /// Namespace rules: targets, catch-all routes, budgets ([`crate::tenancy`]). Host
    /// ownership and consumer scopes always apply.
    pub tenancy: crate::Tenancy,
}

/// Compiles a snapshot. Pure and deterministic: the same objects (and `now_unix_secs`) in
/// any order give the same config, statuses and generation id. The time only decides
/// certificate-validity warnings in statuses, never the config or its generation.
pub fn compile(snapshot: &Snapshot) -> (GatewayConfig, Vec<ObjectStatus>) {
    compile_cached(snapshot, &mut CompileCache::default())
}

/// [`compile`], reusing what `cache` kept from the previous compile where its inputs are
/// unchanged, and keeping what this one computed for the next.
pub fn compile_cached(
    snapshot: &Snapshot,
    cache: &mut CompileCache,
) -> (GatewayConfig, Vec<ObjectStatus>) {
    let secrets = secrets::SecretIndex::new(&snapshot.secrets);
    let mut statuses = Vec::new();
    let mut config = GatewayConfig::default();

    let policies = policy::compile_policies(snapshot, &secrets, &mut config, &mut statuses);
    let consumers = cache.consumer_section(snapshot, &secrets);

    let mut compiled_routes = Vec::new();
    let mut route_order = Vec::new();
    let mut route_secrets = Vec::new();
    let mut certificates = std::collections::BTreeMap::new();
    for (order, route) in sorted_with_order(&snapshot.routes) {
        let meta = Meta::of(&route.metadata);
        let mut issues = Issues::default();
        let compiled =
            route::compile_route(route, &meta, &policies, &snapshot.tenancy, &mut issues);
        let client_secret = auth::introspection_secret(route, &meta, &secrets, &mut issues);
        let route_tls =
            tls::compile_route_tls(route, &meta, &secrets, snapshot.now_unix_secs, &mut issues);
        let mut compiled = compiled.filter(|_| issues.is_accepted());
        if let Some(compiled) = compiled.as_mut() {
            route_tls.apply(compiled);
        }
        certificates.extend(route_tls.certificate);
        route_secrets.extend(client_secret);
        route_order.push((order, route.spec.share_hosts_with.as_slice()));
        compiled_routes.push((meta, compiled, issues));
    }
    // Ingresses and HTTPRoutes: routes derived from them go through the same steps.
    let mut sources = derived::Sources::default();
    let mut derived_routes = Vec::new();
    ingress::derive(
        &sorted(&snapshot.ingresses),
        &sorted(&snapshot.ingress_classes),
        &mut sources,
        &mut derived_routes,
    );
    gateway::derive(
        &gateway::Inputs {
            classes: sorted(&snapshot.gateway_classes),
            gateways: sorted(&snapshot.gateways),
            routes: sorted(&snapshot.http_routes),
            grants: &snapshot.reference_grants,
            secrets: &snapshot.secrets,
        },
        &mut sources,
        &mut derived_routes,
    );
    let first_derived = compiled_routes.len();
    for (i, derived) in derived_routes.iter().enumerate() {
        let route = &derived.route;
        let meta = Meta::of(&route.metadata);
        let mut issues = Issues::default();
        let compiled =
            route::compile_route(route, &meta, &policies, &snapshot.tenancy, &mut issues);
        let client_secret = auth::introspection_secret(route, &meta, &secrets, &mut issues);
        let tls_meta = match &derived.tls_namespace {
            Some(namespace) => Meta {
                namespace: namespace.clone(),
                ..meta.clone()
            },
            None => meta.clone(),
        };
        let route_tls = tls::compile_route_tls(
            route,
            &tls_meta,
            &secrets,
            snapshot.now_unix_secs,
            &mut issues,
        );
        let mut compiled = compiled.filter(|_| issues.is_accepted());
        if let Some(compiled) = compiled.as_mut() {
            route_tls.apply(compiled);
            derived.finish(compiled);
        }
        certificates.extend(route_tls.certificate);
        route_secrets.extend(client_secret);
        // After every ApiRoute in input order; ownership goes by creation time first.
        route_order.push((
            snapshot.routes.len() + i,
            route.spec.share_hosts_with.as_slice(),
        ));
        compiled_routes.push((meta, compiled, issues));
    }
    // Tenancy before conflicts (Ingresses and HTTPRoutes included): a route refused on another namespace's host must not
    // count as a conflict winner, and the owner's routes never change.
    mark_host_refusals(&mut compiled_routes, &route_order, &snapshot.tenancy);
    budgets::mark_route_budgets(
        &mut compiled_routes,
        &route_order,
        &snapshot.tenancy.budgets,
        &consumers.bytes_by_namespace,
    );
    conflicts::mark_conflicts(&mut compiled_routes);
    tls::mark_tls_conflicts(&mut compiled_routes);
    let derived_compiled = compiled_routes.split_off(first_derived);
    for (meta, compiled, issues) in compiled_routes {
        let accepted = issues.is_accepted();
        statuses.push(issues.into_status(ObjectKind::ApiRoute, &meta));
        if let (true, Some(route)) = (accepted, compiled) {
            config.objects.push(meta.object_ref(ObjectKind::ApiRoute));
            config.routes.push(route);
        }
    }
    for ((_, compiled, issues), derived) in derived_compiled.into_iter().zip(&derived_routes) {
        let source = &mut sources.items[derived.source];
        let accepted = issues.is_accepted();
        source.issues.absorb(issues, &derived.origin);
        if let (true, Some(route)) = (accepted, compiled) {
            source.served = true;
            config.routes.push(route);
        }
    }
    statuses.extend(sources.into_statuses());
    // Only routes that made it into the config keep their client secrets.
    route_secrets.retain(|s: &crate::config::ClientSecretEntry| {
        config.routes.iter().any(|r| r.id == s.route)
    });
    config.secrets.introspection_secrets = route_secrets;
    // Certificates are delivered once per Secret, and only for routes that are served.
    for (id, material) in certificates {
        let used = config.routes.iter().any(|r| {
            r.tls
                .as_ref()
                .is_some_and(|t: &crate::config::RouteTlsConfig| t.certificate == id)
        });
        if used {
            config
                .tls_certificates
                .push(crate::config::TlsCertificateConfig {
                    id: id.clone(),
                    chain_pem: material.chain_pem,
                });
            config.secrets.tls_keys.push(crate::config::TlsKeyEntry {
                id,
                key_pem: material.key_pem,
            });
        }
    }

    config.objects.sort();
    statuses.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    config.generation = generation_of(&config, &consumers.digest);
    let mut secret_half = Sha256::new();
    secret_half.update(consumers.digest);
    hash_json(&mut secret_half, &config.secrets);
    cache.secret_half = Some(secret_half.finalize().into());
    config.consumers = consumers.consumers.clone();
    config.secrets.api_keys = consumers.api_keys.clone();
    config.secrets.jwt_secrets = consumers.jwt_secrets.clone();
    config.secrets.disabled_oauth2_client_ids = consumers.disabled_oauth2_client_ids.clone();
    // Consumers sort between routes and policies in both lists (kind first).
    let at = config
        .objects
        .partition_point(|o| o.kind < ObjectKind::ConsumerCredential);
    config
        .objects
        .splice(at..at, consumers.objects.iter().cloned());
    let at = statuses.partition_point(|s| s.kind < ObjectKind::ConsumerCredential);
    statuses.splice(at..at, consumers.statuses.iter().cloned());
    (config, statuses)
}

/// Applies [`crate::tenancy::decide_hosts`] to the routes that are otherwise accepted.
fn mark_host_refusals(
    routes: &mut [(Meta, Option<crate::config::RouteConfig>, Issues)],
    order: &[(usize, &[String])],
    tenancy: &crate::Tenancy,
) {
    let mut claims = Vec::new();
    let mut positions = Vec::new();
    for (i, ((meta, compiled, issues), (input_order, share))) in
        routes.iter().zip(order).enumerate()
    {
        let Some(route) = compiled.as_ref().filter(|_| issues.is_accepted()) else {
            continue;
        };
        claims.push(crate::tenancy::HostClaim {
            namespace: &meta.namespace,
            created: meta.created.map(|t| t.as_second()),
            order: *input_order,
            hosts: &route.hosts,
            share_with: share,
        });
        positions.push(i);
    }
    let verdicts = crate::tenancy::decide_hosts(&claims, tenancy);
    drop(claims);
    for (i, verdict) in positions.into_iter().zip(verdicts) {
        if let Err(refusal) = verdict {
            routes[i].2.refused(
                crate::Reason::HostNotAllowed,
                "spec.hosts",
                refusal.message(),
            );
        }
    }
}

/// [`sorted`], with each object's position in the input (file order in standalone mode,
/// which decides host ownership there).
fn sorted_with_order<K: kube_meta::HasMeta>(objects: &[Arc<K>]) -> Vec<(usize, &K)> {
    let mut refs: Vec<(usize, &K)> = objects.iter().map(|o| &**o).enumerate().collect();
    refs.sort_by(|(_, a), (_, b)| {
        let (ma, mb) = (a.meta(), b.meta());
        (ma.namespace.as_deref(), ma.name.as_deref())
            .cmp(&(mb.namespace.as_deref(), mb.name.as_deref()))
    });
    refs
}

/// Objects sorted by namespace and name, so that input order never changes the output.
fn sorted<K: kube_meta::HasMeta>(objects: &[Arc<K>]) -> Vec<&K> {
    let mut refs: Vec<&K> = objects.iter().map(|o| &**o).collect();
    refs.sort_by(|a, b| {
        let (ma, mb) = (a.meta(), b.meta());
        (ma.namespace.as_deref(), ma.name.as_deref())
            .cmp(&(mb.namespace.as_deref(), mb.name.as_deref()))
    });
    refs
}

/// The first 16 hex digits of the SHA-256 of the config's parts: the canonical JSON of each,
/// except the consumers' part, which enters as its own digest (computed once per consumer
/// change, not once per compile). Called before the consumers' part joins `config`.
fn generation_of(config: &GatewayConfig, consumers: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hash_json(&mut hasher, &config.routes);
    hasher.update(consumers);
    hash_json(&mut hasher, &config.objects);
    hash_json(&mut hasher, &config.secrets);
    // Only when present, so configs without policies keep their generation ids.
    if !config.rate_limit_policies.is_empty() {
        hash_json(&mut hasher, &config.rate_limit_policies);
    }
    if !config.tls_certificates.is_empty() {
        hash_json(&mut hasher, &config.tls_certificates);
    }
    if !config.waf_policies.is_empty() {
        hash_json(&mut hasher, &config.waf_policies);
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..8])
}

/// Streams a part's JSON into the hash: at 100k consumers it is tens of MB that need not
/// exist. Serializing plain data into a hasher cannot fail; an error would only hash less.
fn hash_json(hasher: &mut Sha256, part: &impl serde::Serialize) {
    let _ = serde_json::to_writer(hasher, part);
}

/// Object metadata helpers shared by the compile steps.
mod kube_meta {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::config::{ObjectKind, ObjectRef};

    pub trait HasMeta {
        fn meta(&self) -> &ObjectMeta;
    }

    macro_rules! has_meta {
        ($($t:ty),*) => {$(impl HasMeta for $t {
            fn meta(&self) -> &ObjectMeta { &self.metadata }
        })*};
    }
    has_meta!(
        portcullis_crds::ApiRoute,
        portcullis_crds::ConsumerCredential,
        portcullis_crds::RateLimitPolicy,
        portcullis_crds::WafPolicy,
        k8s_openapi::api::networking::v1::Ingress,
        k8s_openapi::api::networking::v1::IngressClass,
        portcullis_crds::gateway::GatewayClass,
        portcullis_crds::gateway::Gateway,
        portcullis_crds::gateway::HTTPRoute
    );

    /// Namespace, name, generation and creation time of one object.
    #[derive(Debug, Clone)]
    pub struct Meta {
        pub namespace: String,
        pub name: String,
        pub generation: Option<i64>,
        /// `None` in standalone mode. Older objects win conflicts. Kept as a timestamp:
        /// formatting it for every object cost more than the rest of a consumer's metadata.
        pub created: Option<k8s_openapi::jiff::Timestamp>,
    }

    impl Meta {
        pub fn of(meta: &ObjectMeta) -> Self {
            Meta {
                namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                name: meta.name.clone().unwrap_or_default(),
                generation: meta.generation,
                created: meta.creation_timestamp.as_ref().map(|t| t.0),
            }
        }

        pub fn id(&self) -> String {
            format!("{}/{}", self.namespace, self.name)
        }

        /// The object a route comes from, for messages: `ApiRoute ns/name`, or the Ingress
        /// or HTTPRoute a derived route (`ingress:NAME:...`) was made from.
        pub fn describe(&self) -> String {
            let mut parts = self.name.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("ingress"), Some(name), Some(_)) => {
                    format!("Ingress {}/{name}", self.namespace)
                }
                (Some("httproute"), Some(name), Some(_)) => {
                    format!("HTTPRoute {}/{name}", self.namespace)
                }
                _ => format!("ApiRoute {}", self.id()),
            }
        }

        pub fn object_ref(&self, kind: ObjectKind) -> ObjectRef {
            ObjectRef {
                kind,
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                generation: self.generation,
            }
        }
    }
}
