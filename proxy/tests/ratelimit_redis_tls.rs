//! The connection to Redis made safe: `rediss://` against real `redis-server` processes
//! started with TLS by the test (certificates from rcgen), and ACL users.
//!
//! - Limits are exact over TLS (CA from the policy, the server's IP in its certificate).
//! - A wrong CA, a wrong server name, an expired server certificate and the system roots
//!   (which do not know the test CA) are each refused: every request gets the policy's
//!   `onBackendFailure` (Deny: 503), never a plaintext fallback (the TLS port would not
//!   answer one).
//! - A server that requires client certificates serves the policy that has one and refuses
//!   the one without.
//! - An ACL user with the right password is limited exactly (and is who Redis sees); a
//!   wrong password gets `onBackendFailure`.
//!
//! The servers also listen on a plain port, used only by the test to inspect them.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::tls::Ca;
use common::*;
use portcullis_compiler::config::*;
use portcullis_proxy::ratelimit::redis::transport::Connector;
use portcullis_proxy::ratelimit::redis::RedisTls;
use rcgen::{CertificateParams, DnType};
use redis_server::{free_port, temp_dir, RedisServer};

/// A `redis-server` with a TLS port besides its plain one.
struct TlsRedis {
    server: RedisServer,
    tls_port: u16,
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// `server_chain`/`server_key`: the server's certificate; `ca`: whom it trusts for client
/// certificates; `require_clients`: `--tls-auth-clients yes` (else `no`).
fn tls_redis(
    server_chain: &str,
    server_key: &str,
    ca: &Ca,
    require_clients: bool,
    dir: &Path,
) -> TlsRedis {
    std::fs::create_dir_all(dir).unwrap();
    let tls_port = free_port();
    let cert = write(dir, "server.crt", server_chain);
    let key = write(dir, "server.key", server_key);
    let ca = write(dir, "ca.crt", &ca.pem());
    let port = tls_port.to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        if require_clients { "yes" } else { "no" },
    ])
    .unwrap();
    TlsRedis { server, tls_port }
}

fn policy(id: &str, url: &str, limit: u64, username: Option<&str>) -> RateLimitPolicyConfig {
    let mut backend = redis_backend(vec![url.into()], false, 200);
    if let RateLimitBackendConfig::Redis { username: user, .. } = &mut backend {
        *user = username.map(str::to_owned);
    }
    redis_limit_policy(id, limit, backend)
}

/// One route `/{name}` per policy `default/{name}`.
fn gateway(policies: Vec<RateLimitPolicyConfig>) -> GatewayConfig {
    let routes = policies
        .iter()
        .map(|p| {
            let name = p.id.trim_start_matches("default/");
            let mut r = route(&p.id, PathKind::Prefix, &format!("/{name}"), &[]);
            r.upstream.direct_response = Some(direct(200, "ok"));
            r.rate_limit_policies = vec![p.id.clone()];
            r
        })
        .collect();
    let mut cfg = config(routes);
    cfg.rate_limit_policies = policies;
    cfg
}

fn tls_entry(policy: &str, ca: Option<&Ca>, client: Option<&common::tls::Issued>) -> RedisTlsEntry {
    RedisTlsEntry {
        policy: policy.into(),
        ca_pem: ca.map(Ca::pem),
        client_cert_pem: client.map(|c| c.chain_pem.clone()),
        client_key_pem: client.map(|c| c.key_pem.clone()),
    }
}

/// Waits for the first 200 on `path` (503 while connecting), then sends `total - 1` more:
/// the number admitted, the first included.
async fn admitted_once_connected(addr: SocketAddr, path: &str, total: usize) -> usize {
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = send(&c, addr, get(path)).await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{path}: {status}");
        assert!(
            Instant::now() < deadline,
            "{path}: never connected to Redis"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut admitted = 1;
    for _ in 1..total {
        if send(&c, addr, get(path)).await.status == 200 {
            admitted += 1;
        }
    }
    admitted
}

/// Sends `n` requests to `path` over about a second (long enough for several connect
/// attempts with backoff); the statuses by count.
async fn statuses(addr: SocketAddr, path: &str, n: usize) -> Vec<(u16, usize)> {
    let c = client();
    let mut counts: Vec<(u16, usize)> = Vec::new();
    for _ in 0..n {
        let status = send(&c, addr, get(path)).await.status.as_u16();
        match counts.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += 1,
            None => counts.push((status, 1)),
        }
        tokio::time::sleep(Duration::from_millis(1000 / n as u64)).await;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_exact_with_the_right_ca_and_refused_otherwise() {
    let ca = Ca::new("redis test CA");
    let other_ca = Ca::new("someone else's CA");
    // Only the IP: `rediss://localhost:…` reaches the same server under a name it lacks.
    let server_cert = ca.server(&["127.0.0.1"], false);
    let dir = temp_dir("redis-tls");
    let redis = tls_redis(
        &server_cert.chain_pem,
        &server_cert.key_pem,
        &ca,
        false,
        &dir,
    );
    // A second server whose certificate expired in 2021.
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired_cert = ca.client_with(params);
    let expired_dir = temp_dir("redis-tls-expired");
    let expired = tls_redis(
        &expired_cert.chain_pem,
        &expired_cert.key_pem,
        &ca,
        false,
        &expired_dir,
    );

    let good = format!("rediss://127.0.0.1:{}", redis.tls_port);
    let by_name = format!("rediss://localhost:{}", redis.tls_port);
    let expired_url = format!("rediss://127.0.0.1:{}", expired.tls_port);
    let mut cfg = gateway(vec![
        policy("default/good", &good, 5, None),
        policy("default/wrongca", &good, 5, None),
        policy("default/wrongname", &by_name, 5, None),
        policy("default/expired", &expired_url, 5, None),
        policy("default/systemroots", &good, 5, None),
    ]);
    cfg.secrets.redis_tls = vec![
        tls_entry("default/good", Some(&ca), None),
        tls_entry("default/wrongca", Some(&other_ca), None),
        tls_entry("default/wrongname", Some(&ca), None),
        tls_entry("default/expired", Some(&ca), None),
    ];
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();

    // Exact over TLS: 5 of 12.
    assert_eq!(admitted_once_connected(addr, "/good", 12).await, 5);
    let keys = redis.server.cli(&["keys", "pcl:*"]);
    assert!(keys.contains("default/good"), "{keys}");

    // Each refusal: every request answered by onBackendFailure (Deny: 503), none admitted.
    for path in ["/wrongca", "/wrongname", "/expired", "/systemroots"] {
        let counts = statuses(addr, path, 20).await;
        println!("{path}: statuses {counts:?} (onBackendFailure Deny)");
        assert_eq!(counts, vec![(503, 20)], "{path}");
    }
    // The reasons the proxy logs for each refusal (the connector the backends use).
    let connect = |ca: Option<&Ca>, host: &'static str, port: u16| {
        let connector = Connector::tls(&RedisTls {
            ca_pem: ca.map(Ca::pem),
            ..RedisTls::default()
        });
        async move {
            match connector.connect(host, port).await {
                Ok(_) => String::from("connected"),
                Err(e) => e.to_string(),
            }
        }
    };
    let port = redis.tls_port;
    for (reason, expected) in [
        (
            connect(Some(&other_ca), "127.0.0.1", port).await,
            "UnknownIssuer",
        ),
        (
            connect(Some(&ca), "localhost", port).await,
            "not valid for name",
        ),
        (
            connect(Some(&ca), "127.0.0.1", expired.tls_port).await,
            "xpired",
        ),
        (connect(None, "127.0.0.1", port).await, "UnknownIssuer"),
    ] {
        println!("refused: {reason}");
        assert!(reason.contains(expected), "{reason}");
    }
    assert_eq!(connect(Some(&ca), "127.0.0.1", port).await, "connected");
    // Nothing but the good policy's counters ever reached either server.
    let keys = redis.server.cli(&["keys", "pcl:*"]);
    assert!(
        !keys.contains("wrong") && !keys.contains("systemroots"),
        "{keys}"
    );
    assert!(expired.server.cli(&["keys", "pcl:*"]).trim().is_empty());
    drop(proxy);
    drop((redis, expired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_required_by_redis() {
    let ca = Ca::new("redis test CA");
    let server_cert = ca.server(&["127.0.0.1"], false);
    let client_cert = ca.client("rate-limiter", "portcullis", &[], false);
    let dir = temp_dir("redis-mtls");
    let redis = tls_redis(
        &server_cert.chain_pem,
        &server_cert.key_pem,
        &ca,
        true,
        &dir,
    );
    let url = format!("rediss://127.0.0.1:{}", redis.tls_port);
    let mut cfg = gateway(vec![
        policy("default/withcert", &url, 3, None),
        policy("default/nocert", &url, 3, None),
    ]);
    cfg.secrets.redis_tls = vec![
        tls_entry("default/withcert", Some(&ca), Some(&client_cert)),
        tls_entry("default/nocert", Some(&ca), None),
    ];
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();
    assert_eq!(admitted_once_connected(addr, "/withcert", 8).await, 3);
    let counts = statuses(addr, "/nocert", 20).await;
    println!("/nocert: statuses {counts:?} (onBackendFailure Deny)");
    assert_eq!(counts, vec![(503, 20)]);
    drop(proxy);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_and_password() {
    let redis = RedisServer::start().unwrap();
    // Exactly the rights docs/rate-limiting.md tells users to grant.
    let ok = redis.cli(&[
        "acl",
        "setuser",
        "limiter",
        "on",
        ">s3cret-pass",
        "~pcl:*",
        "+evalsha",
        "+eval",
        "+script|load",
        "+get",
        "+set",
        "+time",
    ]);
    assert_eq!(ok.trim(), "OK");
    let url = redis.url();
    let mut cfg = gateway(vec![
        policy("default/right", &url, 4, Some("limiter")),
        policy("default/wrong", &url, 4, Some("limiter")),
    ]);
    cfg.secrets.redis_passwords = vec![
        RedisPasswordEntry {
            policy: "default/right".into(),
            password: "s3cret-pass".into(),
        },
        RedisPasswordEntry {
            policy: "default/wrong".into(),
            password: "not-the-password".into(),
        },
    ];
    for p in &mut cfg.rate_limit_policies {
        if let RateLimitBackendConfig::Redis { has_password, .. } = &mut p.backend {
            *has_password = true;
        }
    }
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();
    assert_eq!(admitted_once_connected(addr, "/right", 10).await, 4);
    // Redis sees the ACL user, not `default`.
    let clients = redis.cli(&["client", "list"]);
    assert!(clients.contains("user=limiter"), "{clients}");
    let counts = statuses(addr, "/wrong", 20).await;
    println!("/wrong: statuses {counts:?} (onBackendFailure Deny)");
    assert_eq!(counts, vec![(503, 20)]);
    // Redis logged the failed AUTH of that user.
    let log = redis.cli(&["acl", "log"]);
    assert!(log.contains("limiter") && log.contains("auth"), "{log}");
}

/// A Redis Cluster behind `rediss://` (`tls-cluster yes`: the nodes name each other's TLS
/// ports): every node connection the cluster client makes is TLS with the policy's CA, and
/// limits are exact per client across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_nodes_all_over_tls() {
    let ca = Ca::new("redis cluster CA");
    let server_cert = ca.server(&["127.0.0.1"], false);
    let dir = temp_dir("redis-tls-cluster");
    std::fs::create_dir_all(&*dir).unwrap();
    let cert = write(&dir, "server.crt", &server_cert.chain_pem);
    let key = write(&dir, "server.key", &server_cert.key_pem);
    let ca_file = write(&dir, "ca.crt", &ca.pem());
    let nodes: Vec<(RedisServer, u16)> = (0..3)
        .map(|_| {
            let tls_port = free_port();
            let port = tls_port.to_string();
            let server = RedisServer::start_with(&[
                "--tls-port",
                &port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca_file,
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ])
            .unwrap();
            (server, tls_port)
        })
        .collect();
    // Created through the plain ports (the test's own view); the bus and the slots the
    // nodes announce to TLS clients are TLS.
    let addrs: Vec<String> = nodes
        .iter()
        .map(|(n, _)| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&created.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for (node, _) in &nodes {
        while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "cluster did not converge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut p = policy("default/tenants", "rediss://unused", 5, None);
    p.key = RateLimitKeyConfig::Header;
    p.header = Some("x-tenant".into());
    p.backend = RateLimitBackendConfig::Redis {
        urls: nodes
            .iter()
            .map(|(_, tls_port)| format!("rediss://127.0.0.1:{tls_port}"))
            .collect(),
        cluster: true,
        timeout_ms: 500,
        has_password: false,
        username: None,
        sentinel: None,
        tls: true,
    };
    let mut cfg = gateway(vec![p]);
    cfg.secrets.redis_tls = vec![tls_entry("default/tenants", Some(&ca), None)];
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while send(&c, addr, get("/tenants").header("x-tenant", "warm-up"))
        .await
        .status
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "never decided through the TLS cluster"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in 0..12 {
        let name = format!("tenant-{t}");
        let mut answers = Vec::new();
        for _ in 0..7 {
            let r = send(&c, addr, get("/tenants").header("x-tenant", &name)).await;
            answers.push(r.status.as_u16());
        }
        assert_eq!(answers, [200, 200, 200, 200, 200, 429, 429], "{name}");
    }
    let holding: Vec<usize> = nodes
        .iter()
        .map(|(n, _)| n.cli(&["dbsize"]).trim().parse().unwrap_or(0))
        .collect();
    assert!(
        holding.iter().filter(|&&keys| keys > 0).count() >= 2,
        "counters spread over the cluster's nodes: {holding:?}"
    );
    // The proxy's connections came in on the nodes' TLS ports (`laddr`), and at least one
    // per node: the slots the nodes announce to a TLS client are their TLS ports.
    for (node, tls_port) in &nodes {
        let clients = node.cli(&["client", "list"]);
        let proxy_side: Vec<&str> = clients
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .collect();
        assert!(!proxy_side.is_empty(), "no proxy connection on {tls_port}");
        for line in proxy_side {
            assert!(
                line.contains(&format!("laddr=127.0.0.1:{tls_port} ")),
                "{line}"
            );
        }
    }
    drop(proxy);
    drop(nodes);
}
