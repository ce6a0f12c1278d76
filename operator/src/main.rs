//! `portcullis-operator`: the control plane. See the crate docs of `portcullis_operator`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use portcullis_compiler::tenancy::{Budget, Budgets, Tenancy};
use portcullis_operator::events::EventSink;
use portcullis_operator::leader::{Elector, LeaderConfig};
use portcullis_operator::leadership::Leadership;
use portcullis_operator::metrics::Metrics;
use portcullis_operator::owner;
use portcullis_operator::reconcile::Reconciler;
use portcullis_operator::server::{self, AdminState};
use portcullis_operator::trigger::Trigger;
use portcullis_operator::watch;
use portcullis_operator::webhook::{self, Endpoint, WebhookState};

// glibc's malloc spent a third of a 100k-consumer compile in its own bookkeeping
// (consolidating and unlinking chunks); mimalloc, the proxy's allocator, halves compile and
// encode times.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-operator",
    version,
    about = "Portcullis operator: compiles the CRDs into the proxies' config and reports status"
)]
struct Args {
    /// Namespace of the compiled config, the proxies' reports and the leader lease.
    #[arg(long, default_value = "portcullis-system")]
    namespace: String,
    /// Admin listener: /healthz, /readyz, /metrics.
    #[arg(long, default_value = "0.0.0.0:9902")]
    admin_listen: SocketAddr,
    /// Name of this replica in the leader lease and in Events (default: $POD_NAME or host-pid).
    #[arg(long)]
    identity: Option<String>,
    /// Act without leader election (only for a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Leader lease duration: a follower takes over at most this long after the leader
    /// stopped renewing (a killed leader; a stopped one releases the lease at once).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=3600))]
    lease_duration_seconds: u32,
    /// How often the leader renews the lease and a follower tries to take it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=3600))]
    lease_retry_seconds: u32,
    /// A proxy replica that stopped reporting (killed without a goodbye) still counts in
    /// `status.proxies` total, as not ready, for this long after its report expired.
    #[arg(long, default_value_t = 300)]
    forget_replicas_after_seconds: u64,
    /// Quiet period that batches bursts of changes into one compile.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Full reconcile at least this often, to notice proxies whose reports stopped.
    #[arg(long, default_value_t = 5)]
    resync_seconds: u64,
    /// Serve the validating admission webhook (TLS) on this address.
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// Host names and IPs for the webhook certificate.
    #[arg(long = "webhook-host", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    webhook_hosts: Vec<String>,
    /// Register the webhook with this base URL (e.g. https://127.0.0.1:9443).
    #[arg(long, conflicts_with = "webhook_service")]
    webhook_url: Option<String>,
    /// Register the webhook through a Service: NAMESPACE/NAME:PORT.
    #[arg(long)]
    webhook_service: Option<String>,
    /// Refuse objects when the webhook is unreachable (default: admit; the compiler still
    /// marks invalid objects Accepted=False).
    #[arg(long)]
    webhook_fail_closed: bool,
    /// The proxies' Service in --namespace: its address goes into the status of Ingresses
    /// and Gateways.
    #[arg(long, default_value = "portcullis-proxy")]
    proxy_service: String,
    /// Read the Gateway API kinds: auto (when the API server serves
    /// gateway.networking.k8s.io/v1), on or off.
    #[arg(long, value_enum, default_value = "auto")]
    gateway_api: Switch,
    /// Accept upstream targets on loopback, link-local or the gateway's own addresses
    /// (tests and development only: such a target reaches the gateway's admin listener).
    #[arg(long)]
    allow_loopback_targets: bool,
    /// The gateway's own addresses (e.g. the proxies' pod IPs), refused as targets.
    #[arg(long = "gateway-address", value_delimiter = ',')]
    gateway_addresses: Vec<std::net::IpAddr>,
    /// Only these namespaces may have wildcard (`*.example.com`) or host-less routes
    /// (default: any namespace; such routes never catch a host another namespace owns).
    #[arg(long, value_delimiter = ',')]
    catch_all_namespaces: Option<Vec<String>>,
    /// Budget of every namespace: `routes=N,consumers=N,configBytes=SIZE` (any subset;
    /// `0` refuses all). Objects past it get Accepted=False, reason QuotaExceeded.
    #[arg(
        long,
        default_value = "routes=1000,consumers=20000,configBytes=8Mi",
        value_parser = parse_budget
    )]
    namespace_budget: Budget,
    /// A namespace's own budget, replacing the default: `NAMESPACE:routes=N,...`
    /// (repeatable; `NAMESPACE:unlimited` for none).
    #[arg(long = "namespace-budget-override", value_parser = parse_override)]
    namespace_budget_overrides: Vec<(String, Budget)>,
    /// ConfigMap (in --namespace) that owns what the operator creates there: the config
    /// shards, the webhook certificate Secret and the leader Lease. Deleting it (the Helm
    /// chart's, on `helm uninstall`) lets the garbage collector delete them.
    #[arg(long)]
    owner_configmap: Option<String>,
}

fn parse_budget(text: &str) -> Result<Budget, String> {
    if text == "unlimited" {
        return Ok(Budget::default());
    }
    Budget::parse(text)
}

fn parse_override(text: &str) -> Result<(String, Budget), String> {
    let (namespace, budget) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NAMESPACE:BUDGET"))?;
    Ok((namespace.to_string(), parse_budget(budget)?))
}

fn tenancy(args: &Args) -> Tenancy {
    Tenancy {
        refuse_internal_targets: !args.allow_loopback_targets,
        gateway_addresses: args.gateway_addresses.clone(),
        catch_all_namespaces: args
            .catch_all_namespaces
            .as_ref()
            .map(|n| n.iter().cloned().collect()),
        budgets: Budgets {
            default: args.namespace_budget,
            overrides: args.namespace_budget_overrides.iter().cloned().collect(),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    Auto,
    On,
    Off,
}

fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host =
                std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "operator".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    })
}

fn parse_service(text: &str) -> anyhow::Result<Endpoint> {
    let (namespace, rest) = text
        .split_once('/')
        .context("--webhook-service is NAMESPACE/NAME:PORT")?;
    let (name, port) = rest
        .split_once(':')
        .context("--webhook-service is NAMESPACE/NAME:PORT")?;
    Ok(Endpoint::Service {
        namespace: namespace.into(),
        name: name.into(),
        port: port.parse().context("webhook service port")?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Exactly one rustls provider in the process; a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.lease_retry_seconds >= args.lease_duration_seconds {
        // A leader renewing less often than its lease lasts would lose it between renewals.
        anyhow::bail!(
            "--lease-retry-seconds ({}) must be shorter than --lease-duration-seconds ({})",
            args.lease_retry_seconds,
            args.lease_duration_seconds
        );
    }
    let identity = identity(&args);

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let owner = match &args.owner_configmap {
        Some(name) => Some(owner::resolve(&client, &args.namespace, name).await?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let trigger = Arc::new(Trigger::default());
    let gateway_api = match args.gateway_api {
        Switch::On => true,
        Switch::Off => false,
        // The CRDs are an option of the chart: without them, watching would fail forever.
        Switch::Auto => client
            .list_api_group_resources("gateway.networking.k8s.io/v1")
            .await
            .is_ok(),
    };
    tracing::info!(gateway_api, "Gateway API");
    let (stores, owned) = watch::start(&client, &args.namespace, trigger.clone(), gateway_api);

    let admin = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    let admin_addr = server::serve_admin(args.admin_listen, admin.clone()).await?;
    tracing::info!(admin = %admin_addr, identity = %identity, "operator starting");

    if let Some(addr) = args.webhook_listen {
        let cert = webhook::serving_cert(
            &client,
            &args.namespace,
            &args.webhook_hosts,
            owner.as_ref(),
        )
        .await?;
        let state = Arc::new(WebhookState {
            stores: stores.clone(),
        });
        let bound = server::serve_webhook(addr, &cert, state).await?;
        tracing::info!(webhook = %bound, "admission webhook listening");
        let endpoint = match (&args.webhook_url, &args.webhook_service) {
            (Some(url), _) => Some(Endpoint::Url(url.trim_end_matches('/').to_string())),
            (None, Some(service)) => Some(parse_service(service)?),
            (None, None) => None,
        };
        if let Some(endpoint) = endpoint {
            webhook::register(&client, &endpoint, &cert.cert_pem, args.webhook_fail_closed).await?;
        }
    }

    let elector = (!args.no_leader_election).then(|| {
        Arc::new(Elector::new(
            client.clone(),
            LeaderConfig {
                owner: owner.clone(),
                lease_duration: Duration::from_secs(args.lease_duration_seconds.into()),
                retry_period: Duration::from_secs(args.lease_retry_seconds.into()),
                ..LeaderConfig::new(&args.namespace, &identity)
            },
        ))
    });

    stores.wait_ready().await;
    admin.ready.store(true, Ordering::Relaxed);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portcullis-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let events = EventSink::spawn(recorder, metrics.clone());
    let reconciler = Reconciler::new(
        client.clone(),
        &args.namespace,
        stores.clone(),
        owned,
        tenancy(&args),
        metrics.clone(),
        trigger.clone(),
    )
    .with_owner(owner)
    .with_forget_after(Duration::from_secs(args.forget_replicas_after_seconds));
    let leadership = Leadership {
        client,
        stores,
        metrics,
        events,
        trigger,
        elector,
        proxy_service: (args.namespace.clone(), args.proxy_service.clone()),
        debounce: Duration::from_millis(args.debounce_ms),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
    };
    leadership.run(reconciler, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
