//! Gateway API (`gateway.networking.k8s.io/v1`) → derived routes, compiled like ApiRoutes.
//!
//! - A GatewayClass is ours when its `controllerName` is [`GATEWAY_CONTROLLER`]; a Gateway
//!   when its class is ours; an HTTPRoute for each parent Gateway of ours. Nothing is
//!   written for other controllers' objects.
//! - Listeners: `HTTP` and `HTTPS` (TLS `Terminate` with one Secret, in the Gateway's
//!   namespace or granted by a ReferenceGrant). Every listener is served by the proxies'
//!   own listeners: the listener port is what the proxy Service exposes, not a new socket.
//! - `allowedRoutes`: namespaces `Same` and `All` (`Selector` is refused: Portcullis does
//!   not watch Namespaces), kinds `HTTPRoute`.
//! - Each rule match becomes one route: path (`PathPrefix`, `Exact`, `RegularExpression`),
//!   method, headers and query parameters (`Exact`); hostnames are the intersection of the
//!   route's and the listener's.
//! - Filters: `RequestHeaderModifier`, `ResponseHeaderModifier`, `URLRewrite` (path),
//!   `RequestRedirect`, and `ExtensionRef` to a Portcullis `WafPolicy` or
//!   `RateLimitPolicy` (policy attachment); other policies by the annotations of
//!   [`super::annotations`].
//! - `backendRefs`: Services with weights; in another namespace only with a ReferenceGrant,
//!   otherwise `ResolvedRefs=False` (`RefNotPermitted`) and the backend is left out. A rule
//!   without a usable backend answers 500, as the spec asks.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use portcullis_crds::gateway::{
    Gateway, GatewayClass, HTTPHeaderFilter, HTTPPathModifier, HTTPRoute, HTTPRouteFilter,
    HTTPRouteMatch, Listener, ParentReference, ReferenceGrant, RouteGroupKind, GATEWAY_GROUP,
};
use portcullis_crds::{ApiRouteSpec, NameValue, PathMatch, PathMatchType, RouteTls, ServiceTarget};

use super::annotations::{self, On};
use super::derived::{no_backend_upstream, DerivedRoute, Section, Sources};
use super::issues::Issues;
use super::kube_meta::Meta;
use super::route::service_target;
use super::validators::is_token;
use crate::config::{HeaderMatch, ObjectKind, RedirectConfig, RequestHeadersConfig, TargetConfig};
use crate::{ConditionOut, Reason, SectionStatus};

/// `controllerName` of the GatewayClasses Portcullis serves.
pub const GATEWAY_CONTROLLER: &str = "portcullis.dev/gateway-controller";

/// The inputs of the Gateway API translation.
pub(crate) struct Inputs<'a> {
    pub classes: Vec<&'a GatewayClass>,
    pub gateways: Vec<&'a Gateway>,
    pub routes: Vec<&'a HTTPRoute>,
    pub grants: &'a [std::sync::Arc<ReferenceGrant>],
    pub secrets: &'a [std::sync::Arc<Secret>],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Https,
}

struct ListenerInfo {
    name: String,
    hostname: Option<String>,
    port: i32,
    protocol: Protocol,
    /// The TLS Secret (namespace, name) of an HTTPS listener.
    certificate: Option<(String, String)>,
    all_namespaces: bool,
    /// Accepted and its references resolved: routes may attach.
    usable: bool,
    attached: i32,
    conditions: Vec<ConditionOut>,
}

struct GatewayInfo {
    source: usize,
    namespace: String,
    listeners: Vec<ListenerInfo>,
}

fn cond(type_: &str, status: bool, reason: Reason, message: impl Into<String>) -> ConditionOut {
    super::issues::condition(type_, status, reason, message.into())
}

/// Whether a ReferenceGrant in `to_namespace` lets `from_kind` objects of `from_namespace`
/// refer to the `to_group`/`to_kind` object `to_name`.
fn granted(
    grants: &[std::sync::Arc<ReferenceGrant>],
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    grants.iter().any(|grant| {
        grant.metadata.namespace.as_deref() == Some(to_namespace)
            && grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_namespace
            })
            && grant.spec.to.iter().any(|t| {
                t.group == to_group
                    && t.kind == to_kind
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            })
    })
}

pub(crate) fn derive(inputs: &Inputs<'_>, sources: &mut Sources, out: &mut Vec<DerivedRoute>) {
    let mut classes = BTreeSet::new();
    for class in &inputs.classes {
        if class.spec.controller_name != GATEWAY_CONTROLLER {
            continue;
        }
        let mut meta = Meta::of(&class.metadata);
        meta.namespace = String::new();
        sources.add(ObjectKind::GatewayClass, meta);
        classes.insert(class.metadata.name.clone().unwrap_or_default());
    }

    let mut gateways: BTreeMap<(String, String), GatewayInfo> = BTreeMap::new();
    for gateway in &inputs.gateways {
        if !classes.contains(&gateway.spec.gateway_class_name) {
            continue;
        }
        let meta = Meta::of(&gateway.metadata);
        let source = sources.add(ObjectKind::Gateway, meta.clone());
        let listeners = gateway
            .spec
            .listeners
            .iter()
            .map(|l| listener_info(l, &meta.namespace, inputs))
            .collect::<Vec<_>>();
        if !listeners.iter().any(|l| l.usable) {
            sources.items[source].issues.refuse(
                Reason::ListenersNotValid,
                "spec.listeners",
                "no listener is valid",
            );
        }
        gateways.insert(
            (meta.namespace.clone(), meta.name.clone()),
            GatewayInfo {
                source,
                namespace: meta.namespace.clone(),
                listeners,
            },
        );
    }

    for route in &inputs.routes {
        derive_route(route, inputs, &mut gateways, sources, out);
    }

    for info in gateways.into_values() {
        sources.items[info.source].fixed_sections = info
            .listeners
            .into_iter()
            .map(|l| SectionStatus {
                name: l.name,
                section_name: None,
                port: None,
                attached_routes: Some(l.attached),
                conditions: l.conditions,
            })
            .collect();
    }
}

fn listener_info(listener: &Listener, namespace: &str, inputs: &Inputs<'_>) -> ListenerInfo {
    let mut accepted = cond("Accepted", true, Reason::Accepted, "listener accepted");
    let mut resolved = cond(
        "ResolvedRefs",
        true,
        Reason::ResolvedRefs,
        "all references resolved",
    );
    let protocol = match listener.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        other => {
            accepted = cond(
                "Accepted",
                false,
                Reason::UnsupportedProtocol,
                format!("protocol {other:?}: Portcullis serves HTTP and HTTPS"),
            );
            None
        }
    };
    let allowed = listener.allowed_routes.clone().unwrap_or_default();
    let from = allowed
        .namespaces
        .as_ref()
        .and_then(|n| n.from.clone())
        .unwrap_or_else(|| "Same".into());
    if from == "Selector" {
        accepted = cond(
            "Accepted",
            false,
            Reason::UnsupportedValue,
            "allowedRoutes.namespaces.from: Selector is not supported; use Same or All",
        );
    }
    let kinds_ok = allowed.kinds.is_empty()
        || allowed.kinds.iter().any(|k: &RouteGroupKind| {
            k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        });
    if !kinds_ok {
        resolved = cond(
            "ResolvedRefs",
            false,
            Reason::InvalidRouteKinds,
            "allowedRoutes.kinds: Portcullis supports HTTPRoute only",
        );
    }
    if let Some(hostname) = &listener.hostname {
        if !valid_hostname(hostname) {
            accepted = cond(
                "Accepted",
                false,
                Reason::UnsupportedValue,
                format!("hostname {hostname:?} is not a host name or *.wildcard"),
            );
        }
    }
    let mut certificate = None;
    if protocol == Some(Protocol::Https) {
        let tls = listener.tls.clone().unwrap_or_default();
        match (
            tls.mode.as_deref().unwrap_or("Terminate"),
            tls.certificate_refs.first(),
        ) {
            ("Terminate", Some(cert)) => {
                let cert_ns = cert
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_string());
                let kind_ok = cert.kind.as_deref().unwrap_or("Secret") == "Secret"
                    && cert.group.as_deref().unwrap_or("").is_empty();
                let exists = inputs.secrets.iter().any(|s| {
                    s.metadata.namespace.as_deref() == Some(&cert_ns)
                        && s.metadata.name.as_deref() == Some(&cert.name)
                });
                if !kind_ok {
                    resolved = cond(
                        "ResolvedRefs",
                        false,
                        Reason::InvalidCertificateRef,
                        "certificateRefs must name a Secret",
                    );
                } else if cert_ns != namespace
                    && !granted(
                        inputs.grants,
                        "Gateway",
                        namespace,
                        "",
                        "Secret",
                        &cert_ns,
                        &cert.name,
                    )
                {
                    resolved = cond(
                        "ResolvedRefs",
                        false,
                        Reason::RefNotPermitted,
                        format!(
                            "Secret {cert_ns}/{} is in another namespace and no ReferenceGrant there allows it",
                            cert.name
                        ),
                    );
                } else if !exists {
                    resolved = cond(
                        "ResolvedRefs",
                        false,
                        Reason::InvalidCertificateRef,
                        format!("Secret {cert_ns}/{} not found", cert.name),
                    );
                } else {
                    certificate = Some((cert_ns, cert.name.clone()));
                }
            }
            ("Terminate", None) => {
                resolved = cond(
                    "ResolvedRefs",
                    false,
                    Reason::InvalidCertificateRef,
                    "an HTTPS listener needs tls.certificateRefs",
                );
            }
            (mode, _) => {
                accepted = cond(
                    "Accepted",
                    false,
                    Reason::UnsupportedValue,
                    format!("tls.mode {mode:?}: Portcullis terminates TLS"),
                );
            }
        }
    }
    let usable = accepted.status && resolved.status && protocol.is_some();
    let programmed = if usable {
        cond(
            "Programmed",
            true,
            Reason::Programmed,
            "served by the Portcullis proxies",
        )
    } else {
        cond(
            "Programmed",
            false,
            Reason::Invalid,
            "the listener is not valid",
        )
    };
    ListenerInfo {
        name: listener.name.clone(),
        hostname: listener.hostname.clone().map(|h| h.to_ascii_lowercase()),
        port: listener.port,
        protocol: protocol.unwrap_or(Protocol::Http),
        certificate,
        all_namespaces: from == "All",
        usable,
        attached: 0,
        conditions: vec![accepted, resolved, programmed],
    }
}

fn valid_hostname(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The hostnames a route serves on a listener: `None` is any host; an empty list, none.
fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => None,
        (None, false) => Some(route),
        (Some(l), true) => Some(vec![l.to_string()]),
        (Some(l), false) => Some(
            route
                .iter()
                .filter_map(|h| {
                    if h == l {
                        Some(h.clone())
                    } else if let Some(suffix) = l.strip_prefix('*') {
                        // `*.example.com` covers `a.example.com`: the route's name, narrower.
                        (h.ends_with(suffix) && !h.starts_with('*')).then(|| h.clone())
                    } else if let Some(suffix) = h.strip_prefix('*') {
                        l.ends_with(suffix).then(|| l.to_string())
                    } else {
                        None
                    }
                })
                .collect(),
        ),
    }
}

fn derive_route(
    route: &HTTPRoute,
    inputs: &Inputs<'_>,
    gateways: &mut BTreeMap<(String, String), GatewayInfo>,
    sources: &mut Sources,
    out: &mut Vec<DerivedRoute>,
) {
    let meta = Meta::of(&route.metadata);
    // Parents of ours, each with the listeners it attaches to (or why none).
    let mut sections = Vec::new();
    let mut hosts: Option<BTreeSet<String>> = Some(BTreeSet::new());
    let mut any_host = false;
    let mut tls: Option<(String, String)> = None;
    let mut attached_any = false;
    for parent in &route.spec.parent_refs {
        let ParentReference {
            group,
            kind,
            namespace,
            name,
            section_name,
            port,
        } = parent;
        if group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
            || kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gateway_ns = namespace.clone().unwrap_or_else(|| meta.namespace.clone());
        let Some(gateway) = gateways.get_mut(&(gateway_ns.clone(), name.clone())) else {
            continue;
        };
        let mut refused = None;
        let candidates: Vec<usize> = gateway
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|(_, l)| port.is_none_or(|p| p == l.port))
            .map(|(i, _)| i)
            .collect();
        let allowed: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| {
                let l = &gateway.listeners[i];
                l.usable && (l.all_namespaces || gateway.namespace == meta.namespace)
            })
            .collect();
        let mut matched = Vec::new();
        if candidates.is_empty() {
            refused = Some((
                Reason::NoMatchingParent,
                "no listener of the Gateway matches sectionName and port".to_string(),
            ));
        } else if allowed.is_empty() {
            refused = Some((
                Reason::NotAllowedByListeners,
                "no listener allows routes from this namespace (allowedRoutes)".to_string(),
            ));
        } else {
            for i in allowed {
                let listener = &gateway.listeners[i];
                match intersect(listener.hostname.as_deref(), &route.spec.hostnames) {
                    None => matched.push((i, None)),
                    Some(list) if list.is_empty() => {}
                    Some(list) => matched.push((i, Some(list))),
                }
            }
            if matched.is_empty() {
                refused = Some((
                    Reason::NoMatchingListenerHostname,
                    "no hostname of the route is served by the allowed listeners".to_string(),
                ));
            }
        }
        for (i, list) in matched {
            let listener = &mut gateway.listeners[i];
            listener.attached += 1;
            attached_any = true;
            match list {
                None => any_host = true,
                Some(list) => {
                    if let Some(set) = hosts.as_mut() {
                        set.extend(list);
                    }
                }
            }
            if listener.protocol == Protocol::Https && tls.is_none() {
                tls = listener.certificate.clone();
            }
        }
        sections.push(Section {
            name: format!("{gateway_ns}/{name}"),
            section_name: section_name.clone(),
            port: *port,
            refused,
        });
    }
    if sections.is_empty() {
        return; // no parent of ours: another controller's route
    }
    if any_host {
        hosts = None;
    }
    let source = sources.add(ObjectKind::HttpRoute, meta.clone());
    sources.items[source].sections = sections;
    if !attached_any {
        return;
    }
    let issues = &mut sources.items[source].issues;
    let fields = annotations::fields(route.metadata.annotations.as_ref(), On::HttpRoute, issues);
    let Some(base) = annotations::apply(&ApiRouteSpec::default(), &fields, issues) else {
        return;
    };
    let upstream_tls = base.upstream.tls.is_some();
    let hosts: Vec<String> = hosts.map(|h| h.into_iter().collect()).unwrap_or_default();
    let mut derived = Vec::new();
    for (r, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{r}]");
        let mut spec = base.clone();
        spec.hosts = hosts.clone();
        spec.upstream.targets = Vec::new();
        spec.upstream.direct_response = no_backend_upstream().direct_response;
        if let Some((_, secret)) = &tls {
            spec.tls = Some(RouteTls {
                secret_name: secret.clone(),
                ..RouteTls::default()
            });
        }
        let mut extras = super::derived::Extras::default();
        let matches: Vec<HTTPRouteMatch> = if rule.matches.is_empty() {
            vec![HTTPRouteMatch::default()]
        } else {
            rule.matches.clone()
        };
        let prefix_only = matches.iter().all(|m| {
            m.path
                .as_ref()
                .and_then(|p| p.type_.as_deref())
                .unwrap_or("PathPrefix")
                == "PathPrefix"
        });
        for (f, filter) in rule.filters.iter().enumerate() {
            apply_filter(
                filter,
                &format!("{field}.filters[{f}]"),
                prefix_only,
                &mut spec,
                &mut extras,
                issues,
            );
        }
        let targets = backend_targets(rule, &field, &meta.namespace, upstream_tls, inputs, issues);
        for (m, matched) in matches.iter().enumerate() {
            let mfield = format!("{field}.matches[{m}]");
            let mut spec = spec.clone();
            if !apply_match(matched, &mfield, &mut spec, issues) {
                continue;
            }
            let name = format!("httproute:{}:{r}-{m}", meta.name);
            let mut one =
                DerivedRoute::new(source, &route.metadata, name, format!("{mfield}: "), spec);
            one.targets = Some(targets.clone());
            one.tls_namespace = tls.as_ref().map(|(ns, _)| ns.clone());
            one.extras = extras.clone();
            derived.push(one);
        }
    }
    // All or nothing: a filter that cannot be applied, an invalid match or backend keeps
    // the whole route out rather than serve it without what it asks for. (References that
    // do not resolve only drop their backend: ResolvedRefs=False, 500 for that rule.)
    if issues.is_accepted() {
        out.extend(derived);
    }
}

fn apply_match(
    m: &HTTPRouteMatch,
    field: &str,
    spec: &mut ApiRouteSpec,
    issues: &mut Issues,
) -> bool {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.clone().unwrap_or_else(|| "/".into());
    let type_ = match path.type_.as_deref().unwrap_or("PathPrefix") {
        "PathPrefix" => PathMatchType::Prefix,
        "Exact" => PathMatchType::Exact,
        "RegularExpression" => PathMatchType::Regex,
        other => {
            issues.unsupported(&format!("{field}.path.type"), format!("{other:?}"));
            return false;
        }
    };
    spec.paths = vec![PathMatch { type_, value }];
    if let Some(method) = &m.method {
        spec.methods = vec![method.clone()];
    }
    let mut ok = true;
    let mut values = |list: &[portcullis_crds::gateway::HTTPValueMatch], what: &str| {
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            if v.type_.as_deref().unwrap_or("Exact") != "Exact" {
                issues.unsupported(
                    &format!("{field}.{what}[{i}].type"),
                    "only Exact matches are supported",
                );
                ok = false;
            }
            out.push(NameValue {
                name: v.name.clone(),
                value: v.value.clone(),
            });
        }
        out
    };
    spec.headers = values(&m.headers, "headers");
    spec.query_params = values(&m.query_params, "queryParams");
    ok
}

fn header_pairs(
    list: &[portcullis_crds::gateway::HTTPHeader],
    field: &str,
    issues: &mut Issues,
) -> Vec<HeaderMatch> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        if !is_token(&h.name) {
            issues.invalid(
                &format!("{field}[{i}].name"),
                format!("{:?} is not a header name", h.name),
            );
        } else if h.value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            issues.invalid(
                &format!("{field}[{i}].value"),
                "contains control characters",
            );
        } else {
            out.push(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            });
        }
    }
    out
}

fn header_filter(
    filter: &HTTPHeaderFilter,
    field: &str,
    issues: &mut Issues,
) -> RequestHeadersConfig {
    let mut remove = Vec::new();
    for (i, name) in filter.remove.iter().enumerate() {
        if is_token(name) {
            remove.push(name.to_ascii_lowercase());
        } else {
            issues.invalid(
                &format!("{field}.remove[{i}]"),
                format!("{name:?} is not a header name"),
            );
        }
    }
    RequestHeadersConfig {
        remove,
        set: header_pairs(&filter.set, &format!("{field}.set"), issues),
        add: header_pairs(&filter.add, &format!("{field}.add"), issues),
    }
}

fn apply_filter(
    filter: &HTTPRouteFilter,
    field: &str,
    prefix_only: bool,
    spec: &mut ApiRouteSpec,
    extras: &mut super::derived::Extras,
    issues: &mut Issues,
) {
    match filter.type_.as_str() {
        "RequestHeaderModifier" => {
            let Some(f) = &filter.request_header_modifier else {
                issues.invalid(field, "requestHeaderModifier is required");
                return;
            };
            extras.request_headers = Some(header_filter(
                f,
                &format!("{field}.requestHeaderModifier"),
                issues,
            ));
        }
        "ResponseHeaderModifier" => {
            let Some(f) = &filter.response_header_modifier else {
                issues.invalid(field, "responseHeaderModifier is required");
                return;
            };
            let modifier = header_filter(f, &format!("{field}.responseHeaderModifier"), issues);
            // Portcullis sets response headers (replacing); `add` is treated as `set`.
            extras.response_set.extend(modifier.set);
            extras.response_set.extend(modifier.add);
            let remove = &mut spec
                .response_headers
                .get_or_insert_with(Default::default)
                .remove;
            remove.extend(modifier.remove);
        }
        "URLRewrite" => {
            let Some(f) = &filter.url_rewrite else {
                issues.invalid(field, "urlRewrite is required");
                return;
            };
            if f.hostname.is_some() {
                issues.unsupported(
                    &format!("{field}.urlRewrite.hostname"),
                    "the upstream Host is the backend Service's name",
                );
            }
            match &f.path {
                None => {}
                Some(HTTPPathModifier {
                    type_,
                    replace_full_path,
                    replace_prefix_match,
                }) => match type_.as_str() {
                    "ReplaceFullPath" => match replace_full_path {
                        Some(p) if p.starts_with('/') => extras.rewrite_path = Some(p.clone()),
                        _ => issues.invalid(
                            &format!("{field}.urlRewrite.path.replaceFullPath"),
                            "must start with /",
                        ),
                    },
                    "ReplacePrefixMatch" if !prefix_only => issues.invalid(
                        &format!("{field}.urlRewrite.path"),
                        "ReplacePrefixMatch needs PathPrefix matches",
                    ),
                    "ReplacePrefixMatch" => {
                        spec.rewrite_prefix =
                            Some(replace_prefix_match.clone().unwrap_or_else(|| "/".into()))
                    }
                    other => issues.unsupported(
                        &format!("{field}.urlRewrite.path.type"),
                        format!("{other:?}"),
                    ),
                },
            }
        }
        "RequestRedirect" => {
            let Some(f) = &filter.request_redirect else {
                issues.invalid(field, "requestRedirect is required");
                return;
            };
            let status = match f.status_code.unwrap_or(302) {
                301 => 301,
                302 => 302,
                other => {
                    issues.unsupported(
                        &format!("{field}.requestRedirect.statusCode"),
                        format!("{other}: 301 or 302"),
                    );
                    302
                }
            };
            let scheme = match f.scheme.as_deref() {
                None => None,
                Some(s @ ("http" | "https")) => Some(s.to_string()),
                Some(other) => {
                    issues.invalid(
                        &format!("{field}.requestRedirect.scheme"),
                        format!("{other:?}: http or https"),
                    );
                    None
                }
            };
            let port = match f.port {
                None => None,
                Some(p) => match u16::try_from(p) {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        issues.invalid(
                            &format!("{field}.requestRedirect.port"),
                            format!("{p} is not a port"),
                        );
                        None
                    }
                },
            };
            let mut redirect = RedirectConfig {
                scheme,
                hostname: f.hostname.clone(),
                port,
                full_path: None,
                prefix: None,
                status,
            };
            if let Some(path) = &f.path {
                match path.type_.as_str() {
                    "ReplaceFullPath" => redirect.full_path = path.replace_full_path.clone(),
                    "ReplacePrefixMatch" if prefix_only => {
                        redirect.prefix = Some(
                            path.replace_prefix_match
                                .clone()
                                .unwrap_or_else(|| "/".into()),
                        )
                    }
                    _ => issues.invalid(
                        &format!("{field}.requestRedirect.path"),
                        "ReplaceFullPath, or ReplacePrefixMatch with PathPrefix matches",
                    ),
                }
            }
            if let Some(host) = &redirect.hostname {
                if !valid_hostname(host) || host.starts_with('*') {
                    issues.invalid(
                        &format!("{field}.requestRedirect.hostname"),
                        format!("{host:?} is not a host name"),
                    );
                }
            }
            extras.redirect = Some(redirect);
        }
        "ExtensionRef" => {
            let Some(r) = &filter.extension_ref else {
                issues.invalid(field, "extensionRef is required");
                return;
            };
            match (r.group.as_str(), r.kind.as_str()) {
                (portcullis_crds::GROUP, "WafPolicy") => {
                    if spec.waf_policy.is_some() {
                        issues.invalid(field, "one WafPolicy per rule");
                    }
                    spec.waf_policy = Some(r.name.clone());
                }
                (portcullis_crds::GROUP, "RateLimitPolicy") => {
                    spec.rate_limit_policies.push(r.name.clone())
                }
                (group, kind) => {
                    // Never skipped: a filter that cannot run must not let requests pass.
                    issues.ref_with_reason(
                        Reason::InvalidKind,
                        &format!("{field}.extensionRef"),
                        format!("{group}/{kind} is not a Portcullis policy (WafPolicy, RateLimitPolicy)"),
                    );
                    issues.unsupported(&format!("{field}.extensionRef"), format!("{group}/{kind}"));
                }
            }
        }
        other => issues.unsupported(
            &format!("{field}.type"),
            format!("{other:?} filters are not supported"),
        ),
    }
}

fn backend_targets(
    rule: &portcullis_crds::gateway::HTTPRouteRule,
    field: &str,
    namespace: &str,
    tls: bool,
    inputs: &Inputs<'_>,
    issues: &mut Issues,
) -> Vec<TargetConfig> {
    let mut targets = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let bfield = format!("{field}.backendRefs[{b}]");
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            issues.ref_with_reason(
                Reason::InvalidKind,
                &bfield,
                format!("{group}/{kind}: only Services are supported"),
            );
            continue;
        }
        if !backend.filters.is_empty() {
            issues.unsupported(
                &format!("{bfield}.filters"),
                "filters on backendRefs are not supported",
            );
        }
        let target_ns = backend
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_string());
        if target_ns != namespace
            && !granted(
                inputs.grants,
                "HTTPRoute",
                namespace,
                "",
                "Service",
                &target_ns,
                &backend.name,
            )
        {
            issues.ref_with_reason(
                Reason::RefNotPermitted,
                &bfield,
                format!(
                    "Service {target_ns}/{} is in another namespace and no ReferenceGrant there allows it",
                    backend.name
                ),
            );
            continue;
        }
        let Some(port) = backend
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            issues.invalid(&format!("{bfield}.port"), "a Service port is required");
            continue;
        };
        let weight = backend.weight.unwrap_or(1);
        let Ok(weight) = u32::try_from(weight) else {
            issues.invalid(&format!("{bfield}.weight"), "must not be negative");
            continue;
        };
        let service = ServiceTarget {
            name: backend.name.clone(),
            port,
            port_name: None,
        };
        match service_target(&service, &target_ns, tls) {
            Ok((url, service)) => targets.push(TargetConfig {
                url,
                weight,
                service,
            }),
            Err(e) => issues.invalid(&bfield, e),
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_and_route_hostnames_intersect() {
        let hosts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[]), None);
        assert_eq!(
            intersect(Some("a.example.com"), &[]),
            Some(hosts(&["a.example.com"]))
        );
        assert_eq!(
            intersect(
                Some("*.example.com"),
                &hosts(&["a.example.com", "b.other.org"])
            ),
            Some(hosts(&["a.example.com"]))
        );
        assert_eq!(
            intersect(Some("a.example.com"), &hosts(&["*.example.com"])),
            Some(hosts(&["a.example.com"]))
        );
        assert_eq!(
            intersect(Some("a.example.com"), &hosts(&["b.example.com"])),
            Some(vec![])
        );
    }
}
