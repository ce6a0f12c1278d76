//! The operator's leadership terms (`portcullis_operator::leadership`) on a real API server
//! and a real Lease: two replicas in this process, as the operator's ServiceAccount. One
//! leads and publishes; a replica whose lease is taken steps down and competes again; a
//! replica that shuts down gives the lease up and the other takes over.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use portcullis_compiler::delivery::CONFIG_LABEL;
use portcullis_compiler::Tenancy;
use portcullis_e2e::*;
use portcullis_operator::events::EventSink;
use portcullis_operator::leader::{Elector, LeaderConfig, LEASE_NAME};
use portcullis_operator::leadership::Leadership;
use portcullis_operator::metrics::Metrics;
use portcullis_operator::reconcile::Reconciler;
use portcullis_operator::trigger::Trigger;
use portcullis_operator::watch;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SYSTEM: &str = "portcullis-system";
const TIMEOUT: Duration = Duration::from_secs(60);

struct Replica {
    identity: &'static str,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Replica {
    fn leads(&self) -> bool {
        self.metrics.leader.get() == 1
    }
}

async fn client(kubeconfig: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// One operator replica as `main` assembles it, with a short lease so that the test
/// sees hand-overs in seconds.
async fn start_replica(kubeconfig: &Path, identity: &'static str) -> Replica {
    let client = client(kubeconfig).await;
    let metrics = Arc::new(Metrics::new());
    let trigger = Arc::new(Trigger::default());
    let (stores, owned) = watch::start(&client, SYSTEM, trigger.clone(), false);
    stores.wait_ready().await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portcullis-operator".into(),
            instance: Some(identity.into()),
        },
    );
    let events = EventSink::spawn(recorder, metrics.clone());
    let reconciler = Reconciler::new(
        client.clone(),
        SYSTEM,
        stores.clone(),
        owned,
        Tenancy::default(),
        metrics.clone(),
        trigger.clone(),
    );
    let elector = Elector::new(
        client.clone(),
        LeaderConfig {
            lease_duration: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
            ..LeaderConfig::new(SYSTEM, identity)
        },
    );
    let leadership = Leadership {
        client,
        stores,
        metrics: metrics.clone(),
        events,
        trigger,
        elector: Some(Arc::new(elector)),
        proxy_service: (SYSTEM.into(), "portcullis-proxy".into()),
        debounce: Duration::from_millis(50),
        resync: Duration::from_secs(5),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(leadership.run(reconciler, async {
        let _ = stopped.await;
    }));
    Replica {
        identity,
        metrics,
        stop: Some(stop),
        task,
    }
}

fn lease_holder(cluster: &Cluster) -> Option<String> {
    let lease = cluster.get("lease", SYSTEM, LEASE_NAME)?;
    lease["spec"]["holderIdentity"].as_str().map(String::from)
}

/// Waits until exactly one replica leads and the Lease names it; returns its index.
fn one_leader(cluster: &Cluster, replicas: &[&Replica]) -> usize {
    wait_for("exactly one leader, named by the lease", TIMEOUT, || {
        let leading: Vec<usize> = (0..replicas.len())
            .filter(|&i| replicas[i].leads())
            .collect();
        let [index] = leading[..] else { return None };
        (lease_holder(cluster).as_deref() == Some(replicas[index].identity)).then_some(index)
    })
}

#[test]
fn leadership_terms_on_a_real_lease() {
    let Some(cluster) = Cluster::start("leadership") else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let kubeconfig = cluster.kubeconfig("operator");
    let mut a = runtime.block_on(start_replica(&kubeconfig, "replica-a"));
    let mut b = runtime.block_on(start_replica(&kubeconfig, "replica-b"));

    // One leads, and its term runs the reconcile loop (the config is published) and the
    // status writer (a route gets its status).
    one_leader(&cluster, &[&a, &b]);
    wait_for("the config published", TIMEOUT, || {
        let out = cluster.kubectl(
            &[
                "get",
                "configmaps",
                "-n",
                SYSTEM,
                "-l",
                CONFIG_LABEL,
                "-o",
                "name",
            ],
            None,
        );
        (!out.stdout.is_empty()).then_some(())
    });
    cluster
        .apply(
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: users, namespace: shop}
spec:
  paths: [{value: /users}]
  upstream: {targets: [{url: "http://users:8080"}]}
"#,
        )
        .unwrap();
    cluster.wait_condition("apiroute", "shop", "users", "Accepted", "True", TIMEOUT);

    // Someone else takes the lease: the leader notices at its next renewal, steps down,
    // and both compete again; one of them leads once the intruder's lease expires.
    let renewed = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let patch = serde_json::json!({
        "spec": {"holderIdentity": "intruder", "renewTime": renewed, "leaseDurationSeconds": 3}
    })
    .to_string();
    let out = cluster.kubectl(
        &[
            "patch", "lease", LEASE_NAME, "-n", SYSTEM, "--type", "merge", "-p", &patch,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("both replicas stepped down", TIMEOUT, || {
        (!a.leads() && !b.leads()).then_some(())
    });
    let leader = one_leader(&cluster, &[&a, &b]);

    // The leader shuts down: it releases the lease and its task ends; the other takes over.
    let (stopping, other) = if leader == 0 {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    stopping.stop.take().unwrap().send(()).unwrap();
    wait_for("the stopped replica's task to end", TIMEOUT, || {
        stopping.task.is_finished().then_some(())
    });
    wait_for("the other replica leads", TIMEOUT, || {
        (other.leads() && lease_holder(&cluster).as_deref() == Some(other.identity)).then_some(())
    });
    assert!(!stopping.leads());

    // The last one gives the lease up too: nobody holds it.
    let last = if leader == 0 { &mut b } else { &mut a };
    last.stop.take().unwrap().send(()).unwrap();
    wait_for("the last replica's task to end", TIMEOUT, || {
        last.task.is_finished().then_some(())
    });
    assert_eq!(lease_holder(&cluster), None);
    runtime.shutdown_timeout(Duration::from_secs(5));
}
