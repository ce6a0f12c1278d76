//! `portcullis-proxy`: standalone mode (`--manifests`), `--check`, cluster mode (`--kube`),
//! and `explain <request-id>` (why a request got its answer, from a replica's admin listener).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use portcullis_proxy::{cluster, standalone, AuditSink, ProxyOptions, ProxyServer};

// The request path allocates small, short-lived objects (header maps, futures, buffers);
// measured on the HTTP benchmark, glibc malloc/free took ~6% of the proxy's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-proxy",
    version,
    about = "Portcullis API gateway data plane"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Manifest files or directories (*.yaml, *.yml; directories are not recursed).
    #[arg(long, num_args = 1.., value_name = "DIR_OR_FILE")]
    manifests: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TLS listener: terminates TLS for routes with `spec.tls` (certificates chosen by SNI).
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
    /// Validate the manifests, print each object's conditions and exit.
    #[arg(long)]
    check: bool,
    /// Peers whose X-Forwarded-For is honoured (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    trusted_proxies: Vec<IpNet>,
    /// Cluster mode: load the config the operator writes, through the Kubernetes API
    /// (in-cluster credentials or $KUBECONFIG).
    #[arg(long, conflicts_with_all = ["manifests", "check"])]
    kube: bool,
    /// Namespace of the operator's config objects and of this replica's report Lease.
    #[arg(long, default_value = "portcullis-system")]
    namespace: String,
    /// Replica id for the report Lease, audit lines and decision records (default:
    /// $POD_NAME, else HOSTNAME-PID).
    #[arg(long)]
    replica_id: Option<String>,
    /// How often the replica reports its generation and counters (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    report_interval: Duration,
    /// Where `service:` targets find their pods (cluster mode): EndpointSlices, v1
    /// Endpoints, auto (slices where served), or off (dial the Service's DNS name).
    #[arg(long, value_enum, default_value = "auto")]
    endpoints_source: portcullis_proxy::cluster::endpoints::Source,
    /// Runtime worker threads (default: the cores this process may run on). With one, the
    /// proxy runs a single-threaded runtime.
    #[arg(long)]
    workers: Option<usize>,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Disable the audit log on stdout.
    #[arg(long)]
    no_audit: bool,
    /// Write the audit log to this file instead of stdout (appended; reopened on SIGHUP).
    #[arg(long, value_name = "PATH", conflicts_with = "no_audit")]
    audit_file: Option<PathBuf>,
    /// Cap on concurrent client connections (NGINX limit_conn); excess ones get a 503.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Cap on concurrent connections from one client IP; excess ones get a 503.
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,
    /// Keep request header names that contain `_` (by default they are dropped, as nginx
    /// does: CGI/WSGI servers would read `X_User_ID` as `X-User-ID`).
    #[arg(long)]
    allow_underscores_in_headers: bool,
    /// Longest wait for the next bytes of a request body (408 after it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// Minimum request body rate in bytes per second waited, after a 10 s grace (0: off).
    #[arg(long, default_value_t = portcullis_proxy::client_body::DEFAULT_MIN_BODY_RATE)]
    min_body_rate: u64,
    /// Bytes of request bodies held in memory for inspection across the process (JSON
    /// checks, the WAF); requests that would pass it get a 503.
    #[arg(long, default_value = "128Mi", value_parser = parse_size)]
    max_buffered_body: usize,
    /// Cap on requests in flight across the process; past it, 503 with Retry-After at once.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,
    /// Concurrent streams per HTTP/2 connection (with --max-connections-per-ip, it bounds
    /// one client's concurrency).
    #[arg(long, default_value_t = portcullis_proxy::overload::DEFAULT_HTTP2_MAX_STREAMS)]
    http2_max_streams: u32,
    /// Audit lines queued for the writer; when full, lines are dropped (allowed requests'
    /// first) and counted in api_audit_dropped_total, and requests never wait.
    #[arg(long, default_value_t = portcullis_proxy::audit::DEFAULT_QUEUE, value_name = "LINES")]
    audit_queue: usize,
    /// Denials kept for GET /decisions and `explain` (allowed requests: a quarter of it,
    /// sampled); 0 turns decision records off.
    #[arg(long, default_value_t = portcullis_proxy::decisions::DEFAULT_CAPACITY, value_name = "N")]
    decision_buffer: usize,
    /// Share of allowed requests recorded in the decision buffer (0 to 1).
    #[arg(long, default_value_t = portcullis_proxy::decisions::DEFAULT_ALLOWED_SAMPLE, value_name = "RATIO", value_parser = parse_ratio)]
    decision_sample_allowed: f64,
    /// Do not read or send W3C traceparent/tracestate (no trace ids in audit lines).
    #[arg(long)]
    no_trace_context: bool,
    /// Share of new traces (requests without a valid traceparent) marked sampled (0 to 1).
    /// A caller's sampled flag is always kept.
    #[arg(long, default_value_t = 0.0, value_name = "RATIO", value_parser = parse_ratio)]
    trace_sample_ratio: f64,
    /// Export spans of sampled traces to this OTLP/HTTP endpoint (protobuf), e.g.
    /// http://otel-collector:4318/v1/traces. Off by default.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explain why a request was allowed or denied, from the decision record kept by the
    /// replica that served it (its id is the `replica` field of the audit line).
    Explain {
        /// The request id (X-Request-ID of the response, `request_id` of the audit line).
        request_id: String,
        /// Admin listener of the replica that served the request.
        #[arg(long, default_value = "http://127.0.0.1:9901", value_name = "URL")]
        admin: String,
        /// Print the record as JSON instead of the explanation.
        #[arg(long)]
        json: bool,
    },
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

/// `explain`: exit 0 with the explanation, 1 when the record is not there or unreachable.
fn explain(request_id: &str, admin: &str, json: bool) -> ExitCode {
    match portcullis_proxy::explain::fetch(admin, request_id) {
        Ok(record) => {
            if json {
                println!("{record:#}");
            } else {
                print!("{}", portcullis_proxy::explain::render(&record));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis-proxy explain: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Explain {
        request_id,
        admin,
        json,
    }) = &args.command
    {
        return explain(request_id, admin, *json);
    }
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    portcullis_compiler::units::parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}

fn parse_size(text: &str) -> Result<usize, String> {
    portcullis_compiler::units::parse_size_bytes(text)
        .map_err(|e| e.to_string())
        .and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
}

fn proxy_options(args: &Args) -> ProxyOptions {
    ProxyOptions {
        listen: args.listen,
        admin_listen: Some(args.admin_listen),
        trusted_proxies: args.trusted_proxies.clone(),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        tls_listen: args.tls_listen,
        allow_underscores_in_headers: args.allow_underscores_in_headers,
        body_limits: portcullis_proxy::client_body::BodyLimits {
            read_timeout: args.body_read_timeout,
            min_rate: args.min_body_rate,
            ..Default::default()
        },
        max_buffered_body_bytes: args.max_buffered_body,
        max_in_flight: args.max_in_flight,
        http2_max_concurrent_streams: args.http2_max_streams,
        audit: if args.no_audit {
            AuditSink::Disabled
        } else if let Some(path) = &args.audit_file {
            AuditSink::File(path.clone())
        } else {
            AuditSink::Stdout
        },
        replica_id: cluster::replica_id(args.replica_id.as_deref()),
        audit_queue: args.audit_queue,
        decision_capacity: args.decision_buffer,
        decision_allowed_sample: args.decision_sample_allowed,
        trace: portcullis_proxy::trace_context::TraceOptions {
            propagate: !args.no_trace_context,
            sample_ratio: args.trace_sample_ratio,
        },
        otlp_endpoint: args.otlp_endpoint.clone(),
        ..ProxyOptions::default()
    }
}

fn runtime(args: &Args) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut runtime = if workers <= 1 {
        // One worker needs no work stealing: the single-threaded scheduler skips the
        // cross-thread queues and wake-ups (measured on the HTTP benchmark: ~16% less CPU
        // per proxied request than a one-worker multi-threaded runtime).
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    runtime.enable_all().build().context("starting the runtime")
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.kube {
        return run_kube(args);
    }
    if args.manifests.is_empty() {
        bail!("--manifests DIR_OR_FILE is required");
    }
    if args.check {
        let ok = portcullis_proxy::check::run(&args.manifests, &mut std::io::stdout())?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let config = standalone::load(&args.manifests).context("loading manifests")?;

    runtime(&args)?.block_on(async move {
        let proxy = ProxyServer::start(proxy_options(&args), config).await?;
        let _watcher = standalone::watch(args.manifests.clone(), proxy.config_handle())
            .context("watching the manifests")?;
        reopen_audit_on_sighup(proxy.audit_reopener());
        wait_for_signal().await;
        tracing::info!("shutting down; draining connections");
        let drained = proxy.shutdown().await;
        tracing::info!(drained, "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Cluster mode: serve unloaded (not ready) until the operator's config arrives.
fn run_kube(args: Args) -> anyhow::Result<ExitCode> {
    // The kube client's TLS needs a process-wide rustls provider; ring is the only one
    // compiled in. An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime(&args)?.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes credentials (in-cluster service account or $KUBECONFIG)")?;
        let proxy = ProxyServer::start_unloaded(proxy_options(&args)).await?;
        reopen_audit_on_sighup(proxy.audit_reopener());
        let replica = cluster::replica_id(args.replica_id.as_deref());
        tracing::info!(%replica, namespace = %args.namespace, "cluster mode");
        let cluster = cluster::start(
            client,
            proxy.config_handle(),
            cluster::ClusterOptions {
                namespace: args.namespace.clone(),
                replica,
                report_interval: args.report_interval,
                endpoints: args.endpoints_source,
                config_key_secret: Some(portcullis_compiler::delivery::KEY_SECRET_NAME.to_string()),
                owner: cluster::pod_owner(),
            },
        );
        wait_for_signal().await;
        tracing::info!("shutting down; removing the report and draining connections");
        cluster.shutdown().await;
        let drained = proxy.shutdown().await;
        tracing::info!(drained, "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Log rotation: SIGHUP reopens the audit file.
fn reopen_audit_on_sighup(reopener: portcullis_proxy::audit::AuditReopener) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the audit file");
            reopener.reopen();
        }
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
