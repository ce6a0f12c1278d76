//! What one compile leaves for the next: the consumers' part of the config, reused while
//! the consumers and the Secrets they name are unchanged for the compiler.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use portcullis_crds::ConsumerCredential;

use super::consumer::{self, ConsumerSection};
use super::secrets::SecretIndex;
use super::snapshot::Snapshot;

/// What one compile leaves for the next: the consumers' part of the config (~80% of a
/// compile at 100,000 consumers), reused while the snapshot's consumers and the Secrets
/// they name are unchanged.
///
/// Unchanged objects are found by address first: kube's reflector stores keep the same
/// `Arc` for an object until it changes, objects behind an `Arc` are immutable, and the
/// cache holds its own references, so a remembered address cannot be reused by another
/// object. An object with a new `Arc` (a status write, a re-list) is then compared by what
/// the compiler reads of it: a consumer's spec, namespace, name, generation and creation
/// time; a Secret's data. The output is exactly `compile`'s either way.
#[derive(Debug, Default)]
pub struct CompileCache {
    consumers: Option<CachedConsumers>,
    pub(super) secret_half: Option<[u8; 32]>,
}

#[derive(Debug)]
struct CachedConsumers {
    /// By address.
    consumers: Vec<Arc<ConsumerCredential>>,
    /// Every Secret the consumers name (namespace, name), with the object found then. The
    /// others may change at will: in a cluster, unrelated Secrets (certificates, tokens)
    /// change all the time.
    referenced: Vec<(String, String, Option<Arc<Secret>>)>,
    section: Arc<ConsumerSection>,
    /// The budgets the section was compiled with.
    budgets: crate::tenancy::Budgets,
}

impl CompileCache {
    /// A digest of the last compiled config's Secret half (consumers and secrets): equal
    /// digests mean equal halves. Computed from the consumers' part's own digest, so the
    /// encoder can tell an unchanged half without serializing 100,000 consumers.
    pub fn secret_half_digest(&self) -> Option<[u8; 32]> {
        self.secret_half
    }

    /// True when the next compile of `snapshot` can reuse the consumers' part.
    pub fn holds_consumers_of(&self, snapshot: &Snapshot) -> bool {
        self.consumers.as_ref().is_some_and(|cached| {
            cached.budgets == snapshot.tenancy.budgets
                && cached.still_valid(
                    &by_address(&snapshot.consumers),
                    &SecretIndex::new(&snapshot.secrets),
                )
        })
    }

    pub(super) fn consumer_section(
        &mut self,
        snapshot: &Snapshot,
        secrets: &SecretIndex<'_>,
    ) -> Arc<ConsumerSection> {
        let consumers = by_address(&snapshot.consumers);
        if let Some(cached) = self
            .consumers
            .as_mut()
            .filter(|c| c.budgets == snapshot.tenancy.budgets && c.still_valid(&consumers, secrets))
        {
            // The new Arcs, so that the next check finds them by address (not by content).
            cached.consumers = consumers;
            for (namespace, name, then) in &mut cached.referenced {
                *then = secrets.object(namespace, name).cloned();
            }
            return cached.section.clone();
        }
        let section = Arc::new(consumer::compile_consumers(
            &super::kube_meta::sorted(&snapshot.consumers),
            secrets,
            &snapshot.tenancy.budgets,
        ));
        let referenced = consumer::referenced_secrets(&consumers)
            .into_iter()
            .map(|(namespace, name)| {
                let found = secrets.object(&namespace, &name).cloned();
                (namespace, name, found)
            })
            .collect();
        self.consumers = Some(CachedConsumers {
            consumers,
            referenced,
            section: section.clone(),
            budgets: snapshot.tenancy.budgets.clone(),
        });
        section
    }
}

impl CachedConsumers {
    fn still_valid(
        &self,
        consumers: &[Arc<ConsumerCredential>],
        secrets: &SecretIndex<'_>,
    ) -> bool {
        same_consumers(&self.consumers, consumers)
            && self.referenced.iter().all(|(namespace, name, then)| {
                match (secrets.object(namespace, name), then) {
                    (Some(now), Some(then)) => same_secret(now, then),
                    (None, None) => true,
                    _ => false,
                }
            })
    }
}

fn by_address<K>(objects: &[Arc<K>]) -> Vec<Arc<K>> {
    let mut objects = objects.to_vec();
    objects.sort_unstable_by_key(|o| Arc::as_ptr(o));
    objects
}

/// Both lists by address. The objects only one side holds must pair up, by namespace and
/// name, into objects the compiler cannot tell apart.
fn same_consumers(then: &[Arc<ConsumerCredential>], now: &[Arc<ConsumerCredential>]) -> bool {
    if then.len() != now.len() {
        return false;
    }
    let (mut only_then, mut only_now) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (then.iter().peekable(), now.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if Arc::ptr_eq(x, y) => {
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if Arc::as_ptr(x) < Arc::as_ptr(y) => only_then.extend(a.next()),
            (Some(_), Some(_)) | (None, Some(_)) => only_now.extend(b.next()),
            (Some(_), None) => only_then.extend(a.next()),
            (None, None) => break,
        }
    }
    if only_then.len() != only_now.len() {
        return false;
    }
    let mut by_name: HashMap<(Option<&str>, Option<&str>), &ConsumerCredential> = only_then
        .iter()
        .map(|c| {
            let meta = &c.metadata;
            ((meta.namespace.as_deref(), meta.name.as_deref()), &***c)
        })
        .collect();
    // Each earlier object pairs with at most one new one (removed when matched); with equal
    // counts, all of them pair up.
    by_name.len() == only_then.len()
        && only_now.iter().all(|now| {
            let key = (
                now.metadata.namespace.as_deref(),
                now.metadata.name.as_deref(),
            );
            by_name
                .remove(&key)
                .is_some_and(|then| same_for_the_compiler(then, now))
        })
}

/// What the consumer compile reads of an object: its spec and these metadata fields.
fn same_for_the_compiler(then: &ConsumerCredential, now: &ConsumerCredential) -> bool {
    let (a, b) = (&then.metadata, &now.metadata);
    a.namespace == b.namespace
        && a.name == b.name
        && a.generation == b.generation
        && a.creation_timestamp == b.creation_timestamp
        && then.spec == now.spec
}

/// What the compiler reads of a Secret: its values.
fn same_secret(now: &Arc<Secret>, then: &Arc<Secret>) -> bool {
    Arc::ptr_eq(now, then) || (now.data == then.data && now.string_data == then.string_data)
}
