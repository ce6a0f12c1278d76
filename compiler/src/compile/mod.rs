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
mod generation;
pub mod ingress;
pub(crate) mod issues;
mod kube_meta;
mod policy;
mod rate_limit;
mod redis_backend;
mod route;
mod secrets;
mod snapshot;
mod tls;
mod validators;
mod waf;

use sha2::{Digest, Sha256};

use crate::config::{GatewayConfig, ObjectKind};
use crate::ObjectStatus;
use generation::{generation_of, hash_json};
use issues::Issues;
use kube_meta::{sorted, sorted_with_order, Meta};

pub use cache::CompileCache;
pub use consumer::hash_api_key;
pub use snapshot::Snapshot;

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
