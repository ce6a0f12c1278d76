//! The live config: a [`GatewayConfig`] compiled into what the hot path needs (router index,
//! regexes, key digests, balancers, response header values), published through `ArcSwap`.
//! A request loads the current `Arc` once and keeps it, so a swap never changes the config
//! under an in-flight request, and readers never take a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_compiler::config::{RouteConfig, SecretConfig};
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
}

pub struct CompiledRoute {
    pub config: RouteConfig,
    pub upstream: Upstream,
    pub auth: Option<CompiledAuth>,
    pub validation: Option<CompiledValidation>,
    pub cors: Option<CompiledCors>,
    pub response_headers: CompiledResponseHeaders,
    pub metrics: RouteMetrics,
    /// Report counters; shared with every other config that has this route.
    pub counters: Arc<RouteCounters>,
    pub waf: Option<RouteWaf>,
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
            auth: config
                .authentication
                .as_ref()
                .map(|a| CompiledAuth::new(a, &config.id, &config.namespace, secrets, &pool.auth)),
            validation: config
                .request_validation
                .as_ref()
                .map(CompiledValidation::new)
                .transpose()
                .map_err(|source| ConfigError::Schema {
                    route: route(),
                    source,
                })?,
            cors: config
                .cors
                .as_ref()
                .map(CompiledCors::new)
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
            // Last: every field above borrows it.
            config,
        })
    }
}

pub struct RuntimeConfig {
    pub generation: String,
    pub router: Router,
    pub routes: Vec<CompiledRoute>,
    pub keys: KeyStore,
    pub rate_limits: RateLimits,
    /// Certificates and handshake policies for the TLS listener.
    pub tls: crate::tls::TlsRuntime,
}

impl RuntimeConfig {
    pub fn build(
        config: &GatewayConfig,
        pool: &ClientPool,
        limiter: &Backends,
        counters: &CounterRegistry,
    ) -> Result<Self, ConfigError> {
        Self::build_owned(config.clone(), pool, limiter, counters)
    }

    /// Builds from a config it consumes: routes move into the runtime instead of being
    /// copied, and what the runtime does not keep (object list, consumers and key digests
    /// once indexed) is freed before the rest is built. At 100k consumers this keeps a
    /// reload's peak memory tens of MiB lower than building from a borrowed config.
    pub fn build_owned(
        mut config: GatewayConfig,
        pool: &ClientPool,
        limiter: &Backends,
        counters: &CounterRegistry,
    ) -> Result<Self, ConfigError> {
        // Only the operator needs the object list (for status).
        drop(std::mem::take(&mut config.objects));
        let keys = KeyStore::build(&config.consumers, &config.secrets)?;
        drop(std::mem::take(&mut config.consumers));
        drop(std::mem::take(&mut config.secrets.api_keys));
        let route_counters = counters.for_routes(config.routes.iter().map(|r| r.id.as_str()));
        let engines = crate::waf::build_engines(&config.waf_policies)?;
        let router = Router::build(&config.routes)?;
        let rate_limits = RateLimits::build(&config, limiter)?;
        let tls = crate::tls::TlsRuntime::build(&config)?;
        let routes = std::mem::take(&mut config.routes)
            .into_iter()
            .zip(route_counters)
            .map(|(r, c)| CompiledRoute::build(r, pool, c, &config.secrets, &engines))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RuntimeConfig {
            generation: config.generation,
            router,
            routes,
            keys,
            rate_limits,
            tls,
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
