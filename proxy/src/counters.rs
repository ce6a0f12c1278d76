//! Per-route enforcement counters for the replica's report to the operator (cluster mode):
//! requests, authentication failures, rate-limited, WAF-blocked and validation failures.
//!
//! Counters are keyed by route id and live in a [`CounterRegistry`] that outlives config
//! swaps: a compiled route holds an `Arc` to its route's counters, taken once at config
//! load, so a swap neither resets them nor puts a lock on the request path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use portcullis_compiler::report;

/// The denial kinds the report counts. Every denial step maps to at most one
/// ([`crate::errors::GatewayError::enforcement`]), so adding rate limiting or the WAF only
/// needs that mapping, not changes here or in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    AuthFailure,
    RateLimited,
    WafBlocked,
    ValidationFailed,
}

#[derive(Debug, Default)]
pub struct RouteCounters {
    requests: AtomicU64,
    auth_failures: AtomicU64,
    rate_limited: AtomicU64,
    waf_blocked: AtomicU64,
    validation_failed: AtomicU64,
}

impl RouteCounters {
    /// Counts one answered request and, if it was denied for a policy reason, the denial.
    pub fn record(&self, denial: Option<Enforcement>) {
        // Relaxed: the counters are independent totals read only for reporting.
        self.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match denial {
            None => return,
            Some(Enforcement::AuthFailure) => &self.auth_failures,
            Some(Enforcement::RateLimited) => &self.rate_limited,
            Some(Enforcement::WafBlocked) => &self.waf_blocked,
            Some(Enforcement::ValidationFailed) => &self.validation_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> report::RouteCounters {
        report::RouteCounters {
            requests: self.requests.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            waf_blocked: self.waf_blocked.load(Ordering::Relaxed),
            validation_failed: self.validation_failed.load(Ordering::Relaxed),
        }
    }
}

/// Counters by route id, shared by every config the process loads.
#[derive(Debug, Default)]
pub struct CounterRegistry {
    routes: RwLock<HashMap<String, Arc<RouteCounters>>>,
}

impl CounterRegistry {
    /// The counters of each of `route_ids`, creating missing ones. Called once per config
    /// load. Counters of routes gone from the config are dropped once no loaded config holds
    /// them any more (the previous config still does during this call, so they go at the
    /// following load): memory stays bounded under route churn.
    pub fn for_routes<'a>(
        &self,
        route_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Arc<RouteCounters>> {
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut wanted = HashSet::new();
        let counters = route_ids
            .into_iter()
            .map(|id| {
                wanted.insert(id.to_string());
                routes.entry(id.to_string()).or_default().clone()
            })
            .collect();
        routes.retain(|id, c| wanted.contains(id) || Arc::strong_count(c) > 1);
        counters
    }

    /// Counters of every route that saw traffic, for the report.
    pub fn snapshot(&self) -> BTreeMap<String, report::RouteCounters> {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes
            .iter()
            .map(|(id, c)| (id.clone(), c.snapshot()))
            .filter(|(_, c)| c.requests > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counters_survive_reloads_and_gone_routes_are_dropped() {
        let registry = CounterRegistry::default();
        let first = registry.for_routes(["a/one", "a/two"]);
        first[0].record(None);
        first[0].record(Some(Enforcement::AuthFailure));
        first[1].record(Some(Enforcement::ValidationFailed));
        let second = registry.for_routes(["a/one"]);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        second[0].record(None);
        let snap = registry.snapshot();
        assert_eq!(snap["a/one"].requests, 3);
        assert_eq!(snap["a/one"].auth_failures, 1);
        assert_eq!(snap["a/two"].validation_failed, 1);
        drop(first);
        let _third = registry.for_routes(["a/one"]);
        assert!(!registry.snapshot().contains_key("a/two"));
        assert_eq!(registry.snapshot()["a/one"].requests, 3);
    }

    #[test]
    fn routes_without_traffic_are_left_out() {
        let registry = CounterRegistry::default();
        let _c = registry.for_routes(["a/idle"]);
        assert!(registry.snapshot().is_empty());
    }
}
