//! The compiled gateway config: what the proxy enforces.
//!
//! This is the wire format between operator and proxies (JSON in a ConfigMap plus a Secret),
//! so every type here is plain data with stable field names. Everything is already validated:
//! the proxy may rely on regexes compiling, CIDRs parsing and durations being positive.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod auth;
pub use auth::*;
mod tls;
pub use tls::*;
mod waf;
pub use waf::*;

/// One complete, self-consistent config snapshot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    /// Content hash of everything below; both delivery halves carry it.
    pub generation: String,
    /// Routes in a deterministic order (namespace, name, path index); the proxy derives
    /// precedence from the match itself, not from this order.
    pub routes: Vec<RouteConfig>,
    /// Consumers that are enabled and accepted, by id (`namespace/consumer`). Delivered in
    /// the Secret half (with their keys), so absent from the ConfigMap half.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Which object generations this config contains, for the `Programmed` condition.
    /// Kept by the operator; not delivered to the proxies.
    #[serde(default)]
    pub objects: Vec<ObjectRef>,
    /// The half delivered through a Secret.
    #[serde(default)]
    pub secrets: SecretConfig,
    /// Accepted RateLimitPolicies by id; routes name the ones that apply to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit_policies: Vec<RateLimitPolicyConfig>,
    /// Certificate chains of TLS routes by Secret id; keys are in `secrets.tls_keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificateConfig>,
    /// Accepted WafPolicies by id; routes name the ones that apply to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waf_policies: Vec<WafPolicyConfig>,
}

/// Material that must never be written to a ConfigMap or logged.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretConfig {
    /// SHA-256 (hex) of each API key with the consumer it identifies.
    pub api_keys: Vec<ApiKeyEntry>,
    /// Redis passwords of rate-limit backends, by policy id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_passwords: Vec<RedisPasswordEntry>,
    /// Passwords of the Redis Sentinels of rate-limit backends, by policy id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_sentinel_passwords: Vec<RedisPasswordEntry>,
    /// TLS material (CA, client certificate) of `rediss://` rate-limit backends, by policy id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_tls: Vec<RedisTlsEntry>,
    /// HMAC keys of consumers (JWT HS*).
    #[serde(default)]
    pub jwt_secrets: Vec<JwtSecretEntry>,
    /// `oauth2ClientIds` of disabled consumers, sorted: an introspected token of one of these
    /// clients is refused, instead of being accepted as a principal without a consumer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_oauth2_client_ids: Vec<String>,
    /// OAuth2 introspection client secrets, by route.
    #[serde(default)]
    pub introspection_secrets: Vec<ClientSecretEntry>,
    /// Private keys of TLS certificates, by Secret id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_keys: Vec<TlsKeyEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyEntry {
    pub sha256: String,
    /// Consumer id, `namespace/consumer`.
    pub consumer: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    ApiRoute,
    ConsumerCredential,
    RateLimitPolicy,
    WafPolicy,
    Secret,
    /// `networking.k8s.io/v1` Ingress of a Portcullis IngressClass.
    Ingress,
    /// Gateway API kinds of a Portcullis GatewayClass.
    GatewayClass,
    Gateway,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::ApiRoute => "ApiRoute",
            ObjectKind::ConsumerCredential => "ConsumerCredential",
            ObjectKind::RateLimitPolicy => "RateLimitPolicy",
            ObjectKind::WafPolicy => "WafPolicy",
            ObjectKind::Secret => "Secret",
            ObjectKind::Ingress => "Ingress",
            ObjectKind::GatewayClass => "GatewayClass",
            ObjectKind::Gateway => "Gateway",
            ObjectKind::HttpRoute => "HTTPRoute",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerConfig {
    /// `namespace/consumer`.
    pub id: String,
    pub namespace: String,
    /// The consumer name sent upstream as `X-Consumer-Username`.
    pub username: String,
    pub groups: Vec<String>,
    /// Public JWT keys (RS*, PS*, ES*, EdDSA); HMAC keys are in the Secret half.
    #[serde(default)]
    pub jwt_keys: Vec<JwtPublicKeyConfig>,
    /// OAuth2 `client_id`/`azp` values that identify this consumer.
    #[serde(default)]
    pub oauth2_client_ids: Vec<String>,
    /// Client-certificate identities (MutualTls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsConfig>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    /// `namespace/name`; the label used in metrics and the audit log.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// Lowercased; `*.example.com` matches exactly one extra label. Empty = any host.
    pub hosts: Vec<String>,
    pub paths: Vec<PathRule>,
    /// Uppercase; empty = all.
    pub methods: Vec<String>,
    /// Header names lowercased; values compared exactly.
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<HeaderMatch>,
    /// How request paths are normalised for this route (the defaults are left out of the
    /// serialised config).
    #[serde(default, skip_serializing_if = "PathNormalizationConfig::is_default")]
    pub path_normalization: PathNormalizationConfig,
    pub strip_path: bool,
    pub rewrite_prefix: Option<String>,
    pub upstream: UpstreamConfig,
    // The optional policies are boxed: most routes have few of them, and a proxy holds two
    // copies of every route while it swaps configs (10k routes: ~8 MB less per copy).
    pub authentication: Option<Box<AuthenticationConfig>>,
    pub authorization: Option<Box<AuthorizationConfig>>,
    pub ip_restriction: Option<Box<IpRestrictionConfig>>,
    pub request_validation: Option<Box<ValidationConfig>>,
    pub response_headers: ResponseHeadersConfig,
    pub security_headers: bool,
    pub cors: Option<Box<CorsConfig>>,
    pub sanitize_upstream_errors: bool,
    /// Ids of the RateLimitPolicies that apply: the route's own, then its namespace's
    /// global ones, without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit_policies: Vec<String>,
    /// TLS termination for the route's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTlsConfig>,
    /// Ids of the WafPolicies that apply: the route's own `wafPolicy`, then its namespace's
    /// global ones. Each is enforced; any of them may block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waf_policies: Vec<String>,
    /// Request headers changed before forwarding (Gateway API `RequestHeaderModifier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<RequestHeadersConfig>>,
    /// The whole path forwarded instead of the request's (`URLRewrite` `ReplaceFullPath`);
    /// the query is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_path: Option<String>,
    /// Answer with a redirect instead of forwarding (`RequestRedirect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Box<RedirectConfig>>,
}

/// Request header changes, applied in this order: remove, set (replacing), add (appending).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestHeadersConfig {
    /// Lowercased names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Lowercased names with their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderMatch>,
}

/// A redirect: each part left `None` keeps the request's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedirectConfig {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Replaces the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_path: Option<String>,
    /// Replaces the matched prefix (the route's Prefix path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// 301 or 302.
    pub status: u16,
}

/// `ApiRoute.spec.pathNormalization`: see [`crate::path`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalizationConfig {
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and `\` are forwarded encoded instead of refused with 400.
    pub pass_encoded_slashes: bool,
}

impl Default for PathNormalizationConfig {
    fn default() -> Self {
        PathNormalizationConfig {
            merge_slashes: true,
            pass_encoded_slashes: false,
        }
    }
}

impl PathNormalizationConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    Exact,
    Prefix,
    Regex,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PathRule {
    pub kind: PathKind,
    /// For Exact and Prefix: in normal form ([`crate::path::normalize`]); a Prefix without a
    /// trailing slash (except `/`). For Regex: matched against normalised paths, anchored
    /// by the proxy (`^(?:value)$`), validated here.
    pub value: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub targets: Vec<TargetConfig>,
    pub load_balancing: LoadBalancing,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub send_timeout_ms: u64,
    /// Extra attempts for idempotent methods.
    pub retries: u32,
    pub direct_response: Option<DirectResponseConfig>,
    /// Verification of `https://` targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Cluster mode: connect only to addresses that are not loopback, link-local or
    /// unspecified, also when a target's name resolves to one (docs/multi-tenancy.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refuse_internal_addresses: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetConfig {
    /// `http://host:port` or `https://host:port` (no path). For a Service target, its DNS
    /// name (`http://NAME.NAMESPACE.svc:PORT`): what a proxy dials when it does not resolve
    /// endpoints itself (standalone mode, `--endpoints-source off`), and the `Host` header
    /// it sends to the Service's endpoints.
    pub url: String,
    pub weight: u32,
    /// The Service whose ready endpoints a cluster-mode proxy balances over instead of
    /// dialling `url` (the Service's virtual IP would hide the pods from load balancing and
    /// passive health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackendConfig>,
}

/// A Service port, as the route names it: by number or by name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackendConfig {
    pub namespace: String,
    pub name: String,
    /// The Service's `spec.ports[].port`; 0 when the port is named.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u16,
    /// The Service's `spec.ports[].name`, when the route names the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponseConfig {
    pub status: u16,
    pub body: String,
    pub content_type: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthMethodConfig {
    ApiKey,
    Jwt,
    OAuth2Introspection,
    ForwardAuth,
    MutualTls,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationConfig {
    pub methods: Vec<AuthMethodConfig>,
    pub optional: bool,
    pub hide_credentials: bool,
    /// Header carrying the API key (lowercased).
    pub api_key_header: Option<String>,
    pub api_key_query_param: Option<String>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub oauth2_introspection: Option<IntrospectionConfig>,
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Namespaces besides the route's own whose consumers may authenticate here, in the
    /// order they are tried (sorted, without the route's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumer_namespaces: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationConfig {
    pub allow_groups: Vec<String>,
    pub deny_groups: Vec<String>,
    /// All required; from `scope`/`scp` or the introspection answer.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// All required; from `roles_claim`.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Dotted path into the JWT claims (`realm_access.roles`).
    #[serde(default)]
    pub roles_claim: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpRestrictionConfig {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ValidationConfig {
    pub max_body_bytes: Option<u64>,
    /// Lowercased media types without parameters (`application/json`); `type/*` allowed.
    pub allowed_content_types: Vec<String>,
    /// Validated to compile at compile time.
    pub json_schema: Option<serde_json::Value>,
    pub max_json_depth: Option<u32>,
    /// Lowercased header names.
    pub required_headers: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResponseHeadersConfig {
    pub add: BTreeMap<String, String>,
    /// Lowercased header names.
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct RedisPasswordEntry {
    /// `namespace/name` of the RateLimitPolicy.
    pub policy: String,
    pub password: String,
}

/// What a `rediss://` backend trusts and presents; absent fields: the system roots, no
/// client certificate.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisTlsEntry {
    /// `namespace/name` of the RateLimitPolicy.
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
}

/// One accepted RateLimitPolicy, durations in milliseconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicyConfig {
    /// `namespace/name`; the `policy` label of `api_rate_limit_exceeded_total`.
    pub id: String,
    pub namespace: String,
    pub global: bool,
    pub key: RateLimitKeyConfig,
    /// Lowercased header name, with `key: Header`.
    pub header: Option<String>,
    pub algorithm: RateLimitAlgorithmConfig,
    pub limits: Vec<LimitConfig>,
    /// Only with Consumer and ApiKey keys: the first tier whose group the consumer is in
    /// replaces `limits`.
    pub tiers: Vec<TierConfig>,
    pub quota: Option<QuotaConfig>,
    pub backend: RateLimitBackendConfig,
    pub on_backend_failure: OnBackendFailureConfig,
    pub response_headers: bool,
    /// Client IPv6 addresses count by this many leading bits (1-128); IPv4 by address.
    /// Defaulted so that a config compiled before the field existed still loads.
    #[serde(default = "default_ipv6_prefix_length")]
    pub ipv6_prefix_length: u8,
}

/// One IPv6 host commonly holds a whole /64 (SLAAC, RFC 6177 assignments).
pub const DEFAULT_IPV6_PREFIX_LENGTH: u8 = 64;

fn default_ipv6_prefix_length() -> u8 {
    DEFAULT_IPV6_PREFIX_LENGTH
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitKeyConfig {
    Consumer,
    ClientIp,
    ApiKey,
    Header,
    Route,
    Global,
}

impl RateLimitKeyConfig {
    /// Keys that need no identity are checked before authentication (docs/architecture.md, pipeline step 5).
    pub fn is_pre_auth(self) -> bool {
        matches!(
            self,
            RateLimitKeyConfig::ClientIp
                | RateLimitKeyConfig::Header
                | RateLimitKeyConfig::Route
                | RateLimitKeyConfig::Global
        )
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitAlgorithmConfig {
    SlidingWindow,
    FixedWindow,
    TokenBucket,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitConfig {
    pub requests: u64,
    pub period_ms: u64,
    /// TokenBucket only: bucket size; defaults to `requests`.
    pub burst: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TierConfig {
    pub group: String,
    pub limits: Vec<LimitConfig>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaPeriodConfig {
    Day,
    Month,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QuotaConfig {
    pub requests: u64,
    pub period: QuotaPeriodConfig,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum RateLimitBackendConfig {
    Local,
    #[serde(rename_all = "camelCase")]
    Redis {
        /// One `redis://` URL, or the seed nodes of a cluster.
        urls: Vec<String>,
        cluster: bool,
        timeout_ms: u64,
        /// The password is in `SecretConfig::redis_passwords` under this policy's id.
        has_password: bool,
        /// ACL user sent with the password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// The master is found through these sentinels (`urls` is then empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sentinel: Option<RedisSentinelConfig>,
        /// `rediss://`: TLS to every node (and sentinel); material in
        /// `SecretConfig::redis_tls` under this policy's id, if any.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tls: bool,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelConfig {
    pub master_name: String,
    /// `redis://` or `rediss://` URLs of the sentinels.
    pub urls: Vec<String>,
    /// The sentinels' password is in `SecretConfig::redis_sentinel_passwords`.
    pub has_password: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendFailureConfig {
    Deny,
    Allow,
    LocalFallback,
}

impl GatewayConfig {
    /// An empty config: serves nothing but 404s. Used before the first load.
    pub fn empty() -> Self {
        Self {
            generation: "empty".into(),
            ..Self::default()
        }
    }
}
