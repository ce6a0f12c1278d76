//! `portcullis-proxy`: standalone mode (`--manifests`), `--check`, and (later) `--kube`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use ipnet::IpNet;
use portcullis_proxy::{standalone, AuditSink, ProxyOptions, ProxyServer};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-proxy",
    version,
    about = "Portcullis API gateway data plane"
)]
struct Args {
    /// Manifest files or directories (*.yaml, *.yml; directories are not recursed).
    #[arg(long, num_args = 1.., value_name = "DIR_OR_FILE")]
    manifests: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TLS listener (not implemented yet).
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
    /// Cluster mode (not implemented yet).
    #[arg(long)]
    kube: bool,
    #[arg(long, default_value = "portcullis-system")]
    namespace: String,
    /// Runtime worker threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Disable the audit log on stdout.
    #[arg(long)]
    no_audit: bool,
    /// Cap on concurrent client connections (NGINX limit_conn); excess ones get a 503.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Cap on concurrent connections from one client IP; excess ones get a 503.
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.kube {
        bail!("--kube (cluster mode) is not implemented yet; use --manifests");
    }
    if args.tls_listen.is_some() {
        bail!("--tls-listen is not implemented yet");
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

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let options = ProxyOptions {
            listen: args.listen,
            admin_listen: Some(args.admin_listen),
            trusted_proxies: args.trusted_proxies,
            drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs),
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            audit: if args.no_audit {
                AuditSink::Disabled
            } else {
                AuditSink::Stdout
            },
            ..ProxyOptions::default()
        };
        let proxy = ProxyServer::start(options, config).await?;
        let _watcher = standalone::watch(args.manifests.clone(), proxy.config_handle())
            .context("watching the manifests")?;
        wait_for_signal().await;
        tracing::info!("shutting down; draining connections");
        let drained = proxy.shutdown().await;
        tracing::info!(drained, "stopped");
        Ok(ExitCode::SUCCESS)
    })
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
