//! The live config: a [`GatewayConfig`] compiled into what the hot path needs (router index,
//! regexes, key digests, balancers, response header values), published through `ArcSwap`.
//! A request loads the current `Arc` once and keeps it, so a swap never changes the config
//! under an in-flight request, and readers never take a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_compiler::config::{RouteConfig, SecretConfig};
use portcullis_compiler::delivery::Decoded;
use portcullis_compiler::GatewayConfig;

use crate::auth::{CompiledAuth, KeyStore, KeyStoreError};
use crate::cors::{CompiledCors, CorsConfigError};
use crate::counters::{CounterRegistry, RouteCounters};
use crate::metrics::RouteMetrics;
use crate::ratelimit::{Backends, RateLimitConfigError, RateLimits};
use crate::response_headers::{CompiledResponseHeaders, ResponseHeaderError};
use crate::router::{Router, RouterError};
use crate::upstream::{ClientPool, TargetError, Upstream};
use crate::validate::{CompiledValidation, SchemaError};
use crate::waf::{Engines, RouteWaf, WafConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitConfigError),
    #[error("route {route}: {source}")]
    Target { route: String, source: TargetError },
    #[error("route {route}: {source}")]
    Schema { route: String, source: SchemaError },
    #[error("route {route}: {source}")]
    Cors {
        route: String,
        source: CorsConfigError,
    },
    #[error(transparent)]
    Waf(#[from] WafConfigError),
    #[error("route {route}: {source}")]
    ResponseHeaders {
        route: String,
        source: ResponseHeaderError,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    #[error("route {route}: {source}")]
    RequestHeaders {
        route: String,
        source: crate::request_headers::RequestHeaderError,
    },
    #[error("the Secret half was skipped as unchanged, but the loaded config has another one")]
    SecretHalfGone,
}

impl ConfigError {
    /// The failing part of the config, for `api_config_reloads_total{reason}`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Router(_) => "router",
            ConfigError::Keys(_) => "keys",
            ConfigError::RateLimit(_) => "rate_limit",
            ConfigError::Target { .. } => "upstream_target",
            ConfigError::Schema { .. } => "validation_schema",
            ConfigError::Cors { .. } => "cors",
            ConfigError::Waf(_) => "waf",
            ConfigError::ResponseHeaders { .. } => "response_headers",
            ConfigError::Tls(_) => "tls",
            ConfigError::RequestHeaders { .. } => "request_headers",
            ConfigError::SecretHalfGone => "secret_half",
        }
    }
}

pub struct CompiledRoute {
    pub config: RouteConfig,
    pub upstream: Upstream,
    // Boxed like the optional parts of `RouteConfig`: few routes have each, and a swap
    // holds two copies of every route.
    pub auth: Option<Box<CompiledAuth>>,
    pub validation: Option<Box<CompiledValidation>>,
    pub cors: Option<Box<CompiledCors>>,
    pub response_headers: CompiledResponseHeaders,
    pub metrics: RouteMetrics,
    /// Report counters; shared with every other config that has this route.
    pub counters: Arc<RouteCounters>,
    pub waf: Option<RouteWaf>,
    pub request_headers: Option<Box<crate::request_headers::CompiledRequestHeaders>>,
}

impl CompiledRoute {
    fn build(
        config: RouteConfig,
        pool: &ClientPool,
        counters: Arc<RouteCounters>,
        secrets: &SecretConfig,
        engines: &Engines,
    ) -> Result<Self, ConfigError> {
        let route = || config.id.clone();
        Ok(CompiledRoute {
            upstream: Upstream::new(&config.upstream, pool).map_err(|source| {
                ConfigError::Target {
                    route: route(),
                    source,
                }
            })?,
            auth: config.authentication.as_ref().map(|a| {
                Box::new(CompiledAuth::new(
                    a,
                    &config.id,
                    &config.namespace,
                    secrets,
                    &pool.auth,
                ))
            }),
            validation: config
                .request_validation
                .as_deref()
                .map(|v| CompiledValidation::new(v).map(Box::new))
                .transpose()
                .map_err(|source| ConfigError::Schema {
                    route: route(),
                    source,
                })?,
            cors: config
                .cors
                .as_deref()
                .map(|c| CompiledCors::new(c).map(Box::new))
                .transpose()
                .map_err(|source| ConfigError::Cors {
                    route: route(),
                    source,
                })?,
            response_headers: CompiledResponseHeaders::new(
                &config.response_headers,
                config.security_headers,
            )
            .map_err(|source| ConfigError::ResponseHeaders {
                route: route(),
                source,
            })?,
            metrics: RouteMetrics::new(&config.id),
            counters,
            waf: RouteWaf::new(&config.id, &config.waf_policies, engines)?,
            request_headers: config
                .request_headers
                .as_deref()
                .map(|h| crate::request_headers::CompiledRequestHeaders::new(h).map(Box::new))
                .transpose()
                .map_err(|source| ConfigError::RequestHeaders {
                    route: route(),
                    source,
                })?,
            // Last: every field above borrows it.
            config,
        })
    }
}

pub struct RuntimeConfig {
    pub generation: String,
    pub router: Router,
    pub routes: Vec<CompiledRoute>,
    pub keys: Arc<KeyStore>,
    pub rate_limits: RateLimits,
    /// Certificates and handshake policies for the TLS listener.
    pub tls: crate::tls::TlsRuntime,
    /// What came from a delivered Secret half, for the next load to reuse.
    secret_half: Option<SecretHalfKept>,
}

/// The runtime built from a delivered Secret half (consumers, their key digests and HMAC
/// keys, other secrets), kept while its content digest stays the same: at 100k consumers
/// the key index is most of a load's time and memory, and a route change does not touch it.
#[derive(Clone)]
struct SecretHalfKept {
    content: String,
    keys: Arc<KeyStore>,
    /// The secrets other than key digests and HMAC keys (which `keys` holds).
    secrets: Arc<SecretConfig>,
}

impl RuntimeConfig {
    pub fn build(
        config: &GatewayConfig,
        pool: &ClientPool,
        rate_limit_backends: &Backends,
        counters: &CounterRegistry,
    ) -> Result<Self, ConfigError> {
        Self::build_owned(config.clone(), pool, rate_limit_backends, counters)
    }

    /// Builds from a config it consumes: routes move into the runtime instead of being
    /// copied, and what the runtime does not keep (object list, consumers and key digests
    /// once indexed) is freed before the rest is built. At 100k consumers this keeps a
    /// reload's peak memory tens of MiB lower than building from a borrowed config.
    pub fn build_owned(
        config: GatewayConfig,
        pool: &ClientPool,
        rate_limit_backends: &Backends,
        counters: &CounterRegistry,
    ) -> Result<Self, ConfigError> {
        Self::build_parts(config, None, None, pool, rate_limit_backends, counters)
    }

    /// Builds from a config delivered through the cluster ([`portcullis_compiler::delivery::decode_reusing`]
    /// with this runtime's [`RuntimeConfig::secret_content`]). A skipped Secret half is
    /// taken from `self`: its key index is shared, not rebuilt.
    pub fn build_delivered(
        &self,
        decoded: Decoded,
        pool: &ClientPool,
        rate_limit_backends: &Backends,
        counters: &CounterRegistry,
    ) -> Result<Self, ConfigError> {
        let Decoded {
            mut config,
            secret,
            secret_content,
        } = decoded;
        match secret {
            Some(half) => {
                config.consumers = half.consumers;
                config.secrets = half.secrets;
                Self::build_parts(
                    config,
                    secret_content,
                    None,
                    pool,
                    rate_limit_backends,
                    counters,
                )
            }
            None => {
                let kept = self
                    .secret_half
                    .as_ref()
                    .filter(|kept| secret_content.as_ref() == Some(&kept.content))
                    .ok_or(ConfigError::SecretHalfGone)?;
                config.secrets = (*kept.secrets).clone();
                let content = Some(kept.content.clone());
                let keys = Some(kept.keys.clone());
                Self::build_parts(config, content, keys, pool, rate_limit_backends, counters)
            }
        }
    }

    /// The content digest of the delivered Secret half this runtime runs, if any.
    pub fn secret_content(&self) -> Option<&str> {
        self.secret_half.as_ref().map(|kept| kept.content.as_str())
    }

    fn build_parts(
        mut config: GatewayConfig,
        secret_content: Option<String>,
        keys: Option<Arc<KeyStore>>,
        pool: &ClientPool,
        rate_limit_backends: &Backends,
        counters: &CounterRegistry,
    ) -> Result<Self, ConfigError> {
        // Only the operator needs the object list (for status).
        drop(std::mem::take(&mut config.objects));
        let keys = match keys {
            Some(keys) => keys,
            None => Arc::new(KeyStore::build(&config.consumers, &config.secrets)?),
        };
        // The key index holds all of these now.
        drop(std::mem::take(&mut config.consumers));
        drop(std::mem::take(&mut config.secrets.api_keys));
        drop(std::mem::take(&mut config.secrets.jwt_secrets));
        let route_counters = counters.for_routes(config.routes.iter().map(|r| r.id.as_str()));
        let engines = crate::waf::build_engines(&config.waf_policies)?;
        let router = Router::build(&config.routes)?;
        let rate_limits = RateLimits::build(&config, rate_limit_backends)?;
        let tls = crate::tls::TlsRuntime::build(&config)?;
        // Sized exactly: collecting through a `Result` grows by doubling (16,384 slots of
        // ~1.6 KB for 10k routes), and a swap holds the old and the new routes at once.
        let mut routes = Vec::with_capacity(config.routes.len());
        for (r, c) in std::mem::take(&mut config.routes)
            .into_iter()
            .zip(route_counters)
        {
            routes.push(CompiledRoute::build(r, pool, c, &config.secrets, &engines)?);
        }
        let secret_half = secret_content.map(|content| SecretHalfKept {
            content,
            keys: keys.clone(),
            secrets: Arc::new(config.secrets),
        });
        Ok(RuntimeConfig {
            generation: config.generation,
            router,
            routes,
            keys,
            rate_limits,
            tls,
            secret_half,
        })
    }
}

pub struct ConfigStore {
    current: ArcSwap<RuntimeConfig>,
    loaded: AtomicBool,
}

impl ConfigStore {
    pub fn new(initial: RuntimeConfig, loaded: bool) -> Self {
        ConfigStore {
            current: ArcSwap::from_pointee(initial),
            loaded: AtomicBool::new(loaded),
        }
    }

    pub fn load(&self) -> Arc<RuntimeConfig> {
        self.current.load_full()
    }

    pub fn store(&self, config: RuntimeConfig) {
        self.current.store(Arc::new(config));
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use portcullis_compiler::config::{ApiKeyEntry, ConsumerConfig};
    use portcullis_compiler::{delivery, hash_api_key};

    use super::*;

    fn config(generation: &str, keys: &[&str]) -> GatewayConfig {
        let mut config = GatewayConfig {
            generation: generation.into(),
            ..GatewayConfig::default()
        };
        for (i, key) in keys.iter().enumerate() {
            config.consumers.push(ConsumerConfig {
                id: format!("ns/c{i}"),
                namespace: "ns".into(),
                username: format!("c{i}"),
                groups: vec!["gold".into()],
                ..ConsumerConfig::default()
            });
            config.secrets.api_keys.push(ApiKeyEntry {
                sha256: hash_api_key(key.as_bytes()),
                consumer: format!("ns/c{i}"),
            });
        }
        config
    }

    fn decoded(config: &GatewayConfig, loaded: Option<&RuntimeConfig>) -> Decoded {
        let encoded = delivery::encode(config).unwrap();
        let loaded = loaded.and_then(RuntimeConfig::secret_content);
        delivery::decode_reusing(&encoded.config_shards, &encoded.secret_shards, loaded).unwrap()
    }

    #[test]
    fn a_reload_with_the_same_secret_half_shares_the_key_index() {
        let pool = ClientPool::new(crate::auth::AuthRuntime::new(&Default::default()).unwrap());
        let rate_limit_backends = Backends::new(None);
        let counters = CounterRegistry::default();
        let empty = RuntimeConfig::build(
            &GatewayConfig::default(),
            &pool,
            &rate_limit_backends,
            &counters,
        )
        .unwrap();
        assert_eq!(empty.secret_content(), None);

        let g1 = config("g1", &["key-number-one", "key-number-two"]);
        let first = empty
            .build_delivered(
                decoded(&g1, Some(&empty)),
                &pool,
                &rate_limit_backends,
                &counters,
            )
            .unwrap();
        assert!(first.secret_content().is_some());
        assert_eq!(
            first.keys.lookup(
                &crate::auth::ConsumerScope::new("ns", &[]),
                b"key-number-two"
            ),
            Some(1)
        );

        // Same consumers and keys, new generation: the Secret half is skipped and the
        // index is the same one.
        let g2 = GatewayConfig {
            generation: "g2".into(),
            ..g1.clone()
        };
        let skipped = decoded(&g2, Some(&first));
        assert!(skipped.secret.is_none());
        let second = first
            .build_delivered(skipped, &pool, &rate_limit_backends, &counters)
            .unwrap();
        assert_eq!(second.generation, "g2");
        assert!(Arc::ptr_eq(&first.keys, &second.keys));
        assert_eq!(second.secret_content(), first.secret_content());

        // A key revoked: decoded and indexed again.
        let g3 = config("g3", &["key-number-one"]);
        let third = second
            .build_delivered(
                decoded(&g3, Some(&second)),
                &pool,
                &rate_limit_backends,
                &counters,
            )
            .unwrap();
        assert!(!Arc::ptr_eq(&second.keys, &third.keys));
        assert_eq!(
            third.keys.lookup(
                &crate::auth::ConsumerScope::new("ns", &[]),
                b"key-number-two"
            ),
            None
        );
        assert_eq!(
            third.keys.lookup(
                &crate::auth::ConsumerScope::new("ns", &[]),
                b"key-number-one"
            ),
            Some(0)
        );

        // A skipped half that the loaded runtime does not have is refused, not guessed.
        let stale = decoded(&g2, Some(&second));
        assert!(matches!(
            third.build_delivered(stale, &pool, &rate_limit_backends, &counters),
            Err(ConfigError::SecretHalfGone)
        ));
    }
}
