//! Objects decoded one by one, so that one undecodable object cannot stop the operator.
//!
//! A typed watch decodes a whole list response at once: one ApiRoute with a value its Rust
//! type cannot hold (`weight: 4294967296`) or a JSON Schema nested past serde_json's
//! recursion limit failed the initial list after every restart, so no cache synced and
//! nothing was compiled or published for anyone. Here the list is read with each item kept
//! as raw JSON ([`Lenient`]), decoded on its own; an item that does not decode is kept out
//! of the cache and put in [`Quarantine`], from where the reconciler gives it
//! `Accepted=False` (reason `Undecodable`) with a raw status patch that needs no decoding.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::trigger::Trigger;

/// An object as listed or watched: its metadata always, the typed object if it decodes.
#[derive(Debug, Clone)]
pub struct Lenient<K> {
    pub metadata: ObjectMeta,
    pub object: Result<K, String>,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Raw JSON is skipped over without recursion, whatever its depth.
        let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(deserializer)?;
        #[derive(Deserialize)]
        struct MetaOnly {
            #[serde(default)]
            metadata: ObjectMeta,
        }
        let meta: MetaOnly = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        let object = serde_json::from_str::<K>(raw.get()).map_err(|e| e.to_string());
        Ok(Lenient {
            metadata: meta.metadata,
            object,
        })
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One object that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poisoned {
    pub kind: &'static str,
    /// The URL path of the object (for the status patch).
    pub path: String,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub error: String,
}

type Entries = BTreeMap<(String, String, String), Poisoned>;

/// Undecodable objects by (kind, namespace, name).
#[derive(Debug, Default, Clone)]
pub struct Quarantine {
    inner: Arc<Mutex<Entries>>,
    /// Woken on every change: the reconciler writes the statuses.
    trigger: Arc<Trigger>,
}

impl Quarantine {
    pub fn new(trigger: Arc<Trigger>) -> Self {
        Quarantine {
            inner: Default::default(),
            trigger,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn entries(&self) -> Vec<Poisoned> {
        self.lock().values().cloned().collect()
    }

    fn insert(&self, poisoned: Poisoned) {
        let key = (
            poisoned.kind.to_string(),
            poisoned.namespace.clone(),
            poisoned.name.clone(),
        );
        let changed = self.lock().insert(key, poisoned.clone()) != Some(poisoned);
        if changed {
            self.trigger.inputs_changed();
        }
    }

    fn remove(&self, kind: &str, namespace: &str, name: &str) {
        self.lock()
            .remove(&(kind.to_string(), namespace.to_string(), name.to_string()));
    }

    /// Forgets the objects of `kind` that a relist no longer shows.
    fn retain_listed(&self, kind: &str, listed: &BTreeSet<(String, String)>) {
        self.lock().retain(|(k, namespace, name), _| {
            k != kind || listed.contains(&(namespace.clone(), name.clone()))
        });
    }
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Turns a watch of [`Lenient`] objects into a watch of the decodable ones, recording the
/// others in `quarantine`. `store` is the reflector cache the result feeds: an object that
/// stops decoding is removed from it (its last good version must not stay in force).
pub fn decoded<K>(
    events: impl Stream<Item = watcher::Result<Event<Lenient<K>>>> + Send + 'static,
    store: Store<K>,
    quarantine: Quarantine,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind: &'static str = match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(kind) => Box::leak(kind.into_boxed_str()),
    };
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    events.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(Event::Init) => {
                listed.clear();
                Some(Ok(Event::Init))
            }
            Ok(Event::InitDone) => {
                quarantine.retain_listed(kind, &listed);
                listed.clear();
                Some(Ok(Event::InitDone))
            }
            Ok(Event::InitApply(object)) => {
                listed.insert(key_of(&object.metadata));
                // A relist replaces the cache: a poisoned object simply is not in it.
                match apply(object, kind, &store, &quarantine) {
                    Applied::Decoded(object) => Some(Ok(Event::InitApply(object))),
                    Applied::Poisoned { .. } => None,
                }
            }
            Ok(Event::Apply(object)) => match apply(object, kind, &store, &quarantine) {
                Applied::Decoded(object) => Some(Ok(Event::Apply(object))),
                // Its last good version must not stay in force.
                Applied::Poisoned { stale: Some(old) } => Some(Ok(Event::Delete(old))),
                Applied::Poisoned { stale: None } => None,
            },
            Ok(Event::Delete(object)) => {
                let (namespace, name) = key_of(&object.metadata);
                quarantine.remove(kind, &namespace, &name);
                match object.object {
                    Ok(object) => Some(Ok(Event::Delete(object))),
                    Err(_) => cached(&store, &namespace, &name).map(|o| Ok(Event::Delete(o))),
                }
            }
        };
        std::future::ready(out)
    })
}

fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let mut key = ObjectRef::new(name);
    if !namespace.is_empty() {
        key = key.within(namespace);
    }
    store.get(&key).map(|o| (*o).clone())
}

enum Applied<K> {
    Decoded(K),
    /// Quarantined; `stale` is the version the cache still holds, if any.
    Poisoned {
        stale: Option<K>,
    },
}

fn apply<K>(
    object: Lenient<K>,
    kind: &'static str,
    store: &Store<K>,
    quarantine: &Quarantine,
) -> Applied<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let (namespace, name) = key_of(&object.metadata);
    match object.object {
        Ok(decoded) => {
            quarantine.remove(kind, &namespace, &name);
            Applied::Decoded(decoded)
        }
        Err(error) => {
            let path = format!("{}/{}", K::url_path(&(), Some(&namespace)), name);
            quarantine.insert(Poisoned {
                kind,
                path,
                namespace: namespace.clone(),
                name: name.clone(),
                generation: object.metadata.generation,
                error,
            });
            Applied::Poisoned {
                stale: cached(store, &namespace, &name),
            }
        }
    }
}
