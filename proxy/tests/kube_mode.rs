//! Cluster mode against a real kube-apiserver (e2e/env/start.sh): config delivery through
//! ConfigMap + Secret shards, readiness, keeping the last good config, the replica's report
//! Lease, and surviving an API server outage.
//!
//! Uses `PORTCULLIS_TEST_KUBECONFIG` (admin; `PORTCULLIS_TEST_KUBECONFIG_PROXY` for the
//! proxy, else the same) when set; otherwise starts a local control plane. When that cannot
//! start the test is skipped, unless `CI` is set.
#![allow(clippy::unwrap_used)]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use portcullis_compiler::config::{ApiKeyEntry, ConsumerConfig, PathKind, ValidationConfig};
use portcullis_compiler::delivery::{self, Shard};
use portcullis_compiler::report::{ProxyReport, REPORT_ANNOTATION};
use portcullis_compiler::GatewayConfig;
use portcullis_proxy::cluster::{self, ClusterOptions};
use portcullis_proxy::{AuditSink, ProxyOptions, ProxyServer, RunningProxy};

const NS: &str = "portcullis-system";
const PROXY_SA: &str = "portcullis-proxy";
const REPLICA: &str = "kube-test-1";
/// Generous: the machine is shared with other builds.
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A control plane started by e2e/env/start.sh, stopped on drop (also on panic).
struct LocalEnv {
    state: PathBuf,
}

impl LocalEnv {
    fn start() -> Result<LocalEnv, String> {
        let state =
            std::env::temp_dir().join(format!("portcullis-kube-mode-{}", std::process::id()));
        let status = Command::new(repo().join("e2e/env/start.sh"))
            .arg(&state)
            .env("PORTCULLIS_IGNORE_KUBECONFIG", "1")
            .env("PORTCULLIS_NAMESPACE", NS)
            .env("PORTCULLIS_PROXY_SA", PROXY_SA)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run e2e/env/start.sh: {e}"))?;
        let env = LocalEnv { state };
        if !status.success() {
            return Err(format!("e2e/env/start.sh failed: {status}"));
        }
        Ok(env)
    }

    fn stop(&mut self) {
        let _ = Command::new(repo().join("e2e/env/stop.sh"))
            .arg(&self.state)
            .stdin(Stdio::null())
            .status();
    }

    /// e2e/env/restart-apiserver.sh: stops only the API server (`--stop-only`), or starts it
    /// again on the same address, certificates and etcd data and waits until it is ready.
    fn restart_apiserver(&self, extra: &[&str]) {
        let status = Command::new(repo().join("e2e/env/restart-apiserver.sh"))
            .arg(&self.state)
            .args(extra)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "restart-apiserver.sh {extra:?}: {status}");
    }
}

impl Drop for LocalEnv {
    fn drop(&mut self) {
        self.stop();
        // Logs stay behind for a failed run.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..ObjectMeta::default()
    }
}

async fn apply<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("portcullis-test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// The proxy's Role as the Helm chart should grant it (see `portcullis_proxy::cluster`).
async fn grant_proxy_rbac(admin: &kube::Client) {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    apply(&namespaces, &ns).await;
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    };
    // The config objects by name only: no other Secret of the namespace is readable.
    let shard_names = (0..delivery::MAX_SHARDS)
        .map(delivery::object_name)
        .collect::<Vec<_>>();
    let role = Role {
        metadata: meta("portcullis-proxy"),
        rules: Some(vec![
            PolicyRule {
                resource_names: Some(shard_names),
                ..rule(&[""], &["configmaps", "secrets"], &["get", "list", "watch"])
            },
            PolicyRule {
                resource_names: Some(vec![delivery::KEY_SECRET_NAME.to_string()]),
                ..rule(&[""], &["secrets"], &["get", "list", "watch"])
            },
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "create", "update", "delete"],
            ),
        ]),
    };
    apply(&Api::<Role>::namespaced(admin.clone(), NS), &role).await;
    let binding = RoleBinding {
        metadata: meta("portcullis-proxy"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "portcullis-proxy".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: PROXY_SA.into(),
            namespace: Some(NS.into()),
            ..Subject::default()
        }]),
    };
    apply(&Api::<RoleBinding>::namespaced(admin.clone(), NS), &binding).await;
}

/// Generation `tag`: `/hello` answers `tag`; `/strict` needs an `X-Tenant` header.
fn gateway(tag: &str) -> GatewayConfig {
    let mut hello = route("default/hello", PathKind::Prefix, "/hello", &[]);
    hello.upstream.direct_response = Some(direct(200, tag));
    let mut strict = route("default/strict", PathKind::Prefix, "/strict", &[]);
    strict.upstream.direct_response = Some(direct(200, "strict"));
    strict.request_validation = Some(Box::new(ValidationConfig {
        max_body_bytes: None,
        allowed_content_types: vec![],
        json_schema: None,
        max_json_depth: None,
        required_headers: vec!["x-tenant".into()],
    }));
    GatewayConfig {
        generation: tag.into(),
        ..config(vec![hello, strict])
    }
}

/// The config with one consumer and its API key, i.e. another Secret half.
fn with_consumer(mut config: GatewayConfig) -> GatewayConfig {
    config.consumers.push(ConsumerConfig {
        id: "default/alice".into(),
        namespace: "default".into(),
        username: "alice".into(),
        groups: Vec::new(),
        ..ConsumerConfig::default()
    });
    config.secrets.api_keys.push(ApiKeyEntry {
        sha256: portcullis_compiler::hash_api_key(b"alice-secret-key"),
        consumer: "default/alice".into(),
    });
    config
}

/// A shard's object, in the test namespace.
fn in_namespace<K: kube::Resource>(mut object: K) -> K {
    object.meta_mut().namespace = Some(NS.into());
    object
}

struct Writer {
    cms: Api<ConfigMap>,
    secrets: Api<Secret>,
}

impl Writer {
    async fn config_half(&self, shards: &[Shard]) {
        for shard in shards {
            apply(&self.cms, &in_namespace(shard.config_map())).await;
        }
    }

    async fn secret_half(&self, shards: &[Shard]) {
        for shard in shards {
            apply(&self.secrets, &in_namespace(shard.secret())).await;
        }
    }
}

async fn hello(client: &TestClient, addr: SocketAddr) -> (u16, String) {
    let reply = send(client, addr, get("/hello")).await;
    (
        reply.status.as_u16(),
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

async fn wait_serving(client: &TestClient, proxy: &RunningProxy, tag: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = hello(client, proxy.local_addr()).await;
        if got == (200, tag.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "proxy never served generation {tag}; last answer {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A negative cannot be waited for: check that `tag` keeps being served for a while after
/// the change the proxy must ignore (the watch delivers within milliseconds here).
async fn keeps_serving(client: &TestClient, proxy: &RunningProxy, tag: &str, window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert_eq!(
            hello(client, proxy.local_addr()).await,
            (200, tag.to_string())
        );
        assert_eq!(proxy.generation(), tag);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_get(client: &TestClient, proxy: &RunningProxy, path: &str) -> Reply {
    send(client, proxy.admin_addr().unwrap(), get(path)).await
}

async fn report(leases: &Api<Lease>) -> Option<ProxyReport> {
    let lease = leases.get_opt(&cluster::lease_name(REPLICA)).await.ok()??;
    let json = lease.metadata.annotations?.get(REPORT_ANNOTATION)?.clone();
    let spec = lease.spec?;
    assert_eq!(spec.holder_identity.as_deref(), Some(REPLICA));
    assert!(spec.renew_time.is_some());
    Some(serde_json::from_str(&json).unwrap())
}

async fn wait_report(leases: &Api<Lease>, check: impl Fn(&ProxyReport) -> bool) -> ProxyReport {
    let deadline = Instant::now() + WAIT;
    loop {
        let current = report(leases).await;
        if let Some(r) = &current {
            if check(r) {
                return r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "report never matched; last {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_against_a_real_api_server() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut local = None;
    let (admin_config, proxy_config) = match std::env::var_os("PORTCULLIS_TEST_KUBECONFIG") {
        Some(admin) => {
            let proxy =
                std::env::var_os("PORTCULLIS_TEST_KUBECONFIG_PROXY").unwrap_or(admin.clone());
            (PathBuf::from(admin), PathBuf::from(proxy))
        }
        None => match LocalEnv::start() {
            Ok(env) => {
                let paths = (
                    env.state.join("kubeconfig"),
                    env.state.join("kubeconfig-proxy"),
                );
                local = Some(env);
                paths
            }
            Err(e) => panic!("{e}"),
        },
    };
    let admin = client_from(&admin_config).await;
    grant_proxy_rbac(&admin).await;
    let writer = Writer {
        cms: Api::namespaced(admin.clone(), NS),
        secrets: Api::namespaced(admin.clone(), NS),
    };
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);

    let proxy = ProxyServer::start_unloaded(ProxyOptions {
        audit: AuditSink::Disabled,
        ..ProxyOptions::default()
    })
    .await
    .unwrap();
    let cluster_mode = cluster::start(
        client_from(&proxy_config).await,
        proxy.config_handle(),
        ClusterOptions {
            namespace: NS.into(),
            replica: REPLICA.into(),
            report_interval: Duration::from_secs(1),
            endpoints: portcullis_proxy::cluster::endpoints::Source::Off,
            // Delivery mechanics only: signatures are tested by the e2e tenancy tests.
            config_key_secret: None,
            owner: None,
        },
    );
    let http = client();

    // Not ready, and the report says so, until a config arrives.
    assert_eq!(admin_get(&http, &proxy, "/readyz").await.status, 503);
    wait_report(&leases, |r| r.generation.is_none()).await;

    let g1 = delivery::encode(&gateway("g1")).unwrap();
    writer.secret_half(&g1.secret_shards).await;
    writer.config_half(&g1.config_shards).await;
    wait_serving(&http, &proxy, "g1", WAIT).await;
    assert_eq!(admin_get(&http, &proxy, "/readyz").await.status, 200);
    let summary = admin_get(&http, &proxy, "/config").await.json();
    assert_eq!(summary["generation"], "g1");
    assert_eq!(summary["routes"], 2);

    // Secret first, then ConfigMap: nothing changes until both carry g2.
    let g2 = delivery::encode(&gateway("g2")).unwrap();
    writer.secret_half(&g2.secret_shards).await;
    keeps_serving(&http, &proxy, "g1", Duration::from_millis(1500)).await;
    writer.config_half(&g2.config_shards).await;
    wait_serving(&http, &proxy, "g2", WAIT).await;

    // ConfigMap first, then Secret.
    let g3 = delivery::encode(&gateway("g3")).unwrap();
    writer.config_half(&g3.config_shards).await;
    keeps_serving(&http, &proxy, "g2", Duration::from_millis(1500)).await;
    writer.secret_half(&g3.secret_shards).await;
    wait_serving(&http, &proxy, "g3", WAIT).await;

    // Both halves of g4 present but the Secret's payload is corrupt: g3 stays, still ready.
    // (g4 has one more consumer: an unchanged Secret half would not be decoded at all.)
    let g4 = delivery::encode(&with_consumer(gateway("g4"))).unwrap();
    assert_ne!(g4.secret_content, g3.secret_content);
    let mut corrupt = g4.secret_shards.clone();
    corrupt[0].payload = b"definitely not gzip".to_vec();
    writer.secret_half(&corrupt).await;
    writer.config_half(&g4.config_shards).await;
    keeps_serving(&http, &proxy, "g3", Duration::from_millis(1500)).await;
    assert_eq!(admin_get(&http, &proxy, "/readyz").await.status, 200);
    // A good g4 Secret repairs it.
    writer.secret_half(&g4.secret_shards).await;
    wait_serving(&http, &proxy, "g4", WAIT).await;

    // Counters: every request counts; a validation denial counts as such.
    for _ in 0..3 {
        assert_eq!(
            send(&http, proxy.local_addr(), get("/strict")).await.status,
            400
        );
    }
    let ok = send(
        &http,
        proxy.local_addr(),
        get("/strict").header("x-tenant", "t"),
    )
    .await;
    assert_eq!(ok.status, 200);
    let hello_requests = {
        let r = report(&leases).await;
        r.and_then(|r| r.routes.get("default/hello").map(|c| c.requests))
            .unwrap_or(0)
    };
    let reported = wait_report(&leases, |r| {
        r.generation.as_deref() == Some("g4")
            && r.routes
                .get("default/strict")
                .is_some_and(|c| c.requests == 4)
            && r.routes
                .get("default/hello")
                .is_some_and(|c| c.requests >= hello_requests.max(1))
    })
    .await;
    let strict = reported.routes["default/strict"];
    assert_eq!(strict.validation_failed, 3, "{reported:?}");
    assert_eq!(strict.auth_failures, 0);
    assert_eq!(reported.replica, REPLICA);
    assert!(!reported.started_at.is_empty());

    if let Some(env) = local.as_ref() {
        // The API server goes away: the proxy keeps serving what it has.
        env.restart_apiserver(&["--stop-only"]);
        keeps_serving(&http, &proxy, "g4", Duration::from_secs(2)).await;
        assert_eq!(admin_get(&http, &proxy, "/readyz").await.status, 200);

        // Back on the same address and data: the watch reconnects and a new config lands.
        env.restart_apiserver(&[]);
        let g5 = delivery::encode(&gateway("g5")).unwrap();
        writer.secret_half(&g5.secret_shards).await;
        writer.config_half(&g5.config_shards).await;
        wait_serving(&http, &proxy, "g5", WAIT).await;
        wait_report(&leases, |r| r.generation.as_deref() == Some("g5")).await;
    } else {
        eprintln!("external cluster: API server outage and restart not exercised");
    }

    // A config whose Secret half spans several shards: the proxy starts watching shards 1.. by
    // name as shard 0 announces them, and loads the config once all are there.
    let mut big = gateway("g6");
    for i in 0..60_000u32 {
        big.secrets.api_keys.push(ApiKeyEntry {
            sha256: portcullis_compiler::hash_api_key(format!("key-{i}").as_bytes()),
            consumer: "default/alice".into(),
        });
    }
    let big = with_consumer(big);
    let g6 = delivery::encode(&big).unwrap();
    assert!(
        g6.secret_shards.len() >= 3,
        "{} Secret shards",
        g6.secret_shards.len()
    );
    writer.secret_half(&g6.secret_shards).await;
    writer.config_half(&g6.config_shards).await;
    wait_serving(&http, &proxy, "g6", WAIT).await;
    wait_report(&leases, |r| r.generation.as_deref() == Some("g6")).await;

    // The proxy's Role names the shard objects: any other Secret of the namespace is refused
    // (the local environment gives the proxy its own ServiceAccount token).
    if local.is_some() {
        apply(
            &writer.secrets,
            &Secret {
                metadata: meta("not-for-the-proxy"),
                ..Secret::default()
            },
        )
        .await;
        let as_proxy: Api<Secret> = Api::namespaced(client_from(&proxy_config).await, NS);
        match as_proxy.get("not-for-the-proxy").await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("the proxy read another Secret: {other:?}"),
        }
        assert!(
            as_proxy.list(&Default::default()).await.is_err(),
            "the proxy listed Secrets"
        );
    }

    // Graceful shutdown removes the report at once.
    cluster_mode.shutdown().await;
    let deadline = Instant::now() + WAIT;
    while leases
        .get_opt(&cluster::lease_name(REPLICA))
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "report Lease not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.shutdown().await;
}
