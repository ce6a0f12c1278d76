//! Rate limiting against a client, or a Redis, that lies (issue #27), over real sockets:
//! a Redis that answers a script call with an endless reply, an API key that never
//! authenticated, a flood of distinct keys on one policy, a key header sent twice.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "support/fake_redis.rs"]
mod fake_redis;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use fake_redis::{FakeRedis, Hostile};
use portcullis_compiler::config::*;

fn policy(id: &str, key: RateLimitKeyConfig, requests: u64) -> RateLimitPolicyConfig {
    RateLimitPolicyConfig {
        id: id.into(),
        namespace: "default".into(),
        global: false,
        key,
        header: None,
        algorithm: RateLimitAlgorithmConfig::FixedWindow,
        limits: vec![LimitConfig {
            requests,
            period_ms: 3_600_000,
            burst: None,
        }],
        tiers: vec![],
        quota: None,
        backend: RateLimitBackendConfig::Local,
        on_backend_failure: OnBackendFailureConfig::Deny,
        response_headers: true,
        ipv6_prefix_length: 64,
    }
}

fn direct_route(id: &str, path: &str, policies: &[&str]) -> RouteConfig {
    let mut r = route(id, PathKind::Prefix, path, &[]);
    r.upstream.direct_response = Some(direct(200, "ok"));
    r.rate_limit_policies = policies.iter().map(|p| p.to_string()).collect();
    r
}

/// Tests that measure this process's memory run one at a time.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

/// A Redis that answers `EVALSHA` with `*1000000000` and then streams integers as fast as
/// the connection takes them (and one that claims an allowed length but never finishes,
/// slowly): every decision ends within the policy's 100 ms timeout plus slack, as a 503
/// (`onBackendFailure: Deny`), memory stays bounded, and a route without limits is served
/// promptly all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_redis_reply_is_bounded_in_time_and_memory() {
    hostile_redis_is_bounded(false).await;
}

/// The same through the `redis` crate's cluster connection (`clusterUrls`), whose parser is
/// not ours: bounded by what the connection lets it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_redis_cluster_reply_is_bounded_in_time_and_memory() {
    hostile_redis_is_bounded(true).await;
}

async fn hostile_redis_is_bounded(cluster: bool) {
    let _alone = MEMORY.lock().await;
    for hostile in [
        Hostile {
            header: b"*1000000000\r\n",
            chunk: 64 << 10,
            pause: Duration::from_micros(200),
        },
        Hostile {
            header: b"*32768\r\n",
            chunk: 4 << 10,
            pause: Duration::from_millis(10),
        },
    ] {
        let fake = FakeRedis::start(hostile);
        let mut limited = policy("default/shared", RateLimitKeyConfig::Route, 1000);
        limited.backend = RateLimitBackendConfig::Redis {
            urls: vec![fake.url()],
            cluster,
            timeout_ms: 100,
            has_password: false,
            username: None,
            sentinel: None,
            tls: false,
        };
        let mut cfg = config(vec![
            direct_route("default/limited", "/limited", &["default/shared"]),
            direct_route("default/free", "/free", &[]),
        ]);
        cfg.rate_limit_policies = vec![limited];
        let proxy = start(cfg).await;
        let addr = proxy.local_addr();
        let c = client();
        // Connected and attacked at least once (503 at once while still connecting).
        let deadline = Instant::now() + Duration::from_secs(10);
        while fake.calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the proxy never called Redis");
            let _ = send(&c, addr, get("/limited")).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = rss();

        // Meanwhile, a route without limits keeps being served promptly.
        let free = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for _ in 0..60 {
                    let started = Instant::now();
                    let r = send(&c, addr, get("/free")).await;
                    assert_eq!(r.status, 200);
                    slowest = slowest.max(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                slowest
            })
        };
        for _ in 0..30 {
            let started = Instant::now();
            let r = send(&c, addr, get("/limited")).await;
            let took = started.elapsed();
            assert_eq!(r.status, 503, "{:?}", r.body);
            assert_eq!(r.json()["error"], "rate limiting is unavailable");
            assert!(
                took < Duration::from_secs(1),
                "a decision with a 100 ms timeout took {took:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let slowest = free.await.unwrap();
        assert!(
            slowest < Duration::from_millis(500),
            "an unlimited route waited {slowest:?}"
        );
        let grown = rss().saturating_sub(before);
        eprintln!(
            "cluster {cluster}: {} connections, {} calls, {} MiB streamed, RSS +{} MiB",
            fake.connections.load(Ordering::SeqCst),
            fake.calls.load(Ordering::SeqCst),
            fake.streamed.load(Ordering::SeqCst) >> 20,
            grown >> 20
        );
        assert!(
            grown < 32 << 20,
            "resident memory grew by {} MiB (Redis streamed {} MiB)",
            grown >> 20,
            fake.streamed.load(Ordering::SeqCst) >> 20
        );
    }
}

/// Route `/r` authenticated by `[ApiKey, Jwt]` (consumer-signed HS256 tokens), limited by a
/// local policy keyed `ApiKey`, 3 per hour.
async fn api_key_or_jwt() -> portcullis_proxy::RunningProxy {
    let mut r = direct_route("default/r", "/r", &["default/per-key"]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey, AuthMethodConfig::Jwt],
        hide_credentials: true,
        jwt: Some(JwtConfig {
            issuers: vec![],
            consumer_keys: true,
            key_claim: "kid".into(),
            algorithms: vec!["HS256".into()],
            claims_to_verify: vec!["exp".into()],
            maximum_expiration_secs: Some(3600),
            clock_skew_secs: 0,
        }),
        ..AuthenticationConfig::default()
    }));
    let mut cfg = config(vec![r]);
    cfg.rate_limit_policies = vec![policy("default/per-key", RateLimitKeyConfig::ApiKey, 3)];
    cfg.consumers.push(ConsumerConfig {
        id: "default/app".into(),
        namespace: "default".into(),
        username: "app".into(),
        ..ConsumerConfig::default()
    });
    cfg.secrets.api_keys.push(ApiKeyEntry {
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"valid-key-0123")),
        consumer: "default/app".into(),
    });
    cfg.secrets.jwt_secrets.push(JwtSecretEntry {
        consumer: "default/app".into(),
        key_id: "hmac1".into(),
        algorithm: "HS256".into(),
        secret_base64: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
    });
    start(cfg).await
}

fn consumer_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = common::idp::sign_raw(
        &serde_json::json!({"alg": "HS256", "kid": "hmac1"}),
        &serde_json::json!({"sub": "user-1", "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        jsonwebtoken::Algorithm::HS256,
    );
    format!("Bearer {token}")
}

/// A client that authenticates with a JWT and sends a fresh invalid `X-API-Key` each time
/// is limited all the same: the rejected key never keys the limit; the consumer the token
/// names does. A valid API key still counts by itself.
#[tokio::test]
async fn an_api_key_that_did_not_authenticate_never_keys_a_limit() {
    let proxy = api_key_or_jwt().await;
    let addr = proxy.local_addr();
    let c = client();
    let bearer = consumer_token();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let junk = format!("random-invalid-key-{i}");
        let r = send(
            &c,
            addr,
            get("/r")
                .header("authorization", &bearer)
                .header("x-api-key", &junk),
        )
        .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    // Without a key at all: the same consumer, the same (spent) counter.
    let r = send(&c, addr, get("/r").header("authorization", &bearer)).await;
    assert_eq!(r.status, 429);
    // The valid key authenticates and counts by itself.
    let by_key: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let r = send(&c, addr, get("/r").header("x-api-key", "valid-key-0123")).await;
            out.push(r.status.as_u16());
        }
        out
    };
    assert_eq!(by_key, [200, 200, 200, 429]);
    // An invalid key alone does not authenticate at all.
    let r = send(
        &c,
        addr,
        get("/r").header("x-api-key", "random-invalid-key-x"),
    )
    .await;
    assert_eq!(r.status, 401);
}

/// A request that carries a Header-keyed policy's header twice is refused with 400 (JSON,
/// with its request id) instead of counting the first copy and forwarding both.
#[tokio::test]
async fn a_duplicated_key_header_is_refused() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("default/t", PathKind::Prefix, "/", &[&up]);
    r.rate_limit_policies = vec!["default/per-tenant".into()];
    let mut per_tenant = policy("default/per-tenant", RateLimitKeyConfig::Header, 2);
    per_tenant.header = Some("x-tenant".into());
    let mut cfg = config(vec![r]);
    cfg.rate_limit_policies = vec![per_tenant];
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();
    let c = client();
    for _ in 0..3 {
        let r = send(
            &c,
            addr,
            get("/x")
                .header("x-tenant", "paying-customer")
                .header("x-tenant", &format!("fresh-{}", up.hits()))
                .header("x-request-id", "dup-1"),
        )
        .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert_eq!(r.json()["request_id"], "dup-1");
        assert_eq!(
            r.json()["error"],
            "the rate-limit key header must be sent once"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(up.hits(), 0);
    // Once, as usual: counted and limited.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = send(&c, addr, get("/x").header("x-tenant", "paying-customer")).await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// IPv6 clients count by /64 (through a trusted proxy's `X-Forwarded-For`): a client picking
/// a new address in its /64 for each request is limited all the same. And a flood of
/// distinct /64s on one route's policy, far beyond its counter capacity, ends in bounded
/// time and memory without evicting the other policy's counter: the strict limit on
/// `/login` still denies after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_prefixes_and_a_key_flood_that_cannot_evict_another_policy() {
    let mut cfg = config(vec![
        direct_route("default/login", "/login", &["default/login"]),
        direct_route("default/search", "/search", &["default/search"]),
    ]);
    cfg.rate_limit_policies = vec![
        policy("default/login", RateLimitKeyConfig::ClientIp, 3),
        policy("default/search", RateLimitKeyConfig::ClientIp, 1000),
    ];
    let capacity = 1024;
    let proxy = start_with(
        portcullis_proxy::ProxyOptions {
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            rate_limit_counters_per_policy: capacity,
            ..portcullis_proxy::ProxyOptions::default()
        },
        cfg,
    )
    .await;
    let addr = proxy.local_addr();
    let c = client();
    let login = |from: String| {
        let c = c.clone();
        async move {
            send(&c, addr, get("/login").header("x-forwarded-for", &from))
                .await
                .status
                .as_u16()
        }
    };
    // A new address of the same /64 each time: one counter.
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(login(format!("2001:db8:aaaa:1:{i:x}::{i:x}")).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Another /64 is another client.
    assert_eq!(login("2001:db8:aaaa:2::1".into()).await, 200);

    // The flood: 16 × capacity distinct /64s on /search.
    let _alone = MEMORY.lock().await;
    let before = rss();
    let started = Instant::now();
    let flood = 16 * capacity;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in (w..flood).step_by(8) {
                    let from = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
                    let r = send(&c, addr, get("/search").header("x-forwarded-for", &from)).await;
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(120), "the flood took {took:?}");
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "memory grew by {} MiB", grown >> 20);
    // The first client's login counter is intact: still denied.
    for i in 0..3 {
        assert_eq!(login(format!("2001:db8:aaaa:1:ffff::{i}")).await, 429);
    }
}
