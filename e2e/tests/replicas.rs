//! Many proxy replicas on a real API server: eight cluster-mode proxy processes share one
//! Redis-backed limit (over-admission within 1% under concurrent load through all of them),
//! and `status.proxies` / `Programmed` follow the fleet through scale-up (1 → 8), scale-down
//! with a goodbye (8 → 4), a replica SIGKILLed (its report expires, then it is forgotten) and
//! a replica stuck on an old config (SIGSTOPped while a change is made). Each transition's
//! time to show in status is printed.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use portcullis_e2e::*;
use serde_json::Value;

const NS: &str = "fleet";
/// The proxies report every 3 s, so a silent one stops counting as live after 9 s.
const REPORT_INTERVAL: &str = "3s";
const REPORT_LEASE: Duration = Duration::from_secs(9);
/// The operator forgets a silent replica this long after its report expired.
const FORGET_AFTER: Duration = Duration::from_secs(3);
const LIMIT: u64 = 1000;

fn manifests(redis_url: &str, body: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: shared, namespace: {NS}}}
spec:
  key: Route
  limits: [{{requests: {LIMIT}, period: 1h}}]
  backend: {{type: Redis, redis: {{url: "{redis_url}", timeout: 500ms}}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: limited, namespace: {NS}}}
spec:
  hosts: [localhost]
  paths: [{{type: Prefix, value: /limited}}]
  rateLimitPolicies: [shared]
  upstream: {{directResponse: {{status: 200, body: "{body}"}}}}
"#
    )
}

struct Replica {
    process: Process,
    port: u16,
}

fn replica(cluster: &Cluster, index: usize) -> Replica {
    let (process, port, _) = spawn_proxy(
        cluster,
        &format!("proxy-{index}"),
        &["--report-interval", REPORT_INTERVAL],
    );
    Replica { process, port }
}

/// (summary, Programmed status, reason, message) of the route's current generation, or
/// `None` while status lags the spec.
fn state(cluster: &Cluster) -> Option<(String, String, String, String)> {
    let object = cluster.get("apiroutes", NS, "limited")?;
    let generation = object["metadata"]["generation"].as_i64();
    let programmed = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Programmed")?
        .clone();
    if programmed["observedGeneration"].as_i64() != generation {
        return None;
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    Some((
        text(&object["status"]["proxies"]["summary"]),
        text(&programmed["status"]),
        text(&programmed["reason"]),
        text(&programmed["message"]),
    ))
}

/// Waits until the route shows `summary` with `Programmed=programmed`; returns how long it
/// took and the message.
fn wait_state(
    cluster: &Cluster,
    what: &str,
    summary: &str,
    programmed: &str,
    since: Instant,
    timeout: Duration,
) -> (Duration, String) {
    let deadline = Instant::now() + timeout;
    let message = loop {
        let now = state(cluster);
        if let Some((s, p, _, message)) = &now {
            if s == summary && p == programmed {
                break message.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {now:?}; {:?}",
            cluster
                .get("apiroutes", NS, "limited")
                .map(|o| o["status"].clone())
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = since.elapsed();
    println!("{what}: {took:?} ({summary}, Programmed={programmed}: {message})");
    (took, message)
}

fn status_code(port: u16) -> Option<u16> {
    http(port, "GET", "/limited", &[]).map(|(status, _)| status)
}

#[test]
fn eight_replicas_share_a_redis_limit_and_status_follows_the_fleet() {
    let Some(cluster) = Cluster::start("fleet") else {
        return;
    };
    let redis = Redis::start();
    let (_operator, _) = spawn_operator(
        &cluster,
        "operator-fleet",
        &[
            "--resync-seconds",
            "1",
            "--forget-replicas-after-seconds",
            &FORGET_AFTER.as_secs().to_string(),
            "--allow-loopback-targets",
        ],
    );
    let watch = cluster.watch("apiroutes", NS);
    cluster.apply(&manifests(&redis.url(), "v1")).unwrap();

    // Scale-up: one replica, then seven more at once.
    let mut replicas = vec![replica(&cluster, 0)];
    wait_state(
        &cluster,
        "first replica programmed",
        "1/1",
        "True",
        Instant::now(),
        Duration::from_secs(60),
    );
    let started = Instant::now();
    replicas.extend((1..8).map(|i| replica(&cluster, i)));
    let (scale_up, _) = wait_state(
        &cluster,
        "scale-up 1 → 8",
        "8/8",
        "True",
        started,
        Duration::from_secs(60),
    );

    // Every replica serves and reaches Redis (200; 503 while its connection comes up).
    for r in &replicas {
        wait_for("a replica answering 200", Duration::from_secs(30), || {
            (status_code(r.port)? == 200).then_some(())
        });
    }
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    // 32 concurrent clients, four per replica, 2.5× the limit in all.
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let per_client = (LIMIT as usize * 5 / 2) / 32;
    let load_started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..32)
            .map(|i| {
                let port = ports[i % ports.len()];
                scope.spawn(move || {
                    let mut counts = [0u64; 3];
                    for _ in 0..per_client {
                        match status_code(port) {
                            Some(200) => counts[0] += 1,
                            Some(429) => counts[1] += 1,
                            _ => counts[2] += 1,
                        }
                    }
                    counts
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .fold([0u64; 3], |a, c| [a[0] + c[0], a[1] + c[1], a[2] + c[2]])
    });
    let [admitted, limited, other] = counts;
    println!(
        "8 replicas, 32 clients, {} requests in {:?}: admitted {admitted} for a limit of \
         {LIMIT} ({:+.2}%), limited {limited}, other {other}",
        admitted + limited + other,
        load_started.elapsed(),
        (admitted as f64 - LIMIT as f64) * 100.0 / LIMIT as f64
    );
    assert_eq!(other, 0, "every request answered 200 or 429");
    assert!(
        admitted <= LIMIT + LIMIT / 100,
        "over-admission past 1%: {admitted} for {LIMIT}"
    );
    assert!(
        admitted >= LIMIT - LIMIT / 100,
        "refused within the limit: {admitted} for {LIMIT}"
    );
    // A fresh window for the rest, which reads the route's body.
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));

    // Scale-down with a goodbye: SIGTERM removes the replica's report at once.
    let started = Instant::now();
    for r in &replicas[4..] {
        r.process.signal("-TERM");
    }
    let (scale_down, _) = wait_state(
        &cluster,
        "scale-down 8 → 4 (SIGTERM)",
        "4/4",
        "True",
        started,
        Duration::from_secs(30),
    );
    for mut r in replicas.drain(4..) {
        let exited = r.process.child.wait().unwrap();
        assert!(exited.success(), "{}: {exited}", r.process.name);
    }

    // A replica killed without a goodbye: counted, not ready, until its report expires;
    // then forgotten. Programmed stays True throughout: the live replicas run the config.
    let started = Instant::now();
    replicas[3].process.kill();
    let (expired, _) = wait_state(
        &cluster,
        "SIGKILLed replica's report expired",
        "3/4",
        "True",
        started,
        REPORT_LEASE + Duration::from_secs(10),
    );
    let (forgotten, _) = wait_state(
        &cluster,
        "SIGKILLed replica forgotten",
        "3/3",
        "True",
        started,
        REPORT_LEASE + FORGET_AFTER + Duration::from_secs(10),
    );
    // Not before its report could have expired (it last reported up to an interval before
    // the kill; the operator compares whole seconds).
    assert!(
        expired >= REPORT_LEASE - Duration::from_secs(4),
        "{expired:?}"
    );
    replicas.pop();

    // A replica stuck on the old config: SIGSTOP freezes its config delivery (and its
    // reports, so it stays live until its report expires), then a change is made.
    let started = Instant::now();
    replicas[2].process.signal("-STOP");
    cluster.apply(&manifests(&redis.url(), "v2")).unwrap();
    let (stale, message) = wait_state(
        &cluster,
        "change with one replica stuck on the old config",
        "2/3",
        "False",
        started,
        REPORT_LEASE,
    );
    let (_, reason) = state(&cluster)
        .map(|(_, _, reason, _)| ((), reason))
        .unwrap();
    assert_eq!(reason, "Pending");
    assert!(
        message.contains("1 live replica runs a config without this generation"),
        "{message}"
    );
    for r in &replicas[..2] {
        assert_eq!(
            http(r.port, "GET", "/limited", &[]).unwrap(),
            (200, "v2".to_string())
        );
    }
    // Its report expires: the live replicas run the change, so it is Programmed; the stuck
    // one shows as not ready.
    let (stuck_expired, _) = wait_state(
        &cluster,
        "stuck replica's report expired",
        "2/3",
        "True",
        started,
        REPORT_LEASE + Duration::from_secs(10),
    );
    // Thawed, it loads the change and is counted ready again.
    let thawed = Instant::now();
    replicas[2].process.signal("-CONT");
    let (caught_up, _) = wait_state(
        &cluster,
        "stuck replica thawed",
        "3/3",
        "True",
        thawed,
        Duration::from_secs(20),
    );
    assert_eq!(
        http(replicas[2].port, "GET", "/limited", &[]).unwrap(),
        (200, "v2".to_string())
    );
    // Every status the route had: until the change (generation 1), once Programmed it stayed
    // so through scale-up, scale-down and the kill (starting and vanished replicas do not
    // hold it back).
    let mut programmed_before_change = Vec::new();
    for object in watch.stop() {
        let Some(condition) = object["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Programmed"))
        else {
            continue;
        };
        if condition["observedGeneration"] == 1 {
            let status = condition["status"].as_str().unwrap_or("").to_string();
            if programmed_before_change.last() != Some(&status) {
                programmed_before_change.push(status);
            }
        }
    }
    assert_eq!(
        programmed_before_change.last().map(String::as_str),
        Some("True")
    );
    assert_eq!(
        programmed_before_change
            .iter()
            .skip_while(|s| *s != "True")
            .filter(|s| *s != "True")
            .count(),
        0,
        "Programmed of generation 1 went {programmed_before_change:?}"
    );
    println!(
        "summary: scale-up {scale_up:?}, scale-down {scale_down:?}, killed → not ready \
         {expired:?} → forgotten {forgotten:?}, stuck → Pending {stale:?} → expired \
         {stuck_expired:?}, thawed → ready {caught_up:?}"
    );
}
