use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A status condition following Gateway API conventions.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs` or `Programmed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason constant.
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// How many proxy replicas run a config that contains this object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProxiesStatus {
    pub ready: u32,
    pub total: u32,
    /// `ready/total`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<String>,
}

/// Enforcement counters summed over the live proxy replicas.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementStatus {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub auth_failures: u64,
    #[serde(default)]
    pub rate_limited: u64,
    #[serde(default)]
    pub waf_blocked: u64,
    #[serde(default)]
    pub validation_failed: u64,
    /// Sum of every denial counter, for the BLOCKED column.
    #[serde(default)]
    pub blocked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Status shared by all four kinds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatusFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxiesStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<EnforcementStatus>,
}
