//! Prometheus metrics.
//!
//! Counter handles are cached per compiled route on first use (a `OnceLock` per method and
//! status class), so the hot path is an atomic increment without building label sets or
//! touching the family's lock.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use portcullis_waf::{Group, Mode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::errors::GatewayError;
use crate::ratelimit::RateLimitError;
use crate::waf::WafState;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: String,
    /// `connect`, `timeout`, `failed`, `no_targets` (fixed).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub route: String,
    /// The pipeline step that refused the request (fixed: `waf`, `rate_limit`, …).
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
    /// `none` on success; the failing part of the config otherwise (fixed).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabels {
    pub generation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanResultLabels {
    /// `exported`, `dropped` (queue full), `failed` (the collector refused or was down).
    pub result: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Bucket bounds in seconds: a proxied request takes tens to hundreds of microseconds, so
/// the first buckets are sub-millisecond; the last ones still see slow upstreams.
const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
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
    audit_dropped: Family<ReasonLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    upstream_durations: HistogramFamily,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Requests being handled (from head to response head).
    pub in_flight: Gauge,
    /// Client connections open on the proxy listeners.
    pub open_connections: Gauge,
    config_info: Family<GenerationLabels, Gauge>,
    /// The generation `config_info` shows (reloads only, never the request path).
    shown_generation: Mutex<Option<String>>,
    reloads: Family<ReloadLabels, Counter>,
    decision_records: Family<VerdictLabels, Gauge>,
    spans: Family<SpanResultLabels, Counter>,
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
        let audit_dropped = Family::<ReasonLabels, Counter>::default();
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "api_denials",
            "Requests the gateway refused or failed, by route and pipeline step",
            denials.clone(),
        );
        let upstream_durations: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let in_flight = Gauge::default();
        let open_connections = Gauge::default();
        let config_info = Family::<GenerationLabels, Gauge>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let decision_records = Family::<VerdictLabels, Gauge>::default();
        let spans = Family::<SpanResultLabels, Counter>::default();
        registry.register(
            "api_audit_dropped",
            "Audit lines lost: the writer was behind (queue_full) or the output failed (write_failed)",
            audit_dropped.clone(),
        );
        registry.register(
            "api_upstream_duration_seconds",
            "Time from sending the request upstream to the upstream's response head, by route",
            upstream_durations.clone(),
        );
        registry.register(
            "api_upstream_errors",
            "Upstream failures by route and kind (connect, timeout, failed, no_targets)",
            upstream_errors.clone(),
        );
        registry.register(
            "api_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "api_connections_open",
            "Client connections open on the proxy listeners",
            open_connections.clone(),
        );
        registry.register(
            "api_config_info",
            "The loaded config generation (value 1)",
            config_info.clone(),
        );
        registry.register(
            "api_config_reloads",
            "Config loads by result and, for failures, the part of the config that failed",
            reloads.clone(),
        );
        registry.register(
            "api_decision_records",
            "Decision records held for GET /decisions, by verdict",
            decision_records.clone(),
        );
        registry.register(
            "api_trace_spans",
            "Spans sent to the OTLP collector (exported), dropped on a full queue, or failed",
            spans.clone(),
        );
        // Series that dashboards and alerts read exist from the start (at zero).
        for reason in ["queue_full", "write_failed"] {
            let _ = audit_dropped.get_or_create(&ReasonLabels { reason });
        }
        for result in ["exported", "dropped", "failed"] {
            let _ = spans.get_or_create(&SpanResultLabels { result });
        }
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
            denials,
            upstream_durations,
            upstream_errors,
            in_flight,
            open_connections,
            config_info,
            shown_generation: Mutex::new(None),
            reloads,
            decision_records,
            spans,
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

    /// The counters the audit log adds lost lines to.
    pub fn audit_counters(&self) -> crate::audit::AuditCounters {
        let get = |reason| {
            self.audit_dropped
                .get_or_create(&ReasonLabels { reason })
                .clone()
        };
        crate::audit::AuditCounters {
            queue_full: get("queue_full"),
            write_failed: get("write_failed"),
        }
    }

    /// The gauges of the decision buffer.
    pub fn decision_gauges(&self) -> crate::decisions::DecisionGauges {
        let get = |verdict| {
            self.decision_records
                .get_or_create(&VerdictLabels { verdict })
                .clone()
        };
        crate::decisions::DecisionGauges {
            denials: get("deny"),
            allowed: get("allow"),
        }
    }

    /// The span counter for one result of the OTLP exporter.
    pub fn span_counter(&self, result: &'static str) -> Counter {
        self.spans
            .get_or_create(&SpanResultLabels { result })
            .clone()
    }

    /// Time to the upstream's response head.
    pub fn upstream_latency(&self, route: &RouteMetrics, elapsed: Duration) {
        route
            .upstream
            .get_or_init(|| {
                self.upstream_durations
                    .get_or_create(&RouteLabels {
                        route: route.route.clone(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Denials only, like `rate_limited`.
    pub fn denied(&self, route: &str, step: &'static str) {
        self.denials
            .get_or_create(&DenialLabels {
                route: route.to_string(),
                step,
            })
            .inc();
    }

    /// Failures only: building the label set costs nothing on successful requests.
    pub fn upstream_error(&self, route: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: route.to_string(),
                kind,
            })
            .inc();
    }

    /// A config load: its result, and the generation now served.
    pub fn config_loaded(&self, generation: &str) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: "success",
                reason: "none",
            })
            .inc();
        self.show_generation(generation);
    }

    pub fn config_failed(&self, reason: &'static str) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: "failure",
                reason,
            })
            .inc();
    }

    /// One `api_config_info` series: the previous generation's is removed.
    pub fn show_generation(&self, generation: &str) {
        let Ok(mut shown) = self.shown_generation.lock() else {
            return;
        };
        if let Some(old) = shown.take() {
            self.config_info
                .remove(&GenerationLabels { generation: old });
        }
        self.config_info
            .get_or_create(&GenerationLabels {
                generation: generation.to_string(),
            })
            .set(1);
        *shown = Some(generation.to_string());
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

    /// The WAF outcome of one request: blocked requests by rule group, and Detect-mode
    /// requests that would have been blocked.
    pub fn waf_outcome(&self, route: &str, state: &WafState) {
        if let Some(group) = state.blocking_group() {
            self.waf_blocked(route, group);
            return;
        }
        for (_, eval, _, mode) in state.evaluations() {
            if mode == Mode::Detect && !eval.findings.is_empty() {
                let group = eval.main_group().map_or("custom", Group::as_str);
                self.waf_detected(route, group);
            }
        }
    }

    /// Every counter a refused request counts in: `api_denials_total` always, and the
    /// step's own counter (authentication failures, rate limiting, upstream errors) when a
    /// route matched.
    pub fn refused(&self, route: Option<&str>, error: &GatewayError) {
        if let Some(route) = route {
            match error {
                GatewayError::Auth(e) => self.auth_failure(route, e.reason()),
                GatewayError::RateLimit(e @ RateLimitError::Exceeded(_)) => {
                    self.rate_limited(route, e.policy())
                }
                GatewayError::Upstream(e) => {
                    if let Some(kind) = e.kind() {
                        self.upstream_error(route, kind);
                    }
                }
                _ => {}
            }
        }
        self.denied(route.unwrap_or("none"), error.step());
    }

    /// The Prometheus text format 0.0.4, for scrapers and tools that do not ask for
    /// OpenMetrics (`promtool check metrics`, a plain `curl`): counter families are named with
    /// their `_total` suffix and `# EOF` is dropped.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("failed to encode metrics");
        }
        out
    }
}

fn openmetrics_to_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 64 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
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
    upstream: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: route.to_string(),
            requests: OnceLock::new(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_with_total() {
        let metrics = Metrics::new();
        metrics.denied("a/b", "waf");
        let text = metrics.encode_text();
        assert!(text.contains("# HELP api_denials_total Requests"), "{text}");
        assert!(text.contains("# TYPE api_denials_total counter"), "{text}");
        assert!(
            text.contains("api_denials_total{route=\"a/b\",step=\"waf\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(metrics.encode().ends_with("# EOF\n"));
    }
}
