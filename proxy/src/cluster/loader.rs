//! Watches the labelled ConfigMaps and Secrets and loads complete configs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use portcullis_compiler::delivery::{self, Shard};
use tokio::sync::Notify;

use super::assemble::{self, Decision};
use crate::server::ConfigHandle;

/// Watch retry delays: short at first so a restarted API server is picked up quickly, capped
/// low because one replica's watch is cheap for the API server (the operator's target is a
/// change programmed within 2 s, also after an outage).
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter, reset by the watcher after each successful event.
struct RetryBackoff {
    next: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: RETRY_MIN }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        // Jitter so that many replicas do not reconnect in lockstep after an outage.
        let jitter = rand::random_range(0.0..0.25);
        Some(base.mul_f64(1.0 + jitter))
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = RETRY_MIN;
    }
}

/// Identity of what was last looked at: kind, name and resourceVersion of every object.
/// The watch re-delivers unchanged objects (relists after reconnecting); this spares
/// decoding a large config again for nothing, and repeating the same warning.
type Fingerprint = Vec<(&'static str, String, String)>;

fn fingerprint(cms: &[Arc<ConfigMap>], secrets: &[Arc<Secret>]) -> Fingerprint {
    let mut fp: Fingerprint = cms
        .iter()
        .map(|o| {
            (
                "ConfigMap",
                o.name_any(),
                o.resource_version().unwrap_or_default(),
            )
        })
        .chain(secrets.iter().map(|o| {
            (
                "Secret",
                o.name_any(),
                o.resource_version().unwrap_or_default(),
            )
        }))
        .collect();
    fp.sort();
    fp
}

pub(super) async fn run(
    client: kube::Client,
    namespace: String,
    handle: ConfigHandle,
    swapped: Arc<Notify>,
) {
    let selector = format!("{}=true", delivery::CONFIG_LABEL);
    let config = || watcher::Config::default().labels(&selector);
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let (secret_store, secret_writer) = reflector::store::<Secret>();
    let cms = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        config(),
    )
    .backoff(RetryBackoff::default())
    .reflect(cm_writer)
    .map(|event| event.err().map(|e| ("ConfigMaps", e)));
    let secrets = watcher(Api::<Secret>::namespaced(client, &namespace), config())
        .backoff(RetryBackoff::default())
        .reflect(secret_writer)
        .map(|event| event.err().map(|e| ("Secrets", e)));
    let events = futures_util::stream::select(cms, secrets);
    tokio::pin!(events);
    let mut last: Option<Fingerprint> = None;
    tracing::info!(%namespace, %selector, "watching the config ConfigMaps and Secrets");
    while let Some(event) = events.next().await {
        if let Some((what, error)) = event {
            // The watcher retries by itself; serving goes on with the loaded config.
            tracing::warn!(%namespace, error = %error, "watching {what} failed; retrying");
            continue;
        }
        reconcile(&cm_store, &secret_store, &handle, &swapped, &mut last).await;
    }
}

async fn reconcile(
    cm_store: &Store<ConfigMap>,
    secret_store: &Store<Secret>,
    handle: &ConfigHandle,
    swapped: &Notify,
    last: &mut Option<Fingerprint>,
) {
    let cms = cm_store.state();
    let secrets = secret_store.state();
    let fp = fingerprint(&cms, &secrets);
    if last.as_ref() == Some(&fp) {
        return;
    }
    *last = Some(fp);
    let config_shards = shards(&cms, assemble::configmap_shard);
    let secret_shards = shards(&secrets, assemble::secret_shard);
    let handle = handle.clone();
    // Decoding and compiling a large config takes long enough to stall other tasks.
    let outcome = tokio::task::spawn_blocking(move || {
        let loaded = handle.loaded_generation();
        match assemble::decide(&config_shards, &secret_shards, loaded.as_deref()) {
            Decision::Load(config) => {
                let result = handle.swap_config(&config);
                Some((config, result))
            }
            Decision::Unchanged => None,
            Decision::Waiting(reason) => {
                tracing::debug!(%reason, loaded = ?loaded, "config halves not complete yet; keeping the loaded config");
                None
            }
            Decision::Corrupt(reason) => {
                tracing::warn!(%reason, loaded = ?loaded, "config objects cannot be decoded; keeping the last good config");
                None
            }
        }
    })
    .await;
    match outcome {
        Ok(Some((config, Ok(())))) => {
            tracing::info!(generation = %config.generation, routes = config.routes.len(), "config loaded from the cluster");
            swapped.notify_one();
        }
        Ok(Some((config, Err(error)))) => {
            tracing::warn!(generation = %config.generation, %error, "config cannot be loaded; keeping the last good config");
        }
        Ok(None) => {}
        Err(error) => tracing::error!(%error, "config load task failed"),
    }
}

fn shards<K>(
    objects: &[Arc<K>],
    shard: impl Fn(&K) -> Result<Shard, assemble::ShardError>,
) -> Vec<Shard> {
    objects
        .iter()
        .filter_map(|o| match shard(o) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "ignoring a labelled object that is not a valid config shard");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = RetryBackoff::default();
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        assert!(delays[0] >= RETRY_MIN && delays[0] < RETRY_MIN * 2);
        assert!(delays.iter().all(|d| *d <= RETRY_MAX.mul_f64(1.25)));
        assert!(delays[7] >= RETRY_MAX);
        b.reset();
        assert!(b.next().is_some_and(|d| d < RETRY_MIN * 2));
    }
}
