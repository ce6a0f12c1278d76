//! Listeners and connections: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, header-read
//! and idle timeouts, a header size limit (431 on HTTP/1), and graceful shutdown: stop
//! accepting, let in-flight requests finish (bounded by the drain timeout), then return.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use portcullis_compiler::delivery::Decoded;
use portcullis_compiler::report;
use portcullis_compiler::GatewayConfig;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin;
use crate::audit::{Audit, AuditSink};
use crate::body::{BoxError, ProxyBody};
use crate::config_store::{ConfigError, ConfigStore, RuntimeConfig};
use crate::connection_limits::{self, ConnectionLimits, ConnectionPermit};
use crate::counters::CounterRegistry;
use crate::metrics::Metrics;
use crate::monotonic::now_ms;
use crate::pipeline::{self, Shared};
use crate::upstream::ClientPool;

#[derive(Clone)]
pub struct ProxyOptions {
    pub listen: SocketAddr,
    /// `None` disables the admin listener.
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Upper bound on the request head (HTTP/1: read buffer; HTTP/2: header list size).
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
    pub audit: AuditSink,
    /// Concurrent connections over all clients (`None`: unlimited).
    pub max_connections: Option<usize>,
    /// Concurrent connections per client IP (`None`: unlimited).
    pub max_connections_per_ip: Option<usize>,
    /// Time source of the local rate-limit counters (tests inject one).
    pub rate_limit_clock: Option<Arc<dyn crate::ratelimit::clock::Clock>>,
    /// Local rate-limit counters each policy may hold (tests set a small one).
    pub rate_limit_counters_per_policy: usize,
    /// Clock, extra CA and JWKS timing for authentication.
    pub auth: crate::auth::AuthOptions,
    /// TLS listener (`--tls-listen`); `None` disables it.
    pub tls_listen: Option<SocketAddr>,
    /// Keep request header names that contain `_` (dropped by default).
    pub allow_underscores_in_headers: bool,
    /// Read timeout and minimum rate of request bodies.
    pub body_limits: crate::client_body::BodyLimits,
    /// Bytes of request bodies buffered for inspection across the process (503 past it).
    pub max_buffered_body_bytes: usize,
    /// Requests in flight across the process; past it, 503 at once (`None`: no cap).
    pub max_in_flight: Option<usize>,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// This replica's id in audit lines and decision records.
    pub replica_id: String,
    /// Lines the audit queue holds before lines are dropped.
    pub audit_queue: usize,
    /// Denials the decision buffer holds (0: no decision records).
    pub decision_capacity: usize,
    /// Share of allowed requests recorded in the decision buffer.
    pub decision_allowed_sample: f64,
    /// W3C trace context propagation and sampling of new traces.
    pub trace: crate::trace_context::TraceOptions,
    /// OTLP/HTTP traces endpoint (`http://host:4318/v1/traces`); `None`: no export.
    pub otlp_endpoint: Option<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            audit: AuditSink::Stdout,
            max_connections: None,
            max_connections_per_ip: None,
            rate_limit_clock: None,
            rate_limit_counters_per_policy:
                crate::ratelimit::local::DEFAULT_MAX_COUNTERS_PER_POLICY,
            auth: crate::auth::AuthOptions::default(),
            tls_listen: None,
            allow_underscores_in_headers: false,
            body_limits: crate::client_body::BodyLimits::default(),
            max_buffered_body_bytes: crate::client_body::DEFAULT_BUFFER_BUDGET,
            max_in_flight: None,
            http2_max_concurrent_streams: crate::overload::DEFAULT_HTTP2_MAX_STREAMS,
            replica_id: "local".into(),
            audit_queue: crate::audit::DEFAULT_QUEUE,
            decision_capacity: crate::decisions::DEFAULT_CAPACITY,
            decision_allowed_sample: crate::decisions::DEFAULT_ALLOWED_SAMPLE,
            trace: crate::trace_context::TraceOptions::default(),
            otlp_endpoint: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthRuntimeError),
    #[error("cannot open the audit file: {0}")]
    Audit(std::io::Error),
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpConfigError),
}

pub struct ProxyServer;

impl ProxyServer {
    /// Binds the listeners and serves `initial`. Must run inside a tokio runtime.
    pub async fn start(
        options: ProxyOptions,
        initial: GatewayConfig,
    ) -> Result<RunningProxy, StartError> {
        Self::start_inner(options, Some(initial)).await
    }

    /// Serves 404s and reports not ready until the first [`RunningProxy::swap_config`].
    pub async fn start_unloaded(options: ProxyOptions) -> Result<RunningProxy, StartError> {
        Self::start_inner(options, None).await
    }

    async fn start_inner(
        options: ProxyOptions,
        initial: Option<GatewayConfig>,
    ) -> Result<RunningProxy, StartError> {
        let clients = ClientPool::new(crate::auth::AuthRuntime::new(&options.auth)?);
        let rate_limit_backends = crate::ratelimit::Backends::with_capacity(
            options.rate_limit_clock.clone(),
            options.rate_limit_counters_per_policy,
        );
        let counters = CounterRegistry::default();
        let loaded = initial.is_some();
        let metrics = Metrics::new();
        let runtime = RuntimeConfig::build(
            &initial.unwrap_or_else(GatewayConfig::empty),
            &clients,
            &rate_limit_backends,
            &counters,
        )
        .inspect_err(|e| metrics.config_failed(e.kind()))?;
        if loaded {
            metrics.config_loaded(&runtime.generation);
        }
        // Binds and reports the bound address (port 0 becomes a real port).
        let bind = |addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            Ok::<_, StartError>((listener, bound))
        };
        let tls_listener = match options.tls_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let audit = Audit::new(
            options.audit.clone(),
            options.audit_queue,
            metrics.audit_counters(),
        )
        .map_err(StartError::Audit)?;
        let decisions = crate::decisions::DecisionLog::new(
            options.decision_capacity,
            options.decision_allowed_sample,
            metrics.decision_gauges(),
        );
        let spans = match &options.otlp_endpoint {
            Some(endpoint) => Some(crate::otlp::SpanExporter::start(
                endpoint,
                &options.replica_id,
                &metrics,
            )?),
            None => None,
        };
        let tracker = Arc::new(ConnTracker::new(metrics.open_connections.clone()));
        let shared = Arc::new(Shared {
            decisions,
            trace: options.trace,
            replica: options.replica_id.as_str().into(),
            spans,
            store: ConfigStore::new(runtime, loaded),
            counters,
            metrics,
            audit,
            trusted_proxies: options.trusted_proxies.clone(),
            clients,
            rate_limit_backends,
            https_port: tls_listener.as_ref().map(|(_, a)| a.port()),
            allow_underscores_in_headers: options.allow_underscores_in_headers,
            body_limits: options.body_limits,
            body_budget: crate::client_body::BufferBudget::new(options.max_buffered_body_bytes),
            in_flight: crate::overload::InFlightLimit::new(options.max_in_flight),
        });
        let (listener, local_addr) = bind(options.listen).await?;
        let admin = match options.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            Arc::new(options.clone()),
            shutdown_rx.clone(),
            tracker.clone(),
            false,
        )));
        let tls_addr = match tls_listener {
            Some((listener, addr)) => {
                tasks.push(tokio::spawn(accept_loop(
                    listener,
                    shared.clone(),
                    Arc::new(options.clone()),
                    shutdown_rx.clone(),
                    tracker.clone(),
                    true,
                )));
                Some(addr)
            }
            None => None,
        };
        let admin_addr = match admin {
            Some((listener, addr)) => {
                tasks.push(tokio::spawn(admin::serve(
                    listener,
                    shared.clone(),
                    shutdown_rx,
                )));
                Some(addr)
            }
            None => None,
        };
        tracing::info!(listen = %local_addr, tls = ?tls_addr, admin = ?admin_addr, "proxy listening");
        Ok(RunningProxy {
            local_addr,
            tls_addr,
            admin_addr,
            shared,
            shutdown_tx,
            tasks,
            tracker,
            drain_timeout: options.drain_timeout,
        })
    }
}

pub struct RunningProxy {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tracker: Arc<ConnTracker>,
    drain_timeout: Duration,
}

impl RunningProxy {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The TLS listener's address, when `tls_listen` was set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Compiles and atomically publishes a new config; on error the current one stays.
    pub fn swap_config(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let runtime = RuntimeConfig::build(
            config,
            &self.shared.clients,
            &self.shared.rate_limit_backends,
            &self.shared.counters,
        )
        .inspect_err(|e| self.shared.metrics.config_failed(e.kind()))?;
        self.shared.metrics.config_loaded(&runtime.generation);
        self.shared.store.store(runtime);
        tracing::info!(generation = %config.generation, routes = config.routes.len(), "config loaded");
        Ok(())
    }

    pub fn generation(&self) -> String {
        self.shared.store.load().generation.clone()
    }

    /// Reopens the audit file (after log rotation; main calls it on SIGHUP).
    pub fn audit_reopener(&self) -> crate::audit::AuditReopener {
        self.shared.audit.reopener()
    }

    /// A cheap handle that can swap configs from another task (the file watcher).
    pub fn config_handle(&self) -> ConfigHandle {
        ConfigHandle {
            shared: self.shared.clone(),
        }
    }

    /// Stops accepting, waits for open connections to finish their in-flight requests
    /// (at most the drain timeout). Returns whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown_tx.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let drained = tokio::time::timeout(self.drain_timeout, self.tracker.wait_idle())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                open = self.tracker.count.load(Ordering::Relaxed),
                "drain timeout passed with connections still open"
            );
        }
        drained
    }
}

#[derive(Clone)]
pub struct ConfigHandle {
    shared: Arc<Shared>,
}

impl ConfigHandle {
    /// The Service endpoints the upstreams of every config resolve against.
    pub fn endpoint_registry(&self) -> Arc<crate::upstream::endpoints::EndpointRegistry> {
        self.shared.clients.endpoints.clone()
    }

    pub fn swap_config(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        self.swap_config_owned(config.clone())
    }

    /// Like [`ConfigHandle::swap_config`], consuming the config: nothing of it is copied, and
    /// what the runtime does not need is freed before the rest is built (cluster mode).
    pub fn swap_config_owned(&self, config: GatewayConfig) -> Result<(), ConfigError> {
        self.build_and_swap(|_, clients, rate_limit_backends, counters| {
            RuntimeConfig::build_owned(config, clients, rate_limit_backends, counters)
        })
    }

    /// Builds and swaps in a config delivered through the cluster, reusing the loaded
    /// config's consumers and keys when its Secret half was skipped as unchanged.
    pub fn swap_delivered(&self, decoded: Decoded) -> Result<(), ConfigError> {
        self.build_and_swap(|loaded, clients, rate_limit_backends, counters| {
            loaded.build_delivered(decoded, clients, rate_limit_backends, counters)
        })
    }

    /// Builds a runtime from the loaded one and the process-wide state, then swaps it in.
    fn build_and_swap(
        &self,
        build: impl FnOnce(
            &RuntimeConfig,
            &ClientPool,
            &crate::ratelimit::Backends,
            &CounterRegistry,
        ) -> Result<RuntimeConfig, ConfigError>,
    ) -> Result<(), ConfigError> {
        let shared = &self.shared;
        let runtime = build(
            &shared.store.load(),
            &shared.clients,
            &shared.rate_limit_backends,
            &shared.counters,
        )
        .inspect_err(|e| shared.metrics.config_failed(e.kind()))?;
        shared.metrics.config_loaded(&runtime.generation);
        shared.store.store(runtime);
        Ok(())
    }

    /// Counts a reload that failed before a config could be built (`reason`: a fixed word
    /// such as `manifests` or `delivery`).
    pub fn reload_failed(&self, reason: &'static str) {
        self.shared.metrics.config_failed(reason);
    }

    /// The content digest of the loaded config's delivered Secret half, if any.
    pub fn loaded_secret_content(&self) -> Option<String> {
        self.shared
            .store
            .load()
            .secret_content()
            .map(str::to_string)
    }

    pub fn generation(&self) -> String {
        self.shared.store.load().generation.clone()
    }

    /// The generation of the loaded config; `None` before the first load.
    pub fn loaded_generation(&self) -> Option<String> {
        self.shared
            .store
            .is_loaded()
            .then(|| self.shared.store.load().generation.clone())
    }

    /// Per-route counters of routes that saw traffic since the process started.
    pub fn route_counters(&self) -> BTreeMap<String, report::RouteCounters> {
        self.shared.counters.snapshot()
    }
}

/// Counts open connections so shutdown can wait for them (and `api_connections_open`).
struct ConnTracker {
    count: AtomicUsize,
    idle: Notify,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

struct ConnGuard(Arc<ConnTracker>);

impl ConnTracker {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        ConnTracker {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
            gauge,
        }
    }

    fn enter(self: &Arc<Self>) -> ConnGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
        ConnGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.gauge.dec();
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn builder(options: &ProxyOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper timer for HTTP/1: hyper's header read timeout boxes, arms and drops a timer
    // for every request on a keep-alive connection (~5% of a proxied request's
    // instructions). `serve_connection` enforces the same limit with one timer per
    // connection.
    builder
        .http1()
        // hyper answers 431 when the head does not fit this buffer (minimum 8 KiB).
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    options: Arc<ProxyOptions>,
    mut shutdown: watch::Receiver<bool>,
    tracker: Arc<ConnTracker>,
    tls: bool,
) {
    let builder = Arc::new(builder(&options));
    let limits = ConnectionLimits::new(options.max_connections, options.max_connections_per_ip);
    // `X-Forwarded-Port` for every request of this listener: a static value costs no
    // reference counting per request (one leaked string per listener).
    let port = listener.local_addr().map_or(0, |a| a.port()).to_string();
    let local_port: &'static str = Box::leak(port.into_boxed_str());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // 1. connection limits, before reading anything.
        let permit = match limits.try_acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                tokio::spawn(connection_limits::refuse(stream, why));
                continue;
            }
        };
        let guard = tracker.enter();
        if tls {
            let (shared, builder, shutdown) = (shared.clone(), builder.clone(), shutdown.clone());
            let timeouts = Timeouts::from(&*options);
            let handshake_timeout = options.header_read_timeout;
            tokio::spawn(async move {
                match crate::tls::acceptor::accept(stream, &shared, handshake_timeout).await {
                    Ok((stream, info)) => {
                        let accepted = AcceptedConnection {
                            peer,
                            local_port,
                            tls: Some(Arc::new(info)),
                            _held: (guard, permit),
                        };
                        serve_connection(stream, accepted, shared, builder, timeouts, shutdown)
                            .await
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                }
            });
            continue;
        }
        let accepted = AcceptedConnection {
            peer,
            local_port,
            tls: None,
            _held: (guard, permit),
        };
        tokio::spawn(serve_connection(
            stream,
            accepted,
            shared.clone(),
            builder.clone(),
            Timeouts::from(&*options),
            shutdown.clone(),
        ));
    }
}

/// Per-connection activity, for the idle and header read timeouts.
#[derive(Default)]
struct Activity {
    /// Requests whose response has not been sent to its end.
    in_flight: AtomicUsize,
    /// When the last response ended (or the connection opened).
    last_ms: AtomicU64,
    /// The connection speaks HTTP/2 (seen on its first request).
    http2: AtomicBool,
}

/// Held from a request's head until its response body has been sent (or dropped).
struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body, keeping its request active until it is sent.
struct TrackedBody {
    inner: ProxyBody,
    _active: ActiveRequest,
    _admitted: Option<crate::overload::InFlightPermit>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    /// HTTP/1: the longest wait for a complete request head, counted from the end of the
    /// previous response (or the connection's start), as hyper's header read timeout is.
    header_read: Duration,
    /// Any protocol: the longest time without a request in flight.
    idle: Duration,
}

impl From<&ProxyOptions> for Timeouts {
    fn from(options: &ProxyOptions) -> Self {
        Timeouts {
            header_read: options.header_read_timeout,
            idle: options.idle_timeout,
        }
    }
}

/// What the listener knows about one connection it accepted and admitted.
struct AcceptedConnection {
    peer: SocketAddr,
    /// The listener's port, as `X-Forwarded-Port` gives it.
    local_port: &'static str,
    /// The handshake's outcome on the TLS listener.
    tls: Option<Arc<crate::tls::ConnectionTls>>,
    /// Held until the connection ends: its place in the tracker and the connection limits.
    _held: (ConnGuard, ConnectionPermit),
}

async fn serve_connection<S>(
    stream: S,
    accepted: AcceptedConnection,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let AcceptedConnection {
        peer,
        local_port,
        tls,
        _held,
    } = accepted;
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(now_ms()),
        http2: AtomicBool::new(false),
    });
    let service_activity = activity.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let shared = shared.clone();
        if let Some(tls) = &tls {
            request.extensions_mut().insert(tls.clone());
        }
        if request.version() == http::Version::HTTP_2 {
            service_activity.http2.store(true, Ordering::Relaxed);
        }
        service_activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let active = ActiveRequest(service_activity.clone());
        async move {
            // Shed before any work: the permit lives until the response body is sent.
            let Some(admitted) = shared.in_flight.try_admit() else {
                let request_id = crate::request_id::assign(request.headers());
                shared.metrics.shed();
                return Ok(crate::overload::shed(&request_id).map(|inner| TrackedBody {
                    inner,
                    _active: active,
                    _admitted: None,
                }));
            };
            let port = http::HeaderValue::from_static(local_port);
            let response = pipeline::handle(&shared, peer, &port, request).await;
            Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                inner,
                _active: active,
                _admitted: Some(admitted),
            }))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let tick = (timeouts.idle.min(timeouts.header_read) / 2).max(Duration::from_millis(50));
    let idle_ms = timeouts.idle.as_millis() as u64;
    let header_ms = timeouts.header_read.as_millis() as u64;
    let mut closing = false;
    // Set when the connection was asked to close for being quiet too long.
    let mut timed_out = false;
    if *shutdown.borrow() {
        connection.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick), if !closing || timed_out => {
                let quiet_ms = now_ms().saturating_sub(activity.last_ms.load(Ordering::Relaxed));
                let limit_ms = if activity.http2.load(Ordering::Relaxed) {
                    idle_ms
                } else {
                    idle_ms.min(header_ms)
                };
                if activity.in_flight.load(Ordering::Relaxed) != 0 || quiet_ms < limit_ms {
                    continue;
                }
                if !timed_out {
                    // An idle keep-alive connection closes at once; a response still
                    // being flushed finishes first.
                    closing = true;
                    timed_out = true;
                    connection.as_mut().graceful_shutdown();
                } else if quiet_ms >= limit_ms.saturating_mul(2) {
                    // Still open a whole period later with nothing in flight: a head that
                    // never completes (slowloris) on a connection that served nothing yet.
                    tracing::debug!(%peer, "closing a connection that sent no complete head");
                    break;
                }
            }
        }
    }
}
