//! Prometheus metrics.
//!
//! Counter handles are cached per compiled route on first use (a `OnceLock` per method and
//! status class), so the hot path is an atomic increment without building label sets or
//! touching the family's lock.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    pub route: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub route: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WafLabels {
    pub route: String,
    pub rule_group: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    auth_failures: Family<AuthFailureLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    waf_blocked: Family<WafLabels, Counter>,
    waf_detected: Family<WafLabels, Counter>,
    shed: Counter,
    audit_dropped: Counter,
    /// Requests that matched no route.
    pub unmatched: RouteMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        let waf_blocked = Family::<WafLabels, Counter>::default();
        let waf_detected = Family::<WafLabels, Counter>::default();
        let shed = Counter::default();
        let audit_dropped = Counter::default();
        registry.register(
            "api_audit_lines_dropped",
            "Audit lines lost because the writer was behind or the output failed",
            audit_dropped.clone(),
        );
        registry.register(
            "api_requests_shed",
            "Requests answered 503 at once because the in-flight cap was reached",
            shed.clone(),
        );
        registry.register(
            "api_requests",
            "Requests handled, by route, method and status class",
            requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time from request head to response head, by route",
            durations.clone(),
        );
        registry.register(
            "api_auth_failures",
            "Authentication and authorization failures",
            auth_failures.clone(),
        );
        registry.register(
            "api_rate_limit_exceeded",
            "Requests denied by a rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "api_waf_blocked",
            "Requests blocked by the WAF",
            waf_blocked.clone(),
        );
        registry.register(
            "api_waf_detected",
            "Requests a Detect-mode WAF policy flagged (not blocked)",
            waf_detected.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            auth_failures,
            rate_limited,
            waf_blocked,
            waf_detected,
            shed,
            audit_dropped,
            unmatched: RouteMetrics::new("none"),
        }
    }

    pub fn record(
        &self,
        route: &RouteMetrics,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let m = method_index(method);
        let s = status_class_index(status);
        route.requests.get_or_init(Box::default)[m][s]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: route.route.clone(),
                        method: METHODS[m].to_string(),
                        status_class: CLASSES[s].to_string(),
                    })
                    .clone()
            })
            .inc();
        route
            .duration
            .get_or_init(|| {
                self.durations
                    .get_or_create(&RouteLabels {
                        route: route.route.clone(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The counter the audit writer adds lost lines to.
    pub fn audit_dropped(&self) -> Counter {
        self.audit_dropped.clone()
    }

    pub fn shed(&self) {
        self.shed.inc();
    }

    pub fn auth_failure(&self, route: &str, reason: &str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels {
                route: route.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Denials only, so building the label set here costs nothing on admitted requests.
    pub fn rate_limited(&self, route: &str, policy: &str) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                route: route.to_string(),
                policy: policy.to_string(),
            })
            .inc();
    }

    /// Denials only, like `rate_limited`.
    pub fn waf_blocked(&self, route: &str, rule_group: &str) {
        self.waf_blocked
            .get_or_create(&WafLabels {
                route: route.to_string(),
                rule_group: rule_group.to_string(),
            })
            .inc();
    }

    pub fn waf_detected(&self, route: &str, rule_group: &str) {
        self.waf_detected
            .get_or_create(&WafLabels {
                route: route.to_string(),
                rule_group: rule_group.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("failed to encode metrics");
        }
        out
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class_index(status: StatusCode) -> usize {
    (status.as_u16() / 100).clamp(1, 5) as usize - 1
}

/// Per-route handles into the shared families.
pub struct RouteMetrics {
    pub route: String,
    /// By method and status class; allocated on the route's first request, so that the
    /// routes that see no traffic (most of them in a large config) cost one word here.
    requests: OnceLock<Box<[[OnceLock<Counter>; 5]; 8]>>,
    duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: route.to_string(),
            requests: OnceLock::new(),
            duration: OnceLock::new(),
        }
    }
}
