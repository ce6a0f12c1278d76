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
            cluster: false,
            timeout_ms: 100,
            has_password: false,
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
        assert!(
            grown < 64 << 20,
            "resident memory grew by {} MiB (Redis streamed {} MiB)",
            grown >> 20,
            fake.streamed.load(Ordering::SeqCst) >> 20
        );
    }
}
