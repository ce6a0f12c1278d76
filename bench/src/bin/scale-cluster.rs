//! The scale benchmark against a real API server: creates N ApiRoutes and M
//! ConsumerCredentials, waits for the operator and one proxy to converge, then measures the
//! apply → Programmed latency of single changes, the config size and the processes' RSS.
//!
//! Usage (bench/run-scale.sh sets this up): scale-cluster ROUTES CONSUMERS OPERATOR_ADMIN
//! PROXY_ADMIN PROXY_PID OPERATOR_PID, with KUBECONFIG pointing at an admin kubeconfig.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use portcullis_bench::{consumer, namespace_of, route, secret, KEYS_PER_SECRET};
use portcullis_crds::{ApiRoute, ConsumerCredential};
use serde_json::{json, Value};

const CONCURRENCY: usize = 64;

async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

async fn create_all<K>(
    api_for: impl Fn(&str) -> Api<K>,
    objects: Vec<Value>,
) -> anyhow::Result<Duration>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(objects)
        .map(|object| {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let api = api_for(&ns);
            async move {
                let typed: K = serde_json::from_value(object)?;
                match api.create(&PostParams::default(), &typed).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(started.elapsed())
}

fn programmed(object: &Value) -> bool {
    let generation = object["metadata"]["generation"].as_i64();
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["type"] == "Programmed"
                && c["status"] == "True"
                && c["observedGeneration"].as_i64() == generation
        })
    })
}

async fn count_programmed<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut count = 0;
    let mut params = ListParams::default().limit(5000);
    loop {
        let list = api.list(&params).await?;
        for item in &list.items {
            if programmed(&serde_json::to_value(item)?) {
                count += 1;
            }
        }
        match list.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(count),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: scale-cluster ROUTES CONSUMERS OPERATOR_ADMIN PROXY_ADMIN PROXY_PID OPERATOR_PID"
    );
    let routes: usize = args[0].parse()?;
    let consumers: usize = args[1].parse()?;
    let (operator_admin, proxy_admin, proxy_pid, operator_pid) =
        (&args[2], &args[3], &args[4], &args[5]);
    let client = Client::try_default().await?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for i in 0..20 {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace_of(i)}}))?;
        let _ = namespaces.create(&PostParams::default(), &ns).await;
    }
    let blocks = consumers.div_ceil(KEYS_PER_SECRET);
    let c = client.clone();
    let t_secrets = create_all::<Secret>(
        move |ns| Api::namespaced(c.clone(), ns),
        (0..blocks).map(|b| secret(b, consumers)).collect(),
    )
    .await?;
    let c = client.clone();
    let t_consumers = create_all::<ConsumerCredential>(
        move |ns| Api::namespaced(c.clone(), ns),
        (0..consumers).map(consumer).collect(),
    )
    .await?;
    let c = client.clone();
    let t_routes = create_all::<ApiRoute>(
        move |ns| Api::namespaced(c.clone(), ns),
        (0..routes).map(route).collect(),
    )
    .await?;
    let created = Instant::now();
    eprintln!("created {blocks} Secrets in {t_secrets:?}, {consumers} consumers in {t_consumers:?}, {routes} routes in {t_routes:?}");

    // Convergence: the proxy serves everything, then every object says Programmed.
    let proxy_converged = loop {
        let config: Value =
            serde_json::from_str(&http_get(proxy_admin, "/config").await.unwrap_or_default())
                .unwrap_or_default();
        if config["routes"].as_u64() == Some(routes as u64)
            && config["consumers"].as_u64() == Some(consumers as u64)
        {
            break created.elapsed();
        }
        anyhow::ensure!(
            created.elapsed() < Duration::from_secs(1800),
            "proxy did not converge: {config}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("proxy serves all routes and consumers {proxy_converged:?} after the last create");
    let route_api: Api<ApiRoute> = Api::all(client.clone());
    let consumer_api: Api<ConsumerCredential> = Api::all(client.clone());
    let all_programmed = loop {
        let (r, c) = (
            count_programmed(&route_api).await?,
            count_programmed(&consumer_api).await?,
        );
        if r == routes && c == consumers {
            break created.elapsed();
        }
        eprintln!("  programmed: {r}/{routes} routes, {c}/{consumers} consumers");
        anyhow::ensure!(
            created.elapsed() < Duration::from_secs(3600),
            "status did not converge"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    eprintln!("every object Programmed {all_programmed:?} after the last create");

    // One change at a time: apply → Programmed=True for the new generation.
    let mut latencies = Vec::new();
    for round in 0..7 {
        let i = round * 7;
        let api: Api<ApiRoute> = Api::namespaced(client.clone(), &namespace_of(i));
        let name = format!("route-{i}");
        let patch = json!({"spec": {"paths": [{"type": "Prefix", "value": format!("/svc-{i}/v{}", round + 2)}]}});
        let started = Instant::now();
        let updated = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let generation = updated.metadata.generation;
        loop {
            let object = serde_json::to_value(api.get(&name).await?)?;
            if programmed(&object) && object["metadata"]["generation"].as_i64() == generation {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "change not programmed: {object}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);

    let metrics = http_get(operator_admin, "/metrics").await?;
    let compile_sum =
        metric(&metrics, "portcullis_operator_compile_duration_seconds_sum").unwrap_or(0.0);
    let compile_count = metric(
        &metrics,
        "portcullis_operator_compile_duration_seconds_count",
    )
    .unwrap_or(1.0);
    let result = json!({
        "routes": routes,
        "consumers": consumers,
        "create_seconds": {"secrets": t_secrets.as_secs_f64(), "consumers": t_consumers.as_secs_f64(), "routes": t_routes.as_secs_f64()},
        "proxy_converged_seconds": proxy_converged.as_secs_f64(),
        "all_programmed_seconds": all_programmed.as_secs_f64(),
        "change_to_programmed_ms": {"median": latencies[latencies.len() / 2], "max": latencies[latencies.len() - 1], "all": latencies},
        "operator_compile_ms_mean": compile_sum / compile_count.max(1.0) * 1000.0,
        "config_bytes": metric(&metrics, "portcullis_operator_config_bytes"),
        "proxy_rss_mib": rss_mib(proxy_pid),
        "operator_rss_mib": rss_mib(operator_pid),
    });
    println!("{result}");
    Ok(())
}
