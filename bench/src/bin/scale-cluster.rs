//! The scale benchmark against a real API server: creates N ApiRoutes and M
//! ConsumerCredentials, waits for one proxy to serve them all, then measures the apply →
//! Programmed latency of single route changes twice: while the operator still works through
//! the first status write of every object (the backlog), and after that backlog has drained.
//! Also reports compile and publish times, the status write rate, RSS (current and peak) of
//! the operator and the proxy, and how much CPU the machine spent outside the benchmark.
//!
//! Usage (bench/run-scale.sh sets this up): scale-cluster ROUTES CONSUMERS OPERATOR_ADMIN
//! PROXY_ADMIN, with KUBECONFIG pointing at an admin kubeconfig and the processes named by
//! OPERATOR_PID, PROXY_PID, APISERVER_PID and ETCD_PID. CHANGES (default 7) changes are
//! timed in each phase.

use std::time::{Duration, Instant};

use anyhow::Context;
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

/// A `/proc/PID/status` field in MiB (VmRSS: current, VmHWM: peak).
fn memory_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at state, field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state.
    (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
}

/// CPU seconds the whole machine spent busy (all cores).
fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).unwrap_or(&0.0) + values.get(4).unwrap_or(&0.0);
    (total - idle) / 100.0
}

/// CPU use of the benchmark's processes and of everything else on the machine.
struct CpuMeter {
    pids: Vec<(String, String)>,
    started: Instant,
    machine: f64,
    ours: Vec<f64>,
}

impl CpuMeter {
    fn start(pids: &[(String, String)]) -> Self {
        Self {
            pids: pids.to_vec(),
            started: Instant::now(),
            machine: machine_busy_seconds(),
            ours: pids.iter().map(|(_, pid)| cpu_seconds(pid)).collect(),
        }
    }

    /// Cores used on average per process, by the bench driver itself, and by everything else.
    fn report(&self) -> Value {
        let wall = self.started.elapsed().as_secs_f64().max(0.001);
        let mut out = serde_json::Map::new();
        let mut ours = 0.0;
        for ((name, pid), before) in self.pids.iter().zip(&self.ours) {
            let used = cpu_seconds(pid) - before;
            ours += used;
            out.insert(name.clone(), json!(round2(used / wall)));
        }
        let machine = machine_busy_seconds() - self.machine;
        out.insert("machine".into(), json!(round2(machine / wall)));
        // Includes the kernel's share of our processes' I/O and the driver; an upper bound.
        out.insert(
            "everything_else".into(),
            json!(round2((machine - ours).max(0.0) / wall)),
        );
        out.insert("seconds".into(), json!(round2(wall)));
        Value::Object(out)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
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

struct Env {
    client: Client,
    routes: usize,
    operator_admin: String,
    proxy_admin: String,
}

impl Env {
    async fn operator_metrics(&self) -> String {
        http_get(&self.operator_admin, "/metrics")
            .await
            .unwrap_or_default()
    }

    async fn proxy_generation(&self) -> Option<String> {
        let config: Value =
            serde_json::from_str(&http_get(&self.proxy_admin, "/config").await.ok()?).ok()?;
        config["generation"].as_str().map(str::to_string)
    }

    /// Changes one route's path and times apply → the proxy runs a new config, and apply →
    /// `Programmed=True` for the new generation (as a client polling every 20 ms sees it).
    async fn change(&self, round: usize, phase: &str) -> anyhow::Result<Value> {
        let i = (round * 997 + 13) % self.routes;
        let api: Api<ApiRoute> = Api::namespaced(self.client.clone(), &namespace_of(i));
        let name = format!("route-{i}");
        let before = self.proxy_generation().await;
        let backlog = metric(
            &self.operator_metrics().await,
            "portcullis_operator_status_backlog",
        );
        let patch = json!({"spec": {"paths": [{"type": "Prefix", "value": format!("/svc-{i}/{phase}{round}")}]}});
        let started = Instant::now();
        let updated = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let generation = updated.metadata.generation;
        let served = async {
            loop {
                if self.proxy_generation().await != before {
                    return Some(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(120) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let programmed_after = async {
            loop {
                let object = serde_json::to_value(api.get(&name).await?)?;
                if programmed(&object) && object["metadata"]["generation"].as_i64() == generation {
                    return Ok::<_, anyhow::Error>(started.elapsed());
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(300),
                    "change not programmed after 300 s: {object}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (served, programmed_after) = tokio::join!(served, programmed_after);
        let programmed_after = programmed_after?;
        let ms = |d: Duration| round2(d.as_secs_f64() * 1000.0);
        let result = json!({
            "route": format!("{}/{name}", namespace_of(i)),
            "backlog_before": backlog,
            "served_ms": served.map(ms),
            "programmed_ms": ms(programmed_after),
        });
        eprintln!("  change {phase} {round}: {result}");
        Ok(result)
    }

    async fn changes(&self, phase: &str, count: usize) -> anyhow::Result<Value> {
        let metrics = self.operator_metrics().await;
        let sum = |m: &str, name: &str| metric(m, name).unwrap_or(0.0);
        let compile = "portcullis_operator_compile_duration_seconds";
        let evaluate = "portcullis_operator_status_evaluate_duration_seconds";
        let before = [
            sum(&metrics, &format!("{compile}_sum")),
            sum(&metrics, &format!("{compile}_count")),
            sum(&metrics, &format!("{evaluate}_sum")),
            sum(&metrics, &format!("{evaluate}_count")),
        ];
        let mut runs = Vec::new();
        let mut latencies = Vec::new();
        let mut served = Vec::new();
        for round in 0..count {
            let run = self.change(round, phase).await?;
            latencies.push(run["programmed_ms"].as_f64().unwrap_or(f64::NAN));
            if let Some(s) = run["served_ms"].as_f64() {
                served.push(s);
            }
            runs.push(run);
        }
        let metrics = self.operator_metrics().await;
        let mean = |s: usize, c: usize, name: &str| {
            let (sum_now, count_now) = (
                sum(&metrics, &format!("{name}_sum")),
                sum(&metrics, &format!("{name}_count")),
            );
            let n = count_now - before[c];
            (n > 0.0).then(|| round2((sum_now - before[s]) / n * 1000.0))
        };
        Ok(json!({
            "programmed_ms": summary(&mut latencies),
            "served_ms": summary(&mut served),
            "compile_ms_mean": mean(0, 1, compile),
            "status_evaluate_ms_mean": mean(2, 3, evaluate),
            "runs": runs,
        }))
    }
}

fn summary(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    json!({
        "median": values[values.len() / 2],
        "min": values[0],
        "max": values[values.len() - 1],
    })
}

fn env_pid(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: scale-cluster ROUTES CONSUMERS OPERATOR_ADMIN PROXY_ADMIN \
         (and OPERATOR_PID, PROXY_PID, APISERVER_PID, ETCD_PID in the environment)"
    );
    let routes: usize = args[0].parse()?;
    let consumers: usize = args[1].parse()?;
    let changes: usize = std::env::var("CHANGES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(7);
    let pids: Vec<(String, String)> = [
        ("operator", "OPERATOR_PID"),
        ("proxy", "PROXY_PID"),
        ("apiserver", "APISERVER_PID"),
        ("etcd", "ETCD_PID"),
    ]
    .into_iter()
    .map(|(name, var)| Ok((name.to_string(), env_pid(var)?)))
    .chain(std::iter::once(Ok((
        "driver".to_string(),
        std::process::id().to_string(),
    ))))
    .collect::<anyhow::Result<_>>()?;
    let (operator_pid, proxy_pid) = (pids[0].1.clone(), pids[1].1.clone());
    let client = Client::try_default().await?;
    let env = Env {
        client: client.clone(),
        routes,
        operator_admin: args[2].clone(),
        proxy_admin: args[3].clone(),
    };
    let loadavg_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for i in 0..20 {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace_of(i)}}))?;
        let _ = namespaces.create(&PostParams::default(), &ns).await;
    }
    let create_cpu = CpuMeter::start(&pids);
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
    let create_cpu = create_cpu.report();
    eprintln!("created {blocks} Secrets in {t_secrets:?}, {consumers} consumers in {t_consumers:?}, {routes} routes in {t_routes:?}");

    // The proxy serves everything.
    let proxy_converged = loop {
        let config: Value = serde_json::from_str(
            &http_get(&env.proxy_admin, "/config")
                .await
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        if config["routes"].as_u64() == Some(routes as u64)
            && config["consumers"].as_u64() == Some(consumers as u64)
        {
            break created.elapsed();
        }
        anyhow::ensure!(
            created.elapsed() < Duration::from_secs(1800),
            "proxy did not converge: {}",
            json!({"routes": config["routes"], "consumers": config["consumers"]})
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("proxy serves all routes and consumers {proxy_converged:?} after the last create");
    let rss = |label: &str| {
        json!({
            "at": label,
            "proxy": round2(memory_mib(&proxy_pid, "VmRSS:")),
            "operator": round2(memory_mib(&operator_pid, "VmRSS:")),
        })
    };
    let mut rss_samples = vec![rss("proxy converged")];

    // Single changes while the first status pass over every object is still under way.
    let backlog_now = metric(
        &env.operator_metrics().await,
        "portcullis_operator_status_backlog",
    )
    .unwrap_or(0.0);
    let during_cpu = CpuMeter::start(&pids);
    let during = if backlog_now > 1000.0 {
        Some(env.changes("draining", changes).await?)
    } else {
        eprintln!("backlog already small ({backlog_now}); no changes timed while it drains");
        None
    };
    let during_cpu = during_cpu.report();

    // The backlog drains: every status written.
    let drain_cpu = CpuMeter::start(&pids);
    let mut drain_series = Vec::new();
    let drained = loop {
        let metrics = env.operator_metrics().await;
        let backlog = metric(&metrics, "portcullis_operator_status_backlog").unwrap_or(-1.0);
        let writes = metric(&metrics, "portcullis_operator_status_writes_total").unwrap_or(0.0);
        let at = round2(created.elapsed().as_secs_f64());
        if drain_series
            .last()
            .is_none_or(|last: &Value| at - last["t"].as_f64().unwrap_or(0.0) >= 10.0)
        {
            eprintln!("  {at:.0} s: backlog {backlog}, status writes {writes}");
            drain_series.push(json!({"t": at, "backlog": backlog, "writes": writes}));
        }
        if backlog == 0.0 {
            drain_series.push(json!({"t": at, "backlog": backlog, "writes": writes}));
            break created.elapsed();
        }
        anyhow::ensure!(
            created.elapsed() < Duration::from_secs(3600),
            "status backlog did not drain"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let drain_cpu = drain_cpu.report();
    rss_samples.push(rss("backlog drained"));
    eprintln!("status backlog drained {drained:?} after the last create");
    // Check what the metric says against the API server (one full list).
    let route_api: Api<ApiRoute> = Api::all(client.clone());
    let consumer_api: Api<ConsumerCredential> = Api::all(client.clone());
    let verified = loop {
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
    eprintln!("every object Programmed (listed) {verified:?} after the last create");

    // Single changes on a settled cluster.
    let after_cpu = CpuMeter::start(&pids);
    let after = env.changes("settled", changes).await?;
    let after_cpu = after_cpu.report();

    let metrics = env.operator_metrics().await;
    let result = json!({
        "routes": routes,
        "consumers": consumers,
        "loadavg_start": loadavg_start.trim(),
        "loadavg_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "create_seconds": {"secrets": t_secrets.as_secs_f64(), "consumers": t_consumers.as_secs_f64(), "routes": t_routes.as_secs_f64()},
        "proxy_converged_seconds": proxy_converged.as_secs_f64(),
        "backlog_at_convergence": backlog_now,
        "backlog_drained_seconds": drained.as_secs_f64(),
        "all_programmed_listed_seconds": verified.as_secs_f64(),
        "drain": drain_series,
        "changes_while_draining": during,
        "changes_settled": after,
        "cores_used": {"create": create_cpu, "changes_while_draining": during_cpu, "drain": drain_cpu, "changes_settled": after_cpu},
        "status_writes_total": metric(&metrics, "portcullis_operator_status_writes_total"),
        "events_dropped_total": metric(&metrics, "portcullis_operator_events_dropped_total"),
        "config_bytes": metric(&metrics, "portcullis_operator_config_bytes"),
        "rss_mib": {
            "proxy": round2(memory_mib(&proxy_pid, "VmRSS:")),
            "proxy_peak": round2(memory_mib(&proxy_pid, "VmHWM:")),
            "operator": round2(memory_mib(&operator_pid, "VmRSS:")),
            "operator_peak": round2(memory_mib(&operator_pid, "VmHWM:")),
            "samples": rss_samples,
        },
    });
    println!("{result}");
    Ok(())
}
