//! Rate limiting against a real three-node Redis Cluster (`clusterUrls`): counters spread
//! over the nodes by their hash tags, each client limited exactly, and a route with two
//! Redis policies decided without cross-slot errors.
#![allow(clippy::unwrap_used)]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_server::{free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-proxy");

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three cluster-enabled servers joined into one cluster with every slot assigned.
fn cluster() -> Option<Vec<RedisServer>> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ])
        })
        .collect::<Option<_>>()?;
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new("redis-cli")
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
    for node in &nodes {
        while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "cluster did not converge");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Some(nodes)
}

fn status_of(port: u16, path: &str, tenant: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nx-tenant: {tenant}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

#[test]
fn cluster_backed_limits_are_exact_per_client_across_nodes() {
    let Some(nodes) = cluster() else {
        return;
    };
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
    let (port, admin) = (free_port(), free_port());
    let _proxy = Proc(
        Command::new(BIN)
            .arg("--manifests")
            .arg(&dir)
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
            .unwrap(),
    );
    // Ready once a request is decided by the cluster (503 while still connecting).
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(port, "/", "warm-up") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "proxy never decided through the cluster"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in &nodes {
        node.cli(&["flushall"]);
    }

    // Twelve tenants: their counters hash to slots on different nodes.
    for t in 0..12 {
        let tenant = format!("tenant-{t}");
        let answers: Vec<u16> = (0..8)
            .map(|_| status_of(port, "/", &tenant).unwrap_or(0))
            .collect();
        assert_eq!(
            answers,
            [200, 200, 200, 200, 200, 429, 429, 429],
            "{tenant}: five admitted, then limited"
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
    for node in &nodes {
        for key in node.cli(&["--scan"]).lines() {
            assert!(key.starts_with("pcl:{") && key.contains("}:v2:"), "{key}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
