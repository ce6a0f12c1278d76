use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ObjectStatusFields, SecretKeyRef, SecretRef};

/// Rate limits and quotas, attached to routes or applied namespace-wide.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default,
)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "ObjectStatusFields",
    shortname = "rlp",
    category = "portcullis",
    printcolumn(name = "Key", type_ = "string", json_path = ".spec.key"),
    printcolumn(name = "Global", type_ = "boolean", json_path = ".spec.global"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Limited",
        type_ = "integer",
        json_path = ".status.enforcement.rateLimited"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// Applies to every route in its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
    /// Header name, with `key: Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<RateLimitAlgorithm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<RateLimitBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_backend_failure: Option<OnBackendFailure>,
    /// RateLimit-* headers and Retry-After; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<bool>,
    /// Client IPv6 addresses (key ClientIp, and the client-IP fallback of other keys)
    /// count by this many leading bits, 1-128; default 64, as one host commonly holds a
    /// whole /64. IPv4 addresses count whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix_length: Option<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum RateLimitKey {
    #[default]
    Consumer,
    ClientIp,
    ApiKey,
    Header,
    Route,
    Global,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum RateLimitAlgorithm {
    #[default]
    SlidingWindow,
    FixedWindow,
    TokenBucket,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    pub requests: u64,
    pub period: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    pub group: String,
    pub limits: Vec<Limit>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum QuotaPeriod {
    Day,
    #[default]
    Month,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    pub requests: u64,
    pub period: QuotaPeriod,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum BackendType {
    #[default]
    Local,
    Redis,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitBackend {
    #[serde(rename = "type", default)]
    pub type_: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisBackend>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisBackend {
    /// One Redis: `redis://host:port[/db]`, or `rediss://` for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://`, all alike).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_urls: Vec<String>,
    /// A master found through Redis Sentinel; excludes `url` and `clusterUrls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RedisSentinel>,
    /// ACL user sent with the password (`AUTH username password`); default the `default`
    /// user (`AUTH password`). Needs `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Key default `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// With `rediss://`: the CA that signs the servers' certificates, key `ca.crt` of this
    /// Secret. Without it the system's trusted roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
    /// With `rediss://`: a client certificate (a `kubernetes.io/tls` Secret, keys `tls.crt`
    /// and `tls.key`) for servers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinel {
    /// The master's name in the sentinels' configuration.
    pub master_name: String,
    /// Sentinels, `redis://host:port` or `rediss://host:port` (then the master is reached
    /// over TLS too, with the backend's `caSecretRef` and `clientCertSecretRef`).
    pub urls: Vec<String>,
    /// The sentinels' own password (`requirepass` of the sentinels), key default `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum OnBackendFailure {
    #[default]
    Deny,
    Allow,
    LocalFallback,
}
