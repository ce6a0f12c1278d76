//! Rate limiting with the local backend and an injected clock: exact counts, headers,
//! sliding windows, token bucket bursts, tiers, calendar quotas, pre-auth brute-force
//! protection and connection limits.
#![allow(clippy::unwrap_used)]
mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::*;
use portcullis_compiler::config::*;
use portcullis_proxy::ratelimit::algorithms::days_from_civil;
use portcullis_proxy::ratelimit::clock::ManualClock;
use portcullis_proxy::ProxyOptions;
use sha2::{Digest, Sha256};

fn policy(
    id: &str,
    key: RateLimitKeyConfig,
    algorithm: RateLimitAlgorithmConfig,
    limits: &[(u64, u64, Option<u64>)],
) -> RateLimitPolicyConfig {
    RateLimitPolicyConfig {
        id: id.into(),
        namespace: "default".into(),
        global: false,
        key,
        header: None,
        algorithm,
        limits: limits
            .iter()
            .map(|&(requests, period_ms, burst)| LimitConfig {
                requests,
                period_ms,
                burst,
            })
            .collect(),
        tiers: vec![],
        quota: None,
        backend: RateLimitBackendConfig::Local,
        on_backend_failure: OnBackendFailureConfig::Deny,
        response_headers: true,
        ipv6_prefix_length: 64,
    }
}

fn limited(policies: Vec<RateLimitPolicyConfig>) -> portcullis_compiler::GatewayConfig {
    let mut r = route("default/r", PathKind::Prefix, "/", &[]);
    r.upstream.direct_response = Some(direct(200, "ok"));
    r.rate_limit_policies = policies.iter().map(|p| p.id.clone()).collect();
    let mut cfg = config(vec![r]);
    cfg.rate_limit_policies = policies;
    cfg
}

/// 2030-01-01T00:00:00Z, so windows start aligned.
const T0: u64 = 1_893_456_000_000;

async fn start_at(
    clock: &ManualClock,
    cfg: portcullis_compiler::GatewayConfig,
) -> portcullis_proxy::RunningProxy {
    start_with(
        ProxyOptions {
            rate_limit_clock: Some(Arc::new(clock.clone())),
            ..ProxyOptions::default()
        },
        cfg,
    )
    .await
}

async fn statuses(c: &TestClient, addr: std::net::SocketAddr, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(c, addr, get("/x")).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn exactly_n_admitted_then_429_with_headers_and_metric() {
    let clock = ManualClock::new(T0);
    let p = policy(
        "default/per-ip",
        RateLimitKeyConfig::ClientIp,
        RateLimitAlgorithmConfig::SlidingWindow,
        &[(5, 60_000, None)],
    );
    let proxy = start_at(&clock, limited(vec![p])).await;
    let c = client();
    for i in 0..5u64 {
        let r = send(&c, proxy.local_addr(), get("/x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((4 - i).to_string().as_str())
        );
        assert_eq!(r.header("ratelimit-reset"), Some("120"));
    }
    let r = send(
        &c,
        proxy.local_addr(),
        get("/x").header("x-request-id", "rl-test-1"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["request_id"], "rl-test-1");
    assert_eq!(r.json()["error"], "rate limit exceeded");
    // Sliding window: in the next window the 5 requests still weigh 5 × (1 - elapsed/60s);
    // one more fits once that drops to 4, 12 s into it: 60 s + 12 s.
    assert_eq!(r.header("retry-after"), Some("72"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let metrics = String::from_utf8(
        send(&c, proxy.admin_addr().unwrap(), get("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains(
            "api_rate_limit_exceeded_total{route=\"default/r\",policy=\"default/per-ip\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_window_slides() {
    let clock = ManualClock::new(T0);
    let p = policy(
        "default/slide",
        RateLimitKeyConfig::Global,
        RateLimitAlgorithmConfig::SlidingWindow,
        &[(10, 10_000, None)],
    );
    let proxy = start_at(&clock, limited(vec![p])).await;
    let c = client();
    let admitted = |s: Vec<u16>| s.iter().filter(|&&s| s == 200).count();
    assert_eq!(admitted(statuses(&c, proxy.local_addr(), 12).await), 10);
    clock.advance(10_000); // next window: the previous one still weighs fully
    assert_eq!(admitted(statuses(&c, proxy.local_addr(), 3).await), 0);
    clock.advance(5_000); // half of it has slid out: 5 fit
    assert_eq!(admitted(statuses(&c, proxy.local_addr(), 8).await), 5);
    clock.advance(15_000); // two windows later everything is free again
    assert_eq!(admitted(statuses(&c, proxy.local_addr(), 12).await), 10);
}

#[tokio::test]
async fn token_bucket_bursts_then_refills() {
    let clock = ManualClock::new(T0);
    let p = policy(
        "default/bucket",
        RateLimitKeyConfig::Route,
        RateLimitAlgorithmConfig::TokenBucket,
        &[(10, 1_000, Some(20))],
    );
    let proxy = start_at(&clock, limited(vec![p])).await;
    let c = client();
    let s = statuses(&c, proxy.local_addr(), 25).await;
    assert_eq!(s.iter().filter(|&&s| s == 200).count(), 20, "{s:?}");
    let r = send(&c, proxy.local_addr(), get("/x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    clock.advance(500); // 5 tokens back
    let s = statuses(&c, proxy.local_addr(), 8).await;
    assert_eq!(s.iter().filter(|&&s| s == 200).count(), 5, "{s:?}");
}

#[tokio::test]
async fn the_tightest_limit_decides_and_denials_charge_nothing() {
    let clock = ManualClock::new(T0);
    let wide = policy(
        "default/wide",
        RateLimitKeyConfig::Global,
        RateLimitAlgorithmConfig::FixedWindow,
        &[(100, 60_000, None)],
    );
    let tight = policy(
        "default/tight",
        RateLimitKeyConfig::ClientIp,
        RateLimitAlgorithmConfig::FixedWindow,
        &[(50, 60_000, None), (3, 1_000, None)],
    );
    let proxy = start_at(&clock, limited(vec![wide, tight])).await;
    let c = client();
    let r = send(&c, proxy.local_addr(), get("/x")).await;
    // Headers name the tightest limit.
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    let s = statuses(&c, proxy.local_addr(), 10).await;
    assert_eq!(s.iter().filter(|&&s| s == 200).count(), 2);
    clock.advance(1_000);
    let r = send(&c, proxy.local_addr(), get("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-remaining"), Some("2"));
}

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[tokio::test]
async fn tiers_pick_their_groups_limits() {
    let clock = ManualClock::new(T0);
    let mut p = policy(
        "default/per-consumer",
        RateLimitKeyConfig::Consumer,
        RateLimitAlgorithmConfig::FixedWindow,
        &[(2, 60_000, None)],
    );
    p.tiers = vec![TierConfig {
        group: "gold".into(),
        limits: vec![LimitConfig {
            requests: 5,
            period_ms: 60_000,
            burst: None,
        }],
    }];
    let mut cfg = limited(vec![p]);
    cfg.routes[0].authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey],
        optional: false,
        hide_credentials: true,
        api_key_header: None,
        api_key_query_param: None,
        ..AuthenticationConfig::default()
    }));
    cfg.consumers = ["gold-app", "free-app"]
        .iter()
        .map(|n| ConsumerConfig {
            id: format!("default/{n}"),
            namespace: "default".into(),
            username: (*n).into(),
            groups: if *n == "gold-app" {
                vec!["gold".into()]
            } else {
                vec![]
            },
            ..ConsumerConfig::default()
        })
        .collect();
    cfg.secrets.api_keys = vec![
        ApiKeyEntry {
            sha256: sha("gold-key-123"),
            consumer: "default/gold-app".into(),
        },
        ApiKeyEntry {
            sha256: sha("free-key-123"),
            consumer: "default/free-app".into(),
        },
    ];
    let proxy = start_at(&clock, cfg).await;
    let c = client();
    let count = |key: &'static str| {
        let c = c.clone();
        let addr = proxy.local_addr();
        async move {
            let mut ok = 0;
            for _ in 0..8 {
                if send(&c, addr, get("/x").header("x-api-key", key))
                    .await
                    .status
                    == 200
                {
                    ok += 1;
                }
            }
            ok
        }
    };
    assert_eq!(count("gold-key-123").await, 5);
    assert_eq!(count("free-key-123").await, 2);
}

#[tokio::test]
async fn monthly_quota_rolls_over_at_the_utc_month_end() {
    // 2030-01-31T23:59:59Z
    let end_of_jan = u64::try_from(days_from_civil(2030, 2, 1)).unwrap() * 86_400_000;
    let clock = ManualClock::new(end_of_jan - 1_000);
    let mut p = policy(
        "default/quota",
        RateLimitKeyConfig::ClientIp,
        RateLimitAlgorithmConfig::SlidingWindow,
        &[],
    );
    p.quota = Some(QuotaConfig {
        requests: 3,
        period: QuotaPeriodConfig::Month,
    });
    let proxy = start_at(&clock, limited(vec![p])).await;
    let c = client();
    let s = statuses(&c, proxy.local_addr(), 3).await;
    assert_eq!(s, vec![200, 200, 200]);
    let r = send(&c, proxy.local_addr(), get("/x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    clock.advance(999);
    assert_eq!(send(&c, proxy.local_addr(), get("/x")).await.status, 429);
    clock.advance(1); // 2030-02-01T00:00:00Z
    let r = send(&c, proxy.local_addr(), get("/x")).await;
    assert_eq!(r.status, 200);
    // February 2030 has 28 days.
    assert_eq!(
        r.header("ratelimit-reset"),
        Some((28 * 86_400).to_string().as_str())
    );
}

#[tokio::test]
async fn pre_auth_limits_stop_brute_force_before_authentication() {
    let clock = ManualClock::new(T0);
    let p = policy(
        "default/per-ip",
        RateLimitKeyConfig::ClientIp,
        RateLimitAlgorithmConfig::FixedWindow,
        &[(5, 60_000, None)],
    );
    let mut cfg = limited(vec![p]);
    cfg.routes[0].authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey],
        optional: false,
        hide_credentials: true,
        api_key_header: None,
        api_key_query_param: None,
        ..AuthenticationConfig::default()
    }));
    let proxy = start_at(&clock, cfg).await;
    let c = client();
    let mut codes = Vec::new();
    for i in 0..50 {
        let key = format!("guess-{i}");
        codes.push(
            send(&c, proxy.local_addr(), get("/x").header("x-api-key", &key))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(codes.iter().filter(|&&s| s == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&s| s == 429).count(), 45);
    let metrics = String::from_utf8(
        send(&c, proxy.admin_addr().unwrap(), get("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    // Only the first five guesses reached the auth step.
    assert!(
        metrics.contains(
            "api_auth_failures_total{route=\"default/r\",reason=\"invalid_credentials\"} 5"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "api_rate_limit_exceeded_total{route=\"default/r\",policy=\"default/per-ip\"} 45"
    ));
}

#[tokio::test]
async fn connection_limits_refuse_clearly() {
    let mut r = route("default/r", PathKind::Prefix, "/", &[]);
    r.upstream.direct_response = Some(direct(200, "ok"));
    let proxy = start_with(
        ProxyOptions {
            max_connections_per_ip: Some(1),
            ..ProxyOptions::default()
        },
        config(vec![r]),
    )
    .await;
    let addr = proxy.local_addr();
    let held = tokio::task::spawn_blocking(move || {
        let first = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut second = std::net::TcpStream::connect(addr).unwrap();
        second
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let _ = second.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut out = String::new();
        let _ = second.read_to_string(&mut out);
        drop(first);
        out
    })
    .await
    .unwrap();
    assert!(held.starts_with("HTTP/1.1 503"), "{held}");
    assert!(
        held.contains("too many connections from this address"),
        "{held}"
    );
    // Once the first connection is gone, new ones are served.
    let c = client();
    assert!(eventually(std::time::Duration::from_secs(3), || true).await);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(send(&c, addr, get("/x")).await.status, 200);
}
