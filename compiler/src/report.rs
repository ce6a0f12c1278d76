//! What each proxy replica reports back: the generation it runs and its per-route counters.
//! Carried as an annotation of the replica's Lease, which the replica renews every few
//! seconds; the Lease's renew time says whether the replica is alive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label on every proxy report Lease (value `"true"`).
pub const REPORT_LABEL: &str = "portcullis.dev/proxy-report";
/// Annotation holding the JSON [`ProxyReport`].
pub const REPORT_ANNOTATION: &str = "portcullis.dev/report";
/// Name prefix of report Leases: `portcullis-proxy-REPLICA`.
pub const LEASE_PREFIX: &str = "portcullis-proxy-";
/// A replica whose Lease was not renewed for this long is considered gone: three report
/// intervals, this with the default 5 s (the replica writes its own into its Lease).
pub const LEASE_DURATION_SECONDS: i32 = 15;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    pub replica: String,
    /// Generation id of the loaded config; `None` until the first load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// RFC 3339 start time of the replica: counters count from here.
    pub started_at: String,
    /// Counters by route id (`namespace/name`); routes with no traffic are left out.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteCounters>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteCounters {
    pub requests: u64,
    pub auth_failures: u64,
    pub rate_limited: u64,
    pub waf_blocked: u64,
    pub validation_failed: u64,
}

impl RouteCounters {
    pub fn add(&mut self, other: &RouteCounters) {
        self.requests += other.requests;
        self.auth_failures += other.auth_failures;
        self.rate_limited += other.rate_limited;
        self.waf_blocked += other.waf_blocked;
        self.validation_failed += other.validation_failed;
    }

    /// Every denial the gateway made for policy reasons.
    pub fn blocked(&self) -> u64 {
        self.auth_failures + self.rate_limited + self.waf_blocked + self.validation_failed
    }
}
