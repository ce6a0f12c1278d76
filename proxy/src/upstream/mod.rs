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
//!   Send and read timeouts follow nginx: see [`timeouts`].
//!
//! Health and balancer state live with the compiled config, so a config swap starts fresh.

pub mod endpoints;
pub mod h1;
pub mod pool;
pub mod timeouts;
pub mod tls;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Response, StatusCode, Uri};
use portcullis_compiler::config::{
    DirectResponseConfig, LoadBalancing, ServiceBackendConfig, UpstreamConfig, UpstreamTlsConfig,
};

use crate::body::{empty, ProxyBody};
use crate::client_body::ClientFault;
use crate::monotonic::now_ms;
use endpoints::{EndpointGap, EndpointRegistry, Resolver, Subscriber};
use h1::{ExchangeError, Hop};
use pool::{ConnPool, Connector, HttpsConnector, PoolKey, PoolRegistry};
use timeouts::ReadTimeoutBody;
use tls::UpstreamTlsError;

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
    /// A Service target without an address to send to (503).
    #[error("{}", .0.message())]
    NoEndpoints(EndpointGap),
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
            UpstreamError::NoEndpoints(_) => Some("no_endpoints"),
            UpstreamError::BodyTooLarge => None,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "upstream_connect_failed",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Failed => "upstream_failed",
            UpstreamError::NoTargets => "no_targets",
            UpstreamError::NoEndpoints(gap) => gap.reason(),
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
    pools: Arc<PoolRegistry>,
    /// HTTPS connectors by TLS setting (CA, SNI, verification) and connect timeout: building
    /// one loads the system roots, so it is done once per distinct setting.
    tls_connectors: Mutex<HashMap<(u64, bool, UpstreamTlsConfig), HttpsConnector>>,
    /// Identity-provider client and JWKS caches; like the pools, they outlive config swaps.
    pub auth: crate::auth::AuthRuntime,
    /// Ready endpoints of Services; like the pools, it outlives config swaps.
    pub endpoints: Arc<EndpointRegistry>,
}

impl ClientPool {
    pub fn new(auth: crate::auth::AuthRuntime) -> Self {
        ClientPool {
            pools: Arc::new(PoolRegistry::default()),
            tls_connectors: Mutex::new(HashMap::new()),
            auth,
            endpoints: Arc::new(EndpointRegistry::default()),
        }
    }

    /// What one upstream's targets are dialled with: one plain and (for `https://`
    /// targets) one TLS connector per upstream, built once.
    fn factory(
        &self,
        connect_timeout_ms: u64,
        refuse_internal: bool,
        tls: Option<&UpstreamTlsConfig>,
    ) -> Result<TargetFactory, UpstreamTlsError> {
        Ok(TargetFactory {
            pools: self.pools.clone(),
            plain: Connector::Plain(pool::plain_connector(connect_timeout_ms, refuse_internal)),
            tls: match tls {
                Some(tls) => Some(Connector::Tls(self.tls_connector(
                    connect_timeout_ms,
                    refuse_internal,
                    tls,
                )?)),
                None => None,
            },
            settings: format!("{connect_timeout_ms} {refuse_internal} {tls:?}"),
        })
    }

    fn tls_connector(
        &self,
        connect_timeout_ms: u64,
        refuse_internal: bool,
        tls: &UpstreamTlsConfig,
    ) -> Result<HttpsConnector, UpstreamTlsError> {
        let mut connectors = match self.tls_connectors.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (connect_timeout_ms, refuse_internal, tls.clone());
        if let Some(connector) = connectors.get(&key) {
            return Ok(connector.clone());
        }
        let connector = tls::connector(
            tls,
            pool::plain_connector(connect_timeout_ms, refuse_internal),
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
    fn new(url: String, scheme: Scheme, authority: Authority, weight: u32) -> Self {
        Target {
            url,
            scheme,
            authority,
            pool: None,
            weight,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

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

/// The targets a request picks from, with the round-robin schedule over their weights.
pub struct TargetSet {
    targets: Vec<Arc<Target>>,
    schedule: Vec<u32>,
    /// Why there is no target, when a Service target resolved to nothing.
    gap: Option<EndpointGap>,
}

impl TargetSet {
    fn new(targets: Vec<Arc<Target>>, gap: Option<EndpointGap>) -> Self {
        TargetSet {
            schedule: smooth_schedule(&targets),
            targets,
            gap,
        }
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }
}

/// What builds one upstream's targets: the shared pools and this upstream's connectors.
struct TargetFactory {
    pools: Arc<PoolRegistry>,
    plain: Connector,
    tls: Option<Connector>,
    settings: String,
}

impl TargetFactory {
    /// Gives `target` its connection pool; `host` overrides the `Host` header.
    fn attach_pool(
        &self,
        target: &mut Target,
        host: Option<&HeaderValue>,
    ) -> Result<(), &'static str> {
        let dial = build_uri(
            &target.scheme,
            &target.authority,
            &PathAndQuery::from_static("/"),
        );
        let connector = if target.scheme == Scheme::HTTPS {
            self.tls
                .clone()
                .ok_or("https target without TLS settings")?
        } else {
            self.plain.clone()
        };
        let host = host.cloned().unwrap_or_else(|| pool::host_header(&dial));
        let key = PoolKey {
            dial: dial.to_string(),
            settings: format!("{} {:?}", self.settings, host),
        };
        target.pool = Some(
            self.pools
                .get_or_create(key, || ConnPool::with_host(dial, host, connector)),
        );
        Ok(())
    }
}

/// One configured target: a fixed address (`url:`, or a Service dialled by DNS), or a
/// Service whose ready endpoints stand in for it.
enum Backend {
    Fixed(Arc<Target>),
    Service {
        service: ServiceBackendConfig,
        weight: u32,
        scheme: Scheme,
        /// The Service's DNS name: the `Host` header its endpoints receive.
        host: HeaderValue,
    },
}

/// The targets of an upstream with Service targets, swapped whole when the Service's
/// endpoints change ([`endpoints`]). Requests load the current set without a lock.
pub struct TargetsCell {
    current: ArcSwap<TargetSet>,
    backends: Vec<Backend>,
    factory: TargetFactory,
}

impl Subscriber for TargetsCell {
    /// Rebuilds the set from the Services' current endpoints. Targets whose address and
    /// weight are unchanged are kept, with their in-flight counts and passive health.
    fn rebuild(&self, resolve: &Resolver<'_>) {
        let set = self.build(resolve, Some(&self.current.load()));
        self.current.store(Arc::new(set));
    }
}

impl TargetsCell {
    fn build(&self, resolve: &Resolver<'_>, previous: Option<&TargetSet>) -> TargetSet {
        let mut gap = None;
        // Per backend: its weight, its endpoints before weighting (with the Host they are
        // sent), or the fixed target.
        type Group<'h> = (
            u32,
            Vec<Target>,
            Option<&'h HeaderValue>,
            Option<Arc<Target>>,
        );
        let mut groups: Vec<Group<'_>> = Vec::new();
        for backend in &self.backends {
            match backend {
                Backend::Fixed(target) => {
                    groups.push((target.weight, Vec::new(), None, Some(target.clone())))
                }
                Backend::Service {
                    service,
                    weight,
                    scheme,
                    host,
                } => match resolve(service) {
                    Ok(addresses) => {
                        let targets = addresses
                            .iter()
                            .filter_map(|addr| {
                                let authority: Authority = addr.to_string().parse().ok()?;
                                Some(Target::new(
                                    format!("{}://{addr}", scheme.as_str()),
                                    scheme.clone(),
                                    authority,
                                    0,
                                ))
                            })
                            .collect();
                        groups.push((*weight, targets, Some(host), None));
                    }
                    Err(e) => {
                        gap.get_or_insert(e);
                    }
                },
            }
        }
        let counts: Vec<(u32, usize)> = groups
            .iter()
            .map(|(w, targets, _, fixed)| (*w, if fixed.is_some() { 1 } else { targets.len() }))
            .collect();
        let weights = endpoint_weights(&counts);
        let reusable: HashMap<(&str, u32), &Arc<Target>> = previous
            .map(|p| {
                p.targets
                    .iter()
                    .map(|t| ((t.url.as_str(), t.weight), t))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for ((_, targets, host, fixed), weight) in groups.into_iter().zip(weights) {
            if let Some(fixed) = fixed {
                if fixed.weight == weight {
                    out.push(fixed);
                } else if let Some(kept) = reusable.get(&(fixed.url.as_str(), weight)) {
                    out.push(Arc::clone(kept));
                } else {
                    let mut scaled = Target::new(
                        fixed.url.clone(),
                        fixed.scheme.clone(),
                        fixed.authority.clone(),
                        weight,
                    );
                    scaled.pool = fixed.pool.clone();
                    out.push(Arc::new(scaled));
                }
                continue;
            }
            for mut target in targets {
                if let Some(kept) = reusable.get(&(target.url.as_str(), weight)) {
                    out.push(Arc::clone(kept));
                    continue;
                }
                target.weight = weight;
                if let Err(message) = self.factory.attach_pool(&mut target, host) {
                    tracing::warn!(target = %target.url, message, "cannot build an endpoint target");
                    continue;
                }
                out.push(Arc::new(target));
            }
        }
        out.shrink_to_fit();
        let gap = if out.is_empty() {
            gap.or(Some(EndpointGap::NoReadyEndpoints))
        } else {
            None
        };
        TargetSet::new(out, gap)
    }
}

/// Per-target weights for backends given as (weight, number of targets): a Service's weight
/// is shared by its endpoints, so that `weight: 90` and `weight: 10` split traffic 90/10
/// whatever the number of pods behind each. Exact while the least common multiple of the
/// endpoint counts stays small; approximated (each endpoint at least 1) beyond.
fn endpoint_weights(groups: &[(u32, usize)]) -> Vec<u32> {
    const MAX_SCALE: u64 = 100_000;
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut scale: u64 = 1;
    for &(_, n) in groups {
        let n = n.max(1) as u64;
        scale = scale / gcd(scale, n) * n;
        if scale > MAX_SCALE {
            scale = MAX_SCALE;
            break;
        }
    }
    let raw: Vec<u64> = groups
        .iter()
        .map(|&(w, n)| {
            let w = u64::from(w);
            if w == 0 {
                0
            } else {
                (w * scale / n.max(1) as u64).max(1)
            }
        })
        .collect();
    let common = raw.iter().copied().filter(|&w| w > 0).fold(0, gcd).max(1);
    raw.iter()
        .map(|&w| u32::try_from(w / common).unwrap_or(u32::MAX))
        .collect()
}

/// An upstream's targets: fixed at config load, or following Service endpoints.
enum Targets {
    Static(TargetSet),
    Dynamic(Arc<TargetsCell>),
}

pub struct Upstream {
    targets: Targets,
    load_balancing: LoadBalancing,
    cursor: AtomicUsize,
    send_timeout: Duration,
    read_timeout: Duration,
    retries: u32,
    pub direct: Option<DirectResponse>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, pool: &ClientPool) -> Result<Self, TargetError> {
        let tls = config.tls.clone().unwrap_or_default();
        let mut factory = None;
        let mut backends = Vec::with_capacity(config.targets.len());
        let mut resolves_services = false;
        for t in &config.targets {
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
            if scheme == Scheme::HTTPS && tls.insecure_skip_verify {
                tracing::warn!(
                    target = %t.url,
                    "upstream.tls.insecureSkipVerify: upstream certificates are NOT verified"
                );
            }
            if factory.is_none() {
                let https = config.targets.iter().any(|t| t.url.starts_with("https://"));
                factory = Some(
                    pool.factory(
                        config.connect_timeout_ms,
                        config.refuse_internal_addresses,
                        https.then_some(&tls),
                    )
                    .map_err(|e| err(&e.to_string()))?,
                );
            }
            let Some(factory) = factory.as_ref() else {
                return Err(err("no connector"));
            };
            match &t.service {
                Some(service) if pool.endpoints.is_enabled() => {
                    resolves_services = true;
                    let host = pool::host_header(&build_uri(
                        &scheme,
                        &authority,
                        &PathAndQuery::from_static("/"),
                    ));
                    backends.push(Backend::Service {
                        service: service.clone(),
                        weight: t.weight,
                        scheme,
                        host,
                    });
                }
                _ => {
                    let mut target = Target::new(t.url.clone(), scheme, authority, t.weight);
                    factory.attach_pool(&mut target, None).map_err(err)?;
                    backends.push(Backend::Fixed(Arc::new(target)));
                }
            }
        }
        let direct = config.direct_response.as_ref().map(direct_response);
        let targets = match factory {
            Some(factory) if resolves_services => {
                let cell = Arc::new(TargetsCell {
                    current: ArcSwap::from_pointee(TargetSet::new(Vec::new(), None)),
                    backends,
                    factory,
                });
                let mut view = pool.endpoints.view();
                for backend in &cell.backends {
                    if let Backend::Service { service, .. } = backend {
                        view.subscribe((service.namespace.clone(), service.name.clone()), &cell);
                    }
                }
                let set = cell.build(&|b| view.resolve(b), None);
                cell.current.store(Arc::new(set));
                drop(view);
                Targets::Dynamic(cell)
            }
            _ => {
                let targets = backends
                    .into_iter()
                    .filter_map(|b| match b {
                        Backend::Fixed(t) => Some(t),
                        Backend::Service { .. } => None,
                    })
                    .collect();
                Targets::Static(TargetSet::new(targets, None))
            }
        };
        Ok(Upstream {
            targets,
            load_balancing: config.load_balancing,
            cursor: AtomicUsize::new(0),
            send_timeout: Duration::from_millis(config.send_timeout_ms.max(1)),
            read_timeout: Duration::from_millis(config.read_timeout_ms.max(1)),
            retries: config.retries,
            direct,
        })
    }

    /// The targets requests are sent to right now.
    pub fn current_targets(&self) -> Vec<String> {
        match &self.targets {
            Targets::Static(set) => set.targets.iter().map(|t| t.url.clone()).collect(),
            Targets::Dynamic(cell) => cell
                .current
                .load()
                .targets
                .iter()
                .map(|t| t.url.clone())
                .collect(),
        }
    }

    /// Sends the request. `parts.uri` holds the origin-form path and query to forward;
    /// `hop` what this hop adds. `replayable` allows retries (idempotent method,
    /// no body). A failure while `client_fault` holds a fault was the client's (its body
    /// stalled, broke or was too large): it is not charged to the target's health.
    pub async fn forward(
        &self,
        mut parts: Parts,
        hop: Hop<'_>,
        body: ProxyBody,
        client_ip: IpAddr,
        replayable: bool,
        client_fault: &ClientFault,
    ) -> Result<Response<ReadTimeoutBody>, UpstreamError> {
        // A Service's set is held for the whole exchange (retries included): one reference
        // count, never a lock; an endpoint change meanwhile applies to the next request.
        let dynamic;
        let set: &TargetSet = match &self.targets {
            Targets::Static(set) => set,
            Targets::Dynamic(cell) => {
                dynamic = cell.current.load_full();
                &dynamic
            }
        };
        if set.targets.is_empty() {
            return Err(match set.gap {
                Some(gap) => UpstreamError::NoEndpoints(gap),
                None => UpstreamError::NoTargets,
            });
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
            let index = self.pick(set, client_ip, tried);
            tried |= 1u64 << (index % 64);
            let target = &set.targets[index];
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
            let sent =
                timeouts::exchange(attempt_body, self.send_timeout, self.read_timeout, |body| {
                    pool.send(parts, hop, body)
                });
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
                    if matches!(e, pool::SendError::Connect(_)) {
                        tracing::debug!(target = %target.url, error = %e, "upstream connect failed");
                        last_error = UpstreamError::Connect;
                        continue;
                    }
                    // A connection closed or reset before the response head, as when a pod
                    // exits at SIGTERM before its endpoint is gone: the request is replayable
                    // (idempotent, no body), so another target gets it, as nginx does.
                    if matches!(
                        e,
                        pool::SendError::Request(ExchangeError::Closed | ExchangeError::Io(_))
                    ) {
                        tracing::debug!(target = %target.url, error = %e, "upstream closed before answering");
                        last_error = UpstreamError::Failed;
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

    fn pick(&self, set: &TargetSet, client_ip: IpAddr, tried: u64) -> usize {
        let n = set.targets.len();
        if n == 1 {
            return 0;
        }
        let now = now_ms();
        let was_tried = |i: usize| tried & (1u64 << (i % 64)) != 0;
        let usable = |i: usize| !was_tried(i) && set.targets[i].healthy(now);
        let preferred = match self.load_balancing {
            LoadBalancing::RoundRobin => {
                let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % set.schedule.len().max(1);
                set.schedule.get(slot).map_or(0, |&i| i as usize)
            }
            LoadBalancing::LeastRequest => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let candidates = (0..n).map(|k| (start + k) % n);
                let best = |filter: &dyn Fn(usize) -> bool| {
                    candidates.clone().filter(|&i| filter(i)).min_by(|&a, &b| {
                        let load = |i: usize| {
                            let t = &set.targets[i];
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
                        rendezvous_score(&set.targets[a], client_ip)
                            .total_cmp(&rendezvous_score(&set.targets[b], client_ip))
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
}

fn rendezvous_score(target: &Target, ip: IpAddr) -> f64 {
    let mut hasher = DefaultHasher::new();
    ip.hash(&mut hasher);
    target.url.hash(&mut hasher);
    // Map the hash into (0, 1) and weight it: score = -w / ln(u).
    let unit = ((hasher.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(target.weight.max(1)) / unit.ln()
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
fn smooth_schedule(targets: &[Arc<Target>]) -> Vec<u32> {
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

    fn target(weight: u32) -> Arc<Target> {
        Arc::new(Target::new(
            "http://a:1".into(),
            Scheme::HTTP,
            Authority::from_static("a:1"),
            weight,
        ))
    }

    #[test]
    fn a_services_weight_is_shared_by_its_endpoints() {
        // One backend: every endpoint alike.
        assert_eq!(endpoint_weights(&[(1, 3)]), vec![1]);
        // 90/10 across Services of 3 and 2 pods: per pod 30 and 5, totals 90 and 10.
        assert_eq!(endpoint_weights(&[(90, 3), (10, 2)]), vec![6, 1]);
        // A fixed target (one address) beside a Service of 4 pods, equal weights.
        assert_eq!(endpoint_weights(&[(1, 1), (1, 4)]), vec![4, 1]);
        assert_eq!(endpoint_weights(&[(0, 2), (5, 2)]), vec![0, 1]);
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        let s = smooth_schedule(&[target(5), target(1), target(1)]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[target(0), target(2)]);
        assert_eq!(s, vec![1, 1]);
    }
}
