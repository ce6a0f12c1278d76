//! The operator's tenancy settings (cluster mode): internal targets refused, catch-alls
//! reserved, per-namespace budgets — the newest objects of the namespace past its budget are
//! refused with QuotaExceeded, other namespaces are untouched.
#![allow(clippy::unwrap_used)]

use portcullis_compiler::tenancy::{Budget, Budgets, Tenancy};
use portcullis_compiler::{
    compile, compile_cached, manifests, CompileCache, ObjectStatus, Snapshot,
};

fn snapshot(yaml: &str, tenancy: Tenancy) -> Snapshot {
    let mut snapshot = Snapshot {
        tenancy,
        ..Snapshot::default()
    };
    let errors = manifests::parse_into(&mut snapshot, "in.yaml", yaml);
    assert!(errors.is_empty(), "{errors:?}");
    snapshot
}

fn accepted<'a>(statuses: &'a [ObjectStatus], ns: &str, name: &str) -> (bool, &'a str, &'a str) {
    let status = statuses
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .unwrap_or_else(|| panic!("{ns}/{name}"));
    let c = &status.conditions[0];
    (c.status, c.reason.as_str(), c.message.as_str())
}

fn route(ns: &str, name: &str, created: u32, host: &str, body_bytes: usize) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: "2026-01-01T00:{:02}:{:02}Z"}}
spec:
  hosts: [{host}]
  paths: [{{value: /}}]
  upstream: {{directResponse: {{status: 200, body: "{}"}}}}
---"#,
        created / 60,
        created % 60,
        "x".repeat(body_bytes)
    )
}

fn consumer(ns: &str, name: &str, created: u32) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: "2026-01-01T00:{:02}:{:02}Z"}}
spec: {{groups: [gold]}}
---"#,
        created / 60,
        created % 60
    )
}

#[test]
fn the_newest_objects_past_a_namespace_budget_are_refused_and_others_are_untouched() {
    let mut yaml = String::new();
    for i in 0..6 {
        yaml.push_str(&route(
            "flood",
            &format!("r{i}"),
            i,
            &format!("f{i}.example.com"),
            10_000,
        ));
    }
    for i in 0..4 {
        yaml.push_str(&consumer("flood", &format!("c{i}"), i));
    }
    yaml.push_str(&route("quiet", "new", 59, "new.example.com", 10_000));
    yaml.push_str(&consumer("quiet", "c", 59));
    let tenancy = Tenancy {
        budgets: Budgets {
            default: Budget {
                routes: Some(4),
                consumers: Some(2),
                config_bytes: Some(35_000),
            },
            overrides: [(
                "quiet".to_string(),
                Budget {
                    routes: Some(1),
                    ..Budget::default()
                },
            )]
            .into(),
        },
        ..Tenancy::default()
    };
    let snapshot = snapshot(&yaml, tenancy);
    let (config, statuses) = compile(&snapshot);
    // 10 KB each within 35,000 bytes: the three oldest routes fit.
    for i in 0..3 {
        assert!(accepted(&statuses, "flood", &format!("r{i}")).0, "r{i}");
    }
    for i in 3..6 {
        let (ok, reason, message) = accepted(&statuses, "flood", &format!("r{i}"));
        assert!(!ok && reason == "QuotaExceeded", "r{i}: {reason} {message}");
        assert!(
            message.contains("flood") && !message.contains("quiet"),
            "{message}"
        );
    }
    for i in 0..2 {
        assert!(accepted(&statuses, "flood", &format!("c{i}")).0, "c{i}");
    }
    for i in 2..4 {
        let (ok, reason, _) = accepted(&statuses, "flood", &format!("c{i}"));
        assert!(!ok && reason == "QuotaExceeded", "c{i}");
    }
    assert!(accepted(&statuses, "quiet", "new").0);
    assert!(accepted(&statuses, "quiet", "c").0);
    assert!(config.routes.iter().any(|r| r.id == "quiet/new"));
    // The cached compile agrees, and a changed budget is not served from the cache.
    let mut cache = CompileCache::default();
    assert_eq!(compile_cached(&snapshot, &mut cache).1, statuses);
    let mut unlimited = snapshot.clone();
    unlimited.tenancy = Tenancy::default();
    let (_, statuses) = compile_cached(&unlimited, &mut cache);
    assert!(accepted(&statuses, "flood", "c3").0);
}

#[test]
fn internal_targets_and_reserved_catch_alls_are_refused_in_cluster_mode() {
    let yaml = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: admin, namespace: ten-a}
spec:
  hosts: [a.example.com]
  paths: [{value: /}]
  upstream: {targets: [{url: "http://127.0.0.1:9901"}, {url: "http://169.254.169.254"}]}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: fine, namespace: ten-a}
spec:
  hosts: [b.example.com]
  paths: [{value: /}]
  upstream: {targets: [{service: {name: users, port: 80}}]}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: catch-all, namespace: ten-a}
spec:
  paths: [{value: /}]
  upstream: {directResponse: {status: 200}}
"#;
    let cluster = Tenancy {
        refuse_internal_targets: true,
        catch_all_namespaces: Some(["platform".to_string()].into()),
        ..Tenancy::default()
    };
    let (_, statuses) = compile(&snapshot(yaml, cluster));
    let (ok, reason, message) = accepted(&statuses, "ten-a", "admin");
    assert!(!ok && reason == "TargetNotAllowed", "{message}");
    assert!(
        message.contains("127.0.0.1") && message.contains("169.254.169.254"),
        "{message}"
    );
    assert!(accepted(&statuses, "ten-a", "fine").0);
    let (ok, reason, _) = accepted(&statuses, "ten-a", "catch-all");
    assert!(!ok && reason == "HostNotAllowed");
    // Standalone: the administrator's files may use loopback targets and catch-alls.
    let (_, statuses) = compile(&snapshot(yaml, Tenancy::default()));
    assert!(
        statuses.iter().all(|s| s.conditions[0].status),
        "{statuses:?}"
    );
}
