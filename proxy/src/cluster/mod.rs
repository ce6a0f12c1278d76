//! Cluster mode (`portcullis-proxy --kube`): the config comes from the ConfigMaps and Secrets
//! the operator writes ([`portcullis_compiler::delivery`]), read through a watch on the API
//! server rather than a mounted volume (kubelet's volume sync lags by up to a minute), and
//! the replica reports what it runs in a Lease ([`portcullis_compiler::report`]).
//!
//! Guarantees:
//! - a config is swapped in only when both halves are complete with one generation, and that
//!   generation is not the one already loaded; otherwise the last good config keeps serving
//!   ([`assemble::decide`]);
//! - readiness (`/readyz`) needs a loaded config: the server starts unloaded;
//! - the API server going away never stops serving: watches retry with a capped backoff and
//!   report failures are logged and retried at the next interval.
//!
//! RBAC the proxy needs, in its own namespace (the Helm chart's Role for the proxy
//! ServiceAccount): the config objects by name only, one name per possible shard
//! ([`portcullis_compiler::delivery::MAX_SHARDS`]; the loader watches each by name, which is
//! what lets RBAC name them), and the operator's config signing key, so no other Secret or
//! ConfigMap of the namespace is readable:
//!
//! ```yaml
//! rules:
//!   - apiGroups: [""]
//!     resources: [configmaps, secrets]
//!     resourceNames: [portcullis-config, portcullis-config-1, portcullis-config-2, portcullis-config-3,
//!       portcullis-config-4, portcullis-config-5, portcullis-config-6, portcullis-config-7,
//!       portcullis-config-8, portcullis-config-9, portcullis-config-10, portcullis-config-11,
//!       portcullis-config-12, portcullis-config-13, portcullis-config-14, portcullis-config-15]
//!     verbs: [get, list, watch]
//!   - apiGroups: [""]
//!     resources: [secrets]
//!     resourceNames: [portcullis-config-key]
//!     verbs: [get, list, watch]
//!   - apiGroups: [coordination.k8s.io]
//!     resources: [leases]
//!     verbs: [get, create, update, delete]
//! ```
//! (`delete` only lets a replica remove its report on graceful shutdown; without it the
//! Lease simply expires after three report intervals, 15 s by default.)
//!
//! To resolve `service:` targets to endpoints ([`endpoints`]; `--endpoints-source off`
//! needs none of it), read-only access cluster-wide (a ClusterRole):
//!
//! ```yaml
//! rules:
//!   - apiGroups: [""]
//!     resources: [services, endpoints]
//!     verbs: [list, watch]
//!   - apiGroups: [discovery.k8s.io]
//!     resources: [endpointslices]
//!     verbs: [list, watch]
//! ```

pub mod assemble;
pub mod endpoints;
mod loader;
pub use loader::{load, load_verified, Loaded, Verification};
mod reporter;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::server::ConfigHandle;

pub use reporter::{lease_name, pod_owner, replica_id};

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Namespace of the config objects and of the report Lease.
    pub namespace: String,
    /// Replica id: names the Lease (`portcullis-proxy-REPLICA`).
    pub replica: String,
    /// How often the report is renewed (it is also sent right after each config swap).
    pub report_interval: Duration,
    /// Where Service targets' endpoints come from ([`endpoints`]).
    pub endpoints: endpoints::Source,
    /// The Secret (in `namespace`) with the operator's config signing key: only configs
    /// signed with it load. `None` loads unsigned configs (tests of other behaviour only;
    /// the `--kube` command line always verifies).
    pub config_key_secret: Option<String>,
    /// Owner of the report Lease: the replica's Pod ([`pod_owner`]), so that the Lease goes
    /// with the Pod even when the replica cannot remove it itself (killed, or its RBAC
    /// already gone during `helm uninstall`).
    pub owner: Option<OwnerReference>,
}

/// The running watch and reporter tasks.
pub struct ClusterMode {
    loader: JoinHandle<()>,
    endpoints: Option<JoinHandle<()>>,
    reporter: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Starts watching the config objects into `handle` and reporting. Must run inside a tokio
/// runtime. Never fails: an unreachable or refusing API server only delays the first config.
pub fn start(client: kube::Client, handle: ConfigHandle, options: ClusterOptions) -> ClusterMode {
    // Installed here as well as by main: with exactly one provider compiled in rustls would
    // pick it anyway, but an explicit default keeps a second provider sneaking in through a
    // dependency from turning into a panic at the first TLS handshake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let swapped = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(false);
    // Enabled before the loader starts, so that the first config's Service targets already
    // resolve to endpoints.
    let endpoints = (options.endpoints != endpoints::Source::Off).then(|| {
        let registry = handle.endpoint_registry();
        registry.enable();
        tokio::spawn(endpoints::run(client.clone(), registry, options.endpoints))
    });
    let loader = tokio::spawn(loader::run(
        client.clone(),
        options.namespace.clone(),
        options.config_key_secret.clone(),
        handle.clone(),
        swapped.clone(),
    ));
    let reporter = tokio::spawn(reporter::run(client, options, handle, swapped, stop_rx));
    ClusterMode {
        loader,
        endpoints,
        reporter,
        stop,
    }
}

impl ClusterMode {
    /// Stops watching and removes this replica's report (best effort, bounded), so the
    /// operator stops counting the replica at once instead of after the Lease expires.
    pub async fn shutdown(mut self) {
        self.loader.abort();
        if let Some(endpoints) = &self.endpoints {
            endpoints.abort();
        }
        let _ = self.stop.send(true);
        let _ = (&mut self.reporter).await;
    }
}

impl Drop for ClusterMode {
    fn drop(&mut self) {
        // Dropped without shutdown (e.g. a test ending): do not leave tasks behind.
        self.loader.abort();
        if let Some(endpoints) = &self.endpoints {
            endpoints.abort();
        }
        let _ = self.stop.send(true);
    }
}
