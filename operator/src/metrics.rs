//! The operator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub compile_seconds: Histogram,
    pub config_bytes: Gauge,
    pub proxies_live: Gauge,
    pub status_writes: Counter,
    pub status_backlog: Gauge,
    pub status_evaluate_seconds: Histogram,
    pub events_dropped: Counter,
    pub leader: Gauge,
    pub config_repairs: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let compile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let config_bytes = Gauge::default();
        let proxies_live = Gauge::default();
        let status_writes = Counter::default();
        let status_backlog = Gauge::default();
        let status_evaluate_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let events_dropped = Counter::default();
        let leader = Gauge::default();
        let config_repairs = Counter::default();
        registry.register(
            "config_repairs",
            "Times the published config objects were written again after someone else changed or deleted them",
            config_repairs.clone(),
        );
        registry.register("reconciles", "Full reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by reason",
            errors.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Time to compile the whole snapshot",
            compile_seconds.clone(),
        );
        registry.register(
            "config_bytes",
            "Compressed bytes of the last published config",
            config_bytes.clone(),
        );
        registry.register(
            "proxies_live",
            "Proxy replicas with a live report",
            proxies_live.clone(),
        );
        registry.register(
            "status_writes",
            "Status subresource writes",
            status_writes.clone(),
        );
        registry.register(
            "status_backlog",
            "Status writes queued or in flight for the newest plan",
            status_backlog.clone(),
        );
        registry.register(
            "status_evaluate_duration_seconds",
            "Time to compare every object's desired status with the cache",
            status_evaluate_seconds.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not sent because the rate-limited queue was full",
            events_dropped.clone(),
        );
        registry.register("leader", "1 while this replica leads", leader.clone());
        Self {
            registry,
            reconciles,
            errors,
            compile_seconds,
            config_bytes,
            proxies_live,
            status_writes,
            status_backlog,
            status_evaluate_seconds,
            events_dropped,
            leader,
            config_repairs,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
