//! Decision records: why each recent request was allowed or denied, for `GET /decisions/<id>`
//! on the admin listener and `portcullis-proxy explain`.
//!
//! Two fixed rings of lock-free slots (`ArcSwapOption`): one for denials, which are always
//! recorded, and a smaller one for allowed requests, of which only a sampled share is
//! recorded, so a flood of good traffic can never push a denial out. A writer claims a slot
//! with one atomic increment and swaps its record in; readers (the admin listener) scan.
//! Nothing here holds a credential: the path is an escaped excerpt without the query, and
//! WAF excerpts of credential-bearing targets are replaced (see [`crate::waf::redacted`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::StatusCode;
use portcullis_waf::{Decision, Mode};
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::ratelimit::RateLimitError;
use crate::waf::{redacted, WafState};

/// Records kept by default (denials; allowed requests get a quarter of it).
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Share of allowed requests recorded by default.
pub const DEFAULT_ALLOWED_SAMPLE: f64 = 0.01;
/// Longest path excerpt kept, in characters.
const PATH_CHARS: usize = 160;

#[derive(Serialize, Debug, Clone)]
pub struct DecisionRecord {
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub timestamp: String,
    /// Which proxy replica served the request (its admin URL answers for it).
    #[serde(serialize_with = "as_str")]
    pub replica: Arc<str>,
    /// The config generation that decided.
    pub generation: String,
    pub route: Option<String>,
    pub consumer: Option<String>,
    pub method: String,
    /// Escaped, shortened, never the query.
    pub path: String,
    pub status: u16,
    /// `allow` or `deny`.
    pub verdict: &'static str,
    pub step: Option<&'static str>,
    pub reason: Option<&'static str>,
    /// The message the client got (fixed strings chosen by the gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitEvidence>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waf: Vec<WafEvidence>,
    #[serde(skip)]
    seq: u64,
}

fn as_str<S: serde::Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value)
}

#[derive(Serialize, Debug, Clone)]
pub struct RateLimitEvidence {
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Seconds until the window lets the client in again (the `Retry-After` it got).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct WafEvidence {
    pub policy: String,
    pub mode: &'static str,
    pub score: u32,
    pub blocked: bool,
    pub findings: Vec<FindingEvidence>,
}

#[derive(Serialize, Debug, Clone)]
pub struct FindingEvidence {
    pub rule_id: u32,
    pub group: &'static str,
    /// `Query:q`, `Json:$.items[2].sku`, `Header:User-Agent`, …
    pub target: String,
    pub score: u32,
    pub excerpt: String,
    pub message: &'static str,
}

/// What a request's decision record and spans say about the answer it got.
pub struct Answered<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// The normalised path when it differs from the request's.
    pub path: &'a str,
    pub status: StatusCode,
    pub route: Option<&'a str>,
    /// The step that stopped the request and why, for a denial.
    pub denial: Option<(&'static str, &'static str)>,
}

impl DecisionRecord {
    pub fn new(
        answered: &Answered<'_>,
        trace_id: Option<String>,
        replica: Arc<str>,
        generation: &str,
    ) -> Self {
        DecisionRecord {
            request_id: answered.request_id.to_string(),
            trace_id,
            timestamp: crate::audit::timestamp(),
            replica,
            generation: generation.to_string(),
            route: answered.route.map(str::to_string),
            consumer: None,
            method: answered.method.to_string(),
            path: excerpt(answered.path, PATH_CHARS),
            status: answered.status.as_u16(),
            verdict: if answered.denial.is_some() {
                "deny"
            } else {
                "allow"
            },
            step: answered.denial.map(|d| d.0),
            reason: answered.denial.map(|d| d.1),
            message: None,
            rate_limit: None,
            waf: Vec::new(),
            seq: 0,
        }
    }
}

impl RateLimitEvidence {
    /// The policy and limit that refused a request, and the `Retry-After` it was given.
    pub fn of(error: &RateLimitError) -> Self {
        RateLimitEvidence {
            policy: error.policy().to_string(),
            limit: error.limit().map(str::to_string),
            retry_after_secs: match error {
                RateLimitError::Exceeded(x) => Some(x.retry_after_secs.max(1)),
                RateLimitError::Unavailable { .. } | RateLimitError::DuplicateKeyHeader { .. } => {
                    None
                }
            },
        }
    }
}

/// The WAF evidence for a decision record: every policy that found something.
pub fn waf_evidence(state: &WafState) -> Vec<WafEvidence> {
    state
        .evaluations()
        .filter(|(_, e, _, _)| !e.findings.is_empty())
        .map(|(policy, e, decision, mode)| WafEvidence {
            policy: policy.to_string(),
            mode: match mode {
                Mode::Block => "Block",
                Mode::Detect => "Detect",
            },
            score: e.score,
            blocked: decision != Decision::Allow,
            findings: e
                .findings
                .iter()
                .map(|f| FindingEvidence {
                    rule_id: f.rule_id,
                    group: f.group.as_str(),
                    target: f.target.clone(),
                    score: f.score,
                    excerpt: redacted(&f.target, &f.excerpt).to_string(),
                    message: f.message,
                })
                .collect(),
        })
        .collect()
}

/// At most `max` characters of `text`, control characters and quotes escaped, `…` when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 4);
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

struct Ring {
    slots: Box<[ArcSwapOption<DecisionRecord>]>,
    next: AtomicU64,
    held: Gauge,
}

impl Ring {
    fn new(capacity: usize, held: Gauge) -> Self {
        Ring {
            slots: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            next: AtomicU64::new(0),
            held,
        }
    }

    fn push(&self, mut record: DecisionRecord) {
        if self.slots.is_empty() {
            return;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        record.seq = seq;
        let slot = (seq % self.slots.len() as u64) as usize;
        self.slots[slot].store(Some(Arc::new(record)));
        self.held.set((seq + 1).min(self.slots.len() as u64) as i64);
    }

    fn iter(&self) -> impl Iterator<Item = Arc<DecisionRecord>> + '_ {
        self.slots.iter().filter_map(|s| s.load_full())
    }
}

/// The decision buffer of one proxy process.
pub struct DecisionLog {
    denials: Ring,
    allowed: Ring,
    allowed_sample: f64,
}

/// The `api_decision_records` gauges, by verdict.
pub struct DecisionGauges {
    pub denials: Gauge,
    pub allowed: Gauge,
}

impl DecisionLog {
    /// `capacity` denials and `capacity / 4` sampled allowed requests; 0 turns recording off.
    pub fn new(capacity: usize, allowed_sample: f64, gauges: DecisionGauges) -> Self {
        DecisionLog {
            denials: Ring::new(capacity, gauges.denials),
            allowed: Ring::new(capacity / 4, gauges.allowed),
            allowed_sample: allowed_sample.clamp(0.0, 1.0),
        }
    }

    /// Whether this request's record should be built: every denial, a sample of the rest.
    /// Asked before anything is allocated, so unsampled requests cost one random number.
    pub fn wants(&self, denied: bool) -> bool {
        if denied {
            return !self.denials.slots.is_empty();
        }
        !self.allowed.slots.is_empty()
            && self.allowed_sample > 0.0
            && (self.allowed_sample >= 1.0 || crate::trace_context::chance(self.allowed_sample))
    }

    pub fn push(&self, record: DecisionRecord) {
        if record.verdict == "deny" {
            self.denials.push(record);
        } else {
            self.allowed.push(record);
        }
    }

    /// The newest record of a request id (a client may reuse an id; the latest wins).
    pub fn find(&self, request_id: &str) -> Option<Arc<DecisionRecord>> {
        self.denials
            .iter()
            .chain(self.allowed.iter())
            .filter(|r| r.request_id == request_id)
            .max_by_key(|r| (r.verdict == "deny", r.seq))
    }

    /// The latest records, newest first, optionally of one route and one step.
    pub fn latest(
        &self,
        route: Option<&str>,
        step: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<DecisionRecord>> {
        let mut out: Vec<Arc<DecisionRecord>> = self
            .denials
            .iter()
            .chain(self.allowed.iter())
            .filter(|r| route.is_none_or(|want| r.route.as_deref() == Some(want)))
            .filter(|r| step.is_none_or(|want| r.step == Some(want)))
            .collect();
        out.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.seq.cmp(&a.seq)));
        out.truncate(limit);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn log(capacity: usize, sample: f64) -> DecisionLog {
        DecisionLog::new(
            capacity,
            sample,
            DecisionGauges {
                denials: Gauge::default(),
                allowed: Gauge::default(),
            },
        )
    }

    fn record(id: &str, denied: bool, route: &str) -> DecisionRecord {
        let answered = Answered {
            request_id: id,
            method: "GET",
            path: "/a",
            status: StatusCode::FORBIDDEN,
            route: Some(route),
            denial: denied.then_some(("waf", "waf_blocked")),
        };
        DecisionRecord::new(&answered, None, "r1".into(), "g1")
    }

    #[test]
    fn ring_is_bounded_and_evicts_the_oldest() {
        let log = log(8, 1.0);
        for i in 0..20 {
            log.push(record(&format!("d{i}"), true, "a"));
        }
        assert!(log.find("d11").is_none());
        assert!(log.find("d12").is_some() && log.find("d19").is_some());
        assert_eq!(log.denials.held.get(), 8);
        assert_eq!(log.latest(None, None, 100).len(), 8);
    }

    #[test]
    fn allowed_traffic_never_evicts_denials() {
        let log = log(8, 1.0);
        log.push(record("deny-1", true, "a"));
        for i in 0..1000 {
            log.push(record(&format!("ok{i}"), false, "a"));
        }
        assert_eq!(log.find("deny-1").unwrap().verdict, "deny");
        assert_eq!(log.allowed.held.get(), 2);
    }

    #[test]
    fn sampling_and_filters() {
        let none = log(8, 0.0);
        assert!(none.wants(true) && !none.wants(false));
        let off = log(0, 1.0);
        assert!(!off.wants(true) && !off.wants(false));
        let log = log(16, 1.0);
        log.push(record("x1", true, "a"));
        log.push(record("x2", true, "b"));
        log.push(record("x3", false, "b"));
        let b = log.latest(Some("b"), None, 10);
        assert_eq!(b.len(), 2);
        let waf = log.latest(Some("b"), Some("waf"), 10);
        assert_eq!(waf.len(), 1);
        assert_eq!(waf[0].request_id, "x2");
        assert_eq!(log.latest(None, None, 1).len(), 1);
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("a\"b\n", 10), "a\\\"b\\n");
        assert_eq!(excerpt("abcdef", 3), "abc…");
    }
}
