//! Rate limits and quotas (pipeline steps 5 and 8, docs/architecture.md).
//!
//! - [`pre_auth`] (step 5) decides the policies whose key needs no identity (ClientIp,
//!   Global, Route, Header), so a brute-force run is stopped before authentication.
//! - [`post_auth`] (step 8) decides Consumer and ApiKey policies, with tiers chosen by the
//!   consumer's groups.
//!
//! Within a step every applicable limit (all policies, all their limits, the quota) is
//! decided together and the tightest wins. A denied request consumes nothing on the
//! backend that denied it: local counters are checked and charged under the shard locks
//! of all of them, Redis counters inside one script. What is not avoided: a request admitted
//! by step 5 and then denied by authentication or step 8 keeps its step-5 charge (wanted:
//! that is what stops brute force), and when one step spans two backends (Redis and local,
//! or several Redis deployments), Redis is charged first and keeps its charge if the local
//! counters then deny.
//!
//! Identity fallbacks (as Kong does): a Consumer key on an unauthenticated or anonymous
//! request, and a Header key without the header count by client IP instead. A post-auth
//! key is only ever what authenticated: an ApiKey key counts by the API key only when that
//! key authenticated the request; a request authenticated otherwise (a JWT, mTLS...) counts
//! by its consumer (or token subject), and by client IP without one. A key that did not
//! authenticate never becomes a counter key: a client sending a fresh invalid key with each
//! JWT-authenticated request would otherwise get a fresh counter each time.
//!
//! A client IP is an IPv4 address or an IPv6 prefix (`ipv6PrefixLength`, /64 by default):
//! one host usually holds a whole /64, so counting full IPv6 addresses would give it 2^64
//! counters. A Header key sent more than once is refused (400): which of its values would
//! count is ambiguous, and all of them are forwarded.

pub mod algorithms;
pub mod clock;
pub mod headers;
pub mod keys;
pub mod local;
pub mod redis;
mod resp;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName};
use portcullis_compiler::config::{
    LimitConfig, OnBackendFailureConfig, QuotaConfig, QuotaPeriodConfig, RateLimitAlgorithmConfig,
    RateLimitBackendConfig, RateLimitKeyConfig, RedisPasswordEntry,
};
use portcullis_compiler::GatewayConfig;

use crate::auth::{Consumer, CredentialType, Identity, DEFAULT_API_KEY_HEADER};
use crate::router::query_pairs;
use algorithms::{Kind, Rule, Verdict, Verdicts};
use clock::{Clock, SystemClock};
pub use headers::RateLimitHeaders;
use keys::{Material, RedisKeys};
use local::{Check, LocalStore, Partition};
use redis::{RedisBackend, RedisSettings, RedisTls, SentinelSettings};
pub use resp::{ProtocolError as RespProtocolError, Reply as RespReply};
use smallvec::SmallVec;

/// Reads one Redis (RESP2) reply from the start of `buf`, as the rate limiter's pipelined
/// connection does: `Ok(None)` when incomplete, else the reply and the bytes it took (an
/// array of integers lands in `ints`). The module stays private; this is the one entry
/// point fuzzing and tests outside the crate need.
pub fn parse_resp_reply(
    buf: &[u8],
    ints: &mut Vec<i64>,
) -> Result<Option<(RespReply, usize)>, RespProtocolError> {
    resp::parse(buf, ints)
}

/// Why a request was stopped by this step.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limit exceeded")]
    Exceeded(Box<Exceeded>),
    /// The shared backend did not answer within its timeout and the policy fails closed.
    #[error("rate limiting is unavailable")]
    Unavailable { policy: Arc<str> },
    /// A Header-keyed policy's header came more than once: which value counts would be a
    /// guess, and every copy is forwarded, so the request is refused (400).
    #[error("the rate-limit key header must be sent once")]
    DuplicateKeyHeader { policy: Arc<str> },
}

#[derive(Debug)]
pub struct Exceeded {
    pub policy: Arc<str>,
    /// Human-readable limit, e.g. `100 per 60s` or `quota 10000 per Month`.
    pub limit: String,
    pub retry_after_secs: u64,
    /// `None` when the policy has `responseHeaders: false`.
    pub headers: Option<RateLimitHeaders>,
}

impl RateLimitError {
    pub fn reason(&self) -> &'static str {
        match self {
            RateLimitError::Exceeded(_) => "rate_limited",
            RateLimitError::Unavailable { .. } => "rate_limit_backend_unavailable",
            RateLimitError::DuplicateKeyHeader { .. } => "duplicate_rate_limit_key_header",
        }
    }

    pub fn policy(&self) -> &str {
        match self {
            RateLimitError::Exceeded(e) => &e.policy,
            RateLimitError::Unavailable { policy }
            | RateLimitError::DuplicateKeyHeader { policy } => policy,
        }
    }

    pub fn limit(&self) -> Option<&str> {
        match self {
            RateLimitError::Exceeded(e) => Some(&e.limit),
            RateLimitError::Unavailable { .. } | RateLimitError::DuplicateKeyHeader { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitConfigError {
    #[error("route {route}: unknown RateLimitPolicy {policy}")]
    UnknownPolicy { route: String, policy: String },
    #[error("RateLimitPolicy {0}: invalid header name")]
    Header(String),
}

/// Process-wide limiter state that outlives config reloads: local counters (a partition per
/// policy) and Redis connections (shared by every policy with the same Redis settings).
pub struct Backends {
    local: LocalStore,
    /// Weak: the configs that use a connection own it. A reload finds the connections the
    /// running config holds (so equal settings keep theirs), and a connection no config
    /// uses any more closes when the last config holding it goes, instead of reconnecting to
    /// a Redis nobody asks for.
    redis: Mutex<HashMap<RedisSettings, Weak<RedisBackend>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Backends {
    pub fn new(clock: Option<Arc<dyn Clock>>) -> Self {
        Self::with_capacity(clock, local::DEFAULT_MAX_COUNTERS_PER_POLICY)
    }

    /// `max_counters_per_policy`: the local counters each policy may hold.
    pub fn with_capacity(clock: Option<Arc<dyn Clock>>, max_counters_per_policy: usize) -> Self {
        Backends {
            local: LocalStore::new(
                clock.unwrap_or_else(|| Arc::new(SystemClock)),
                max_counters_per_policy,
            ),
            redis: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    pub fn local_counters(&self) -> usize {
        self.local.len()
    }

    fn redis_map(&self) -> std::sync::MutexGuard<'_, HashMap<RedisSettings, Weak<RedisBackend>>> {
        self.redis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Only at config load, never per request.
    fn redis(&self, settings: RedisSettings) -> Option<Arc<RedisBackend>> {
        let runtime = self.runtime.clone()?;
        let mut map = self.redis_map();
        map.retain(|_, backend| backend.strong_count() > 0);
        if let Some(backend) = map.get(&settings).and_then(Weak::upgrade) {
            return Some(backend);
        }
        let backend = RedisBackend::new(settings.clone(), runtime);
        map.insert(settings, Arc::downgrade(&backend));
        Some(backend)
    }

    /// Redis connections some config still holds.
    pub fn redis_connections(&self) -> usize {
        self.redis_map()
            .values()
            .filter(|b| b.strong_count() > 0)
            .count()
    }
}

struct CompiledPolicy {
    id: Arc<str>,
    /// The policy's part of its local counter ids ([`LocalStore::seed`]).
    seed: u64,
    /// Its local counters (and fallback counters), apart from every other policy's.
    counters: Arc<Partition>,
    key: RateLimitKeyConfig,
    /// Client IPv6 addresses count by this prefix.
    ipv6_prefix: u8,
    header: Option<HeaderName>,
    /// Limits, then the quota.
    rules: Vec<Rule>,
    tiers: Vec<(String, Vec<Rule>)>,
    /// `None`: local counters. Also `None` when Redis was configured but no runtime exists
    /// (then every decision is a backend failure).
    redis: Option<Arc<RedisBackend>>,
    redis_configured: bool,
    cluster: bool,
    on_failure: OnBackendFailureConfig,
    response_headers: bool,
}

#[derive(Default)]
struct RoutePolicies {
    pre: Vec<usize>,
    post: Vec<usize>,
    /// Every policy of the step counts locally: decided without a future.
    pre_local: bool,
    post_local: bool,
    /// Where this route's API key is presented, when a post-auth policy keys by it.
    api_key: Option<(HeaderName, Option<String>)>,
}

/// The limits of one config generation.
#[derive(Default)]
pub struct RateLimits {
    policies: Vec<CompiledPolicy>,
    routes: Vec<RoutePolicies>,
}

fn rules_of(
    algorithm: RateLimitAlgorithmConfig,
    limits: &[LimitConfig],
    quota: Option<&QuotaConfig>,
) -> Vec<Rule> {
    let kind = match algorithm {
        RateLimitAlgorithmConfig::SlidingWindow => Kind::Sliding,
        RateLimitAlgorithmConfig::FixedWindow => Kind::Fixed,
        RateLimitAlgorithmConfig::TokenBucket => Kind::Gcra,
    };
    let mut rules: Vec<Rule> = limits
        .iter()
        .map(|l| Rule {
            kind,
            limit: l.requests,
            period_ms: l.period_ms,
            burst: l.burst.unwrap_or(l.requests),
        })
        .collect();
    if let Some(q) = quota {
        let (kind, period_ms) = match q.period {
            QuotaPeriodConfig::Day => (Kind::QuotaDay, algorithms::DAY_MS),
            QuotaPeriodConfig::Month => (Kind::QuotaMonth, 31 * algorithms::DAY_MS),
        };
        rules.push(Rule {
            kind,
            limit: q.requests,
            period_ms,
            burst: q.requests,
        });
    }
    rules
}

fn describe(rule: &Rule) -> String {
    match rule.kind {
        Kind::QuotaDay => format!("quota {} per Day", rule.limit),
        Kind::QuotaMonth => format!("quota {} per Month", rule.limit),
        Kind::Gcra => format!(
            "{} per {}ms (burst {})",
            rule.limit, rule.period_ms, rule.burst
        ),
        Kind::Fixed | Kind::Sliding => format!("{} per {}ms", rule.limit, rule.period_ms),
    }
}

impl RateLimits {
    pub fn build(
        config: &GatewayConfig,
        backends: &Backends,
    ) -> Result<Self, RateLimitConfigError> {
        let mut policies = Vec::with_capacity(config.rate_limit_policies.len());
        let mut index = HashMap::new();
        for p in &config.rate_limit_policies {
            let header = match &p.header {
                Some(h) => Some(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| RateLimitConfigError::Header(p.id.clone()))?,
                ),
                None => None,
            };
            let (redis, redis_configured, cluster) = match &p.backend {
                RateLimitBackendConfig::Local => (None, false, false),
                RateLimitBackendConfig::Redis {
                    urls,
                    cluster,
                    timeout_ms,
                    username,
                    sentinel,
                    tls,
                    ..
                } => {
                    let secrets = &config.secrets;
                    let password_in = |entries: &[RedisPasswordEntry]| {
                        entries
                            .iter()
                            .find(|e| e.policy == p.id)
                            .map(|e| e.password.clone())
                    };
                    let tls = tls.then(|| {
                        secrets
                            .redis_tls
                            .iter()
                            .find(|e| e.policy == p.id)
                            .map(|e| RedisTls {
                                ca_pem: e.ca_pem.clone(),
                                client_cert_pem: e.client_cert_pem.clone(),
                                client_key_pem: e.client_key_pem.clone(),
                            })
                            .unwrap_or_default()
                    });
                    let settings = RedisSettings {
                        urls: urls.clone(),
                        cluster: *cluster,
                        username: username.clone(),
                        password: password_in(&secrets.redis_passwords),
                        sentinel: sentinel.as_ref().map(|s| SentinelSettings {
                            master_name: s.master_name.clone(),
                            urls: s.urls.clone(),
                            password: password_in(&secrets.redis_sentinel_passwords),
                        }),
                        tls,
                        timeout: Duration::from_millis(*timeout_ms),
                    };
                    (backends.redis(settings), true, *cluster)
                }
            };
            index.insert(p.id.as_str(), policies.len());
            policies.push(CompiledPolicy {
                id: Arc::from(p.id.as_str()),
                seed: backends.local.seed(&p.id),
                counters: backends.local.partition(&p.id),
                key: p.key,
                ipv6_prefix: p.ipv6_prefix_length.min(128),
                header,
                rules: rules_of(p.algorithm, &p.limits, p.quota.as_ref()),
                tiers: p
                    .tiers
                    .iter()
                    .map(|t| {
                        (
                            t.group.clone(),
                            rules_of(p.algorithm, &t.limits, p.quota.as_ref()),
                        )
                    })
                    .collect(),
                redis,
                redis_configured,
                cluster,
                on_failure: p.on_backend_failure,
                response_headers: p.response_headers,
            });
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let mut rp = RoutePolicies::default();
            for id in &route.rate_limit_policies {
                let &i =
                    index
                        .get(id.as_str())
                        .ok_or_else(|| RateLimitConfigError::UnknownPolicy {
                            route: route.id.clone(),
                            policy: id.clone(),
                        })?;
                let policy = &policies[i];
                if policy.key.is_pre_auth() {
                    rp.pre.push(i);
                } else {
                    rp.post.push(i);
                    if policy.key == RateLimitKeyConfig::ApiKey {
                        let auth = route.authentication.as_ref();
                        let header = auth
                            .and_then(|a| a.api_key_header.as_deref())
                            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                            .unwrap_or(HeaderName::from_static(DEFAULT_API_KEY_HEADER));
                        let query = auth.and_then(|a| a.api_key_query_param.clone());
                        rp.api_key = Some((header, query));
                    }
                }
            }
            let local_only = |ids: &[usize]| ids.iter().all(|&i| !policies[i].redis_configured);
            rp.pre_local = local_only(&rp.pre);
            rp.post_local = local_only(&rp.post);
            routes.push(rp);
        }
        Ok(RateLimits { policies, routes })
    }
}

/// What step 5 hands to step 8.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreAuth {
    /// Digest of the API key as presented, read before authentication may hide it.
    api_key: Option<[u8; 16]>,
}

/// The request facts a rate-limit step keys on (both steps read the same ones).
pub struct LimitedRequest<'a> {
    /// The route's index in the config generation the limits were built from.
    pub route: usize,
    pub route_id: &'a str,
    pub client_ip: IpAddr,
    pub parts: &'a Parts,
}

/// Who step 7 said the caller is: what step 8 keys Consumer and ApiKey policies by.
pub struct Caller<'a> {
    pub identity: Identity,
    /// The consumer behind `Identity::Consumer`, looked up by the caller.
    pub consumer: Option<&'a Consumer>,
    pub credential: Option<CredentialType>,
    /// The token subject of a principal without a ConsumerCredential.
    pub subject: Option<&'a str>,
}

/// Step 5: limits keyed by client IP, header, route or globally.
pub async fn pre_auth(
    backends: &Backends,
    limits: &RateLimits,
    request: &LimitedRequest<'_>,
    granted: &mut Option<RateLimitHeaders>,
) -> Result<PreAuth, RateLimitError> {
    let Some(rp) = limits.routes.get(request.route) else {
        return Ok(PreAuth::default());
    };
    let parts = request.parts;
    let api_key = rp.api_key.as_ref().and_then(|(header, query)| {
        let from_header = parts
            .headers
            .get(header)
            .filter(|v| !v.is_empty())
            .map(|v| keys::digest(v.as_bytes()));
        from_header.or_else(|| {
            let q = query.as_deref()?;
            query_pairs(parts.uri.query())
                .find(|(n, _)| n == q)
                .filter(|(_, v)| !v.is_empty())
                .map(|(_, v)| keys::digest(v.as_bytes()))
        })
    });
    if !rp.pre.is_empty() {
        let ctx = KeyContext {
            route_id: request.route_id,
            client_ip: request.client_ip,
            headers: &parts.headers,
            consumer: None,
            groups: &[],
            api_key: None,
        };
        if rp.pre_local {
            decide_local(backends, limits, &rp.pre, &ctx, granted)?;
        } else {
            // Boxed: the Redis round trip makes this future large, and every request's
            // pipeline future would carry (and copy) that size even on routes without limits.
            Box::pin(decide(backends, limits, &rp.pre, &ctx, granted)).await?;
        }
    }
    Ok(PreAuth { api_key })
}

/// Step 8: limits keyed by consumer or API key, tiers by consumer group.
pub async fn post_auth(
    backends: &Backends,
    limits: &RateLimits,
    request: &LimitedRequest<'_>,
    caller: &Caller<'_>,
    pre: PreAuth,
    granted: &mut Option<RateLimitHeaders>,
) -> Result<(), RateLimitError> {
    let Some(rp) = limits
        .routes
        .get(request.route)
        .filter(|rp| !rp.post.is_empty())
    else {
        return Ok(());
    };
    let consumer = match caller.identity {
        Identity::Consumer(_) => caller.consumer,
        Identity::Principal | Identity::Anonymous | Identity::Unauthenticated => None,
    };
    // A token from an external issuer without a ConsumerCredential is limited by its subject.
    let consumer_key = match (consumer, caller.identity) {
        (Some(c), _) => Some(c.id.as_str()),
        (None, Identity::Principal) => caller.subject,
        (None, _) => None,
    };
    let ctx = KeyContext {
        route_id: request.route_id,
        client_ip: request.client_ip,
        headers: &request.parts.headers,
        consumer: consumer_key,
        groups: consumer.map_or(&[], |c| c.groups.as_slice()),
        // Only a key that authenticated this request; any other is the client's word.
        api_key: pre
            .api_key
            .filter(|_| caller.credential == Some(CredentialType::ApiKey)),
    };
    if rp.post_local {
        return decide_local(backends, limits, &rp.post, &ctx, granted);
    }
    Box::pin(decide(backends, limits, &rp.post, &ctx, granted)).await
}

struct KeyContext<'a> {
    route_id: &'a str,
    client_ip: IpAddr,
    headers: &'a HeaderMap,
    consumer: Option<&'a str>,
    groups: &'a [String],
    /// Digest of the API key, only when that key authenticated the request.
    api_key: Option<[u8; 16]>,
}

impl CompiledPolicy {
    fn material<'a>(&self, ctx: &KeyContext<'a>) -> Result<Material<'a>, RateLimitError> {
        let ip = Material::Ip(keys::client_prefix(ctx.client_ip, self.ipv6_prefix));
        Ok(match self.key {
            RateLimitKeyConfig::ClientIp => ip,
            RateLimitKeyConfig::Global => Material::Global,
            RateLimitKeyConfig::Route => Material::Route(ctx.route_id),
            RateLimitKeyConfig::Header => {
                let Some(name) = &self.header else {
                    return Ok(ip);
                };
                let mut values = ctx.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => ip,
                    (Some(v), None) => Material::Header(keys::digest(v.as_bytes())),
                    (Some(_), Some(_)) => {
                        return Err(RateLimitError::DuplicateKeyHeader {
                            policy: self.id.clone(),
                        })
                    }
                }
            }
            RateLimitKeyConfig::Consumer => ctx.consumer.map_or(ip, Material::Consumer),
            // Authenticated otherwise (or not at all): the identity that did authenticate.
            RateLimitKeyConfig::ApiKey => match (ctx.api_key, ctx.consumer) {
                (Some(key), _) => Material::ApiKey(key),
                (None, Some(consumer)) => Material::Consumer(consumer),
                (None, None) => ip,
            },
        })
    }

    /// The rules for this request and a tier slot (0 = base) that keeps tier counters apart.
    fn rules_for(&self, groups: &[String]) -> (usize, &[Rule]) {
        for (i, (group, rules)) in self.tiers.iter().enumerate() {
            if groups.iter().any(|g| g == group) {
                return (i + 1, rules);
            }
        }
        (0, &self.rules)
    }
}

/// Which policy and rule a verdict belongs to.
#[derive(Clone, Copy)]
struct Slot {
    policy: usize,
    rule: Rule,
}

const FALLBACK_MARK: u8 = 1;

/// A request has a few counters: these stay on the stack.
type Few<T> = SmallVec<[T; 4]>;

/// The local counters of one step, with the slot each verdict belongs to.
#[derive(Default)]
struct LocalChecks<'a> {
    checks: Few<Check<'a>>,
    slots: Few<Slot>,
}

impl<'a> LocalChecks<'a> {
    fn push(&mut self, partition: &'a Partition, counter: u64, policy: usize, rule: Rule) {
        self.checks.push(Check {
            partition,
            counter,
            rule,
        });
        self.slots.push(Slot { policy, rule });
    }

    /// Queues the local counters of every rule of policy `pi` for this request.
    fn push_policy(
        &mut self,
        backends: &Backends,
        limits: &'a RateLimits,
        pi: usize,
        ctx: &KeyContext<'_>,
    ) -> Result<(), RateLimitError> {
        let policy = &limits.policies[pi];
        let material = policy.material(ctx)?;
        let (tier, rules) = policy.rules_for(ctx.groups);
        for (ri, rule) in rules.iter().enumerate() {
            let counter = backends.local.counter((policy.seed, material, tier, ri));
            self.push(&policy.counters, counter, pi, *rule);
        }
        Ok(())
    }

    /// Decides them all (atomically) and appends the verdicts to `all`.
    fn decide(&self, backends: &Backends, all: &mut Few<(Slot, Verdict)>) {
        if self.checks.is_empty() {
            return;
        }
        let mut verdicts = Verdicts::new();
        backends.local.decide(&self.checks, &mut verdicts);
        all.extend(self.slots.iter().copied().zip(verdicts));
    }
}

/// The counters one script call decides.
struct RedisGroup {
    /// The first policy of the group; its backend is the group's.
    first: usize,
    keys: RedisKeys,
    rules: Few<Rule>,
    slots: Few<Slot>,
}

/// A step whose policies all count locally: no future, no allocation.
fn decide_local(
    backends: &Backends,
    limits: &RateLimits,
    policies: &[usize],
    ctx: &KeyContext<'_>,
    granted: &mut Option<RateLimitHeaders>,
) -> Result<(), RateLimitError> {
    let mut local = LocalChecks::default();
    for &pi in policies {
        local.push_policy(backends, limits, pi, ctx)?;
    }
    let mut all = Few::new();
    local.decide(backends, &mut all);
    finish(limits, &all, granted)
}

async fn decide(
    backends: &Backends,
    limits: &RateLimits,
    policies: &[usize],
    ctx: &KeyContext<'_>,
    granted: &mut Option<RateLimitHeaders>,
) -> Result<(), RateLimitError> {
    let mut local = LocalChecks::default();
    let mut all_slots: Few<(Slot, Verdict)> = Few::new();
    let mut verdicts = Verdicts::new();

    // Redis policies, grouped by deployment (and, for a cluster, by policy so that one
    // script's keys share a slot).
    let mut groups: SmallVec<[RedisGroup; 1]> = SmallVec::new();
    for &pi in policies {
        let policy = &limits.policies[pi];
        if !policy.redis_configured {
            local.push_policy(backends, limits, pi, ctx)?;
            continue;
        }
        let material = policy.material(ctx)?;
        let (tier, rules) = policy.rules_for(ctx.groups);
        let group = groups.iter().position(|g| {
            let other = &limits.policies[g.first];
            !policy.cluster
                && !other.cluster
                && match (&policy.redis, &other.redis) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                }
        });
        let g = match group {
            Some(g) => g,
            None => {
                groups.push(RedisGroup {
                    first: pi,
                    keys: RedisKeys::default(),
                    rules: Few::new(),
                    slots: Few::new(),
                });
                groups.len() - 1
            }
        };
        for (ri, rule) in rules.iter().enumerate() {
            let group = &mut groups[g];
            group.keys.push(&policy.id, &material, tier * 64 + ri);
            group.rules.push(*rule);
            group.slots.push(Slot {
                policy: pi,
                rule: *rule,
            });
        }
    }

    for group in &groups {
        let backend = limits.policies[group.first].redis.as_ref();
        let result = match backend {
            Some(b) => b.decide(&group.keys, &group.rules, &mut verdicts).await,
            None => Err(redis::RedisError::Unavailable),
        };
        match result {
            Ok(_) => {
                all_slots.extend(group.slots.iter().copied().zip(verdicts.iter().copied()));
                if verdicts.iter().any(|v| !v.allowed) {
                    return finish(limits, &all_slots, granted);
                }
            }
            Err(_) => {
                for (i, slot) in group.slots.iter().enumerate() {
                    let policy = &limits.policies[slot.policy];
                    match policy.on_failure {
                        OnBackendFailureConfig::Deny => {
                            return Err(RateLimitError::Unavailable {
                                policy: policy.id.clone(),
                            })
                        }
                        OnBackendFailureConfig::Allow => {}
                        OnBackendFailureConfig::LocalFallback => {
                            let material = policy.material(ctx)?;
                            let (tier, _) = policy.rules_for(ctx.groups);
                            // The rule's index within its policy.
                            let ri = group.slots[..i]
                                .iter()
                                .filter(|s| s.policy == slot.policy)
                                .count();
                            let counter = backends.local.counter((
                                policy.seed,
                                FALLBACK_MARK,
                                material,
                                tier,
                                ri,
                            ));
                            local.push(&policy.counters, counter, slot.policy, slot.rule);
                        }
                    }
                }
            }
        }
    }

    local.decide(backends, &mut all_slots);
    finish(limits, &all_slots, granted)
}

/// Turns the verdicts of one step into its answer: the denial with the longest wait, or
/// the headers of the tightest limit.
fn finish(
    limits: &RateLimits,
    verdicts: &[(Slot, Verdict)],
    granted: &mut Option<RateLimitHeaders>,
) -> Result<(), RateLimitError> {
    let denied = verdicts
        .iter()
        .filter(|(_, v)| !v.allowed)
        .max_by_key(|(_, v)| v.retry_after_ms);
    if let Some((slot, v)) = denied {
        let policy = &limits.policies[slot.policy];
        return Err(RateLimitError::Exceeded(Box::new(Exceeded {
            policy: policy.id.clone(),
            limit: describe(&slot.rule),
            retry_after_secs: headers::secs_ceil(v.retry_after_ms).max(1),
            headers: policy.response_headers.then(|| RateLimitHeaders::of(v)),
        })));
    }
    for (slot, v) in verdicts {
        if !limits.policies[slot.policy].response_headers {
            continue;
        }
        let h = RateLimitHeaders::of(v);
        *granted = Some(match *granted {
            Some(g) => g.tighter(h),
            None => h,
        });
    }
    Ok(())
}
