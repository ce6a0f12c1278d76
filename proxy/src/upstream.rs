//! Upstream selection and forwarding: load balancing, timeouts, retries, passive health.
//!
//! - **RoundRobin** is smooth weighted round robin (nginx's algorithm) precomputed into a
//!   schedule at config load, so picking is one atomic increment and no lock.
//! - **LeastRequest** picks the lowest in-flight count relative to weight.
//! - **ConsistentHash** uses weighted rendezvous hashing on the client IP, so removing or
//!   ejecting one target only moves that target's clients.
//! - **Passive health**: [`EJECT_AFTER_FAILURES`] consecutive failures (connect error,
//!   timeout, 502/503/504) eject a target for [`EJECT_FOR`]. If every target is ejected the
//!   balancer ignores health ("panic mode"): a guess beats a guaranteed 502.
//! - **Retries** happen only when the caller says the request is replayable (idempotent
//!   method and no body), on connect failure or a 502/503 answer, preferring untried targets.
//! - **Timeouts**: connect (in the connector) and read (until response headers arrive).
//!   Send and read timeouts follow nginx: see [`crate::upstream_timeouts`].
//!
//! Health and balancer state live with the compiled config, so a config swap starts fresh.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Response, StatusCode, Uri};
use portcullis_compiler::config::{
    DirectResponseConfig, LoadBalancing, UpstreamConfig, UpstreamTlsConfig,
};

use crate::body::{empty, ProxyBody};
use crate::client_body::ClientFault;
use crate::monotonic::now_ms;
use crate::tls::upstream_tls::UpstreamTlsError;
use crate::upstream_pool::{self, ConnPool, Connector, HttpsConnector, PoolKey, PoolRegistry};
use crate::upstream_timeouts::{self, ReadTimeoutBody};

pub const EJECT_AFTER_FAILURES: u32 = 5;
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// Upper bound on the precomputed round-robin schedule; larger weight sums are scaled.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unavailable")]
    Connect,
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream request failed")]
    Failed,
    #[error("no upstream targets")]
    NoTargets,
    #[error("request body too large")]
    BodyTooLarge,
}

impl UpstreamError {
    /// The `kind` label of `api_upstream_errors_total`; `None` for the client's own fault.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Connect => Some("connect"),
            UpstreamError::Timeout => Some("timeout"),
            UpstreamError::Failed => Some("failed"),
            UpstreamError::NoTargets => Some("no_targets"),
            UpstreamError::BodyTooLarge => None,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "upstream_connect_failed",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Failed => "upstream_failed",
            UpstreamError::NoTargets => "no_targets",
            UpstreamError::BodyTooLarge => "body_too_large",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid upstream target {url:?}: {message}")]
pub struct TargetError {
    url: String,
    message: String,
}

/// Keep-alive pools shared across config swaps: one per target and connect setting.
pub struct ClientPool {
    pools: PoolRegistry,
    /// HTTPS connectors by TLS setting (CA, SNI, verification) and connect timeout: building
    /// one loads the system roots, so it is done once per distinct setting.
    tls_connectors: Mutex<HashMap<(u64, UpstreamTlsConfig), HttpsConnector>>,
    /// Identity-provider client and JWKS caches; like the pools, they outlive config swaps.
    pub auth: crate::auth::AuthRuntime,
}

impl ClientPool {
    pub fn new(auth: crate::auth::AuthRuntime) -> Self {
        ClientPool {
            pools: PoolRegistry::default(),
            tls_connectors: Mutex::new(HashMap::new()),
            auth,
        }
    }

    /// The pool for one target; `tls` is `Some` for `https://` targets.
    fn pool(
        &self,
        dial: Uri,
        connect_timeout_ms: u64,
        tls: Option<&UpstreamTlsConfig>,
    ) -> Result<Arc<ConnPool>, UpstreamTlsError> {
        let connector = match tls {
            None => Connector::Plain(upstream_pool::plain_connector(connect_timeout_ms)),
            Some(tls) => Connector::Tls(self.tls_connector(connect_timeout_ms, tls)?),
        };
        let key = PoolKey {
            dial: dial.to_string(),
            settings: format!("{connect_timeout_ms} {tls:?}"),
        };
        Ok(self
            .pools
            .get_or_create(key, || ConnPool::new(dial, connector)))
    }

    fn tls_connector(
        &self,
        connect_timeout_ms: u64,
        tls: &UpstreamTlsConfig,
    ) -> Result<HttpsConnector, UpstreamTlsError> {
        let mut connectors = match self.tls_connectors.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (connect_timeout_ms, tls.clone());
        if let Some(connector) = connectors.get(&key) {
            return Ok(connector.clone());
        }
        let connector = crate::tls::upstream_tls::connector(
            tls,
            upstream_pool::plain_connector(connect_timeout_ms),
        )?;
        connectors.insert(key, connector.clone());
        Ok(connector)
    }
}

pub struct Target {
    pub url: String,
    scheme: Scheme,
    authority: Authority,
    pool: Option<Arc<ConnPool>>,
    weight: u32,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
}

impl Target {
    fn healthy(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now
    }

    fn record_failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= EJECT_AFTER_FAILURES {
            self.ejected_until_ms
                .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            tracing::warn!(target = %self.url, "upstream target ejected after consecutive failures");
        }
    }

    fn record_success(&self) {
        // Read first: a shared cache line written on every success would cost more.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
}

pub struct Upstream {
    targets: Vec<Target>,
    load_balancing: LoadBalancing,
    schedule: Vec<u32>,
    cursor: AtomicUsize,
    send_timeout: Duration,
    read_timeout: Duration,
    retries: u32,
    pub direct: Option<DirectResponse>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, pool: &ClientPool) -> Result<Self, TargetError> {
        let targets = config
            .targets
            .iter()
            .map(|t| {
                let err = |message: &str| TargetError {
                    url: t.url.clone(),
                    message: message.to_string(),
                };
                let uri: Uri = t.url.parse().map_err(|_| err("not a URL"))?;
                let scheme = uri
                    .scheme()
                    .filter(|s| **s == Scheme::HTTP || **s == Scheme::HTTPS)
                    .cloned()
                    .ok_or_else(|| err("only http:// and https:// targets are supported"))?;
                let authority = uri
                    .authority()
                    .cloned()
                    .ok_or_else(|| err("missing host"))?;
                Ok(Target {
                    url: t.url.clone(),
                    scheme,
                    authority,
                    pool: None,
                    weight: t.weight,
                    in_flight: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut targets = targets;
        // `collect` through a `Result` starts at capacity 4: three unused slots per
        // single-target route, and a swap holds two copies of every route.
        targets.shrink_to_fit();
        let direct = config.direct_response.as_ref().map(direct_response);
        let tls = config.tls.clone().unwrap_or_default();
        if tls.insecure_skip_verify && targets.iter().any(|t| t.scheme == Scheme::HTTPS) {
            tracing::warn!(
                targets = ?targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
                "upstream.tls.insecureSkipVerify: upstream certificates are NOT verified"
            );
        }
        for target in &mut targets {
            let dial = build_uri(
                &target.scheme,
                &target.authority,
                &PathAndQuery::from_static("/"),
            );
            let tls = (target.scheme == Scheme::HTTPS).then_some(&tls);
            let pool = pool
                .pool(dial, config.connect_timeout_ms, tls)
                .map_err(|e| TargetError {
                    url: target.url.clone(),
                    message: e.to_string(),
                })?;
            target.pool = Some(pool);
        }
        Ok(Upstream {
            schedule: smooth_schedule(&targets),
            targets,
            load_balancing: config.load_balancing,
            cursor: AtomicUsize::new(0),
            send_timeout: Duration::from_millis(config.send_timeout_ms.max(1)),
            read_timeout: Duration::from_millis(config.read_timeout_ms.max(1)),
            retries: config.retries,
            direct,
        })
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Sends the request. `parts.uri` holds the origin-form path and query to forward;
    /// `added` the headers this hop adds. `replayable` allows retries (idempotent method,
    /// no body). A failure while `client_fault` holds a fault was the client's (its body
    /// stalled, broke or was too large): it is not charged to the target's health.
    pub async fn forward(
        &self,
        mut parts: Parts,
        added: &[(HeaderName, HeaderValue)],
        body: ProxyBody,
        client_ip: IpAddr,
        replayable: bool,
        client_fault: &ClientFault,
    ) -> Result<Response<ReadTimeoutBody>, UpstreamError> {
        if self.targets.is_empty() {
            return Err(UpstreamError::NoTargets);
        }
        let attempts = if replayable {
            1 + self.retries as usize
        } else {
            1
        };
        if parts.uri.path_and_query().is_none() {
            parts.uri = Uri::from_static("/");
        }
        let parts = &parts;
        let mut tried: u64 = 0;
        let mut body = Some(body);
        let mut last_error = UpstreamError::Failed;
        for attempt in 0..attempts {
            let index = self.pick(client_ip, tried);
            tried |= 1u64 << (index % 64);
            let target = &self.targets[index];
            let Some(pool) = &target.pool else {
                return Err(UpstreamError::NoTargets);
            };
            let final_attempt = attempt + 1 == attempts;
            // Replayable requests have no body: the head alone is the whole request, and
            // every attempt sends it from the same parts.
            let attempt_body = if final_attempt {
                body.take().unwrap_or_else(empty)
            } else {
                empty()
            };
            target.in_flight.fetch_add(1, Ordering::Relaxed);
            let _guard = InFlight(&target.in_flight);
            let sent = upstream_timeouts::exchange(
                attempt_body,
                self.send_timeout,
                self.read_timeout,
                |body| pool.send(parts, added, body),
            );
            let outcome = sent.await;
            if outcome.as_ref().map_or(true, Result::is_err) && client_fault.get().is_some() {
                return Err(UpstreamError::Failed);
            }
            match outcome {
                Err(_) => {
                    target.record_failure();
                    // A timed-out request may have had effects upstream: never retried.
                    return Err(UpstreamError::Timeout);
                }
                Ok(Err(e)) => {
                    target.record_failure();
                    if matches!(e, upstream_pool::SendError::Connect(_)) {
                        tracing::debug!(target = %target.url, error = %e, "upstream connect failed");
                        last_error = UpstreamError::Connect;
                        continue;
                    }
                    tracing::debug!(target = %target.url, error = %e, "upstream request failed");
                    return Err(UpstreamError::Failed);
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    if matches!(status.as_u16(), 502..=504) {
                        target.record_failure();
                    } else {
                        target.record_success();
                    }
                    if !final_attempt && matches!(status.as_u16(), 502 | 503) {
                        continue;
                    }
                    return Ok(response);
                }
            }
        }
        Err(last_error)
    }

    fn pick(&self, client_ip: IpAddr, tried: u64) -> usize {
        let n = self.targets.len();
        if n == 1 {
            return 0;
        }
        let now = now_ms();
        let was_tried = |i: usize| tried & (1u64 << (i % 64)) != 0;
        let usable = |i: usize| !was_tried(i) && self.targets[i].healthy(now);
        let preferred = match self.load_balancing {
            LoadBalancing::RoundRobin => {
                let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.schedule.len().max(1);
                self.schedule.get(slot).map_or(0, |&i| i as usize)
            }
            LoadBalancing::LeastRequest => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let candidates = (0..n).map(|k| (start + k) % n);
                let best = |filter: &dyn Fn(usize) -> bool| {
                    candidates.clone().filter(|&i| filter(i)).min_by(|&a, &b| {
                        let load = |i: usize| {
                            let t = &self.targets[i];
                            (t.in_flight.load(Ordering::Relaxed) as f64 + 1.0)
                                / f64::from(t.weight.max(1))
                        };
                        load(a).total_cmp(&load(b))
                    })
                };
                best(&usable).or_else(|| best(&|_| true)).unwrap_or(0)
            }
            LoadBalancing::ConsistentHash => {
                let best = |filter: &dyn Fn(usize) -> bool| {
                    (0..n).filter(|&i| filter(i)).max_by(|&a, &b| {
                        self.rendezvous_score(client_ip, a)
                            .total_cmp(&self.rendezvous_score(client_ip, b))
                    })
                };
                best(&usable).or_else(|| best(&|_| true)).unwrap_or(0)
            }
        };
        if usable(preferred) {
            return preferred;
        }
        if let Some(i) = (1..n).map(|k| (preferred + k) % n).find(|&i| usable(i)) {
            return i;
        }
        // Panic mode: every untried target is ejected; try one anyway.
        (0..n)
            .map(|k| (preferred + k) % n)
            .find(|&i| !was_tried(i))
            .unwrap_or(preferred)
    }

    fn rendezvous_score(&self, ip: IpAddr, index: usize) -> f64 {
        let target = &self.targets[index];
        let mut hasher = DefaultHasher::new();
        ip.hash(&mut hasher);
        target.url.hash(&mut hasher);
        // Map the hash into (0, 1) and weight it: score = -w / ln(u).
        let unit = ((hasher.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(target.weight.max(1)) / unit.ln()
    }
}

fn build_uri(scheme: &Scheme, authority: &Authority, path_and_query: &PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path_and_query.clone());
    Uri::from_parts(parts).unwrap_or_default()
}

fn direct_response(config: &DirectResponseConfig) -> DirectResponse {
    DirectResponse {
        status: StatusCode::from_u16(config.status).unwrap_or(StatusCode::OK),
        body: Bytes::from(config.body.clone()),
        content_type: config
            .content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok()),
    }
}

/// nginx's smooth weighted round robin, unrolled into one full cycle.
fn smooth_schedule(targets: &[Target]) -> Vec<u32> {
    let mut weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight)).collect();
    if weights.iter().all(|&w| w == 0) {
        weights.iter_mut().for_each(|w| *w = 1);
    }
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(&weights) {
            *c += w as i64;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total as i64;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target(weight: u32) -> Target {
        Target {
            url: "http://a:1".into(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("a:1"),
            pool: None,
            weight,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        let s = smooth_schedule(&[target(5), target(1), target(1)]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[target(0), target(2)]);
        assert_eq!(s, vec![1, 1]);
    }
}
