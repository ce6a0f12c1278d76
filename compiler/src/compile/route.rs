//! ApiRoute → one `RouteConfig`, or the reasons it cannot be served.

use std::collections::BTreeMap;

use ipnet::IpNet;
use portcullis_crds::{ApiRoute, EncodedSlashes, PathMatchType};

use super::issues::Issues;
use super::kube_meta::Meta;
use super::policy::PolicyIndex;
use super::validators::{
    is_token, one_line_regex_error, parse_cidr, valid_header_value, valid_host,
};
use crate::config::{
    AuthenticationConfig, AuthorizationConfig, CorsConfig, DirectResponseConfig, HeaderMatch,
    IpRestrictionConfig, LoadBalancing, PathKind, PathNormalizationConfig, PathRule,
    ResponseHeadersConfig, RouteConfig, ServiceBackendConfig, TargetConfig, UpstreamConfig,
    ValidationConfig,
};
use crate::units::{parse_duration_ms, parse_size_bytes};

pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub(crate) const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
pub(crate) const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
const MAX_RETRIES: u32 = 10;
const MAX_WEIGHT: u32 = 10_000;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn normalize_prefix(value: &str) -> String {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A configured path in the form requests are matched in, so that `/%61pi` and `/api`
/// configure the same route; `None` (with an issue) when no request could ever match it.
fn normal_path(
    value: &str,
    normalization: PathNormalizationConfig,
    field: &str,
    issues: &mut Issues,
) -> Option<String> {
    match crate::path::normalize(value, normalization.merge_slashes) {
        Ok(normal) if normal.encoded_slash && !normalization.pass_encoded_slashes => {
            issues.invalid(
                field,
                format!(
                    "{value:?} holds an encoded slash or a backslash, which requests may only \
                     carry with pathNormalization.encodedSlashes: PassEncoded"
                ),
            );
            None
        }
        Ok(normal) => Some(normal.path.into_owned()),
        Err(e) => {
            issues.invalid(field, format!("{value:?}: {e}"));
            None
        }
    }
}

fn valid_path(value: &str) -> bool {
    value.starts_with('/')
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#'))
}

pub(crate) fn compile_route(
    route: &ApiRoute,
    meta: &Meta,
    policies: &PolicyIndex,
    tenancy: &crate::Tenancy,
    issues: &mut Issues,
) -> Option<RouteConfig> {
    let spec = &route.spec;
    for (i, ns) in spec.share_hosts_with.iter().enumerate() {
        if !crate::tenancy::valid_namespace(ns) {
            issues.invalid(
                &format!("spec.shareHostsWith[{i}]"),
                format!("{ns:?} is not a namespace name"),
            );
        }
    }

    let mut hosts = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let host = host.to_ascii_lowercase();
        if valid_host(&host) {
            hosts.push(host);
        } else {
            issues.invalid(
                &format!("spec.hosts[{i}]"),
                format!("{host:?} is not a host name or *.wildcard"),
            );
        }
    }
    hosts.sort();
    hosts.dedup();

    if spec.paths.is_empty() {
        issues.invalid("spec.paths", "at least one path is required");
    }
    let normalization = spec.path_normalization.as_ref();
    let path_normalization = PathNormalizationConfig {
        merge_slashes: normalization.and_then(|n| n.merge_slashes).unwrap_or(true),
        pass_encoded_slashes: normalization.and_then(|n| n.encoded_slashes)
            == Some(EncodedSlashes::PassEncoded),
    };
    let mut paths = Vec::new();
    for (i, path) in spec.paths.iter().enumerate() {
        let field = format!("spec.paths[{i}].value");
        let normal = match path.type_ {
            PathMatchType::Exact | PathMatchType::Prefix if !valid_path(&path.value) => {
                issues.invalid(
                    &field,
                    format!(
                        "{:?} must start with / and contain no spaces, ? or #",
                        path.value
                    ),
                );
                continue;
            }
            PathMatchType::Exact | PathMatchType::Prefix => {
                match normal_path(&path.value, path_normalization, &field, issues) {
                    Some(normal) => normal,
                    None => continue,
                }
            }
            PathMatchType::Regex => String::new(),
        };
        match path.type_ {
            PathMatchType::Exact => paths.push(PathRule {
                kind: PathKind::Exact,
                value: normal,
            }),
            PathMatchType::Prefix => paths.push(PathRule {
                kind: PathKind::Prefix,
                value: normalize_prefix(&normal),
            }),
            PathMatchType::Regex => {
                match regex::RegexBuilder::new(&format!("^(?:{})$", path.value))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(_) => paths.push(PathRule {
                        kind: PathKind::Regex,
                        value: path.value.clone(),
                    }),
                    Err(e) => issues.invalid(
                        &field,
                        format!("invalid regex: {}", one_line_regex_error(&e)),
                    ),
                }
            }
        }
    }

    let mut methods = Vec::new();
    for (i, method) in spec.methods.iter().enumerate() {
        if is_token(method) {
            methods.push(method.to_ascii_uppercase());
        } else {
            issues.invalid(
                &format!("spec.methods[{i}]"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
    methods.sort();
    methods.dedup();

    let headers = name_values(&spec.headers, "spec.headers", true, issues);
    let query_params = name_values(&spec.query_params, "spec.queryParams", false, issues);

    let mut rewrite_prefix = None;
    if let Some(prefix) = &spec.rewrite_prefix {
        if !valid_path(prefix) {
            issues.invalid(
                "spec.rewritePrefix",
                format!("{prefix:?} must start with /"),
            );
        } else {
            rewrite_prefix = normal_path(prefix, path_normalization, "spec.rewritePrefix", issues);
        }
    }
    let rewrites = spec.strip_path == Some(true) || spec.rewrite_prefix.is_some();
    if rewrites && paths.iter().any(|p| p.kind == PathKind::Regex) {
        issues.invalid(
            "spec.stripPath",
            "stripPath and rewritePrefix need Prefix or Exact paths, not Regex",
        );
    }

    let upstream = compile_upstream(route, meta, tenancy, issues);
    let authentication = compile_authentication(route, issues);
    let authorization = compile_authorization(route, issues);
    let ip_restriction = compile_ip_restriction(route, issues);
    let request_validation = compile_validation(route, issues);
    let response_headers = compile_response_headers(route, issues);
    let cors = compile_cors(route, issues);

    let rate_limit_policies = super::rate_limit::resolve_for_route(
        &spec.rate_limit_policies,
        meta,
        &policies.rate_limits,
        issues,
    );
    let waf_policies =
        super::waf::resolve_for_route(spec.waf_policy.as_ref(), meta, &policies.wafs, issues);

    let upstream = upstream?;
    if !issues.is_accepted() {
        return None;
    }
    Some(RouteConfig {
        id: meta.id(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        hosts,
        paths,
        methods,
        headers,
        query_params,
        path_normalization,
        strip_path: spec.strip_path.unwrap_or(false),
        rewrite_prefix,
        upstream,
        authentication: authentication.map(Box::new),
        authorization: authorization.map(Box::new),
        ip_restriction: ip_restriction.map(Box::new),
        request_validation: request_validation.map(Box::new),
        response_headers,
        security_headers: spec.security_headers.unwrap_or(true),
        cors: cors.map(Box::new),
        sanitize_upstream_errors: spec.sanitize_upstream_errors.unwrap_or(false),
        rate_limit_policies,
        // Filled in by `tls::compile_route_tls`, which resolves the Secrets.
        tls: None,
        waf_policies,
        // Gateway API filters: set by the HTTPRoute translation (`gateway.rs`).
        request_headers: None,
        rewrite_path: None,
        redirect: None,
    })
}

fn name_values(
    items: &[portcullis_crds::NameValue],
    field: &str,
    lowercase: bool,
    issues: &mut Issues,
) -> Vec<HeaderMatch> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let valid_name = if lowercase {
            is_token(&item.name)
        } else {
            !item.name.is_empty()
        };
        if !valid_name {
            issues.invalid(
                &format!("{field}[{i}].name"),
                format!("{:?} is not a valid name", item.name),
            );
        } else if !valid_header_value(&item.value) {
            issues.invalid(
                &format!("{field}[{i}].value"),
                "contains control characters",
            );
        } else {
            out.push(HeaderMatch {
                name: if lowercase {
                    item.name.to_ascii_lowercase()
                } else {
                    item.name.clone()
                },
                value: item.value.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    out
}

fn duration_field(value: &Option<String>, field: &str, default: u64, issues: &mut Issues) -> u64 {
    match value.as_deref().map(parse_duration_ms) {
        None => default,
        Some(Ok(0)) => {
            issues.invalid(field, "must be positive");
            default
        }
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            issues.invalid(field, e);
            default
        }
    }
}

/// `http(s)://host[:port][/]` → `http(s)://host:port`.
fn normalize_target_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("http") => ("http", 80),
        Some("https") => ("https", 443),
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "{url:?} must not carry a path or query; use rewritePrefix"
        ));
    }
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(format!("{scheme}://{host}:{port}"))
}

/// A Service target: its DNS URL (what standalone proxies dial, and the `Host` header sent to
/// its endpoints) and the Service reference cluster-mode proxies resolve to endpoints.
/// With `upstream.tls`, Services are reached over TLS.
pub(crate) fn service_target(
    service: &portcullis_crds::ServiceTarget,
    namespace: &str,
    tls: bool,
) -> Result<(String, Option<ServiceBackendConfig>), String> {
    let valid_name = valid_host(&service.name) && !service.name.contains('.');
    let port_name = service.port_name.as_deref();
    let port_ok = match (service.port, port_name) {
        (0, Some(name)) => valid_port_name(name),
        (p, None) => p > 0,
        _ => false,
    };
    if !valid_name || !port_ok {
        return Err(match port_name {
            Some(name) if service.port > 0 => format!(
                "service {:?}: set port or portName, not both (port {}, portName {name:?})",
                service.name, service.port
            ),
            Some(name) => format!(
                "service {:?} port name {name:?} is not a valid Service reference",
                service.name
            ),
            None => format!(
                "service {:?} port {} is not a valid Service reference",
                service.name, service.port
            ),
        });
    }
    let scheme = if tls { "https" } else { "http" };
    // A named port has no number to dial by DNS: the name's own default port stands in
    // (only standalone proxies, which have no endpoints, dial this URL).
    let dns_port = match service.port {
        0 if tls => 443,
        0 => 80,
        p => p,
    };
    Ok((
        format!("{scheme}://{}.{namespace}.svc:{dns_port}", service.name),
        Some(ServiceBackendConfig {
            namespace: namespace.to_string(),
            name: service.name.clone(),
            port: service.port,
            port_name: port_name.map(str::to_string),
        }),
    ))
}

/// An IANA_SVC_NAME, as Service port names are: at most 15 lowercase letters, digits and
/// inner dashes, with at least one letter.
fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn compile_upstream(
    route: &ApiRoute,
    meta: &Meta,
    tenancy: &crate::Tenancy,
    issues: &mut Issues,
) -> Option<UpstreamConfig> {
    let upstream = &route.spec.upstream;
    let timeouts = upstream.timeouts.clone().unwrap_or_default();
    let connect = duration_field(
        &timeouts.connect,
        "spec.upstream.timeouts.connect",
        DEFAULT_CONNECT_TIMEOUT_MS,
        issues,
    );
    let read = duration_field(
        &timeouts.read,
        "spec.upstream.timeouts.read",
        DEFAULT_READ_TIMEOUT_MS,
        issues,
    );
    let send = duration_field(
        &timeouts.send,
        "spec.upstream.timeouts.send",
        DEFAULT_SEND_TIMEOUT_MS,
        issues,
    );
    let retries = upstream.retries.as_ref().map_or(0, |r| r.attempts);
    if retries > MAX_RETRIES {
        issues.invalid(
            "spec.upstream.retries.attempts",
            format!("{retries} is more than {MAX_RETRIES}"),
        );
    }

    let direct_response = match &upstream.direct_response {
        None => None,
        Some(direct) => {
            if !(200..=599).contains(&direct.status) {
                issues.invalid(
                    "spec.upstream.directResponse.status",
                    format!("{} is not between 200 and 599", direct.status),
                );
            }
            if let Some(ct) = &direct.content_type {
                if !valid_header_value(ct) || ct.is_empty() {
                    issues.invalid(
                        "spec.upstream.directResponse.contentType",
                        "is not a valid header value",
                    );
                }
            }
            Some(DirectResponseConfig {
                status: direct.status,
                body: direct.body.clone().unwrap_or_default(),
                content_type: direct.content_type.clone(),
            })
        }
    };

    let mut targets = Vec::new();
    for (i, target) in upstream.targets.iter().enumerate() {
        let field = format!("spec.upstream.targets[{i}]");
        let weight = target.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            issues.invalid(
                &format!("{field}.weight"),
                format!("{weight} is more than {MAX_WEIGHT}"),
            );
        }
        let resolved = match (&target.url, &target.service) {
            (Some(url), None) => normalize_target_url(url).map(|url| (url, None)),
            (None, Some(service)) => {
                service_target(service, &meta.namespace, upstream.tls.is_some())
            }
            _ => Err("set exactly one of url and service".to_string()),
        };
        match resolved {
            Ok((url, service)) => {
                let host = url
                    .split_once("://")
                    .map_or("", |(_, rest)| rest)
                    .rsplit_once(':')
                    .map_or("", |(host, _)| host);
                match crate::tenancy::internal_target(host, tenancy) {
                    Some(what) => issues.refused(
                        crate::Reason::TargetNotAllowed,
                        &field,
                        format!(
                            "{host} is {what}, which the gateway does not forward to (it would reach the gateway or its node); the operator allows it only with --allow-loopback-targets"
                        ),
                    ),
                    None => targets.push(TargetConfig {
                        url,
                        weight,
                        service,
                    }),
                }
            }
            Err(e) => issues.invalid(&field, e),
        }
    }
    match (&direct_response, upstream.targets.is_empty()) {
        (Some(_), false) => issues.invalid(
            "spec.upstream",
            "set either targets or directResponse, not both",
        ),
        (None, true) => issues.invalid(
            "spec.upstream.targets",
            "at least one target (or a directResponse) is required",
        ),
        (None, false) if targets.iter().all(|t| t.weight == 0) && !targets.is_empty() => issues
            .invalid(
                "spec.upstream.targets",
                "at least one target needs a weight above 0",
            ),
        _ => {}
    }
    let load_balancing = match upstream.load_balancing.unwrap_or_default() {
        portcullis_crds::LoadBalancing::RoundRobin => LoadBalancing::RoundRobin,
        portcullis_crds::LoadBalancing::LeastRequest => LoadBalancing::LeastRequest,
        portcullis_crds::LoadBalancing::ConsistentHash => LoadBalancing::ConsistentHash,
    };
    Some(UpstreamConfig {
        targets,
        load_balancing,
        connect_timeout_ms: connect,
        read_timeout_ms: read,
        send_timeout_ms: send,
        retries: retries.min(MAX_RETRIES),
        direct_response,
        tls: None,
        refuse_internal_addresses: tenancy.refuse_internal_targets,
    })
}

fn compile_authentication(route: &ApiRoute, issues: &mut Issues) -> Option<AuthenticationConfig> {
    super::auth::compile_authentication(route, issues)
}

fn compile_authorization(route: &ApiRoute, issues: &mut Issues) -> Option<AuthorizationConfig> {
    super::auth::compile_authorization(route, issues)
}

fn cidr_list(items: &[String], field: &str, issues: &mut Issues) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_cidr(item.trim()) {
            Some(net) => out.push(net),
            None => issues.invalid(
                &format!("{field}[{i}]"),
                format!("{item:?} is not an IP address or CIDR"),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn compile_ip_restriction(route: &ApiRoute, issues: &mut Issues) -> Option<IpRestrictionConfig> {
    let ip = route.spec.ip_restriction.as_ref()?;
    Some(IpRestrictionConfig {
        allow: cidr_list(&ip.allow, "spec.ipRestriction.allow", issues),
        deny: cidr_list(&ip.deny, "spec.ipRestriction.deny", issues),
    })
}

fn compile_validation(route: &ApiRoute, issues: &mut Issues) -> Option<ValidationConfig> {
    let v = route.spec.request_validation.as_ref()?;
    let max_body_bytes = match v.max_body_size.as_deref().map(parse_size_bytes) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            issues.invalid("spec.requestValidation.maxBodySize", e);
            None
        }
    };
    let mut content_types = Vec::new();
    for (i, ct) in v.allowed_content_types.iter().enumerate() {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.split_once('/') {
            Some((t, s)) if is_token(t) && (is_token(s) || s == "*") => content_types.push(media),
            _ => issues.invalid(
                &format!("spec.requestValidation.allowedContentTypes[{i}]"),
                format!("{ct:?} is not a media type like application/json"),
            ),
        }
    }
    if let Some(schema) = &v.json_schema {
        let depth = crate::tenancy::json_depth(schema);
        if depth > crate::tenancy::MAX_JSON_DEPTH {
            issues.invalid(
                "spec.requestValidation.jsonSchema",
                format!(
                    "is nested {depth} levels deep; at most {} are allowed",
                    crate::tenancy::MAX_JSON_DEPTH
                ),
            );
        } else if let Err(e) = jsonschema::validator_for(schema) {
            issues.invalid(
                "spec.requestValidation.jsonSchema",
                format!("does not compile: {e}"),
            );
        }
    }
    if v.max_json_depth == Some(0) {
        issues.invalid("spec.requestValidation.maxJsonDepth", "must be at least 1");
    }
    let mut required = Vec::new();
    for (i, h) in v.required_headers.iter().enumerate() {
        if is_token(h) {
            required.push(h.to_ascii_lowercase());
        } else {
            issues.invalid(
                &format!("spec.requestValidation.requiredHeaders[{i}]"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    Some(ValidationConfig {
        max_body_bytes,
        allowed_content_types: content_types,
        json_schema: v.json_schema.clone(),
        max_json_depth: v.max_json_depth,
        required_headers: required,
    })
}

fn compile_response_headers(route: &ApiRoute, issues: &mut Issues) -> ResponseHeadersConfig {
    let Some(rh) = route.spec.response_headers.as_ref() else {
        return ResponseHeadersConfig::default();
    };
    let mut add = BTreeMap::new();
    for (name, value) in &rh.add {
        if !is_token(name) {
            issues.invalid(
                "spec.responseHeaders.add",
                format!("{name:?} is not a header name"),
            );
        } else if !valid_header_value(value) {
            issues.invalid(
                &format!("spec.responseHeaders.add.{name}"),
                "contains control characters",
            );
        } else {
            add.insert(name.clone(), value.clone());
        }
    }
    let mut remove = Vec::new();
    for (i, name) in rh.remove.iter().enumerate() {
        if is_token(name) {
            remove.push(name.to_ascii_lowercase());
        } else {
            issues.invalid(
                &format!("spec.responseHeaders.remove[{i}]"),
                format!("{name:?} is not a header name"),
            );
        }
    }
    remove.sort();
    remove.dedup();
    ResponseHeadersConfig { add, remove }
}

fn compile_cors(route: &ApiRoute, issues: &mut Issues) -> Option<CorsConfig> {
    let cors = route.spec.cors.as_ref()?;
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let ok = origin == "*"
            || origin.parse::<http::Uri>().ok().is_some_and(|u| {
                u.scheme().is_some()
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
        if !ok {
            issues.invalid(
                &format!("spec.cors.allowOrigins[{i}]"),
                format!("{origin:?} is not an origin like https://app.example.com or *"),
            );
        }
    }
    if cors.allow_credentials == Some(true) && cors.allow_origins.iter().any(|o| o == "*") {
        issues.invalid(
            "spec.cors.allowCredentials",
            "cannot be combined with allowOrigins: [\"*\"]",
        );
    }
    for (i, m) in cors.allow_methods.iter().enumerate() {
        if !is_token(m) {
            issues.invalid(
                &format!("spec.cors.allowMethods[{i}]"),
                format!("{m:?} is not a method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if !(is_token(h) || h == "*") {
                issues.invalid(
                    &format!("spec.cors.{field}[{i}]"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
    }
    let max_age_secs = match cors.max_age.as_deref().map(parse_duration_ms) {
        None => None,
        Some(Ok(ms)) => Some(ms / 1000),
        Some(Err(e)) => {
            issues.invalid("spec.cors.maxAge", e);
            None
        }
    };
    Some(CorsConfig {
        allow_origins: cors.allow_origins.clone(),
        allow_methods: cors
            .allow_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        allow_headers: cors.allow_headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        allow_credentials: cors.allow_credentials.unwrap_or(false),
        max_age_secs,
    })
}
