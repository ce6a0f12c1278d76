//! `compile_cached` gives exactly what `compile` gives, whatever changed since the compile
//! whose results it keeps: every golden input, put through a series of edits that replace,
//! reorder, add and remove objects the way the operator's stores do.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::ByteString;
use portcullis_compiler::{compile, compile_cached, manifests, CompileCache, Snapshot};

fn inputs() -> Vec<(String, Snapshot)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let mut inputs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let mut snapshot = Snapshot::default();
            let text = std::fs::read_to_string(&p).unwrap();
            manifests::parse_into(&mut snapshot, "scenario.yaml", &text);
            (p.display().to_string(), snapshot)
        })
        .collect();
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(inputs.iter().any(|(_, s)| s.consumers.len() > 1));
    inputs
}

/// Whether the consumers' part may be reused after an edit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reuse {
    Yes,
    No,
    /// No when a consumer references a Secret of the snapshot.
    UnlessSecretsReferenced,
}

/// An edit of the snapshot, and whether the consumers' part may be reused after it.
type Edit = (&'static str, fn(&mut Snapshot), Reuse);

/// Puts an edited copy in a new `Arc`, as a watch delivers a changed object: the cache
/// compares addresses first, so an edit in place would not model one.
fn replaced<T: Clone>(slot: &mut Arc<T>, edit: impl FnOnce(&mut T)) {
    let mut copy = (**slot).clone();
    edit(&mut copy);
    *slot = Arc::new(copy);
}

fn consumers_reference_a_secret(snapshot: &Snapshot) -> bool {
    snapshot.consumers.iter().any(|c| {
        let namespace = c.metadata.namespace.as_deref().unwrap_or("default");
        let names = c.spec.api_keys.iter().map(|k| k.secret_ref.name.clone());
        let jwt = c
            .spec
            .jwt
            .iter()
            .filter_map(|j| j.secret_ref.as_ref().map(|r| r.name.clone()));
        let mtls_ca = c
            .spec
            .mtls
            .iter()
            .filter_map(|m| m.ca_secret_ref.as_ref().map(|r| r.name.clone()));
        names.chain(jwt).chain(mtls_ca).any(|name| {
            snapshot.secrets.iter().any(|s| {
                s.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && s.metadata.name.as_deref() == Some(name.as_str())
            })
        })
    })
}

fn edits() -> Vec<Edit> {
    vec![
        ("nothing", |_| {}, Reuse::Yes),
        (
            "every list reversed",
            |s| {
                s.routes.reverse();
                s.consumers.reverse();
                s.secrets.reverse();
            },
            Reuse::Yes,
        ),
        (
            "a route replaced by a changed copy",
            |s| {
                if let Some(route) = s.routes.first_mut() {
                    replaced(route, |r| r.spec.hosts.push("changed.example.com".into()));
                }
            },
            Reuse::Yes,
        ),
        (
            "a route removed",
            |s| {
                s.routes.pop();
            },
            Reuse::Yes,
        ),
        (
            "a consumer replaced by an equal copy",
            |s| {
                if let Some(c) = s.consumers.first_mut() {
                    replaced(c, |_| {});
                }
            },
            Reuse::Yes,
        ),
        (
            "every consumer's status and resourceVersion change (a status write)",
            |s| {
                for c in &mut s.consumers {
                    replaced(c, |written| {
                        written.metadata.resource_version = Some("written".into());
                        written.status = Some(Default::default());
                    });
                }
            },
            Reuse::Yes,
        ),
        (
            "two consumers swap their specs",
            |s| {
                if s.consumers.len() > 1 {
                    let (mut a, mut b) = ((*s.consumers[0]).clone(), (*s.consumers[1]).clone());
                    std::mem::swap(&mut a.spec, &mut b.spec);
                    s.consumers[0] = Arc::new(a);
                    s.consumers[1] = Arc::new(b);
                } else {
                    replaced(&mut s.consumers[0], |c| {
                        c.spec.groups.push("swapped".into())
                    });
                }
            },
            Reuse::No,
        ),
        (
            "a consumer's generation changes, its spec does not",
            |s| {
                replaced(&mut s.consumers[0], |c| {
                    c.metadata.generation = Some(c.metadata.generation.unwrap_or(1) + 1)
                });
            },
            Reuse::No,
        ),
        (
            "every Secret replaced by an equal copy with new metadata",
            |s| {
                for secret in &mut s.secrets {
                    replaced(secret, |copy| {
                        copy.metadata.resource_version = Some("relabelled".into())
                    });
                }
            },
            Reuse::Yes,
        ),
        (
            "a consumer gets a group",
            |s| {
                if let Some(c) = s.consumers.last_mut() {
                    replaced(c, |changed| changed.spec.groups.push("added".into()));
                }
            },
            Reuse::No,
        ),
        (
            "a consumer is disabled",
            |s| {
                if let Some(c) = s.consumers.first_mut() {
                    replaced(c, |changed| changed.spec.disabled = Some(true));
                }
            },
            Reuse::No,
        ),
        (
            "a Secret no consumer names is added",
            |s| {
                let mut unrelated = k8s_openapi::api::core::v1::Secret::default();
                unrelated.metadata.name = Some("unrelated-to-consumers".into());
                unrelated.metadata.namespace = Some("default".into());
                s.secrets.push(Arc::new(unrelated));
            },
            Reuse::Yes,
        ),
        (
            "every Secret's values change",
            |s| {
                for secret in &mut s.secrets {
                    replaced(secret, |changed| {
                        for value in changed.data.iter_mut().flat_map(|d| d.values_mut()) {
                            *value = ByteString(b"a-completely-different-key-value".to_vec());
                        }
                        for value in changed.string_data.iter_mut().flat_map(|d| d.values_mut()) {
                            *value = "another-completely-different-value-of-32-bytes".into();
                        }
                    });
                }
            },
            Reuse::UnlessSecretsReferenced,
        ),
        (
            "a consumer removed",
            |s| {
                s.consumers.remove(0);
            },
            Reuse::No,
        ),
        (
            "every Secret removed",
            |s| s.secrets.clear(),
            Reuse::UnlessSecretsReferenced,
        ),
        (
            "a consumer comes back",
            |s| {
                let again = (*s.consumers[0]).clone();
                let mut renamed = again;
                renamed.metadata.name = Some("zz-added-again".into());
                s.consumers.push(Arc::new(renamed));
            },
            Reuse::No,
        ),
    ]
}

fn as_json(
    output: &(
        portcullis_compiler::GatewayConfig,
        Vec<portcullis_compiler::ObjectStatus>,
    ),
) -> String {
    serde_json::to_string(&serde_json::json!({"config": output.0, "statuses": output.1})).unwrap()
}

#[test]
fn cached_compiles_equal_full_compiles_through_a_series_of_edits() {
    for (name, mut snapshot) in inputs() {
        let mut cache = CompileCache::default();
        assert!(!cache.holds_consumers_of(&snapshot));
        assert_eq!(
            as_json(&compile_cached(&snapshot, &mut cache)),
            as_json(&compile(&snapshot)),
            "{name}: first compile"
        );
        for (edit, apply, reuse) in edits() {
            if snapshot.consumers.is_empty() {
                break;
            }
            let reusable = match reuse {
                Reuse::Yes => true,
                Reuse::No => false,
                Reuse::UnlessSecretsReferenced => !consumers_reference_a_secret(&snapshot),
            };
            apply(&mut snapshot);
            assert_eq!(
                cache.holds_consumers_of(&snapshot),
                reusable,
                "{name}: cache after {edit:?}"
            );
            assert_eq!(
                as_json(&compile_cached(&snapshot, &mut cache)),
                as_json(&compile(&snapshot)),
                "{name}: after {edit:?}"
            );
            assert!(
                cache.holds_consumers_of(&snapshot),
                "{name}: kept after {edit:?}"
            );
        }
    }
}

#[test]
fn a_changed_consumer_changes_the_generation_and_an_unchanged_one_does_not() {
    let (_, snapshot) = inputs()
        .into_iter()
        .find(|(_, s)| !s.consumers.is_empty())
        .unwrap();
    let mut cache = CompileCache::default();
    let first = compile_cached(&snapshot, &mut cache).0.generation;
    let mut copy = snapshot.clone();
    replaced(&mut copy.consumers[0], |_| {});
    assert!(cache.holds_consumers_of(&copy));
    assert_eq!(compile_cached(&copy, &mut cache).0.generation, first);
    replaced(&mut copy.consumers[0], |c| {
        c.spec.groups.push("another-group".into())
    });
    assert_ne!(compile_cached(&copy, &mut cache).0.generation, first);
}

/// The Secret half reused on the cache's digest is the one a fresh encode writes, and a
/// consumer change is never hidden by it.
#[test]
fn encoding_with_the_cache_digest_matches_a_fresh_encode() {
    use portcullis_compiler::delivery::{encode, encode_reusing};
    for (name, mut snapshot) in inputs() {
        if snapshot.consumers.is_empty() {
            continue;
        }
        let mut cache = CompileCache::default();
        let mut previous = None;
        for (edit, apply, _) in edits() {
            if snapshot.consumers.is_empty() {
                break;
            }
            apply(&mut snapshot);
            let (config, _) = compile_cached(&snapshot, &mut cache);
            let digest = cache.secret_half_digest();
            assert!(digest.is_some());
            let reused = encode_reusing(&config, previous.as_ref(), digest).unwrap();
            let fresh = encode(&config).unwrap();
            assert_eq!(
                reused.secret_content, fresh.secret_content,
                "{name}: {edit:?}"
            );
            assert_eq!(
                reused.secret_shards, fresh.secret_shards,
                "{name}: {edit:?}"
            );
            assert_eq!(
                reused.config_shards, fresh.config_shards,
                "{name}: {edit:?}"
            );
            previous = Some(reused);
        }
    }
}
