#![allow(clippy::unwrap_used)]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use common::*;
use portcullis_compiler::config::{LoadBalancing, PathKind, TargetConfig};

#[tokio::test]
async fn weighted_round_robin_shares_within_tolerance() {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let mut r = route("w", PathKind::Prefix, "/", &[&a, &b]);
    r.upstream.targets[0].weight = 1;
    r.upstream.targets[1].weight = 3;
    let proxy = start(config(vec![r])).await;
    let c = client();
    for _ in 0..400 {
        assert_eq!(send(&c, proxy.local_addr(), get("/")).await.status, 200);
    }
    let share_b = b.hits() as f64 / 400.0;
    assert!((share_b - 0.75).abs() <= 0.05, "b share {share_b}");
    assert_eq!(a.hits() + b.hits(), 400);
}

#[tokio::test]
async fn least_request_and_consistent_hash_spread_and_stick() {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let mut lr = route("lr", PathKind::Prefix, "/lr", &[&a, &b]);
    lr.upstream.load_balancing = LoadBalancing::LeastRequest;
    let mut ch = route("ch", PathKind::Prefix, "/ch", &[&a, &b]);
    ch.upstream.load_balancing = LoadBalancing::ConsistentHash;
    let proxy = start(config(vec![lr, ch])).await;
    let c = client();
    for _ in 0..40 {
        send(&c, proxy.local_addr(), get("/lr")).await;
    }
    assert!(
        a.hits() >= 10 && b.hits() >= 10,
        "{} {}",
        a.hits(),
        b.hits()
    );
    let first = send(&c, proxy.local_addr(), get("/ch")).await.json()["upstream"].clone();
    for _ in 0..20 {
        assert_eq!(
            send(&c, proxy.local_addr(), get("/ch")).await.json()["upstream"],
            first
        );
    }
}

#[tokio::test]
async fn hanging_upstream_times_out_with_504() {
    let hang = upstream("hang", Behaviour::Hang).await;
    let mut r = route("h", PathKind::Prefix, "/", &[&hang]);
    r.upstream.read_timeout_ms = 300;
    let proxy = start(config(vec![r])).await;
    let started = Instant::now();
    let reply = send(&client(), proxy.local_addr(), get("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "upstream timed out");
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn refused_upstream_is_502_json_with_request_id() {
    let refused = refused_addr().await;
    let mut r = route("r", PathKind::Prefix, "/", &[]);
    r.upstream.targets = vec![TargetConfig {
        url: format!("http://{refused}"),
        weight: 1,
        service: None,
    }];
    let proxy = start(config(vec![r])).await;
    let reply = send(
        &client(),
        proxy.local_addr(),
        get("/").header("x-request-id", "req-502"),
    )
    .await;
    assert_eq!(reply.status, 502);
    let j = reply.json();
    assert_eq!(j["error"], "upstream unavailable");
    assert_eq!(j["request_id"], "req-502");
    assert!(
        !reply.body.windows(9).any(|w| w == b"127.0.0.1"),
        "leaks address"
    );
}

#[tokio::test]
async fn retries_only_idempotent_requests_on_503() {
    let bad = upstream("bad", Behaviour::Status(503)).await;
    let good = upstream("good", Behaviour::Echo).await;
    let mut r = route("r", PathKind::Prefix, "/", &[&bad, &good]);
    r.upstream.retries = 1;
    let proxy = start(config(vec![r])).await;
    let c = client();
    // Round robin starts at the first target, so the GET hits `bad` first, then is retried.
    let reply = send(&c, proxy.local_addr(), get("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!((bad.hits(), good.hits()), (1, 1));
    // The POST also lands on `bad` (next slot is `good`, so send one GET in between).
    let reply = send(&c, proxy.local_addr(), get("/").method("POST").body(b"x")).await;
    let post_hits = (bad.hits(), good.hits());
    assert!(
        (reply.status == 503 && post_hits == (2, 1))
            || (reply.status == 200 && post_hits == (1, 2)),
        "{} {post_hits:?}",
        reply.status
    );
    // Force a POST onto the failing target: single-target route.
    let mut only_bad = route("only", PathKind::Prefix, "/", &[&bad]);
    only_bad.upstream.retries = 3;
    proxy.swap_config(&config(vec![only_bad])).unwrap();
    let before = bad.hits();
    let reply = send(&c, proxy.local_addr(), get("/").method("POST").body(b"x")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(bad.hits() - before, 1, "POST must not be retried");
    let before = bad.hits();
    let reply = send(&c, proxy.local_addr(), get("/")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(bad.hits() - before, 4, "GET is retried 3 times");
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_target() {
    let refused = refused_addr().await;
    let good = upstream("good", Behaviour::Echo).await;
    let mut r = route("r", PathKind::Prefix, "/", &[&good]);
    r.upstream.targets.insert(
        0,
        TargetConfig {
            url: format!("http://{refused}"),
            weight: 1,
            service: None,
        },
    );
    r.upstream.retries = 1;
    let proxy = start(config(vec![r])).await;
    let c = client();
    for _ in 0..6 {
        assert_eq!(send(&c, proxy.local_addr(), get("/")).await.status, 200);
    }
}

/// Accepts connections, reads each request head and closes without answering (like a pod
/// that exits at SIGTERM while its endpoint is still listed); counts the requests.
async fn closes_without_answering() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                // closed here, before any response byte
            });
        }
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn a_connection_closed_before_the_response_is_retried_for_idempotent_requests_only() {
    let (closing, closed_hits) = closes_without_answering().await;
    let good = upstream("good", Behaviour::Echo).await;
    let mut r = route("r", PathKind::Prefix, "/", &[&good]);
    r.upstream.targets.insert(
        0,
        TargetConfig {
            url: closing,
            weight: 1,
            service: None,
        },
    );
    r.upstream.retries = 1;
    let proxy = start(config(vec![r])).await;
    let c = client();
    // A POST with a body may have had effects: the closed exchange is its answer (502). (Before
    // the GETs: five failures in a row would eject the closing target.)
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let before = good.hits();
        let reply = send(&c, proxy.local_addr(), get("/").method("POST").body(b"x")).await;
        if reply.status == 502 {
            assert_eq!(good.hits(), before, "a POST was replayed on another target");
        }
        statuses.push(reply.status.as_u16());
    }
    assert!(
        statuses.contains(&502),
        "no POST reached the closing target: {statuses:?}"
    );
    // Round robin alternates: every other GET lands on the closing target and is retried.
    let before = closed_hits.load(Ordering::SeqCst);
    for _ in 0..4 {
        assert_eq!(send(&c, proxy.local_addr(), get("/")).await.status, 200);
    }
    assert!(
        closed_hits.load(Ordering::SeqCst) > before,
        "no GET reached the closing target"
    );
}

#[tokio::test]
async fn passive_health_ejects_failing_target() {
    let refused = refused_addr().await;
    let good = upstream("good", Behaviour::Echo).await;
    let mut r = route("r", PathKind::Prefix, "/", &[&good]);
    r.upstream.targets.insert(
        0,
        TargetConfig {
            url: format!("http://{refused}"),
            weight: 1,
            service: None,
        },
    );
    let proxy = start(config(vec![r])).await;
    let c = client();
    let mut failures = 0;
    for _ in 0..40 {
        if send(&c, proxy.local_addr(), get("/")).await.status == 502 {
            failures += 1;
        }
    }
    // Five consecutive failures eject the target; after that every request succeeds.
    assert_eq!(failures, 5);
    assert_eq!(good.hits(), 35);
}

#[tokio::test]
async fn direct_response_and_sanitized_upstream_errors() {
    let boom = upstream("boom", Behaviour::Status(500)).await;
    let mut d = route("d", PathKind::Exact, "/direct", &[]);
    d.upstream.direct_response = Some(portcullis_compiler::config::DirectResponseConfig {
        status: 201,
        body: "{\"hello\":\"world\"}".into(),
        content_type: Some("application/json".into()),
    });
    let mut s = route("s", PathKind::Prefix, "/sanitized", &[&boom]);
    s.sanitize_upstream_errors = true;
    let raw = route("raw", PathKind::Prefix, "/raw", &[&boom]);
    let proxy = start(config(vec![d, s, raw])).await;
    let c = client();
    let r = send(&c, proxy.local_addr(), get("/direct")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["hello"], "world");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = send(
        &c,
        proxy.local_addr(),
        get("/sanitized").header("x-request-id", "abc"),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "upstream error");
    assert_eq!(r.json()["request_id"], "abc");
    let r = send(&c, proxy.local_addr(), get("/raw")).await;
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.body).contains("internal detail"));
}
