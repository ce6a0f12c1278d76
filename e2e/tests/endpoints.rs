//! `service:` targets balance over the Service's ready endpoints, which the proxy watches:
//! endpoint changes reach it within a second, no config is recompiled, and a Service without
//! a ready endpoint answers 503 JSON. Endpoints live on a bridge of the test's own (the API
//! server refuses loopback addresses), with real upstream servers bound to them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use portcullis_e2e::*;

const NS: &str = "endpoints";

/// The Service's v1 Endpoints. The test API server (Kubernetes 1.20) serves no
/// `discovery.k8s.io/v1` EndpointSlices, so the proxy's `auto` source falls back to these,
/// as it must on such clusters; slices are covered by the unit tests of the conversion.
fn endpoints(
    name: &str,
    ready: &[std::net::IpAddr],
    not_ready: &[std::net::IpAddr],
    port: u16,
) -> String {
    let list = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .map(|ip| format!("{{ip: \"{ip}\"}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: {NS}}}
subsets:
  - addresses: [{}]
    notReadyAddresses: [{}]
    ports: [{{name: http, port: {port}}}]
"#,
        list(ready),
        list(not_ready)
    )
}

/// Who answered `n` requests, by name.
fn spread(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, _, body) = http_full(port, "GET", "web.test", "/", &[]).unwrap();
        let key = if status == 200 {
            body
        } else {
            format!("{status}")
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Polls until every one of 12 requests is answered by exactly `expected`; returns how long
/// that took from `since`.
fn until_only(port: u16, expected: &[&str], since: Instant) -> Duration {
    wait_for(
        &format!("only {expected:?} to answer"),
        Duration::from_secs(10),
        || {
            let seen = spread(port, 12);
            let names: Vec<&str> = seen.keys().map(String::as_str).collect();
            (names == expected).then(|| since.elapsed())
        },
    )
}

#[test]
fn service_targets_follow_ready_endpoints_within_a_second() {
    let Some(cluster) = Cluster::start("endpoints") else {
        return;
    };
    let bridge = Bridge::create("ep", 3);
    // All three upstreams listen on one port number (an EndpointSlice has one port per name).
    let first = Echo::start(bridge.addresses[0], "pod-a");
    let port = first.addr.port();
    let bind = |ip, name| Echo::start_on(std::net::SocketAddr::new(ip, port), name);
    let _b = bind(bridge.addresses[1], "pod-b");
    let _c = bind(bridge.addresses[2], "pod-c");
    let [a, b, c] = [
        bridge.addresses[0],
        bridge.addresses[1],
        bridge.addresses[2],
    ];

    let (_operator, _) = spawn_operator(&cluster, "operator", &[]);
    let (_proxy, proxy_port, admin) = spawn_proxy(&cluster, "proxy", &[]);

    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: {NS}}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [web.test]
  paths: [{{value: /}}]
  upstream: {{targets: [{{service: {{name: web, portName: http}}}}]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: empty, namespace: {NS}}}
spec:
  hosts: [empty.test]
  paths: [{{value: /}}]
  upstream: {{targets: [{{service: {{name: empty, port: 80}}}}]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: ghost, namespace: {NS}}}
spec:
  hosts: [ghost.test]
  paths: [{{value: /}}]
  upstream: {{targets: [{{service: {{name: ghost, port: 80}}}}]}}
{}"#,
            endpoints("web", &[a], &[], port)
        ))
        .unwrap();
    cluster.wait_condition(
        "apiroutes",
        NS,
        "web",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    wait_for("proxy ready", Duration::from_secs(30), || {
        (http(admin, "GET", "/readyz", &[])?.0 == 200).then_some(())
    });
    until_only(proxy_port, &["pod-a"], Instant::now());

    let generation = |cluster: &Cluster| {
        cluster
            .get("configmaps", "portcullis-system", "portcullis-config")
            .unwrap()["metadata"]["annotations"]["portcullis.dev/generation"]
            .clone()
    };
    let config_before = generation(&cluster);

    // Two more pods become ready: each takes its share of round robin.
    let changed = Instant::now();
    cluster
        .apply(&endpoints("web", &[a, b, c], &[], port))
        .unwrap();
    let took = until_only(proxy_port, &["pod-a", "pod-b", "pod-c"], changed);
    eprintln!("scale-up reached the proxy after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "scale-up reached the proxy after {took:?}"
    );
    let seen = spread(proxy_port, 30);
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{seen:?}"
    );

    // A pod fails its readiness probe: gone from the balancer.
    let changed = Instant::now();
    cluster
        .apply(&endpoints("web", &[b, c], &[a], port))
        .unwrap();
    let took = until_only(proxy_port, &["pod-b", "pod-c"], changed);
    assert!(
        took < Duration::from_secs(1),
        "not-ready reached the proxy after {took:?}"
    );

    // No ready endpoint at all: 503 JSON saying so.
    let changed = Instant::now();
    cluster.kubectl(&["delete", "endpoints", "-n", NS, "web"], None);
    let took = until_only(proxy_port, &["503"], changed);
    assert!(
        took < Duration::from_secs(1),
        "deletion reached the proxy after {took:?}"
    );
    let (status, headers, body) = http_full(proxy_port, "GET", "web.test", "/", &[]).unwrap();
    assert_eq!(status, 503);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v == "application/json"));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "upstream service has no ready endpoints");
    assert!(json["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    // Endpoint changes never recompiled the routes: the config is the same generation.
    assert_eq!(generation(&cluster), config_before);

    // A Service without endpoints, and one that does not exist.
    let (status, _, body) = http_full(proxy_port, "GET", "empty.test", "/", &[]).unwrap();
    assert_eq!(
        (status, body.contains("no ready endpoints")),
        (503, true),
        "{body}"
    );
    let (status, _, body) = http_full(proxy_port, "GET", "ghost.test", "/", &[]).unwrap();
    assert_eq!(
        (status, body.contains("service not found")),
        (503, true),
        "{body}"
    );

    // Back: the proxy's state follows re-creation as well.
    cluster
        .apply(&endpoints("web", &[c], &[a, b], port))
        .unwrap();
    until_only(proxy_port, &["pod-c"], Instant::now());
    drop(first);
}

/// A rolling update as the endpoints show it: a new pod becomes ready, then an old one stops
/// being ready (and then exits), one at a time. Requests run throughout, none fails.
#[test]
fn no_request_fails_while_endpoints_roll() {
    let Some(cluster) = Cluster::start("endpoints-roll") else {
        return;
    };
    let bridge = Bridge::create("er", 3);
    let first = Echo::start(bridge.addresses[0], "pod-a");
    let port = first.addr.port();
    let mut pods = [
        Some(first),
        Some(Echo::start_on(
            std::net::SocketAddr::new(bridge.addresses[1], port),
            "pod-b",
        )),
        Some(Echo::start_on(
            std::net::SocketAddr::new(bridge.addresses[2], port),
            "pod-c",
        )),
    ];
    let [a, b, c] = [
        bridge.addresses[0],
        bridge.addresses[1],
        bridge.addresses[2],
    ];
    let (_operator, _) = spawn_operator(&cluster, "operator", &[]);
    let (_proxy, proxy_port, _) = spawn_proxy(&cluster, "proxy", &[]);
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [web.test]
  paths: [{{value: /}}]
  upstream: {{targets: [{{service: {{name: web, port: 80}}}}]}}
{}"#,
            endpoints("web", &[a], &[], port)
        ))
        .unwrap();
    until_only(proxy_port, &["pod-a"], Instant::now());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers: BTreeMap<String, usize> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = match http_full(proxy_port, "GET", "web.test", "/", &[]) {
                    Some((200, _, body)) => body,
                    Some((status, _, body)) => format!("{status} {body}"),
                    None => "no answer".to_string(),
                };
                *answers.entry(key).or_insert(0) += 1;
            }
            answers
        })
    };
    // (ready, not ready, the pod that exits after leaving the endpoints)
    let steps: [(&[std::net::IpAddr], &[std::net::IpAddr], Option<usize>); 4] = [
        (&[a, b], &[], None),
        (&[b], &[a], Some(0)),
        (&[b, c], &[], None),
        (&[c], &[b], Some(1)),
    ];
    for (ready, not_ready, exits) in steps {
        cluster
            .apply(&endpoints("web", ready, not_ready, port))
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(i) = exits {
            // The pod exits once it is out of the endpoints (preStop, then SIGTERM).
            pods[i] = None;
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = client.join().unwrap();
    let failed: Vec<(&String, &usize)> = answers
        .iter()
        .filter(|(k, _)| !k.starts_with("pod-"))
        .collect();
    eprintln!("answers during the roll: {answers:?}");
    assert!(
        failed.is_empty(),
        "failed requests during the roll: {answers:?}"
    );
    assert!(answers.keys().any(|k| k == "pod-b") && answers.contains_key("pod-c"));
}
