//! The whole system on a real kube-apiserver: `kubectl apply` → operator → ConfigMap/Secret
//! → two proxy processes → traffic, with status written back and shown by `kubectl get`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use portcullis_e2e::*;

const NS: &str = "shop";
const SYSTEM: &str = "portcullis-system";
const KEY: &str = "e2e-key-0123456789";

struct Proxy {
    process: Process,
    port: u16,
    admin: u16,
}

fn start_proxy(cluster: &Cluster, name: &str) -> Proxy {
    let (process, port, admin) = spawn_proxy(cluster, name, &[]);
    Proxy {
        process,
        port,
        admin,
    }
}

fn start_operator(cluster: &Cluster, name: &str, webhook: bool) -> (Process, u16) {
    if !webhook {
        return spawn_operator(cluster, name, &[]);
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://127.0.0.1:{port}");
    spawn_operator(
        cluster,
        name,
        &[
            "--webhook-listen",
            &listen,
            "--webhook-url",
            &url,
            "--webhook-fail-closed",
        ],
    )
}

fn route(body: &str, path: &str) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: users, namespace: {NS}}}
spec:
  hosts: [api.example.com, localhost]
  paths: [{{type: Prefix, value: {path}}}]
  authentication: {{methods: [ApiKey]}}
  upstream: {{directResponse: {{status: 200, body: "{body}"}}}}
"#
    )
}

const CONSUMER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Secret
metadata: {name: mobile-keys, namespace: shop}
stringData: {api-key: e2e-key-0123456789}
---
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {name: mobile-app, namespace: shop}
spec:
  groups: [gold]
  apiKeys: [{secretRef: {name: mobile-keys}}]
"#;

fn get(port: u16, path: &str, key: Option<&str>) -> Option<(u16, String)> {
    match key {
        Some(key) => http(port, "GET", path, &[("x-api-key", key)]),
        None => http(port, "GET", path, &[]),
    }
}

fn proxies_column(cluster: &Cluster) -> String {
    let out = cluster.kubectl(&["get", "apiroutes", "-n", NS], None);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn operator_and_two_proxies_enforce_and_report() {
    let Some(cluster) = Cluster::start("main") else {
        return;
    };
    let (operator, _) = start_operator(&cluster, "operator-1", true);
    let mut proxies = vec![
        start_proxy(&cluster, "proxy-a"),
        start_proxy(&cluster, "proxy-b"),
    ];

    // Without a config the proxies are alive but not ready.
    for proxy in &proxies {
        let (status, _) = wait_for("proxy admin", Duration::from_secs(30), || {
            http(proxy.admin, "GET", "/healthz", &[])
        });
        assert_eq!(status, 200);
    }

    cluster.apply(CONSUMER).unwrap();
    // The webhook registers shortly after the operator starts; wait until it answers.
    wait_for(
        "the webhook to be registered",
        Duration::from_secs(30),
        || {
            cluster.get(
                "validatingwebhookconfigurations",
                "",
                "portcullis-validation",
            )
        },
    );
    cluster.apply(&route("v1", "/users")).unwrap();
    cluster.wait_condition(
        "apiroutes",
        NS,
        "users",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    cluster.wait_condition(
        "consumercredentials",
        NS,
        "mobile-app",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );

    for proxy in &proxies {
        assert_eq!(http(proxy.admin, "GET", "/readyz", &[]).unwrap().0, 200);
        assert_eq!(
            get(proxy.port, "/users", Some(KEY)).unwrap(),
            (200, "v1".to_string())
        );
        assert_eq!(get(proxy.port, "/users", None).unwrap().0, 401);
        assert_eq!(
            get(proxy.port, "/users", Some("wrong-key-000000"))
                .unwrap()
                .0,
            401
        );
    }
    // Each proxy answered two 401s: the reports carry them into status and the BLOCKED column.
    let object = wait_for(
        "enforcement counters in status",
        Duration::from_secs(15),
        || {
            let object = cluster.get("apiroutes", NS, "users")?;
            (object["status"]["enforcement"]["authFailures"].as_u64()? >= 4).then_some(object)
        },
    );
    assert!(
        object["status"]["enforcement"]["requests"]
            .as_u64()
            .unwrap()
            >= 6,
        "{object}"
    );
    let table = proxies_column(&cluster);
    println!("{table}");
    assert!(table.contains("2/2"), "{table}");
    for column in [
        "HOSTS",
        "PATHS",
        "ACCEPTED",
        "PROGRAMMED",
        "PROXIES",
        "BLOCKED",
        "AGE",
    ] {
        assert!(table.contains(column), "{column} missing in\n{table}");
    }

    // A change reaches both proxies, and status follows.
    let started = Instant::now();
    cluster.apply(&route("v2", "/users")).unwrap();
    for proxy in &proxies {
        wait_for("v2 served", Duration::from_secs(10), || {
            (get(proxy.port, "/users", Some(KEY))? == (200, "v2".to_string())).then_some(())
        });
    }
    let served = started.elapsed();
    cluster.wait_condition(
        "apiroutes",
        NS,
        "users",
        "Programmed",
        "True",
        Duration::from_secs(10),
    );
    let programmed = started.elapsed();
    println!("change → both proxies serving: {served:?}; → Programmed=True: {programmed:?}");
    assert!(
        programmed < Duration::from_secs(5),
        "status took {programmed:?}"
    );

    // The webhook refuses an invalid object at apply time, naming the field.
    let invalid = route("x", "/(")
        .replace("name: users", "name: broken")
        .replace("type: Prefix", "type: Regex");
    let refused = cluster.apply(&invalid).unwrap_err();
    assert!(refused.contains("spec.paths[0].value"), "{refused}");
    // With the webhook gone the object is stored, gets Accepted=False, and nothing else breaks.
    let out = cluster.kubectl(
        &[
            "delete",
            "validatingwebhookconfiguration",
            "portcullis-validation",
        ],
        None,
    );
    assert!(out.status.success());
    cluster.apply(&invalid).unwrap();
    let object = cluster.wait_condition(
        "apiroutes",
        NS,
        "broken",
        "Accepted",
        "False",
        Duration::from_secs(15),
    );
    let accepted = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap()
        .clone();
    assert_eq!(accepted["reason"], "Invalid");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("spec.paths[0].value"),
        "{accepted}"
    );
    for proxy in &proxies {
        assert_eq!(
            get(proxy.port, "/users", Some(KEY)).unwrap(),
            (200, "v2".to_string())
        );
    }

    // A crashed proxy: its report stops, PROXIES shows 1/2, Programmed stays truthful
    // (every live replica runs the config), and a change still programs on the live one.
    proxies[1].process.kill();
    wait_for("PROXIES 1/2", Duration::from_secs(40), || {
        proxies_column(&cluster).contains("1/2").then_some(())
    });
    cluster.apply(&route("v3", "/users")).unwrap();
    let object = cluster.wait_condition(
        "apiroutes",
        NS,
        "users",
        "Programmed",
        "True",
        Duration::from_secs(15),
    );
    assert_eq!(object["status"]["proxies"]["summary"], "1/2", "{object}");
    assert_eq!(
        get(proxies[0].port, "/users", Some(KEY)).unwrap(),
        (200, "v3".to_string())
    );

    // The API server goes away: proxies keep serving their last config.
    cluster.restart_apiserver(true);
    for _ in 0..20 {
        assert_eq!(
            get(proxies[0].port, "/users", Some(KEY)).unwrap(),
            (200, "v3".to_string())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    proxies.push(start_proxy(&cluster, "proxy-c")); // starts while the API server is down
    cluster.restart_apiserver(false);
    // Back: everything converges, including the proxy that started during the outage.
    cluster.apply(&route("v4", "/users")).unwrap();
    for proxy in [&proxies[0], &proxies[2]] {
        // Generous: the watches reconnect with backoff, and a loaded machine (CI beside other
        // builds) once took longer than 30 s; this is a liveness check, not a timing one.
        wait_for("v4 after the outage", Duration::from_secs(90), || {
            (get(proxy.port, "/users", Some(KEY))? == (200, "v4".to_string())).then_some(())
        });
    }
    cluster.wait_condition(
        "apiroutes",
        NS,
        "users",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    drop(operator);
}

#[test]
fn a_follower_operator_takes_over_when_the_leader_dies() {
    let Some(cluster) = Cluster::start("failover") else {
        return;
    };
    let mut first = start_operator(&cluster, "operator-a", false).0;
    let holder = || -> Option<String> {
        let lease = cluster.get("leases", SYSTEM, "portcullis-operator")?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    wait_for("a leader", Duration::from_secs(30), || {
        (holder()? == "operator-a").then_some(())
    });
    let _second = start_operator(&cluster, "operator-b", false).0;
    let _proxy = start_proxy(&cluster, "proxy-a");
    cluster.apply(CONSUMER).unwrap();
    cluster.wait_condition(
        "consumercredentials",
        NS,
        "mobile-app",
        "Accepted",
        "True",
        Duration::from_secs(30),
    );

    first.kill();
    let started = Instant::now();
    wait_for("operator-b to lead", Duration::from_secs(20), || {
        (holder()? == "operator-b").then_some(())
    });
    // The new leader acts: a new object gets its status.
    cluster.apply(&route("after-failover", "/users")).unwrap();
    cluster.wait_condition(
        "apiroutes",
        NS,
        "users",
        "Programmed",
        "True",
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    println!("leader failover → new object Programmed: {took:?}");
    assert!(took < Duration::from_secs(25), "{took:?}");
}
