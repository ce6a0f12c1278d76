//! Wire format of the authentication methods beyond API keys (issue #4).
//!
//! Kept apart from `config.rs` so the authentication types evolve without touching the
//! structs every other policy shares. Public keys and URLs live here (ConfigMap half);
//! HMAC secrets and OAuth2 client secrets live in [`super::SecretConfig`] (Secret half).

use serde::{Deserialize, Serialize};

/// `authentication.jwt`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JwtConfig {
    /// External identity providers, in spec order.
    pub issuers: Vec<JwtIssuerConfig>,
    /// Also accept keys from `ConsumerCredential.jwt`, selected by `key_claim`.
    pub consumer_keys: bool,
    /// Header parameter (looked up first) or claim whose value names a consumer key.
    pub key_claim: String,
    /// Allowed `alg` values, exact case; never contains `none`.
    pub algorithms: Vec<String>,
    /// Registered claims that must be present (`exp`, `nbf`, `iat`); present ones are always
    /// checked whether listed or not.
    pub claims_to_verify: Vec<String>,
    /// Tokens whose `exp` lies further than this in the future are refused.
    pub maximum_expiration_secs: Option<u64>,
    pub clock_skew_secs: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JwtIssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Where the keys are; `None` with `oidc_discovery` means "ask the discovery document".
    pub jwks_uri: Option<String>,
    pub oidc_discovery: bool,
    /// Accepted `aud` values; empty = `aud` not checked.
    pub audiences: Vec<String>,
    /// Claim naming a consumer (`namespace/consumer` id or a consumer name in the route's
    /// namespace); `None` = the subject is authenticated without a consumer.
    pub consumer_claim: Option<String>,
}

/// A consumer's public key (RS*, PS*, ES*, EdDSA) from `ConsumerCredential.jwt`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct JwtPublicKeyConfig {
    pub key_id: String,
    pub algorithm: String,
    /// PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key: String,
}

/// A consumer's HMAC key (HS*), delivered in the Secret half.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct JwtSecretEntry {
    /// Consumer id, `namespace/consumer`.
    pub consumer: String,
    pub key_id: String,
    pub algorithm: String,
    /// The raw secret, standard base64.
    pub secret_base64: String,
}

/// `authentication.oauth2Introspection` (RFC 7662); the client secret is in
/// [`super::SecretConfig::introspection_secrets`] under the route id.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    /// 0 = no caching.
    pub cache_ttl_secs: u64,
    pub timeout_ms: u64,
}

/// The OAuth2 client secret of one route's introspection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretEntry {
    /// Route id, `namespace/name`.
    pub route: String,
    pub secret: String,
}

/// `authentication.forwardAuth` (NGINX `auth_request` semantics).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAuthConfig {
    pub url: String,
    /// Lowercased header names copied from the client request to the subrequest.
    pub copy_request_headers: Vec<String>,
    /// Lowercased header names copied from a 2xx answer to the upstream request.
    pub copy_response_headers: Vec<String>,
    /// 0 = no caching.
    pub cache_ttl_secs: u64,
    pub timeout_ms: u64,
}
