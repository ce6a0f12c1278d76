//! `networking.k8s.io/v1` Ingress → derived routes, one per rule path (plus the default
//! backend), compiled like ApiRoutes.
//!
//! An Ingress is Portcullis' when its `spec.ingressClassName` names an IngressClass whose
//! controller is [`INGRESS_CONTROLLER`], when its legacy `kubernetes.io/ingress.class`
//! annotation names one, or when it names no class and one of ours is the cluster default.
//! Every other Ingress is ignored: no routes, no status.
//!
//! Path types: `Exact` is exact; `Prefix` is Portcullis' segment-aware prefix, which is the
//! Ingress definition (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`; a trailing slash
//! is ignored); `ImplementationSpecific` is the same as `Prefix`.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use portcullis_crds::{ApiRouteSpec, PathMatch, PathMatchType, RouteTls, ServiceTarget};

use super::annotations::{self, On};
use super::derived::{no_backend_upstream, DerivedRoute, Sources};
use super::kube_meta::Meta;
use super::route::service_target;
use crate::config::{ObjectKind, TargetConfig};

/// `spec.controller` of the IngressClasses Portcullis serves.
pub const INGRESS_CONTROLLER: &str = "portcullis.dev/ingress-controller";
/// The legacy class annotation (deprecated by Kubernetes, still widely used).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Names of our IngressClasses, and whether one of them is the default.
fn our_classes(classes: &[&IngressClass]) -> (Vec<String>, bool) {
    let mut names = Vec::new();
    let mut default = false;
    for class in classes {
        let ours =
            class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER);
        if !ours {
            continue;
        }
        names.push(class.metadata.name.clone().unwrap_or_default());
        default |= class
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true");
    }
    (names, default)
}

fn is_ours(ingress: &Ingress, classes: &[String], default: bool) -> bool {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
                .map(String::as_str)
        });
    match named {
        Some(name) => classes.iter().any(|c| c == name),
        None => default,
    }
}

/// Derives the routes of every Ingress of ours.
pub(crate) fn derive(
    ingresses: &[&Ingress],
    classes: &[&IngressClass],
    sources: &mut Sources,
    out: &mut Vec<DerivedRoute>,
) {
    let (names, default) = our_classes(classes);
    for ingress in ingresses {
        if !is_ours(ingress, &names, default) {
            continue;
        }
        let meta = Meta::of(&ingress.metadata);
        let source = sources.add(ObjectKind::Ingress, meta.clone());
        derive_one(ingress, &meta, source, sources, out);
    }
}

fn derive_one(
    ingress: &Ingress,
    meta: &Meta,
    source: usize,
    sources: &mut Sources,
    out: &mut Vec<DerivedRoute>,
) {
    let issues = &mut sources.items[source].issues;
    let spec = ingress.spec.clone().unwrap_or_default();
    let mut fields =
        annotations::fields(ingress.metadata.annotations.as_ref(), On::Ingress, issues);
    // TLS annotations apply to the hosts of spec.tls, not to every route.
    let take = |fields: &mut Vec<(&str, serde_json::Value)>, pointer: &str| {
        let at = fields.iter().position(|(p, _)| *p == pointer)?;
        Some(fields.remove(at).1)
    };
    let ssl_redirect = take(&mut fields, "/tls/redirectHttp").and_then(|v| v.as_bool());
    let min_version =
        take(&mut fields, "/tls/minVersion").and_then(|v| v.as_str().map(str::to_string));
    let Some(base) = annotations::apply(&ApiRouteSpec::default(), &fields, issues) else {
        return;
    };
    let upstream_tls = base.upstream.tls.is_some();

    // TLS Secrets by host; a TLS entry without hosts applies to rules without a host.
    let mut tls_by_host: BTreeMap<String, String> = BTreeMap::new();
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        let Some(secret) = tls.secret_name.clone().filter(|s| !s.is_empty()) else {
            // Without a Secret the entry means "TLS by the controller's default
            // certificate", which Portcullis does not have.
            issues.unsupported(
                &format!("spec.tls[{i}].secretName"),
                "required: Portcullis has no default certificate",
            );
            continue;
        };
        for host in tls.hosts.iter().flatten() {
            tls_by_host
                .entry(host.to_ascii_lowercase())
                .or_insert_with(|| secret.clone());
        }
    }

    let whole_object_ok = issues.is_accepted();
    let mut paths: Vec<(String, Option<String>, PathMatch, &IngressBackend)> = Vec::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.clone().filter(|h| !h.is_empty());
        let Some(http) = &rule.http else { continue };
        for (p, path) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{r}].http.paths[{p}]");
            let value = path.path.clone().unwrap_or_else(|| "/".into());
            let type_ = match path.path_type.as_str() {
                "Exact" => PathMatchType::Exact,
                "Prefix" | "ImplementationSpecific" => PathMatchType::Prefix,
                other => {
                    issues.invalid(
                        &format!("{field}.pathType"),
                        format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                    );
                    continue;
                }
            };
            paths.push((
                format!("{r}-{p}"),
                host.clone(),
                PathMatch { type_, value },
                &path.backend,
            ));
        }
    }
    if let Some(backend) = &spec.default_backend {
        // Requests no rule matches: any host, any path; every more specific route wins.
        paths.push((
            "default".into(),
            None,
            PathMatch {
                type_: PathMatchType::Prefix,
                value: "/".into(),
            },
            backend,
        ));
    }
    if paths.is_empty() {
        issues.invalid(
            "spec",
            "no rule with paths and no defaultBackend: nothing to serve",
        );
    }
    // A problem of the whole Ingress (an annotation, a TLS entry) keeps all of it out: its
    // policies or certificates would otherwise be silently missing. A problem of one path
    // keeps out only that path.
    if !whole_object_ok {
        return;
    }

    for (suffix, host, path, backend) in paths {
        let origin = if suffix == "default" {
            "spec.defaultBackend".to_string()
        } else {
            let (r, p) = suffix.split_once('-').unwrap_or(("0", "0"));
            format!("spec.rules[{r}].http.paths[{p}]")
        };
        let issues = &mut sources.items[source].issues;
        let targets = match backend_target(backend, &meta.namespace, upstream_tls) {
            Ok(target) => vec![target],
            Err(message) => {
                issues.invalid(&format!("{origin}.backend"), message);
                continue;
            }
        };
        let mut spec = base.clone();
        spec.hosts = host.iter().cloned().collect();
        spec.paths = vec![path];
        spec.upstream.targets = Vec::new();
        spec.upstream.direct_response = no_backend_upstream().direct_response;
        let secret = match &host {
            Some(h) => tls_by_host.get(&h.to_ascii_lowercase()),
            None => None,
        };
        spec.tls = match secret {
            Some(secret) => Some(RouteTls {
                secret_name: secret.clone(),
                min_version: min_version.clone(),
                client_auth: None,
                redirect_http: ssl_redirect,
            }),
            None => {
                if ssl_redirect == Some(true) {
                    issues.invalid(
                        &format!("metadata.annotations[{}ssl-redirect]", annotations::PREFIX),
                        format!("{origin}: the host is not in spec.tls"),
                    );
                    continue;
                }
                None
            }
        };
        let name = format!("ingress:{}:{suffix}", meta.name);
        let mut derived =
            DerivedRoute::new(source, &ingress.metadata, name, format!("{origin}: "), spec);
        derived.targets = Some(targets);
        out.push(derived);
    }
}

/// An Ingress backend: a Service in the Ingress' namespace, by port number or name.
fn backend_target(
    backend: &IngressBackend,
    namespace: &str,
    tls: bool,
) -> Result<TargetConfig, String> {
    if backend.resource.is_some() {
        return Err("resource backends are not supported; use a Service".into());
    }
    let service = backend
        .service
        .as_ref()
        .ok_or("a Service backend is required")?;
    let port = service.port.clone().unwrap_or_default();
    let target = ServiceTarget {
        name: service.name.clone(),
        port: match port.number {
            Some(n) => u16::try_from(n).map_err(|_| format!("port {n} is out of range"))?,
            None => 0,
        },
        port_name: port.name.clone(),
    };
    let (url, service) = service_target(&target, namespace, tls)?;
    Ok(TargetConfig {
        url,
        weight: 1,
        service,
    })
}
