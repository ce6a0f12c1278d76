//! Proxy memory at scale without an API server: compiles N routes and M consumers, encodes
//! them into the ConfigMap and Secret shards the operator writes, and loads them the way
//! cluster mode does (`portcullis_proxy::cluster::load`: shards → decode → runtime config →
//! swap), then loads a changed config (one route edited) to model a reload. Prints resident
//! memory (VmRSS) and its peak (VmHWM) after each step, as one JSON line per step.
//! Usage: scale-load [ROUTES] [CONSUMERS] [RELOADS]   (`scale-load emit R C EDIT`: child mode)
//! With `CHANGE=consumers` each reload removes a consumer instead of editing a route.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use portcullis_bench::snapshot;
use portcullis_compiler::compile;
use portcullis_compiler::delivery::{self, Shard};
use portcullis_proxy::{cluster, AuditSink, ProxyOptions, ProxyServer};

// The proxy's allocator: what it retains after a reload is part of what is measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// VmRSS and VmHWM in MiB.
fn memory() -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/self/status"))?;
        let kib: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn report(step: &str, elapsed: Option<Duration>) -> anyhow::Result<()> {
    let (rss, hwm) = memory()?;
    let ms = elapsed.map(|e| format!(",\"ms\":{:.0}", e.as_secs_f64() * 1000.0));
    println!(
        "{{\"step\":\"{step}\",\"rss_mib\":{rss:.1},\"peak_mib\":{hwm:.1}{}}}",
        ms.unwrap_or_default()
    );
    Ok(())
}

/// The objects the watch's reflector stores would hold for this config.
type Objects = (Vec<Arc<ConfigMap>>, Vec<Arc<Secret>>);

/// Child process mode: compiles and encodes, writes the shards to stdout. Generating in
/// another process keeps the compiler's memory (and what the allocator retains of it) out
/// of the figures.
fn emit(routes: usize, consumers: usize, edit: usize) -> anyhow::Result<()> {
    let (config, _) = compile(&snapshot(routes, consumers, edit)?);
    let encoded = delivery::encode(&config)?;
    let mut out = std::io::stdout().lock();
    for (kind, shards) in [("C", &encoded.config_shards), ("S", &encoded.secret_shards)] {
        for s in shards {
            writeln!(
                out,
                "{kind} {} {} {} {} {}",
                s.index,
                s.count,
                s.generation,
                s.content.as_deref().unwrap_or("-"),
                s.payload.len()
            )?;
            out.write_all(&s.payload)?;
        }
    }
    Ok(())
}

fn objects(routes: usize, consumers: usize, edit: usize) -> anyhow::Result<Objects> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args([
            "emit",
            &routes.to_string(),
            &consumers.to_string(),
            &edit.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(output.status.success(), "emit failed");
    let mut rest = output.stdout.as_slice();
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .context("truncated header")?;
        let header = std::str::from_utf8(&rest[..end])?;
        let fields: Vec<&str> = header.split(' ').collect();
        anyhow::ensure!(fields.len() == 6, "bad header {header}");
        let len: usize = fields[5].parse()?;
        let payload = rest
            .get(end + 1..end + 1 + len)
            .context("truncated payload")?
            .to_vec();
        rest = &rest[end + 1 + len..];
        let shard = Shard {
            index: fields[1].parse()?,
            count: fields[2].parse()?,
            generation: fields[3].to_string(),
            content: Some(fields[4]).filter(|c| *c != "-").map(str::to_string),
            signature: None,
            payload,
        };
        if fields[0] == "C" {
            cms.push(Arc::new(shard.config_map()));
        } else {
            secrets.push(Arc::new(shard.secret()));
        }
    }
    Ok((cms, secrets))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let emitting = std::env::args().nth(1).as_deref() == Some("emit");
    let (routes, consumers, reloads) = portcullis_bench::scale_args(2);
    if emitting {
        return emit(routes, consumers, reloads);
    }
    // The loader's log lines (which half was decoded) on stderr; the figures go to stdout.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    // `CHANGE=consumers`: each reload has one consumer fewer instead of one route edited,
    // so the Secret half (100k consumers' key index) is decoded and rebuilt while the
    // previous one still serves, as during a bulk creation of consumers.
    let consumer_change = std::env::var("CHANGE").is_ok_and(|c| c == "consumers");
    // Every config up front, so that generating them does not blur the proxy's figures.
    let generations = (0..=reloads)
        .map(|edit| {
            if consumer_change {
                objects(routes, consumers - edit.min(consumers), 0)
            } else {
                objects(routes, consumers, edit)
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    report("generated", None)?;
    let proxy = ProxyServer::start_unloaded(ProxyOptions {
        admin_listen: None,
        audit: AuditSink::Disabled,
        ..ProxyOptions::default()
    })
    .await?;
    let handle = proxy.config_handle();
    report("started", None)?;
    for (i, (cms, secrets)) in generations.iter().enumerate() {
        let started = Instant::now();
        let loaded = cluster::load(cms.clone(), secrets.clone(), handle.clone()).await;
        anyhow::ensure!(loaded == cluster::Loaded::Swapped, "config {i} not loaded");
        report(&format!("load{i}"), Some(started.elapsed()))?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        report(&format!("load{i}_settled"), None)?;
    }
    proxy.shutdown().await;
    Ok(())
}
