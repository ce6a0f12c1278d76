//! Watches the config ConfigMaps and Secrets (by name) and loads complete configs.

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

/// How long the first config waits for the endpoint lists: until then, a Service target
/// would answer 503 for endpoints that merely are not listed yet.
const ENDPOINTS_SYNC_LIMIT: Duration = Duration::from_secs(10);

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

/// Objects of one kind, watched one name at a time (`portcullis-config`, `portcullis-config-1`,
/// …): a watch with the field selector `metadata.name=NAME` is the only kind of watch RBAC can
/// restrict to named objects, so the proxy's Role names exactly the shard objects
/// (`resourceNames`) and cannot read any other Secret or ConfigMap of its namespace. Shard 0 is
/// always watched; shard `i` from the moment an object's shard annotation says the config
/// has more than `i` shards (at most [`delivery::MAX_SHARDS`] watches; kept once started).
struct NamedWatches<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    stores: Vec<Store<K>>,
    what: &'static str,
}

type WatchEvents = futures_util::stream::BoxStream<'static, Option<(&'static str, watcher::Error)>>;

impl<K> NamedWatches<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn new(api: Api<K>, what: &'static str) -> Self {
        NamedWatches {
            api,
            stores: Vec::new(),
            what,
        }
    }

    /// Starts the watches of shards `stores.len()..count` into `events`.
    fn grow(&mut self, count: usize, events: &mut futures_util::stream::SelectAll<WatchEvents>) {
        let what = self.what;
        while self.stores.len() < count.min(delivery::MAX_SHARDS) {
            let name = delivery::object_name(self.stores.len());
            let (store, writer) = reflector::store::<K>();
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            events.push(
                watcher(self.api.clone(), config)
                    .backoff(RetryBackoff::default())
                    .reflect(writer)
                    .map(move |event| event.err().map(|e| (what, e)))
                    .boxed(),
            );
            self.stores.push(store);
        }
    }

    fn state(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(|s| s.state()).collect()
    }
}

/// The largest shard count the objects announce (their `INDEX/COUNT` annotation).
fn announced_count<K: kube::Resource>(objects: &[Arc<K>]) -> usize {
    objects
        .iter()
        .filter_map(|o| {
            o.meta()
                .annotations
                .as_ref()?
                .get(delivery::SHARD_ANNOTATION)
        })
        .filter_map(|a| Shard::parse_annotation(a).ok())
        .map(|(_, count)| count)
        .max()
        .unwrap_or(1)
}

pub(super) async fn run(
    client: kube::Client,
    namespace: String,
    key_secret: Option<String>,
    handle: ConfigHandle,
    swapped: Arc<Notify>,
) {
    let mut cms =
        NamedWatches::<ConfigMap>::new(Api::namespaced(client.clone(), &namespace), "ConfigMaps");
    let mut secrets =
        NamedWatches::<Secret>::new(Api::namespaced(client.clone(), &namespace), "Secrets");
    let mut events = futures_util::stream::SelectAll::<WatchEvents>::new();
    cms.grow(1, &mut events);
    secrets.grow(1, &mut events);
    // The signing key, watched by name like the shards (the proxy's Role names it too): a
    // proxy that starts before the operator created it loads the first config as soon as
    // both are there.
    let key_store = key_secret.as_ref().map(|name| {
        let (store, writer) = reflector::store::<Secret>();
        events.push(
            watcher(
                Api::<Secret>::namespaced(client, &namespace),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .backoff(RetryBackoff::default())
            .reflect(writer)
            .map(|event| event.err().map(|e| ("the config key Secret", e)))
            .boxed(),
        );
        store
    });
    let mut last: Option<Fingerprint> = None;
    tracing::info!(%namespace, name = delivery::OBJECT_NAME, "watching the config ConfigMaps and Secrets");
    while let Some(event) = events.next().await {
        if let Some((what, error)) = event {
            // The watcher retries by itself; serving goes on with the loaded config.
            tracing::warn!(%namespace, error = %error, "watching {what} failed; retrying");
            continue;
        }
        let (cm_state, secret_state) = (cms.state(), secrets.state());
        cms.grow(announced_count(&cm_state), &mut events);
        secrets.grow(announced_count(&secret_state), &mut events);
        reconcile(
            cm_state,
            secret_state,
            key_store.as_ref(),
            &handle,
            &swapped,
            &mut last,
        )
        .await;
    }
}

/// What the key Secret holds: `Some(None)` while it is missing (nothing can load then).
fn signing_key(key_store: Option<&Store<Secret>>) -> Option<Option<Arc<[u8]>>> {
    let store = key_store?;
    Some(store.state().first().and_then(|secret| {
        let data = secret.data.as_ref()?.get(delivery::KEY_SECRET_KEY)?;
        (!data.0.is_empty()).then(|| Arc::from(data.0.as_slice()))
    }))
}

async fn reconcile(
    cms: Vec<Arc<ConfigMap>>,
    secrets: Vec<Arc<Secret>>,
    key_store: Option<&Store<Secret>>,
    handle: &ConfigHandle,
    swapped: &Notify,
    last: &mut Option<Fingerprint>,
) {
    let keys = key_store.map(Store::state).unwrap_or_default();
    let mut fp = fingerprint(&cms, &secrets);
    fp.extend(keys.iter().map(|k| {
        (
            "KeySecret",
            k.name_any(),
            k.resource_version().unwrap_or_default(),
        )
    }));
    if last.as_ref() == Some(&fp) {
        return;
    }
    *last = Some(fp);
    let key = match signing_key(key_store) {
        None => Verification::Unsigned,
        Some(Some(key)) => Verification::Key(key),
        Some(None) => {
            tracing::warn!("the config signing key Secret is missing or empty; no config can be loaded until the operator creates it");
            return;
        }
    };
    let registry = handle.endpoint_registry();
    if handle.loaded_generation().is_none()
        && registry.is_enabled()
        && !registry.wait_synced(ENDPOINTS_SYNC_LIMIT).await
    {
        tracing::warn!("Services and endpoints not listed yet; loading the config anyway");
    }
    if load_verified(cms, secrets, handle.clone(), key).await == Loaded::Swapped {
        swapped.notify_one();
    }
}

/// Whether configs must be signed, and with which key.
#[derive(Clone)]
pub enum Verification {
    Unsigned,
    Key(Arc<[u8]>),
}

/// What [`load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// A new config is being served.
    Swapped,
    /// The loaded config keeps serving (unchanged, incomplete, corrupt or refused).
    Kept,
}

/// Loads the config the labelled objects hold into `handle` if it is complete and new: what
/// the watch does after every event. Public so the scale benchmark measures exactly this
/// path without an API server.
///
/// Runs on a thread of its own that ends with the load, not on the async workers (decoding
/// and building a large config takes long enough to stall them) nor on tokio's blocking
/// pool: mimalloc keeps the pages a thread freed until that thread allocates again, and an
/// idle pool thread kept ~180 MiB of a 100k-consumer load's temporary data resident. A
/// thread that exits hands its free pages back to the OS.
pub async fn load(
    cms: Vec<Arc<ConfigMap>>,
    secrets: Vec<Arc<Secret>>,
    handle: ConfigHandle,
) -> Loaded {
    load_verified(cms, secrets, handle, Verification::Unsigned).await
}

/// [`load`], verifying the config's signature first when `verification` has a key.
pub async fn load_verified(
    cms: Vec<Arc<ConfigMap>>,
    secrets: Vec<Arc<Secret>>,
    handle: ConfigHandle,
    verification: Verification,
) -> Loaded {
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("config-load".into())
        .spawn(move || {
            let key = match &verification {
                Verification::Unsigned => None,
                Verification::Key(key) => Some(&**key),
            };
            let _ = done.send(load_blocking(&cms, &secrets, &handle, key));
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the config load thread");
        return Loaded::Kept;
    }
    let loaded = result.await.unwrap_or_else(|_| {
        tracing::error!("config load thread failed");
        Loaded::Kept
    });
    tokio::spawn(release_freed_memory());
    loaded
}

/// How long mimalloc waits before returning freed pages to the OS (its `purge_delay`
/// default), plus a margin.
const ALLOCATOR_PURGE_DELAY: Duration = Duration::from_millis(1500);

/// Lets the allocator return what the load freed. mimalloc (v3) purges freed pages only
/// once they have been free for its purge delay, and only when some thread frees a page
/// after that; a proxy with little traffic may not do so for a long time, and the scale
/// benchmark's idle proxy kept ~180 MiB of a 100k-consumer load's temporary data resident.
/// Freeing one large block (a page of its own) after the delay runs that purge. A no-op for
/// other allocators.
async fn release_freed_memory() {
    tokio::time::sleep(ALLOCATOR_PURGE_DELAY).await;
    drop(std::hint::black_box(Vec::<u8>::with_capacity(8 << 20)));
}

fn load_blocking(
    cms: &[Arc<ConfigMap>],
    secrets: &[Arc<Secret>],
    handle: &ConfigHandle,
    key: Option<&[u8]>,
) -> Loaded {
    let config_shards = shards(cms, assemble::configmap_shard);
    let secret_shards = shards(secrets, assemble::secret_shard);
    let loaded = handle.loaded_generation();
    let loaded_secret = handle.loaded_secret_content();
    let decision = assemble::decide_signed(
        &config_shards,
        &secret_shards,
        loaded.as_deref(),
        loaded_secret.as_deref(),
        key,
    );
    let decoded = match decision {
        Decision::Load(decoded) => decoded,
        Decision::Unchanged => return Loaded::Kept,
        Decision::Waiting(reason) => {
            tracing::debug!(%reason, loaded = ?loaded, "config halves not complete yet; keeping the loaded config");
            return Loaded::Kept;
        }
        Decision::Corrupt(reason) => {
            handle.reload_failed("delivery");
            tracing::warn!(%reason, loaded = ?loaded, "config objects cannot be decoded; keeping the last good config");
            return Loaded::Kept;
        }
    };
    // The raw shards are copies of what the watch caches: free them before building.
    drop((config_shards, secret_shards));
    let (generation, routes) = (
        decoded.config.generation.clone(),
        decoded.config.routes.len(),
    );
    let secret_half = if decoded.secret.is_some() {
        "decoded"
    } else {
        "unchanged"
    };
    match handle.swap_delivered(*decoded) {
        Ok(()) => {
            tracing::info!(%generation, routes, secret_half, "config loaded from the cluster");
            Loaded::Swapped
        }
        Err(error) => {
            tracing::warn!(%generation, %error, "config cannot be loaded; keeping the last good config");
            Loaded::Kept
        }
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
                tracing::warn!(%error, "ignoring a config object that is not a valid shard");
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
