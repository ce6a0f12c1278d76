//! Standalone mode against real YAML, through the real compiler.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use common::*;
use portcullis_proxy::standalone;

const HELLO: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: hello}
spec:
  paths: [{type: Prefix, value: /hello}]
  upstream: {directResponse: {status: 200, body: "BODY"}}
"#;

#[test]
fn manifest_errors_fail_the_load_and_name_the_field() {
    let dir = tempdir("bad");
    std::fs::write(
        dir.join("bad.yaml"),
        HELLO.replace("value: /hello}", "value: /hello, vaule: x}"),
    )
    .unwrap();
    std::fs::write(dir.join("ignored.txt"), "not yaml").unwrap();
    let err = standalone::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.paths[0].vaule"), "{err}");
    let mut out = Vec::new();
    assert!(!portcullis_proxy::check::run(&[dir], &mut out).unwrap());
    assert!(String::from_utf8(out).unwrap().contains("error:"));
}

#[tokio::test]
async fn standalone_serves_and_reloads_manifests() {
    let dir = tempdir("reload");
    std::fs::write(dir.join("hello.yaml"), HELLO.replace("BODY", "one")).unwrap();
    let config = standalone::load(std::slice::from_ref(&dir)).unwrap();
    let proxy = start(config).await;
    let _watcher = standalone::watch(vec![dir.clone()], proxy.config_handle()).unwrap();
    let c = client();
    assert_eq!(
        send(&c, proxy.local_addr(), get("/hello")).await.body,
        "one"
    );
    // Editor-style replace: write a temp file and rename it over the original.
    std::fs::write(dir.join(".hello.tmp"), HELLO.replace("BODY", "two")).unwrap();
    std::fs::rename(dir.join(".hello.tmp"), dir.join("hello.yaml")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if send(&c, proxy.local_addr(), get("/hello")).await.body == "two" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file keeps the last good config.
    std::fs::write(dir.join("hello.yaml"), "kind: [").unwrap();
    tokio::time::sleep(standalone::DEBOUNCE * 3).await;
    assert_eq!(
        send(&c, proxy.local_addr(), get("/hello")).await.body,
        "two"
    );
}

#[test]
fn check_reports_accepted_objects() {
    let dir = tempdir("check");
    std::fs::write(dir.join("hello.yaml"), HELLO).unwrap();
    let mut out = Vec::new();
    assert!(portcullis_proxy::check::run(&[dir], &mut out).unwrap());
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("ApiRoute default/hello: Accepted=True"),
        "{out}"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-proxy-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn manifest_route_changes_under_load_fail_no_request() {
    let dir = tempdir("load");
    let write = |body: &str| {
        let tmp = dir.join(".hello.tmp");
        std::fs::write(&tmp, HELLO.replace("BODY", body)).unwrap();
        std::fs::rename(&tmp, dir.join("hello.yaml")).unwrap();
    };
    write("v0");
    let proxy = start(standalone::load(std::slice::from_ref(&dir)).unwrap()).await;
    let _watcher = standalone::watch(vec![dir.clone()], proxy.config_handle()).unwrap();
    let addr = proxy.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed, mut seen) =
                (0usize, 0usize, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = send(&c, addr, get("/hello")).await;
                if reply.status == 200 {
                    ok += 1;
                    seen.insert(String::from_utf8_lossy(&reply.body).into_owned());
                } else {
                    failed += 1;
                }
            }
            (ok, failed, seen)
        }));
    }
    let c = client();
    for version in 1..=5 {
        let body = format!("v{version}");
        write(&body);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while send(&c, addr, get("/hello")).await.body != body.as_bytes() {
            assert!(
                std::time::Instant::now() < deadline,
                "reload to {body} not seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut seen) = (0, 0, std::collections::BTreeSet::new());
    for worker in workers {
        let (o, f, s) = worker.await.unwrap();
        ok += o;
        failed += f;
        seen.extend(s);
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(seen.len() >= 3, "the load saw too few versions: {seen:?}");
}
