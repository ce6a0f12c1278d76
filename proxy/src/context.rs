//! The per-request context (as pingora's `CTX`): what the pipeline knows about one request
//! from the moment it arrives until its audit line is written.
//!
//! [`crate::pipeline`] creates one per request, lends it to each step, and reads it once the
//! request is answered for the response headers, metrics, the audit line, the decision record
//! and the spans. Policy steps themselves never see it: each takes the few fields it needs
//! (`ctx.client_ip`, `&mut ctx.waf`, …), so a step stays a leaf that imports no pipeline
//! state.

use std::net::IpAddr;
use std::time::Instant;

use http::HeaderValue;

use crate::auth::Identity;
use crate::ratelimit::RateLimitHeaders;
use crate::trace_context::TraceContext;
use crate::waf::WafState;

pub struct RequestContext<'a> {
    /// `X-Request-ID`: the client's when it sent a usable one, else a new one.
    pub request_id: HeaderValue,
    /// The TCP peer (canonical: an IPv4-mapped IPv6 peer is its IPv4 address).
    pub peer_ip: IpAddr,
    /// The client as trusted proxies report it (`X-Forwarded-For`), else the peer.
    pub client_ip: IpAddr,
    /// The listener's port, for `X-Forwarded-Port`.
    pub local_port: &'a HeaderValue,
    /// The connection is TLS.
    pub tls: bool,
    /// W3C trace context, continued or started (`None`: propagation is off).
    pub trace: Option<TraceContext>,

    /// The matched route's index in the config generation that is answering.
    pub route: Option<usize>,
    pub identity: Identity,
    /// The tightest limit that admitted the request, for the `RateLimit-*` headers.
    pub rate_limit: Option<RateLimitHeaders>,
    /// What the WAF found, for the audit line, metrics and decision record.
    pub waf: WafState,
    /// The normalised path, when it differs from the request's (for the audit line).
    pub path: Option<Box<str>>,
    pub upstream_latency_ms: Option<f64>,
    /// Policy steps that ran, for the spans of a sampled trace (`None`: not recording).
    pub steps: Option<Vec<StepSpan>>,
}

/// One policy step's span: name, start, end, whether it stopped the request.
pub struct StepSpan(pub &'static str, pub Instant, pub Instant, pub bool);

impl RequestContext<'_> {
    /// The start of a step, when spans are being recorded (no clock read otherwise).
    pub fn clock(&self) -> Option<Instant> {
        self.steps.as_ref().map(|_| Instant::now())
    }

    /// Records a step that ran (if recording) and passes its result through.
    pub fn step<T, E>(
        &mut self,
        name: &'static str,
        started: Option<Instant>,
        result: Result<T, E>,
    ) -> Result<T, E> {
        if let (Some(steps), Some(started)) = (&mut self.steps, started) {
            steps.push(StepSpan(name, started, Instant::now(), result.is_err()));
        }
        result
    }
}
