//! Rate limiting against a real Redis: exactness shared by three proxy processes, fail
//! modes while Redis is down, recovery without a proxy restart, and a real three-node Redis
//! Cluster (`clusterUrls`): counters spread over the nodes by their hash tags, each client
//! limited exactly, a route with two Redis policies decided without cross-slot errors;
//! concurrent requests during a Redis stall answered per `onBackendFailure` in time; a
//! connection no config uses any more is closed.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "support/redis_cluster.rs"]
mod redis_cluster;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use portcullis_compiler::config::*;
use portcullis_proxy::ratelimit::{Backends, RateLimits};
use redis_cluster::RedisCluster;
use redis_server::{free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-proxy");

fn manifests(dir: &std::path::Path, redis_url: &str, limit: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: shared, namespace: demo}}\n\
             spec:\n  key: Route\n  limits: [{{requests: {limit}, period: 1h}}]\n  backend: {{type: Redis, redis: {{url: \"{redis_url}\", timeout: 200ms}}}}\n\
             ---\napiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: hello, namespace: demo}}\n\
             spec:\n  paths: [{{value: /}}]\n  rateLimitPolicies: [shared]\n  upstream: {{directResponse: {{status: 200, body: ok}}}}\n"
        ),
    )
    .unwrap();
}

struct Proc(Child, u16);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The proxy binary on free ports, serving the manifests in `dir`.
fn spawn_proxy(dir: &std::path::Path) -> Proc {
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(BIN)
        .arg("--manifests")
        .arg(dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--no-audit",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child, port)
}

fn status_of(port: u16) -> Option<u16> {
    status_with(port, "")
}

/// The status of `GET /` with `headers` (`name: value\r\n` lines) added.
fn status_with(port: u16, headers: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

#[test]
fn three_proxy_processes_share_one_limit_exactly() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("portcullis-rl3-{}", std::process::id()));
    let limit = 300;
    manifests(&dir, &redis.url(), limit);
    let procs: Vec<Proc> = (0..3).map(|_| spawn_proxy(&dir)).collect();
    // Wait until each proxy serves and is connected to Redis (a 200 uses Redis; 503 is
    // the fail-closed answer while it is still connecting).
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in &procs {
        while status_of(p.1) != Some(200) {
            assert!(Instant::now() < deadline, "proxy on {} not ready", p.1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    redis.cli(&["flushall"]);
    // 12 concurrent clients, 4 per proxy, 1200 requests for a limit of 300.
    let ports: Vec<u16> = procs.iter().map(|p| p.1).collect();
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let port = ports[i % 3];
            std::thread::spawn(move || {
                let mut counts = [0usize; 3];
                for _ in 0..100 {
                    match status_of(port) {
                        Some(200) => counts[0] += 1,
                        Some(429) => counts[1] += 1,
                        _ => counts[2] += 1,
                    }
                }
                counts
            })
        })
        .collect();
    let mut total = [0usize; 3];
    for h in handles {
        let c = h.join().unwrap();
        for i in 0..3 {
            total[i] += c[i];
        }
    }
    let admitted = total[0] as f64;
    assert_eq!(total[2], 0, "unexpected answers: {total:?}");
    assert!(
        (admitted - limit as f64).abs() <= limit as f64 * 0.01,
        "admitted {total:?} for a limit of {limit}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn redis_policy(
    id: &str,
    url: &str,
    mode: OnBackendFailureConfig,
    limit: u64,
    timeout_ms: u64,
) -> RateLimitPolicyConfig {
    let mut p = redis_limit_policy(
        id,
        limit,
        redis_backend(vec![url.into()], false, timeout_ms),
    );
    p.quota = Some(QuotaConfig {
        requests: 1_000_000,
        period: QuotaPeriodConfig::Day,
    });
    p.on_backend_failure = mode;
    p
}

/// `/deny`, `/allow` and `/fallback`, each limited to 5 per hour by a Redis policy with
/// that `onBackendFailure`.
fn failure_mode_routes(url: &str, timeout_ms: u64) -> GatewayConfig {
    let mut routes = Vec::new();
    let mut policies = Vec::new();
    for (name, mode) in [
        ("deny", OnBackendFailureConfig::Deny),
        ("allow", OnBackendFailureConfig::Allow),
        ("fallback", OnBackendFailureConfig::LocalFallback),
    ] {
        let mut r = route(
            &format!("default/{name}"),
            PathKind::Prefix,
            &format!("/{name}"),
            &[],
        );
        r.upstream.direct_response = Some(direct(200, "ok"));
        r.rate_limit_policies = vec![format!("default/{name}")];
        routes.push(r);
        policies.push(redis_policy(
            &format!("default/{name}"),
            url,
            mode,
            5,
            timeout_ms,
        ));
    }
    let mut cfg = config(routes);
    cfg.rate_limit_policies = policies;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_modes_and_recovery_without_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let proxy = start(failure_mode_routes(&redis.url(), 50)).await;
    let addr = proxy.local_addr();
    let c = client();
    // Connected: the shared limit applies (5 per hour per route).
    assert!(eventually(Duration::from_secs(10), || true).await);
    let mut ok = false;
    for _ in 0..200 {
        if send(&c, addr, get("/deny")).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "never connected to Redis");
    let mut admitted = 1;
    for _ in 0..9 {
        if send(&c, addr, get("/deny")).await.status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    assert!(redis.cli(&["keys", "pcl:*"]).contains("default/deny"));

    redis.kill();
    // Deny: 503 JSON, within the 50 ms timeout (plus local overhead of a debug build).
    for _ in 0..5 {
        let started = Instant::now();
        let r = send(&c, addr, get("/deny")).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.json()["error"], "rate limiting is unavailable");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    // Allow: passes without limits.
    for _ in 0..10 {
        assert_eq!(send(&c, addr, get("/allow")).await.status, 200);
    }
    // LocalFallback: limited by local counters (5) while Redis is away.
    let mut fallback = Vec::new();
    for _ in 0..10 {
        fallback.push(send(&c, addr, get("/fallback")).await.status.as_u16());
    }
    assert_eq!(
        fallback.iter().filter(|&&s| s == 200).count(),
        5,
        "{fallback:?}"
    );
    assert_eq!(fallback.iter().filter(|&&s| s == 429).count(), 5);

    // Redis back (empty): shared limiting resumes, no proxy restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = send(&c, addr, get("/deny")).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "limiting did not resume: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut admitted = 1;
    for _ in 0..9 {
        if send(&c, addr, get("/deny")).await.status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    assert!(redis.cli(&["keys", "pcl:*"]).contains("default/deny"));
}

#[test]
fn cluster_backed_limits_are_exact_per_client_across_nodes() {
    // Three masters, no replicas.
    let cluster = RedisCluster::start(3, 0, 5000);
    let nodes = &cluster.nodes;
    let urls: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let urls = urls.join(", ");
    let dir = std::env::temp_dir().join(format!("portcullis-rlc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let backend = format!("{{type: Redis, redis: {{clusterUrls: [{urls}], timeout: 500ms}}}}");
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: per-tenant, namespace: demo}}\n\
             spec:\n  key: Header\n  header: X-Tenant\n  limits: [{{requests: 5, period: 1h}}]\n  backend: {backend}\n\
             ---\napiVersion: portcullis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: per-route, namespace: demo}}\n\
             spec:\n  key: Route\n  limits: [{{requests: 1000, period: 1h}}]\n  backend: {backend}\n\
             ---\napiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: tenants, namespace: demo}}\n\
             spec:\n  paths: [{{value: /}}]\n  rateLimitPolicies: [per-tenant, per-route]\n  upstream: {{directResponse: {{status: 200, body: ok}}}}\n"
        ),
    )
    .unwrap();
    let proxy = spawn_proxy(&dir);
    let tenant = |name: &str| status_with(proxy.1, &format!("x-tenant: {name}\r\n"));
    // Ready once a request is decided by the cluster (503 while still connecting).
    let deadline = Instant::now() + Duration::from_secs(30);
    while tenant("warm-up") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "proxy never decided through the cluster"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in nodes {
        node.cli(&["flushall"]);
    }

    // Twelve tenants: their counters hash to slots on different nodes.
    for t in 0..12 {
        let name = format!("tenant-{t}");
        let answers: Vec<u16> = (0..8).map(|_| tenant(&name).unwrap_or(0)).collect();
        assert_eq!(
            answers,
            [200, 200, 200, 200, 200, 429, 429, 429],
            "{name}: five admitted, then limited"
        );
    }
    let holding: Vec<usize> = nodes
        .iter()
        .map(|n| n.cli(&["dbsize"]).trim().parse().unwrap_or(0))
        .collect();
    assert!(
        holding.iter().filter(|&&keys| keys > 0).count() >= 2,
        "counters spread over the cluster's nodes: {holding:?}"
    );
    // Every counter key carries a hash tag.
    for node in nodes {
        for key in node.cli(&["--scan"]).lines() {
            assert!(key.starts_with("pcl:{") && key.contains("}:v2:"), "{key}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Through the proxy: concurrent requests during a Redis stall answer per their policy's
/// `onBackendFailure`, within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_during_a_stall_follow_on_backend_failure() {
    let Some(redis) = RedisServer::start_with(&["--enable-debug-command", "yes"]) else {
        return;
    };
    // 400 ms: a healthy decision must not time out while this file's heavier tests (three
    // proxies, a cluster) load the machine; the stall below is far longer.
    let proxy = start(failure_mode_routes(&redis.url(), 400)).await;
    let addr = proxy.local_addr();
    let c = client();
    // Connected (one of the 5 on /allow used up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(&c, addr, get("/allow")).await.status != 200 {
        assert!(Instant::now() < deadline, "never connected to Redis");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Redis is healthy: 30 concurrent requests, exactly 5 admitted.
    let statuses = join_all((0..30).map(|_| send(&c, addr, get("/deny")))).await;
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 5);

    let stall = redis.stall("3");
    // Give the stall time to begin (the requests take well under a second).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let timed = |path: &'static str| {
        let c = c.clone();
        async move {
            let started = Instant::now();
            let r = send(&c, addr, get(path)).await;
            (path, r.status.as_u16(), started.elapsed())
        }
    };
    let all = join_all((0..90).map(|i| timed(["/deny", "/allow", "/fallback"][i % 3]))).await;
    stall.join().unwrap();
    let count = |path: &str, status: u16| {
        all.iter()
            .filter(|(p, s, _)| *p == path && *s == status)
            .count()
    };
    assert_eq!(count("/deny", 503), 30, "{all:?}");
    assert_eq!(count("/allow", 200), 30, "{all:?}");
    // Limited locally while Redis is away: 5 of 30.
    assert_eq!(count("/fallback", 200), 5, "{all:?}");
    assert_eq!(count("/fallback", 429), 25, "{all:?}");
    for (_, _, elapsed) in &all {
        // Well under the 3 s stall: the 400 ms timeout plus a debug build's slack.
        assert!(*elapsed < Duration::from_millis(1_800), "{elapsed:?}");
    }
}

/// Reloads keep the connection of unchanged Redis settings; a connection that no config
/// uses any more is closed once the last config holding it goes, not kept reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_no_config_uses_is_closed() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let config = |url: String| GatewayConfig {
        rate_limit_policies: vec![redis_policy(
            "default/p",
            &url,
            OnBackendFailureConfig::Deny,
            5,
            100,
        )],
        ..GatewayConfig::default()
    };
    // The server's clients, this one (`redis-cli`) included.
    let clients = || redis.cli(&["client", "list"]).lines().count();
    let backends = Backends::new(None);
    let first = RateLimits::build(&config(redis.url()), &backends).unwrap();
    assert!(eventually(Duration::from_secs(5), || clients() == 2).await);
    // Reloaded with the same settings: the same connection.
    let reloaded = RateLimits::build(&config(redis.url()), &backends).unwrap();
    drop(first);
    assert_eq!(backends.redis_connections(), 1);
    // Moved to database 1: a second connection while the old config still runs...
    let moved = RateLimits::build(&config(format!("{}/1", redis.url())), &backends).unwrap();
    assert_eq!(backends.redis_connections(), 2);
    assert!(eventually(Duration::from_secs(5), || clients() == 3).await);
    // ...and the first one closed once that config is gone.
    drop(reloaded);
    assert_eq!(backends.redis_connections(), 1);
    assert!(
        eventually(Duration::from_secs(5), || clients() == 2).await,
        "{}",
        redis.cli(&["client", "list"])
    );
    drop(moved);
}
