//! Namespaces as trust boundaries (docs/multi-tenancy.md), on a real API server: the
//! operator and two proxies run under their own ServiceAccounts, and the tenants act as the
//! users `tenant-a` and `tenant-b`, each bound to the shipped `portcullis-tenant` role in its
//! own namespace only.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use portcullis_e2e::*;

const SYSTEM: &str = "portcullis-system";
const A_KEY: &str = "tenant-a-key-0001";
const B_KEY: &str = "tenant-b-key-0001";

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

/// Namespaces ten-a and ten-b, each tenant bound to the tenant role in its own.
fn tenants(cluster: &Cluster) {
    for (user, ns) in [("tenant-a", "ten-a"), ("tenant-b", "ten-b")] {
        cluster
            .apply(&format!(
                r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: portcullis-tenant, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: portcullis-tenant}}
subjects: [{{kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io}}]
"#
            ))
            .unwrap();
    }
}

/// Waits until the object's `Accepted` condition is False with `reason`, for its current
/// generation; returns the message.
fn wait_refused(cluster: &Cluster, resource: &str, ns: &str, name: &str, reason: &str) -> String {
    let object = cluster.wait_condition(
        resource,
        ns,
        name,
        "Accepted",
        "False",
        Duration::from_secs(30),
    );
    let accepted = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap()
        .clone();
    assert_eq!(accepted["reason"], reason, "{ns}/{name}: {accepted}");
    accepted["message"].as_str().unwrap_or_default().to_string()
}

/// The `Accepted` condition's reason and message of a route too deep for serde_json (and so
/// for [`Cluster::get`]), read with a kubectl JSONPath.
fn deep_accepted(cluster: &Cluster, ns: &str, name: &str) -> Option<(String, String)> {
    let out = cluster.kubectl(
        &[
            "get",
            "apiroute",
            "-n",
            ns,
            name,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Accepted")].reason}|{.status.conditions[?(@.type=="Accepted")].message}"#,
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (reason, message) = text.split_once('|')?;
    (!reason.is_empty()).then(|| (reason.to_string(), message.to_string()))
}

fn route(ns: &str, name: &str, hosts: &str, path: &str, extra: &str, body: &str) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: {hosts}
  paths: [{path}]
{extra}
  upstream: {{directResponse: {{status: 200, body: "{body}"}}}}
"#
    )
}

fn consumer(ns: &str, name: &str, key: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: {name}-keys, namespace: {ns}}}
stringData: {{api-key: {key}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {{name: {name}, namespace: {ns}}}
spec:
  groups: [partners]
  apiKeys: [{{secretRef: {{name: {name}-keys}}}}]
"#
    )
}

fn get(proxy: &Proxy, host: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    http_host(proxy.port, host, "GET", path, &headers).unwrap()
}

#[test]
fn tenants_cannot_use_each_others_consumers_hosts_or_the_gateway_itself() {
    let Some(cluster) = Cluster::start("tenancy") else {
        return;
    };
    tenants(&cluster);
    // No --allow-loopback-targets: the production default.
    let (mut operator, operator_admin) = spawn_operator(&cluster, "operator-1", &[]);
    let proxies = [
        start_proxy(&cluster, "proxy-a"),
        start_proxy(&cluster, "proxy-b"),
    ];

    // The tenant role is namespace-scoped: nothing of another tenant, nothing of the gateway.
    for (resource, ns) in [
        ("apiroutes", "ten-b"),
        ("secrets", "ten-b"),
        ("secrets", SYSTEM),
        ("configmaps", SYSTEM),
    ] {
        let out = cluster.kubectl_as("tenant-a", &["get", resource, "-n", ns], None);
        assert!(
            !out.status.success(),
            "tenant-a can list {resource} in {ns}"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    }

    // ten-b first: it owns b.example.com.
    cluster
        .apply_as("tenant-b", &consumer("ten-b", "b-partner", B_KEY))
        .unwrap();
    let b_api = |extra: &str| {
        route(
            "ten-b",
            "b-api",
            "[b.example.com]",
            "{value: /b}",
            &format!(
                "  authentication: {{methods: [ApiKey]{extra}}}\n  authorization: {{allowGroups: [partners]}}"
            ),
            "b",
        )
    };
    cluster.apply_as("tenant-b", &b_api("")).unwrap();
    cluster.wait_condition(
        "apiroutes",
        "ten-b",
        "b-api",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    // creationTimestamp has one-second resolution: ten-a's claims are strictly later.
    std::thread::sleep(Duration::from_millis(1100));

    // ten-a: its own consumer (self-declared group "partners"), another with ten-b's key
    // value, routes onto ten-b's host, catch-alls, a route to the proxy's admin listener.
    cluster
        .apply_as("tenant-a", &consumer("ten-a", "a-partner", A_KEY))
        .unwrap();
    cluster
        .apply_as("tenant-a", &consumer("ten-a", "a-guess", B_KEY))
        .unwrap();
    let admin_port = proxies[0].admin;
    for yaml in [
        route(
            "ten-a",
            "a-api",
            "[a.example.com]",
            "{value: /a}",
            "  authentication: {methods: [ApiKey]}",
            "a",
        ),
        route(
            "ten-a",
            "steal-prefix",
            "[b.example.com]",
            "{value: /b/admin}",
            "",
            "stolen",
        ),
        route(
            "ten-a",
            "steal-exact",
            "[b.example.com]",
            "{type: Exact, value: /b}",
            "  methods: [GET]",
            "stolen",
        ),
        route(
            "ten-a",
            "wildcard",
            "[\"*.example.com\"]",
            "{value: /}",
            "",
            "a-wildcard",
        ),
        route("ten-a", "catch-all", "[]", "{value: /}", "", "a-catch-all"),
    ] {
        cluster.apply_as("tenant-a", &yaml).unwrap();
    }
    cluster
        .apply_as(
            "tenant-a",
            &format!(
                r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: gateway-admin, namespace: ten-a}}
spec:
  hosts: [a.example.com]
  paths: [{{value: /admin}}]
  upstream: {{targets: [{{url: "http://127.0.0.1:{admin_port}"}}]}}
"#
            ),
        )
        .unwrap();

    // Item 3: the later claims on ten-b's host are refused, naming nobody of ten-b.
    for name in ["steal-prefix", "steal-exact"] {
        let message = wait_refused(&cluster, "apiroutes", "ten-a", name, "HostNotAllowed");
        assert!(message.contains("b.example.com"), "{message}");
        assert!(
            !message.contains("ten-b") && !message.contains("b-api"),
            "{message}"
        );
    }
    // Item 4: no route to the gateway itself.
    let message = wait_refused(
        &cluster,
        "apiroutes",
        "ten-a",
        "gateway-admin",
        "TargetNotAllowed",
    );
    assert!(message.contains("--allow-loopback-targets"), "{message}");
    // Item 2: a key value another namespace uses is no conflict, and nothing tells ten-a so.
    let guess = cluster.wait_condition(
        "consumercredentials",
        "ten-a",
        "a-guess",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    let text = guess["status"].to_string();
    assert!(
        !text.contains("ten-b") && !text.contains("b-partner"),
        "{text}"
    );
    for name in ["a-api", "wildcard", "catch-all"] {
        cluster.wait_condition(
            "apiroutes",
            "ten-a",
            name,
            "Programmed",
            "True",
            Duration::from_secs(30),
        );
    }
    // What ten-a can read of its own objects never names ten-b's.
    let out = cluster.kubectl_as(
        "tenant-a",
        &[
            "get",
            "apiroutes,consumercredentials",
            "-n",
            "ten-a",
            "-o",
            "json",
        ],
        None,
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ten-b") && !text.contains("b-partner") && !text.contains("b-api"));

    for proxy in &proxies {
        // Item 1: ten-a's consumer (and its "partners" group) is nobody on ten-b's route.
        assert_eq!(get(proxy, "b.example.com", "/b", Some(A_KEY)).0, 401);
        assert_eq!(
            get(proxy, "b.example.com", "/b", Some(B_KEY)),
            (200, "b".into())
        );
        // The same key value is ten-a's own consumer on ten-a's routes.
        assert_eq!(
            get(proxy, "a.example.com", "/a", Some(B_KEY)),
            (200, "a".into())
        );
        assert_eq!(
            get(proxy, "a.example.com", "/a", Some(A_KEY)),
            (200, "a".into())
        );
        // Item 3: ten-b's host answers only with ten-b's routes.
        assert_eq!(get(proxy, "b.example.com", "/b/admin", None).0, 401);
        assert_eq!(get(proxy, "b.example.com", "/elsewhere", None).0, 404);
        // Hosts nobody owns are still caught.
        assert_eq!(
            get(proxy, "x.example.com", "/", None),
            (200, "a-wildcard".into())
        );
        assert_eq!(
            get(proxy, "other.test", "/", None),
            (200, "a-catch-all".into())
        );
        // Item 4: the admin listener is not reachable through the data plane.
        let (status, body) = get(proxy, "a.example.com", "/admin/config", None);
        assert!(!body.contains("generation"), "{status} {body}");
    }

    // Explicit sharing, from the owner's side: ten-b accepts ten-a's consumers and admits
    // ten-a on its host.
    cluster
        .apply_as("tenant-b", &b_api(", consumerNamespaces: [ten-a]"))
        .unwrap();
    cluster.wait_condition(
        "apiroutes",
        "ten-b",
        "b-api",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    for proxy in &proxies {
        wait_for(
            "ten-a's consumer accepted by ten-b",
            Duration::from_secs(10),
            || (get(proxy, "b.example.com", "/b", Some(A_KEY)) == (200, "b".into())).then_some(()),
        );
    }
    let shared = b_api(", consumerNamespaces: [ten-a]").replace(
        "  hosts: [b.example.com]",
        "  hosts: [b.example.com]\n  shareHostsWith: [ten-a]",
    );
    cluster.apply_as("tenant-b", &shared).unwrap();
    cluster.wait_condition(
        "apiroutes",
        "ten-a",
        "steal-prefix",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    assert_eq!(
        get(&proxies[0], "b.example.com", "/b/admin", None),
        (200, "stolen".into())
    );

    // Item 7: a deleted shard is written again within seconds, and a proxy that starts
    // meanwhile becomes ready.
    let generation = |cluster: &Cluster| {
        cluster
            .get("configmaps", SYSTEM, "portcullis-config")
            .and_then(|cm| {
                cm["metadata"]["annotations"]["portcullis.dev/generation"]
                    .as_str()
                    .map(str::to_string)
            })
    };
    let published = generation(&cluster).unwrap();
    let out = cluster.kubectl(
        &["delete", "configmap", "-n", SYSTEM, "portcullis-config"],
        None,
    );
    assert!(out.status.success());
    let started = Instant::now();
    let late = start_proxy(&cluster, "proxy-late");
    wait_for(
        "the deleted shard written again",
        Duration::from_secs(10),
        || (generation(&cluster)? == published).then_some(()),
    );
    let repaired = started.elapsed();
    wait_for("the late proxy ready", Duration::from_secs(20), || {
        (http(late.admin, "GET", "/readyz", &[])?.0 == 200).then_some(())
    });
    println!("deleted shard → restored: {repaired:?}");
    assert!(repaired < Duration::from_secs(10), "{repaired:?}");

    // A valid but partial config written by someone else (here the admin, as an intruder
    // with write access to the namespace would): never served, and replaced.
    let forge = || {
        let mut snapshot = portcullis_compiler::Snapshot::default();
        let errors = portcullis_compiler::manifests::parse_into(
            &mut snapshot,
            "forged",
            &route(
                "ten-a",
                "forged",
                "[b.example.com]",
                "{value: /}",
                "",
                "forged",
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let (forged, _) = portcullis_compiler::compile(&snapshot);
        let encoded = portcullis_compiler::delivery::encode(&forged).unwrap();
        let mut objects = Vec::new();
        for shard in &encoded.secret_shards {
            let mut secret = serde_json::to_value(shard.secret()).unwrap();
            secret["metadata"]["namespace"] = SYSTEM.into();
            secret["apiVersion"] = "v1".into();
            secret["kind"] = "Secret".into();
            objects.push(secret);
        }
        for shard in &encoded.config_shards {
            let mut cm = serde_json::to_value(shard.config_map()).unwrap();
            cm["metadata"]["namespace"] = SYSTEM.into();
            cm["apiVersion"] = "v1".into();
            cm["kind"] = "ConfigMap".into();
            objects.push(cm);
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let out = cluster.kubectl(&["replace", "-f", "-"], Some(&list.to_string()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let all: Vec<&Proxy> = proxies.iter().chain([&late]).collect();
    let still_serving = |seconds: u64| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            for proxy in &all {
                // (/b itself is ten-a's Exact route now that ten-b admitted ten-a.)
                let (status, body) = get(proxy, "b.example.com", "/b/x", Some(B_KEY));
                assert_eq!(
                    (status, body.as_str()),
                    (200, "b"),
                    "{}",
                    proxy.process.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // While the operator runs: it notices and writes the config again.
    forge();
    let started = Instant::now();
    wait_for(
        "the forged config replaced",
        Duration::from_secs(10),
        || (generation(&cluster)? == published).then_some(()),
    );
    println!("forged config → replaced: {:?}", started.elapsed());
    still_serving(2);
    let metrics = http(operator_admin, "GET", "/metrics", &[]).unwrap().1;
    let repairs: f64 = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_operator_config_repairs_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap();
    assert!(repairs >= 2.0, "{metrics}");

    // While no operator runs: the proxies refuse it on their own (its signature is not the
    // operator's), keep serving, and say why.
    operator.kill();
    forge();
    still_serving(4);
    for proxy in &all {
        let log = std::fs::read_to_string(&proxy.process.log).unwrap_or_default();
        assert!(
            log.contains("signature"),
            "{} did not say why:\n{}",
            proxy.process.name,
            proxy.process.log_tail()
        );
        let config = http(proxy.admin, "GET", "/config", &[]).unwrap().1;
        assert!(
            config.contains(&published),
            "{}: {config}",
            proxy.process.name
        );
    }
    let _operator = spawn_operator(&cluster, "operator-2", &[]);
    wait_for(
        "the operator's config back",
        Duration::from_secs(20),
        || (generation(&cluster)? == published).then_some(()),
    );
    still_serving(1);
}

/// A JSON Schema nested `depth` levels deep, as YAML flow text.
fn deep_schema(depth: usize) -> String {
    let mut text = "1".to_string();
    for _ in 0..depth {
        text = format!("{{a: {text}}}");
    }
    text
}

#[test]
fn poisoned_objects_and_a_flood_do_not_stop_other_tenants() {
    let Some(cluster) = Cluster::start("tenancy-robust") else {
        return;
    };
    tenants(&cluster);
    let budget = [
        "--namespace-budget",
        "routes=20,consumers=20,configBytes=1Mi",
    ];
    let (mut operator, _) = spawn_operator(&cluster, "operator-1", &budget);
    let _proxy = start_proxy(&cluster, "proxy-a");

    // Poisoned objects of ten-a, stored as they would have been before the CRD had bounds:
    // a weight no u32 holds (the admin relaxes the schema for a moment) and a JSON Schema
    // nested past any decoder's recursion limit.
    let crd = cluster.get("crd", "", "apiroutes.portcullis.dev").unwrap();
    let mut relaxed = crd.clone();
    relaxed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["upstream"]["properties"]["targets"]["items"]["properties"]["weight"]
        .as_object_mut()
        .unwrap()
        .remove("maximum");
    relaxed["metadata"] = serde_json::json!({"name": "apiroutes.portcullis.dev"});
    relaxed.as_object_mut().unwrap().remove("status");
    cluster.apply(&relaxed.to_string()).unwrap();
    let heavy = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: heavy, namespace: ten-a}
spec:
  hosts: [heavy.a.example.com]
  paths: [{value: /}]
  upstream: {targets: [{url: "http://heavy.ten-a.svc:80", weight: 4294967296}]}
"#;
    wait_for("the relaxed schema", Duration::from_secs(10), || {
        cluster.apply_as("tenant-a", heavy).ok()
    });
    // (Its status can be written only while the schema admits the object: Kubernetes
    // validates the whole object on a status write.)
    let message = wait_refused(&cluster, "apiroutes", "ten-a", "heavy", "Undecodable");
    assert!(message.contains("cannot be decoded"), "{message}");
    let mut bounded = crd;
    bounded["metadata"] = serde_json::json!({"name": "apiroutes.portcullis.dev"});
    bounded.as_object_mut().unwrap().remove("status");
    cluster.apply(&bounded.to_string()).unwrap();
    let deep = format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: deep, namespace: ten-a}}
spec:
  hosts: [deep.a.example.com]
  paths: [{{value: /}}]
  requestValidation: {{jsonSchema: {}}}
  upstream: {{directResponse: {{status: 200}}}}
"#,
        deep_schema(130)
    );
    cluster.apply_as("tenant-a", &deep).unwrap();
    // The bounds hold for new objects: the API server refuses the weight again (once the
    // bounded schema is served; objects created before that are poisoned ones too).
    let mut attempt = 0;
    let refused = wait_for("the bounded schema", Duration::from_secs(10), || {
        attempt += 1;
        cluster
            .apply_as(
                "tenant-a",
                &heavy.replace("name: heavy", &format!("name: heavy-{attempt}")),
            )
            .err()
    });
    assert!(refused.contains("weight"), "{refused}");

    let (reason, message) = wait_for("deep: Accepted=False", Duration::from_secs(30), || {
        deep_accepted(&cluster, "ten-a", "deep")
    });
    assert_eq!(reason, "Undecodable", "{message}");
    assert!(message.contains("cannot be decoded"), "{message}");
    cluster
        .apply_as(
            "tenant-b",
            &route(
                "ten-b",
                "b-one",
                "[b.example.com]",
                "{value: /one}",
                "",
                "one",
            ),
        )
        .unwrap();
    cluster.wait_condition(
        "apiroutes",
        "ten-b",
        "b-one",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );

    // An operator restart (a rolling update: SIGTERM, the lease is released) with the
    // poisoned objects stored: the caches sync, and a new route of another namespace is
    // programmed within seconds.
    operator.signal("-TERM");
    let _ = operator.child.wait();
    let (_operator, _) = spawn_operator(&cluster, "operator-2", &budget);
    let started = Instant::now();
    cluster
        .apply_as(
            "tenant-b",
            &route(
                "ten-b",
                "b-two",
                "[b.example.com]",
                "{value: /two}",
                "",
                "two",
            ),
        )
        .unwrap();
    cluster.wait_condition(
        "apiroutes",
        "ten-b",
        "b-two",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    let took = started.elapsed();
    println!(
        "operator restart with poisoned objects → other namespace's new route Programmed: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        http_host(_proxy.port, "b.example.com", "GET", "/two", &[]).unwrap(),
        (200, "two".into())
    );
    wait_refused(&cluster, "apiroutes", "ten-a", "heavy", "Undecodable");
    assert_eq!(
        deep_accepted(&cluster, "ten-a", "deep").unwrap().0,
        "Undecodable"
    );

    // A flood from ten-a: 24 routes of 200 KB bodies, far past its 1 MiB budget, plus a
    // wildcard. ten-b's new route is programmed meanwhile and its host is its own.
    let body = "x".repeat(200 * 1024);
    cluster
        .apply_as(
            "tenant-a",
            &route(
                "ten-a",
                "wild",
                "[\"*.example.com\"]",
                "{value: /}",
                "",
                "a-wildcard",
            ),
        )
        .unwrap();
    for i in 0..24 {
        cluster
            .apply_as(
                "tenant-a",
                &route(
                    "ten-a",
                    &format!("flood-{i:02}"),
                    &format!("[flood-{i}.a.example.com]"),
                    "{value: /}",
                    "",
                    &body,
                ),
            )
            .unwrap();
    }
    cluster
        .apply_as(
            "tenant-b",
            &route(
                "ten-b",
                "b-new",
                "[new.example.com]",
                "{value: /}",
                "",
                "b-new",
            ),
        )
        .unwrap();
    cluster.wait_condition(
        "apiroutes",
        "ten-b",
        "b-new",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    wait_for("ten-b's new host", Duration::from_secs(10), || {
        (http_host(_proxy.port, "new.example.com", "GET", "/", &[])? == (200, "b-new".into()))
            .then_some(())
    });
    let message = wait_refused(&cluster, "apiroutes", "ten-a", "flood-23", "QuotaExceeded");
    assert!(
        message.contains("ten-a") && !message.contains("ten-b"),
        "{message}"
    );
    cluster.wait_condition(
        "apiroutes",
        "ten-a",
        "flood-00",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    cluster.wait_condition(
        "apiroutes",
        "ten-a",
        "wild",
        "Programmed",
        "True",
        Duration::from_secs(30),
    );
    assert_eq!(
        http_host(_proxy.port, "other.example.com", "GET", "/", &[]).unwrap(),
        (200, "a-wildcard".into())
    );

    // The operator's log stayed small: repeated failures are rate-limited.
    let log = std::fs::metadata(&_operator.log)
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(log < 512 * 1024, "operator log is {log} bytes");
}
