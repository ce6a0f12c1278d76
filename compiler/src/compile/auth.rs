//! `authentication` and `authorization` of an ApiRoute → their compiled form.
//!
//! Everything a proxy would otherwise discover at request time (a `none` algorithm, a
//! relative JWKS URL, a missing client secret) is refused here, on the route's status.

use portcullis_crds::{ApiRoute, AuthMethod};

use super::issues::Issues;
use super::kube_meta::Meta;
use super::secrets::{SecretIndex, SecretLookup};
use super::validators::{is_http_url, is_token, JWT_ALGORITHMS};
use crate::config::{
    AuthMethodConfig, AuthenticationConfig, AuthorizationConfig, ClientSecretEntry,
    ForwardAuthConfig, IntrospectionConfig, JwtConfig, JwtIssuerConfig,
};
use crate::units::parse_duration_ms;

const REGISTERED_TIME_CLAIMS: [&str; 3] = ["exp", "nbf", "iat"];
const DEFAULT_KEY_CLAIM: &str = "kid";
const DEFAULT_CLOCK_SKEW_MS: u64 = 30_000;
const DEFAULT_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_CLIENT_SECRET_KEY: &str = "secret";
pub(crate) const DEFAULT_ROLES_CLAIM: &str = "roles";

/// A duration that may be absent (default) but, when given, must parse; `allow_zero` for
/// values where 0 means "off".
fn duration(
    value: Option<&str>,
    field: &str,
    default_ms: u64,
    allow_zero: bool,
    issues: &mut Issues,
) -> u64 {
    match value.map(parse_duration_ms) {
        None => default_ms,
        Some(Ok(0)) if !allow_zero => {
            issues.invalid(field, "must be positive");
            default_ms
        }
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            issues.invalid(field, e);
            default_ms
        }
    }
}

fn header_names(names: &[String], field: &str, issues: &mut Issues) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if is_token(name) {
            out.push(name.to_ascii_lowercase());
        } else {
            issues.invalid(
                &format!("{field}[{i}]"),
                format!("{name:?} is not a header name"),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(crate) fn compile_authentication(
    route: &ApiRoute,
    issues: &mut Issues,
) -> Option<AuthenticationConfig> {
    let auth = route.spec.authentication.as_ref()?;
    if auth.methods.is_empty() {
        issues.invalid(
            "spec.authentication.methods",
            "at least one method is required",
        );
    }
    let mut methods = Vec::new();
    for method in &auth.methods {
        match method {
            AuthMethod::ApiKey => methods.push(AuthMethodConfig::ApiKey),
            AuthMethod::Jwt => methods.push(AuthMethodConfig::Jwt),
            AuthMethod::OAuth2Introspection => methods.push(AuthMethodConfig::OAuth2Introspection),
            AuthMethod::ForwardAuth => methods.push(AuthMethodConfig::ForwardAuth),
            // Its prerequisite (spec.tls.clientAuth) is checked with the TLS settings.
            AuthMethod::MutualTls => methods.push(AuthMethodConfig::MutualTls),
        }
    }
    methods.sort();
    methods.dedup();
    let api_key = auth.api_key.clone().unwrap_or_default();
    let header = api_key.header.unwrap_or_else(|| "X-API-Key".to_string());
    if !is_token(&header) {
        issues.invalid(
            "spec.authentication.apiKey.header",
            format!("{header:?} is not a header name"),
        );
    }
    if let Some(param) = &api_key.query_param {
        if param.is_empty() {
            issues.invalid("spec.authentication.apiKey.queryParam", "must not be empty");
        }
    }

    let jwt = match (&auth.jwt, methods.contains(&AuthMethodConfig::Jwt)) {
        (Some(jwt), true) => Some(compile_jwt(jwt, issues)),
        (None, true) => {
            issues.invalid("spec.authentication.jwt", "required with method Jwt");
            None
        }
        (_, false) => None,
    };
    let introspection = match (
        &auth.oauth2_introspection,
        methods.contains(&AuthMethodConfig::OAuth2Introspection),
    ) {
        (Some(i), true) => Some(compile_introspection(i, issues)),
        (None, true) => {
            issues.invalid(
                "spec.authentication.oauth2Introspection",
                "required with method OAuth2Introspection",
            );
            None
        }
        (_, false) => None,
    };
    let forward_auth = match (
        &auth.forward_auth,
        methods.contains(&AuthMethodConfig::ForwardAuth),
    ) {
        (Some(f), true) => Some(compile_forward_auth(f, issues)),
        (None, true) => {
            issues.invalid(
                "spec.authentication.forwardAuth",
                "required with method ForwardAuth",
            );
            None
        }
        (_, false) => None,
    };

    let consumer_namespaces =
        crate::tenancy::consumer_namespaces(&auth.consumer_namespaces, route, issues);
    Some(AuthenticationConfig {
        consumer_namespaces,
        methods,
        optional: auth.optional.unwrap_or(false),
        hide_credentials: auth.hide_credentials.unwrap_or(true),
        api_key_header: Some(header.to_ascii_lowercase()),
        api_key_query_param: api_key.query_param,
        jwt,
        oauth2_introspection: introspection,
        forward_auth,
    })
}

fn compile_jwt(jwt: &portcullis_crds::JwtAuth, issues: &mut Issues) -> JwtConfig {
    let base = "spec.authentication.jwt";
    let mut issuers = Vec::new();
    for (i, issuer) in jwt.issuers.iter().enumerate() {
        let field = format!("{base}.issuers[{i}]");
        if issuer.issuer.is_empty() {
            issues.invalid(&format!("{field}.issuer"), "must not be empty");
        }
        if issuers
            .iter()
            .any(|c: &JwtIssuerConfig| c.issuer == issuer.issuer)
        {
            issues.invalid(
                &format!("{field}.issuer"),
                format!("issuer {:?} is listed twice", issuer.issuer),
            );
        }
        let discovery = issuer.oidc_discovery.unwrap_or(false);
        match (&issuer.jwks_uri, discovery) {
            (Some(_), true) => {
                issues.invalid(&field, "set either jwksUri or oidcDiscovery, not both")
            }
            (None, false) => issues.invalid(&field, "jwksUri or oidcDiscovery: true is required"),
            (Some(uri), false) if !is_http_url(uri) => issues.invalid(
                &format!("{field}.jwksUri"),
                format!("{uri:?} is not an http(s) URL"),
            ),
            (None, true) if !is_http_url(&issuer.issuer) => issues.invalid(
                &format!("{field}.issuer"),
                "oidcDiscovery needs an http(s) issuer URL",
            ),
            _ => {}
        }
        if let Some(claim) = &issuer.consumer_claim {
            if claim.is_empty() {
                issues.invalid(&format!("{field}.consumerClaim"), "must not be empty");
            }
        }
        let mut audiences = issuer.audiences.clone();
        audiences.sort();
        audiences.dedup();
        issuers.push(JwtIssuerConfig {
            issuer: issuer.issuer.clone(),
            jwks_uri: issuer.jwks_uri.clone(),
            oidc_discovery: discovery,
            audiences,
            consumer_claim: issuer.consumer_claim.clone(),
        });
    }
    let consumer_keys = jwt.consumer_keys.unwrap_or(jwt.issuers.is_empty());
    if issuers.is_empty() && !consumer_keys {
        issues.invalid(base, "needs issuers or consumerKeys: true");
    }
    let mut algorithms = Vec::new();
    for (i, alg) in jwt.algorithms.iter().enumerate() {
        if JWT_ALGORITHMS.contains(&alg.as_str()) {
            algorithms.push(alg.clone());
        } else if alg.eq_ignore_ascii_case("none") {
            issues.invalid(
                &format!("{base}.algorithms[{i}]"),
                "\"none\" is never accepted",
            );
        } else {
            issues.invalid(
                &format!("{base}.algorithms[{i}]"),
                format!("{alg:?} is not one of {}", JWT_ALGORITHMS.join(", ")),
            );
        }
    }
    if jwt.algorithms.is_empty() {
        algorithms = JWT_ALGORITHMS.iter().map(|a| a.to_string()).collect();
    }
    algorithms.sort();
    algorithms.dedup();
    let mut claims_to_verify = Vec::new();
    for (i, claim) in jwt.claims_to_verify.iter().enumerate() {
        if REGISTERED_TIME_CLAIMS.contains(&claim.as_str()) {
            claims_to_verify.push(claim.clone());
        } else {
            issues.invalid(
                &format!("{base}.claimsToVerify[{i}]"),
                format!("{claim:?} is not one of exp, nbf, iat"),
            );
        }
    }
    if jwt.claims_to_verify.is_empty() {
        claims_to_verify.push("exp".to_string());
    }
    claims_to_verify.sort();
    claims_to_verify.dedup();
    let key_claim = jwt
        .key_claim
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_CLAIM.to_string());
    if key_claim.is_empty() {
        issues.invalid(&format!("{base}.keyClaim"), "must not be empty");
    }
    let maximum_expiration_secs = jwt.maximum_expiration.as_deref().map(|v| {
        duration(
            Some(v),
            &format!("{base}.maximumExpiration"),
            0,
            false,
            issues,
        ) / 1000
    });
    let clock_skew_secs = duration(
        jwt.clock_skew.as_deref(),
        &format!("{base}.clockSkew"),
        DEFAULT_CLOCK_SKEW_MS,
        true,
        issues,
    ) / 1000;
    JwtConfig {
        issuers,
        consumer_keys,
        key_claim,
        algorithms,
        claims_to_verify,
        maximum_expiration_secs,
        clock_skew_secs,
    }
}

fn compile_introspection(
    i: &portcullis_crds::OAuth2Introspection,
    issues: &mut Issues,
) -> IntrospectionConfig {
    let base = "spec.authentication.oauth2Introspection";
    if !is_http_url(&i.url) {
        issues.invalid(
            &format!("{base}.url"),
            format!("{:?} is not an http(s) URL", i.url),
        );
    }
    if i.client_id.is_empty() {
        issues.invalid(&format!("{base}.clientId"), "must not be empty");
    }
    IntrospectionConfig {
        url: i.url.clone(),
        client_id: i.client_id.clone(),
        cache_ttl_secs: duration(
            i.cache_ttl.as_deref(),
            &format!("{base}.cacheTtl"),
            0,
            true,
            issues,
        ) / 1000,
        timeout_ms: duration(
            i.timeout.as_deref(),
            &format!("{base}.timeout"),
            DEFAULT_TIMEOUT_MS,
            false,
            issues,
        ),
    }
}

fn compile_forward_auth(
    f: &portcullis_crds::ForwardAuth,
    issues: &mut Issues,
) -> ForwardAuthConfig {
    let base = "spec.authentication.forwardAuth";
    if !is_http_url(&f.url) {
        issues.invalid(
            &format!("{base}.url"),
            format!("{:?} is not an http(s) URL", f.url),
        );
    }
    ForwardAuthConfig {
        url: f.url.clone(),
        copy_request_headers: header_names(
            &f.copy_request_headers,
            &format!("{base}.copyRequestHeaders"),
            issues,
        ),
        copy_response_headers: header_names(
            &f.copy_response_headers,
            &format!("{base}.copyResponseHeaders"),
            issues,
        ),
        cache_ttl_secs: duration(
            f.cache_ttl.as_deref(),
            &format!("{base}.cacheTtl"),
            0,
            true,
            issues,
        ) / 1000,
        timeout_ms: duration(
            f.timeout.as_deref(),
            &format!("{base}.timeout"),
            DEFAULT_TIMEOUT_MS,
            false,
            issues,
        ),
    }
}

pub(crate) fn compile_authorization(
    route: &ApiRoute,
    issues: &mut Issues,
) -> Option<AuthorizationConfig> {
    let authz = route.spec.authorization.as_ref()?;
    let Some(authn) = route.spec.authentication.as_ref() else {
        issues.invalid("spec.authorization", "requires spec.authentication");
        return None;
    };
    let has_claims = authn
        .methods
        .iter()
        .any(|m| matches!(m, AuthMethod::Jwt | AuthMethod::OAuth2Introspection));
    if !authz.required_scopes.is_empty() && !has_claims {
        issues.invalid(
            "spec.authorization.requiredScopes",
            "scopes come from Jwt or OAuth2Introspection; add one of them to the methods",
        );
    }
    let wants_roles = !authz.required_roles.is_empty() || authz.roles_claim.is_some();
    if wants_roles && !authn.methods.contains(&AuthMethod::Jwt) {
        issues.invalid(
            "spec.authorization.requiredRoles",
            "roles come from JWT claims; add Jwt to the methods",
        );
    }
    if let Some(path) = &authz.roles_claim {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            issues.invalid(
                "spec.authorization.rolesClaim",
                format!("{path:?} is not a dotted claim path"),
            );
        }
    }
    Some(AuthorizationConfig {
        allow_groups: authz.allow_groups.clone(),
        deny_groups: authz.deny_groups.clone(),
        required_scopes: authz.required_scopes.clone(),
        required_roles: authz.required_roles.clone(),
        roles_claim: wants_roles.then(|| {
            authz
                .roles_claim
                .clone()
                .unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_string())
        }),
    })
}

/// The route's introspection client secret, resolved from its Secret (Secret half only).
pub(crate) fn introspection_secret(
    route: &ApiRoute,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    issues: &mut Issues,
) -> Option<ClientSecretEntry> {
    let auth = route.spec.authentication.as_ref()?;
    if !auth.methods.contains(&AuthMethod::OAuth2Introspection) {
        return None;
    }
    let r = &auth.oauth2_introspection.as_ref()?.client_secret_ref;
    let field = "spec.authentication.oauth2Introspection.clientSecretRef";
    let key = r.key.as_deref().unwrap_or(DEFAULT_CLIENT_SECRET_KEY);
    match secrets.get(&meta.namespace, &r.name, key) {
        SecretLookup::SecretMissing => {
            issues.unresolved(
                field,
                format!("Secret {}/{} not found", meta.namespace, r.name),
                true,
            );
            None
        }
        SecretLookup::KeyMissing => {
            issues.unresolved(
                field,
                format!("Secret {}/{} has no key {key:?}", meta.namespace, r.name),
                true,
            );
            None
        }
        SecretLookup::Found(value) => match String::from_utf8(value.trim_ascii().to_vec()) {
            Ok(secret) if !secret.is_empty() => Some(ClientSecretEntry {
                route: meta.id(),
                secret,
            }),
            _ => {
                issues.invalid(field, "the client secret must be non-empty UTF-8");
                None
            }
        },
    }
}
