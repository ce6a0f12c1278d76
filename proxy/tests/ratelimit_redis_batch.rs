//! Batched Redis decisions (`ratelimit::redis::pipe`): requests queued while the connection
//! is busy share its next `EVALSHA`. Against a real Redis: many
//! concurrent requests are each decided exactly (the right counters, the right numbers, a
//! denial charging nothing), a Redis that stalls or dies mid-batch answers every request
//! within its timeout according to `onBackendFailure`, and nothing is left waiting after.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use portcullis_proxy::ratelimit::algorithms::{Kind, Rule, Verdicts};
use portcullis_proxy::ratelimit::keys::{Material, RedisKeys};
use portcullis_proxy::ratelimit::redis::{RedisBackend, RedisError, RedisSettings};
use redis_server::RedisServer;

fn backend(redis: &RedisServer, timeout: Duration) -> Arc<RedisBackend> {
    backend_at(redis.url(), None, timeout)
}

fn backend_at(url: String, password: Option<&str>, timeout: Duration) -> Arc<RedisBackend> {
    RedisBackend::new(
        RedisSettings {
            urls: vec![url],
            cluster: false,
            password: password.map(str::to_owned),
            timeout,
            ..Default::default()
        },
        tokio::runtime::Handle::current(),
    )
}

fn fixed(limit: u64) -> Rule {
    Rule {
        kind: Kind::Fixed,
        limit,
        period_ms: 3_600_000,
        burst: limit,
    }
}

/// A request's client and what its decision came to.
type Decided = (usize, Result<(bool, Verdicts), RedisError>);

/// One request's counters: a shared one (`limit` 1000) and its client's (`per_client`).
async fn decide(b: &Arc<RedisBackend>, client: usize, per_client: u64) -> Decided {
    let mut keys = RedisKeys::default();
    keys.push("test/shared", &Material::Global, 0);
    let name = format!("client-{client}");
    keys.push("test/client", &Material::Consumer(&name), 0);
    let rules = [fixed(1000), fixed(per_client)];
    let mut verdicts = Verdicts::new();
    let r = b.decide(&keys, &rules, &mut verdicts).await;
    (client, r.map(|all| (all, verdicts)))
}

async fn connected(b: &Arc<RedisBackend>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut keys = RedisKeys::default();
        keys.push("test/ping", &Material::Global, 0);
        if b.decide(&keys, &[fixed(1_000_000)], &mut Verdicts::new())
            .await
            .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "never connected to Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn evalsha_calls(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["info", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Idle again: nothing queued, nothing waiting for an answer.
async fn settles(b: &Arc<RedisBackend>) {
    assert!(
        eventually(Duration::from_secs(2), || b.pending() == (0, 0)).await,
        "stranded: {:?}",
        b.pending()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_calls_and_are_each_decided_exactly() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Generous: a debug build on a busy machine must not turn this into a timeout test.
    let b = backend(&redis, Duration::from_secs(5));
    connected(&b).await;
    let before = evalsha_calls(&redis);

    // 10 clients × 40 requests, all at once, 25 per client allowed: exactly 250 admitted.
    let results = join_all((0..400).map(|i| decide(&b, i % 10, 25))).await;
    let calls = evalsha_calls(&redis) - before;
    assert!(
        calls < 200,
        "{calls} calls for 400 concurrent decisions: not batched"
    );

    let mut admitted = [0u64; 10];
    let mut remaining: Vec<Vec<u64>> = vec![Vec::new(); 10];
    for (client, r) in &results {
        let (all, verdicts) = r.as_ref().unwrap();
        assert_eq!(verdicts.len(), 2);
        // Each request got its own counters' numbers: the limits say which counter.
        assert_eq!(verdicts[0].limit, 1000);
        assert_eq!(verdicts[1].limit, 25);
        assert_eq!(*all, verdicts.iter().all(|v| v.allowed));
        if *all {
            admitted[*client] += 1;
            remaining[*client].push(verdicts[1].remaining);
        }
    }
    assert_eq!(admitted, [25; 10]);
    // Decided one after the other: each admitted request of a client saw a different count.
    for mut r in remaining {
        r.sort_unstable();
        assert_eq!(r, (0..25).collect::<Vec<_>>());
    }
    // Denials charged nothing, not even the shared counter they passed: 250 used of 1000.
    let (_, r) = decide(&b, 99, 25).await;
    let (_, verdicts) = r.unwrap();
    assert_eq!(verdicts[0].remaining, 1000 - 250 - 1);
    settles(&b).await;

    // Tasks on both workers (not one task polling them all) give the same exact answer.
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { decide(&b, 100 + i % 3, 50).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap().1.unwrap().0 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 150);
    settles(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalling_or_dying_mid_batch_answers_within_the_timeout_and_strands_nothing() {
    // `DEBUG SLEEP` stalls Redis; Redis 7 refuses DEBUG unless enabled.
    let Some(mut redis) = RedisServer::start_with(&["--enable-debug-command", "yes"]) else {
        return;
    };
    let timeout = Duration::from_millis(100);
    let b = backend(&redis, timeout);
    connected(&b).await;

    // Redis stalls (busy for 1.5 s) while 200 decisions are queued and in flight: every one
    // answers Unavailable by its own deadline, not the batch's sender's.
    let stall = redis.stall("1.5");
    // Give the stall time to begin (the requests take well under a second).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let timed = |i: usize| {
        let b = b.clone();
        async move {
            let started = Instant::now();
            let (_, r) = decide(&b, i % 7, 1_000_000).await;
            (r.map(|(all, _)| all), started.elapsed())
        }
    };
    let results = join_all((0..200).map(timed)).await;
    for (r, elapsed) in &results {
        assert!(matches!(r, Err(RedisError::Unavailable)), "{r:?}");
        // The timeout plus scheduling slack of a debug build; never the stall.
        assert!(*elapsed < timeout * 4, "answered after {elapsed:?}");
    }
    stall.join().unwrap();
    settles(&b).await;

    // Back (once Redis has worked off the calls that queued up during the stall): every
    // request decided again.
    connected(&b).await;
    let results = join_all((0..100).map(timed)).await;
    assert!(results.iter().all(|(r, _)| matches!(r, Ok(true))));

    // Dies with batches in flight (stalled first, so that none can have finished before
    // the kill): every request answers Unavailable within the timeout; none hangs.
    let stall = redis.stall("1.5");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killer = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        redis.kill();
    };
    let (results, ()) = tokio::join!(join_all((0..300).map(timed)), killer);
    for (r, elapsed) in &results {
        assert!(matches!(r, Err(RedisError::Unavailable)), "{r:?}");
        assert!(*elapsed < timeout * 4, "answered after {elapsed:?}");
    }
    stall.join().unwrap();
    settles(&b).await;
    // Restarted: decisions resume on their own.
    redis.restart();
    connected(&b).await;
    let results = join_all((0..100).map(timed)).await;
    assert!(results.iter().all(|(r, _)| matches!(r, Ok(true))));
    settles(&b).await;
}

/// The password from the policy's Secret, the database from the URL, and scripts flushed by
/// an operator (`NOSCRIPT`: the call is sent again with the script's text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_database_and_flushed_scripts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    redis.cli(&["config", "set", "requirepass", "s3cret"]);
    let cli = |args: &[&str]| {
        let mut all = vec!["-a", "s3cret", "--no-auth-warning"];
        all.extend_from_slice(args);
        redis.cli(&all)
    };
    let with_password = |password: &str| {
        backend_at(
            format!("{}/3", redis.url()),
            Some(password),
            Duration::from_secs(5),
        )
    };
    let wrong = with_password("not-it");
    let right = with_password("s3cret");
    connected(&right).await;

    let admitted = |results: Vec<Decided>| {
        results
            .into_iter()
            .filter(|(_, r)| r.as_ref().unwrap().0)
            .count()
    };
    assert_eq!(
        admitted(join_all((0..5).map(|_| decide(&right, 1, 8))).await),
        5
    );
    // The counters live in database 3.
    assert_ne!(cli(&["-n", "3", "dbsize"]).trim(), "0");
    assert_eq!(cli(&["-n", "0", "dbsize"]).trim(), "0");

    cli(&["script", "flush"]);
    // Counting goes on where it was: 3 more of 8.
    assert_eq!(
        admitted(join_all((0..5).map(|_| decide(&right, 1, 8))).await),
        3
    );
    settles(&right).await;

    // The wrong password never connects, and its requests are refused at once, not after
    // their 5 s timeout.
    for _ in 0..3 {
        let started = Instant::now();
        let (_, r) = decide(&wrong, 1, 8).await;
        assert!(matches!(r, Err(RedisError::Unavailable)), "{r:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis that answers nothing for longer than `STALL_RESET` while calls are in flight (as
/// a peer gone without a reset would) is dropped and connected again; decisions resume
/// once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_answers_nothing_is_dropped_and_made_again() {
    let Some(redis) = RedisServer::start_with(&["--enable-debug-command", "yes"]) else {
        return;
    };
    let b = backend(&redis, Duration::from_millis(100));
    connected(&b).await;
    let stall = redis.stall("6");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let results = join_all((0..20).map(|i| decide(&b, i, 1_000))).await;
    assert!(results.iter().all(|(_, r)| r.is_err()));
    assert!(b.pending().1 > 0, "the calls are still in flight");
    // Given up after STALL_RESET (3 s, checked every second), well before the stall ends.
    let gave_up = eventually(Duration::from_millis(5_000), || b.pending() == (0, 0)).await;
    assert!(gave_up, "still waiting: {:?}", b.pending());
    assert!(started.elapsed() < Duration::from_millis(5_500));
    stall.join().unwrap();
    connected(&b).await;
}
