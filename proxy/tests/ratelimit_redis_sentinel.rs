//! A Sentinel-managed Redis: 1 master + 1 replica + 3 sentinels (`redis-server … --sentinel`),
//! all started by the test on free loopback ports. A policy finds the master through the
//! sentinels; the master is killed (SIGKILL); the sentinels promote the replica
//! (down-after 1000 ms) and the proxy follows without a restart. The test prints how many
//! requests were wrongly refused (onBackendFailure Deny while no master answered) or
//! wrongly admitted (counts lost with the old master) during the failover, and checks that
//! the limit is exact again afterwards.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::Ca;
use common::*;
use portcullis_compiler::config::*;
use redis_server::{free_port, temp_dir, RedisServer};

const MASTER: &str = "limits";
const DOWN_AFTER_MS: u64 = 1000;
const TIMEOUT_MS: u64 = 200;

struct Sentinel {
    child: Child,
    /// Plain port: the test's own view.
    port: u16,
    /// What the proxy is given: the TLS port with TLS, else `port`.
    url_port: u16,
}

/// Certificate files shared by every process of a TLS deployment.
struct TlsFiles {
    ca: Ca,
    cert: String,
    key: String,
    ca_file: String,
}

impl TlsFiles {
    fn new(dir: &Path) -> Self {
        let ca = Ca::new("sentinel test CA");
        let server = ca.server(&["127.0.0.1"], false);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        TlsFiles {
            cert: write("server.crt", &server.chain_pem),
            key: write("server.key", &server.key_pem),
            ca_file: write("ca.crt", &ca.pem()),
            ca,
        }
    }

    /// `redis-server` arguments: a TLS port besides the plain one, replication over TLS.
    fn args(&self, tls_port: u16) -> Vec<String> {
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.cert,
            "--tls-key-file",
            &self.key,
            "--tls-ca-cert-file",
            &self.ca_file,
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn sentinel(dir: &Path, master_port: u16, tls: Option<&TlsFiles>) -> Sentinel {
    let port = free_port();
    let url_port = if tls.is_some() { free_port() } else { port };
    let tls_conf = tls.map_or(String::new(), |t| {
        format!(
            "tls-port {url_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            t.cert, t.key, t.ca_file
        )
    });
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n{tls_conf}\
             sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Sentinel {
        child,
        port,
        url_port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(port, &["ping"]).trim() != "PONG" {
        assert!(
            Instant::now() < deadline,
            "sentinel on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

fn policy(sentinels: &[Sentinel], limit: u64, tls: bool) -> RateLimitPolicyConfig {
    let scheme = if tls { "rediss" } else { "redis" };
    let backend = RateLimitBackendConfig::Redis {
        urls: vec![],
        cluster: false,
        timeout_ms: TIMEOUT_MS,
        has_password: false,
        username: None,
        sentinel: Some(RedisSentinelConfig {
            master_name: MASTER.into(),
            urls: sentinels
                .iter()
                .map(|s| format!("{scheme}://127.0.0.1:{}", s.url_port))
                .collect(),
            has_password: false,
        }),
        tls,
    };
    redis_limit_policy("default/limited", limit, backend)
}

fn role(port: u16) -> String {
    cli(port, &["role"]).lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_followed_and_limits_exact_again() {
    failover(false, true).await;
}

/// `SENTINEL FAILOVER`: the old master stays up (the sentinels demote it only when they next
/// look at it, up to 10 s later). The proxy drops its connection to it when a sentinel
/// announces `+switch-master`, and the next connect finds the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_manual_failover_demoted_master_left() {
    failover(false, false).await;
}

/// The same over TLS: `rediss://` sentinels, which name the master's and the replica's TLS
/// ports (`tls-replication yes`); the proxy reaches sentinels and master with the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_failover_followed() {
    failover(true, true).await;
}

/// `kill`: SIGKILL the master; else a manual failover that leaves it running.
async fn failover(tls: bool, kill: bool) {
    let dir = temp_dir("sentinel");
    std::fs::create_dir_all(&*dir).unwrap();
    let files = tls.then(|| TlsFiles::new(&dir));
    let (master_tls, replica_tls) = (free_port(), free_port());
    let args_of = |tls_port: u16| files.as_ref().map_or(Vec::new(), |f| f.args(tls_port));
    let master_args = args_of(master_tls);
    let mut master =
        RedisServer::start_with(&master_args.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
    // What the sentinels and the replica know the master by.
    let master_port = if tls { master_tls } else { master.port };
    let mut replica_args = args_of(replica_tls);
    replica_args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        master_port.to_string(),
    ]);
    let replica =
        RedisServer::start_with(&replica_args.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
    let replica_seen = if tls { replica_tls } else { replica.port };
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| sentinel(&dir, master_port, files.as_ref()))
        .collect();
    // The sentinels know the replica and each other (quorum 2 needs them talking).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = sentinels.iter().all(|s| {
            let replicas = cli(s.port, &["sentinel", "replicas", MASTER]);
            let peers = cli(s.port, &["sentinel", "sentinels", MASTER]);
            replicas.contains(&replica_seen.to_string()) && peers.matches("127.0.0.1").count() >= 2
        });
        if ready && cli(replica.port, &["info", "replication"]).contains("master_link_status:up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sentinels never saw the replica and each other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A manual failover leaves no gap to count through: a larger limit, never reached
    // during it.
    let limit = if kill { 400 } else { 1500 };
    let mut r = route("default/limited", PathKind::Prefix, "/", &[]);
    r.upstream.direct_response = Some(direct(200, "ok"));
    r.rate_limit_policies = vec!["default/limited".into()];
    let mut cfg = config(vec![r]);
    cfg.rate_limit_policies = vec![policy(&sentinels, limit, tls)];
    if let Some(f) = &files {
        cfg.secrets.redis_tls = vec![RedisTlsEntry {
            policy: "default/limited".into(),
            ca_pem: Some(f.ca.pem()),
            client_cert_pem: None,
            client_key_pem: None,
        }];
    }
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();
    let c = client();

    // Connected through the sentinels to the master.
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(&c, addr, get("/")).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "never connected through the sentinels"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut admitted = 1u64;
    for _ in 0..99 {
        assert_eq!(send(&c, addr, get("/")).await.status, 200);
        admitted += 1;
    }
    let keys = master.cli(&["keys", "pcl:*"]);
    assert!(keys.contains("default/limited"), "{keys}");

    if !kill {
        manual_failover(&sentinels, &master, &replica, addr, admitted, limit).await;
        drop(proxy);
        drop(sentinels);
        return;
    }
    // SIGKILL the master while requests keep coming, one every ~2 ms.
    let killed = Instant::now();
    master.kill();
    let mut refused = 0u64;
    let mut promoted_at = None;
    let mut followed_at = None;
    while followed_at.is_none() {
        let status = send(&c, addr, get("/")).await.status.as_u16();
        match status {
            // Answered by the old master before the kill took effect.
            200 if refused == 0 && promoted_at.is_none() => admitted += 1,
            200 => {
                admitted += 1;
                followed_at = Some(killed.elapsed());
            }
            503 => refused += 1,
            other => panic!("unexpected status {other} during the failover"),
        }
        if promoted_at.is_none() && role(replica.port) == "master" {
            promoted_at = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the proxy did not follow the failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let followed_at = followed_at.unwrap();
    let promoted_at = promoted_at.unwrap_or(followed_at);
    // Exact again: the rest of the limit, then 429s.
    let mut limited = 0;
    for _ in 0..(limit + 50) {
        match send(&c, addr, get("/")).await.status.as_u16() {
            200 => admitted += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other} after the failover"),
        }
    }
    let over = admitted.saturating_sub(limit);
    let under = limit.saturating_sub(admitted);
    println!(
        "sentinel failover (tls: {tls}): master killed; replica promoted after {promoted_at:?} \
         (down-after {DOWN_AFTER_MS} ms); proxy followed after {followed_at:?} \
         ({:?} after the promotion); wrongly refused (503, Deny) {refused}; \
         wrongly admitted {over} (counts lost with the old master); admitted {admitted} \
         of {limit}; limited afterwards {limited}",
        followed_at.saturating_sub(promoted_at)
    );
    assert_eq!(role(replica.port), "master");
    // The sentinels name the new master once they have seen it report its new role (they
    // poll it every second during a failover); then it takes at most one backoff (250 ms)
    // and a connect.
    assert!(
        followed_at.saturating_sub(promoted_at) < Duration::from_millis(2500 + TIMEOUT_MS),
        "followed {followed_at:?}, promoted {promoted_at:?}"
    );
    // Replication is asynchronous: what the master counted in its last instant may be
    // lost with it. Requests were sequential here, so at most the last few are.
    assert!(over <= 5, "over-admitted {over}");
    assert_eq!(under, 0, "under-admitted: {admitted} of {limit}");
    assert!(limited >= 40, "limited afterwards {limited}");
    drop(proxy);
    drop(sentinels);
    drop(replica);
}

/// The manual failover's part of [`failover`]: requests keep coming while the sentinels
/// promote the replica and demote the master; then the new master decides and the limit is
/// exact again, up to the counts the old master took after the promotion (lost when it
/// resyncs as a replica).
async fn manual_failover(
    sentinels: &[Sentinel],
    master: &RedisServer,
    replica: &RedisServer,
    addr: std::net::SocketAddr,
    mut admitted: u64,
    limit: u64,
) {
    let c = client();
    let started = Instant::now();
    assert_eq!(
        cli(sentinels[0].port, &["sentinel", "failover", MASTER]).trim(),
        "OK"
    );
    let mut refused = 0u64;
    let mut promoted_at = None;
    // Admitted once the replica was seen promoted: what the old master may still count.
    let mut admitted_after_promotion = 0u64;
    // Until the proxy's connection is on the new master and gone from the old one.
    let deciding = |n: &RedisServer| n.cli(&["client", "list"]).contains("cmd=evalsha");
    while !deciding(replica) || deciding(master) {
        if promoted_at.is_none() && role(replica.port) == "master" {
            promoted_at = Some(started.elapsed());
        }
        match send(&c, addr, get("/")).await.status.as_u16() {
            200 => {
                admitted += 1;
                if promoted_at.is_some() {
                    admitted_after_promotion += 1;
                }
            }
            503 => refused += 1,
            other => panic!("unexpected status {other} during the failover"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no switch to the new master within 30 s"
        );
    }
    let switched_at = started.elapsed();
    let old_role = role(master.port);
    let mut limited = 0;
    for _ in 0..(limit + 50) {
        match send(&c, addr, get("/")).await.status.as_u16() {
            200 => admitted += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other} after the failover"),
        }
    }
    let over = admitted.saturating_sub(limit);
    println!(
        "sentinel manual failover: replica promoted after {promoted_at:?}; proxy deciding on \
         the new master after {switched_at:?} (old master's role then: {old_role}); wrongly \
         refused (503, Deny) {refused}; wrongly admitted {over} (counted by the old master \
         after the promotion, lost); admitted {admitted} of {limit}; limited afterwards \
         {limited}"
    );
    assert_eq!(role(replica.port), "master");
    assert!(admitted >= limit, "under-admitted: {admitted} of {limit}");
    // What the old master counted between the promotion and the announcement (about a
    // second) is lost when it resyncs as a replica: at most the requests admitted in that
    // window (plus the one that may have crossed the promotion before it was seen).
    println!("admitted after the promotion, before the switch: {admitted_after_promotion}");
    assert!(
        over <= admitted_after_promotion + 1,
        "over-admitted {over}, admitted after the promotion {admitted_after_promotion}"
    );
    assert!(limited >= 1, "never limited again");
}
