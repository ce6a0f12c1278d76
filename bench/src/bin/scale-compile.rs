//! Times `compile()` and `delivery::encode()` for N routes and M consumers in memory, and
//! `compile_cached()` after a one-route change (what the operator runs for a route edit).
//! Usage: scale-compile [ROUTES] [CONSUMERS] [RUNS]

use std::time::Instant;

use portcullis_bench::snapshot;
use std::sync::Arc;

use portcullis_compiler::{compile, compile_cached, delivery, CompileCache};

// The operator's allocator, so that the times are the operator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let (routes, consumers, runs) = portcullis_bench::scale_args(5);
    let snapshot = snapshot(routes, consumers, 0)?;
    let mut compile_ms = Vec::new();
    let mut encode_ms = Vec::new();
    let mut bytes = 0;
    let mut shards = (0, 0);
    for _ in 0..runs {
        let started = Instant::now();
        let (config, statuses) = compile(&snapshot);
        compile_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            statuses.iter().all(|s| s.is_healthy()),
            "unexpected invalid objects"
        );
        anyhow::ensure!(config.routes.len() == routes && config.consumers.len() == consumers);
        let started = Instant::now();
        let encoded = delivery::encode(&config)?;
        encode_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = encoded.compressed_bytes;
        shards = (encoded.config_shards.len(), encoded.secret_shards.len());
    }
    // One route edited between compiles, the consumers' objects untouched.
    let mut route_change_ms = Vec::new();
    let mut route_change_encode_ms = Vec::new();
    let mut cache = CompileCache::default();
    let mut snapshot = snapshot;
    let (config, _) = compile_cached(&snapshot, &mut cache);
    let mut previous = delivery::encode_reusing(&config, None, cache.secret_half_digest())?;
    for run in 0..runs {
        if let Some(route) = snapshot.routes.first_mut() {
            let mut edited = (**route).clone();
            edited.spec.hosts = vec![format!("edit-{run}.example.com")];
            *route = Arc::new(edited);
        }
        let started = Instant::now();
        let (config, _) = compile_cached(&snapshot, &mut cache);
        route_change_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(config.consumers.len() == consumers);
        let started = Instant::now();
        previous = delivery::encode_reusing(&config, Some(&previous), cache.secret_half_digest())?;
        route_change_encode_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    route_change_ms.sort_by(f64::total_cmp);
    route_change_encode_ms.sort_by(f64::total_cmp);
    compile_ms.sort_by(f64::total_cmp);
    encode_ms.sort_by(f64::total_cmp);
    println!(
        "routes={routes} consumers={consumers} runs={runs} compile_ms_median={:.0} route_change_compile_ms_median={:.0} route_change_encode_ms_median={:.0} encode_ms_median={:.0} compressed_bytes={bytes} shards_configmap={} shards_secret={}",
        compile_ms[runs / 2],
        route_change_ms[runs / 2],
        route_change_encode_ms[runs / 2],
        encode_ms[runs / 2],
        shards.0,
        shards.1
    );
    Ok(())
}
