//! WAF glue (issue #6): builds `portcullis_waf` engines from the compiled WafPolicies and
//! runs them at pipeline step 6 (request line, headers, cookies) and step 9 (body).
//!
//! Engines are compiled once per config load and shared by every route that names the same
//! policy. Only the first `inspectBodyBytes` of a body are buffered; the buffered prefix is
//! then replayed ahead of the rest of the stream, so the upstream sees the body unchanged
//! and the gateway never holds more than the limit in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use portcullis_compiler::config::WafPolicyConfig;
use portcullis_waf::{Decision, Engine, Evaluation, Group, Mode, RequestHead};
use serde::Serialize;

use crate::body::{BoxError, ProxyBody};
use crate::client_body::{BufferBudget, ClientFault, FaultKind, Reservation};

#[derive(Debug, thiserror::Error)]
pub enum WafConfigError {
    #[error("WafPolicy {policy}: {source}")]
    Engine {
        policy: String,
        source: portcullis_waf::WafError,
    },
    #[error("route {route} names WafPolicy {policy}, which is not in the config")]
    MissingPolicy { route: String, policy: String },
}

/// Why the WAF stopped a request. The status each answers with is chosen in `errors`.
#[derive(Debug, thiserror::Error)]
pub enum WafError {
    #[error("request blocked by the web application firewall")]
    Blocked,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body could not be read for inspection: fail closed.
    #[error("request body could not be inspected")]
    Unreadable,
    /// Longer than a policy inspects (`inspectBodyBytes`), with `oversizeAction: Block`.
    #[error("request body is larger than the web application firewall inspects")]
    BodyTooLarge,
    /// The client's body failed while it was read for inspection (a timeout, a stall, the
    /// streamed size limit, no buffer room): the client's fault, not a finding, and
    /// answered as such.
    #[error(transparent)]
    Client(FaultKind),
}

impl WafError {
    pub fn reason(&self) -> &'static str {
        match self {
            WafError::Blocked => "waf_blocked",
            WafError::MethodNotAllowed => "method_not_allowed",
            WafError::Unreadable => "waf_body_unreadable",
            WafError::BodyTooLarge => "waf_body_too_large",
            WafError::Client(kind) => kind.reason(),
        }
    }
}

/// Every engine of a config, by policy id.
pub type Engines = HashMap<String, Arc<Engine>>;

pub fn build_engines(policies: &[WafPolicyConfig]) -> Result<Engines, WafConfigError> {
    policies
        .iter()
        .map(|p| Ok((p.id.clone(), Arc::new(build_engine(p)?))))
        .collect()
}

fn build_engine(p: &WafPolicyConfig) -> Result<Engine, WafConfigError> {
    Engine::new(p.engine_config()).map_err(|source| WafConfigError::Engine {
        policy: p.id.clone(),
        source,
    })
}

/// The WAF of one route: the engines of the policies that apply to it, in order.
pub struct RouteWaf {
    policies: Vec<(String, Arc<Engine>)>,
    body_limit: usize,
    /// Some policy answers 413 to a body longer than it inspects.
    refuses_oversize: bool,
}

impl RouteWaf {
    /// `None` when no policy applies.
    pub fn new(
        route: &str,
        ids: &[String],
        engines: &Engines,
    ) -> Result<Option<Self>, WafConfigError> {
        if ids.is_empty() {
            return Ok(None);
        }
        let policies = ids
            .iter()
            .map(|id| {
                engines
                    .get(id)
                    .map(|e| (id.clone(), e.clone()))
                    .ok_or_else(|| WafConfigError::MissingPolicy {
                        route: route.to_string(),
                        policy: id.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let body_limit = policies
            .iter()
            .map(|(_, e)| usize::try_from(e.inspect_body_bytes()).unwrap_or(usize::MAX))
            .max()
            .unwrap_or(0);
        let refuses_oversize = policies.iter().any(|(_, e)| e.refuses_oversize_bodies());
        Ok(Some(RouteWaf {
            policies,
            body_limit,
            refuses_oversize,
        }))
    }
}

/// What the WAF found so far for one request; feeds the audit line and metrics.
#[derive(Default)]
pub struct WafState {
    evaluations: Vec<(String, Evaluation, Decision, Mode)>,
    /// The policy that blocked, if one did.
    blocked_by: Option<usize>,
}

impl WafState {
    fn decide(&mut self) -> Result<(), WafError> {
        for (i, (_, _, decision, _)) in self.evaluations.iter().enumerate() {
            match decision {
                Decision::Allow => {}
                Decision::MethodNotAllowed => {
                    self.blocked_by = Some(i);
                    return Err(WafError::MethodNotAllowed);
                }
                Decision::Block => {
                    self.blocked_by = Some(i);
                    return Err(WafError::Blocked);
                }
            }
        }
        Ok(())
    }

    /// The rule group for the `api_waf_blocked_total` label, when a policy blocked.
    pub fn blocking_group(&self) -> Option<&'static str> {
        let (_, eval, decision, _) = self.evaluations.get(self.blocked_by?)?;
        Some(match decision {
            Decision::MethodNotAllowed => "method",
            _ => eval.main_group().map_or("custom", Group::as_str),
        })
    }

    /// The audit entry, when the WAF has something to say (a finding or an uninspected
    /// body tail).
    pub fn audit(&self) -> Option<Vec<WafAudit<'_>>> {
        let entries: Vec<WafAudit<'_>> = self
            .evaluations
            .iter()
            .filter(|(_, e, _, _)| !e.findings.is_empty() || e.body_truncated)
            .map(|(policy, e, decision, mode)| WafAudit {
                policy,
                mode: match mode {
                    Mode::Block => "Block",
                    Mode::Detect => "Detect",
                },
                score: e.score,
                blocked: *decision != Decision::Allow,
                findings: e
                    .findings
                    .iter()
                    .map(|f| FindingAudit {
                        rule_id: f.rule_id,
                        group: f.group.as_str(),
                        target: &f.target,
                        score: f.score,
                        excerpt: redacted(&f.target, &f.excerpt),
                    })
                    .collect(),
                body_inspected_bytes: e.body_inspected,
                body_truncated: e.body_truncated,
            })
            .collect();
        (!entries.is_empty()).then_some(entries)
    }

    /// Every policy's evaluation so far: its id, what it found, its decision, its mode.
    pub fn evaluations(&self) -> impl Iterator<Item = (&str, &Evaluation, Decision, Mode)> {
        self.evaluations
            .iter()
            .map(|(policy, e, decision, mode)| (policy.as_str(), e, *decision, *mode))
    }

    /// Rule ids of the blocking evaluation (audit `rule_ids`).
    pub fn rule_ids(&self) -> Option<Vec<u32>> {
        let (_, e, _, _) = self.evaluations.get(self.blocked_by?)?;
        Some(e.rule_ids())
    }
}

/// Names of targets that carry credentials (API keys, tokens, sessions, passwords): their
/// excerpts never leave the process, in the audit line or a decision record.
const CREDENTIAL_WORDS: [&str; 9] = [
    "auth",
    "key",
    "token",
    "secret",
    "session",
    "passw",
    "cookie",
    "sig",
    "credential",
];

/// The excerpt to show for a finding on `target`: `[redacted]` for cookies and for headers,
/// query or form fields whose name looks like a credential.
pub fn redacted<'a>(target: &str, excerpt: &'a str) -> &'a str {
    let (kind, name) = target.split_once(':').unwrap_or((target, ""));
    if kind.eq_ignore_ascii_case("Cookie") {
        return "[redacted]";
    }
    let name = name.to_ascii_lowercase();
    if CREDENTIAL_WORDS.iter().any(|w| name.contains(w)) {
        "[redacted]"
    } else {
        excerpt
    }
}

#[derive(Serialize)]
pub struct WafAudit<'a> {
    pub policy: &'a str,
    pub mode: &'static str,
    pub score: u32,
    pub blocked: bool,
    pub findings: Vec<FindingAudit<'a>>,
    pub body_inspected_bytes: usize,
    /// The client sent more than `inspectBodyBytes`; the rest was forwarded uninspected.
    pub body_truncated: bool,
}

#[derive(Serialize)]
pub struct FindingAudit<'a> {
    pub rule_id: u32,
    pub group: &'static str,
    pub target: &'a str,
    pub score: u32,
    pub excerpt: &'a str,
}

/// Borrowed view of the request head for the engine.
fn with_head<T>(parts: &Parts, client_ip: IpAddr, f: impl FnOnce(&RequestHead<'_>) -> T) -> T {
    // Sized up front (one more for `:authority`): collecting from the map's iterator
    // grew the vector from its lower size bound.
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(parts.headers.len() + 1);
    headers.extend(
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    // HTTP/2 carries the host in `:authority`; the engine checks for a Host.
    let authority = parts.uri.authority().map(|a| a.as_str());
    if let (false, Some(a)) = (parts.headers.contains_key(header::HOST), authority) {
        headers.push(("host", a.as_bytes()));
    }
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    f(&RequestHead {
        method: parts.method.as_str(),
        uri,
        headers: &headers,
        client_ip: Some(client_ip),
    })
}

/// Step 6: request line, headers and cookies, for every policy of the route.
pub fn check_head(
    waf: &RouteWaf,
    parts: &Parts,
    client_ip: IpAddr,
    state: &mut WafState,
) -> Result<(), WafError> {
    with_head(parts, client_ip, |head| {
        for (id, engine) in &waf.policies {
            let eval = engine.inspect_head(head);
            let decision = engine.decision(&eval);
            state
                .evaluations
                .push((id.clone(), eval, decision, engine.config().mode));
        }
    });
    state.decide()
}

/// The body frames read for inspection. A small body usually arrives as one frame: it is
/// kept as it came (no copy); a second frame starts the copy.
enum Prefix {
    Empty,
    One(Bytes),
    Joined(BytesMut),
}

impl Prefix {
    fn len(&self) -> usize {
        match self {
            Prefix::Empty => 0,
            Prefix::One(b) => b.len(),
            Prefix::Joined(j) => j.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Prefix::Empty) {
            Prefix::Empty => Prefix::One(data),
            Prefix::One(first) => {
                let mut j = BytesMut::with_capacity(first.len() + data.len());
                j.extend_from_slice(&first);
                j.extend_from_slice(&data);
                Prefix::Joined(j)
            }
            Prefix::Joined(mut j) => {
                j.extend_from_slice(&data);
                Prefix::Joined(j)
            }
        };
    }

    fn freeze(self) -> Bytes {
        match self {
            Prefix::Empty => Bytes::new(),
            Prefix::One(b) => b,
            Prefix::Joined(j) => j.freeze(),
        }
    }
}

/// Step 9: the first `inspectBodyBytes` of the body. Returns the body to forward: the
/// buffered prefix followed by whatever was not read.
pub async fn check_body(
    waf: &RouteWaf,
    parts: &Parts,
    client_ip: IpAddr,
    mut body: ProxyBody,
    fault: &Arc<ClientFault>,
    budget: &Arc<BufferBudget>,
    state: &mut WafState,
) -> Result<ProxyBody, WafError> {
    let mut prefix = Prefix::Empty;
    let mut reservation = budget.reservation();
    let mut pending: Option<Frame<Bytes>> = None;
    // The end of the stream is seen without one more poll when the body knows it (its
    // length was given and all of it has arrived).
    let mut ended = body.is_end_stream();
    // A policy that refuses bodies it cannot inspect to the end needs to know whether one
    // byte follows the limit: a chunked body of exactly the limit is not oversized.
    let read_limit = waf
        .body_limit
        .saturating_add(usize::from(waf.refuses_oversize));
    while !ended && prefix.len() < read_limit {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !reservation.grow(data.len()) {
                        fault.set(FaultKind::Busy);
                        return Err(WafError::Client(FaultKind::Busy));
                    }
                    prefix.push(data);
                    ended = body.is_end_stream();
                }
                Err(trailers) => {
                    pending = Some(trailers);
                    ended = true;
                    break;
                }
            },
            // The streamed size limit (validation) fails the body: that is a 413, not an
            // inspection problem; likewise a client that stalls or breaks its framing.
            Some(Err(_)) => {
                return Err(match fault.get() {
                    Some(kind) => WafError::Client(kind),
                    // Fail closed: a body we cannot read is a body we cannot inspect.
                    None => WafError::Unreadable,
                });
            }
        }
    }
    let prefix = prefix.freeze();
    let truncated = prefix.len() > waf.body_limit
        || (!ended && prefix.len() >= waf.body_limit && !body.is_end_stream());
    let mut oversize_refused = false;
    with_head(parts, client_ip, |head| {
        for ((_, engine), (_, eval, decision, _)) in
            waf.policies.iter().zip(state.evaluations.iter_mut())
        {
            let limit = usize::try_from(engine.inspect_body_bytes()).unwrap_or(usize::MAX);
            let (view, cut) = if prefix.len() > limit {
                (&prefix[..limit], true)
            } else {
                (&prefix[..], truncated)
            };
            engine.inspect_body(head, eval, view, cut);
            *decision = engine.decision(eval);
            oversize_refused |= cut && engine.refuses_oversize_bodies();
        }
    });
    // An attack found in the inspected part says more than the size: 403 first.
    state.decide()?;
    if oversize_refused {
        return Err(WafError::BodyTooLarge);
    }
    Ok(PrefixedBody {
        prefix: (!prefix.is_empty()).then_some(prefix),
        pending,
        rest: (!ended).then_some(body),
        _reservation: reservation,
    }
    .boxed())
}

/// The buffered prefix, then any trailers frame read while buffering, then the rest.
struct PrefixedBody {
    prefix: Option<Bytes>,
    pending: Option<Frame<Bytes>>,
    rest: Option<ProxyBody>,
    /// The prefix's bytes in the process-wide buffer budget, until the body is dropped.
    _reservation: Reservation,
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(frame) = self.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && self.pending.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + buffered);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}
