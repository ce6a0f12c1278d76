#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_compiler::config::*;
use portcullis_proxy::{ProxyOptions, ProxyServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn validation(max: Option<u64>) -> ValidationConfig {
    ValidationConfig {
        max_body_bytes: max,
        allowed_content_types: vec!["application/json".into()],
        json_schema: None,
        max_json_depth: None,
        required_headers: vec!["x-tenant".into()],
    }
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn request_validation_limits_types_headers_and_schema() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("v", PathKind::Prefix, "/v", &[&up]);
    r.request_validation = Some(Box::new(validation(Some(16))));
    let mut s = route("s", PathKind::Prefix, "/schema", &[&up]);
    s.request_validation = Some(Box::new(ValidationConfig {
        max_body_bytes: None,
        allowed_content_types: vec![],
        json_schema: Some(
            serde_json::json!({"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}}),
        ),
        max_json_depth: Some(3),
        required_headers: vec![],
    }));
    let proxy = start(config(vec![r, s])).await;
    let c = client();
    let a = proxy.local_addr();
    let json = "application/json";
    let ok = send(
        &c,
        a,
        get("/v")
            .method("POST")
            .header("x-tenant", "t")
            .header("content-type", json)
            .body(b"{\"a\":1}"),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_len"], 7);
    let missing = send(
        &c,
        a,
        get("/v")
            .method("POST")
            .header("content-type", json)
            .body(b"{}"),
    )
    .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"], "missing required header x-tenant");
    let wrong_type = send(
        &c,
        a,
        get("/v")
            .method("POST")
            .header("x-tenant", "t")
            .header("content-type", "text/plain")
            .body(b"hi"),
    )
    .await;
    assert_eq!(wrong_type.status, 415);
    // No body: content type is irrelevant.
    assert_eq!(
        send(&c, a, get("/v").header("x-tenant", "t")).await.status,
        200
    );
    let big = send(
        &c,
        a,
        get("/v")
            .method("POST")
            .header("x-tenant", "t")
            .header("content-type", json)
            .body(&[b'x'; 64]),
    )
    .await;
    assert_eq!(big.status, 413);
    assert_eq!(up.hits(), 2, "rejected requests never reach the upstream");

    // Chunked body (no Content-Length) over the limit: streamed limit answers 413.
    let chunked: Client<HttpConnector, StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let frames = futures_stream(vec![
        Bytes::from(vec![b'a'; 10]),
        Bytes::from(vec![b'b'; 10]),
    ]);
    let req = hyper::Request::post(format!("http://{a}/v"))
        .header("x-tenant", "t")
        .header("content-type", json)
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = chunked.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    let frames = futures_stream(vec![Bytes::from(vec![b'a'; 5]), Bytes::from(vec![b'b'; 5])]);
    let req = hyper::Request::post(format!("http://{a}/v"))
        .header("x-tenant", "t")
        .header("content-type", json)
        .body(StreamBody::new(frames))
        .unwrap();
    assert_eq!(chunked.request(req).await.unwrap().status(), 200);

    let bad = send(&c, a, get("/schema").method("POST").body(b"{\"email\": 5}")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["details"][0], "/email");
    let missing = send(&c, a, get("/schema").method("POST").body(b"{}")).await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        send(&c, a, get("/schema").method("POST").body(b"not json"))
            .await
            .status,
        400
    );
    assert_eq!(
        send(
            &c,
            a,
            get("/schema")
                .method("POST")
                .body(b"{\"email\":\"a\",\"x\":[[[1]]]}")
        )
        .await
        .status,
        400
    );
    assert_eq!(
        send(
            &c,
            a,
            get("/schema").method("POST").body(b"{\"email\":\"a@b\"}")
        )
        .await
        .status,
        200
    );
}

fn futures_stream(
    chunks: Vec<Bytes>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>
       + Send
       + Unpin
       + 'static {
    futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok(Frame::data(c)))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn oversized_headers_invalid_bytes_and_http2() {
    let up = upstream("u", Behaviour::Echo).await;
    let options = ProxyOptions {
        max_header_bytes: 8192,
        ..ProxyOptions::default()
    };
    let proxy = start_with(
        options,
        config(vec![route("r", PathKind::Prefix, "/", &[&up])]),
    )
    .await;
    let a = proxy.local_addr();
    let big = "a".repeat(20_000);
    let reply = raw(
        a,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.80}");

    // Invalid UTF-8 in the path: rejected by the parser or unmatched, never a crash.
    let reply = raw(
        a,
        b"GET /caf\xc3\x28\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let status: u16 = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((400..500).contains(&status) || status == 200, "{reply:.80}");
    // Invalid UTF-8 in a header value (obs-text) including X-Request-ID and X-Forwarded-For.
    let reply = raw(
        a,
        b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Request-ID: \xff\xfe\r\nX-Forwarded-For: \xff\r\nX-Thing: \xc3\x28\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.80}");
    assert!(!reply.contains("\u{fffd}\u{fffd}"));
    // The proxy is still serving.
    assert_eq!(send(&client(), a, get("/")).await.status, 200);

    // HTTP/2 with prior knowledge.
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let resp = h2
        .request(
            hyper::Request::get(format!("http://{a}/h2"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["uri"], "/h2");
    assert_eq!(body["headers"]["x-forwarded-host"][0], a.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swaps_under_load_lose_no_requests() {
    let one = upstream("one", Behaviour::Echo).await;
    let two = upstream("two", Behaviour::Echo).await;
    let cfg_a = config(vec![route("a", PathKind::Prefix, "/", &[&one])]);
    let mut cfg_b = config(vec![route("b", PathKind::Prefix, "/", &[&two])]);
    cfg_b.generation = "test-2".into();
    let proxy = start(cfg_a.clone()).await;
    let addr = proxy.local_addr();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut failed = 0;
            for _ in 0..200 {
                if send(&c, addr, get("/")).await.status != 200 {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let swapper = {
        let handle = proxy.config_handle();
        let done = done.clone();
        tokio::spawn(async move {
            let mut swaps = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let cfg = if swaps % 2 == 0 { &cfg_b } else { &cfg_a };
                handle.swap_config(cfg).unwrap();
                swaps += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            swaps
        })
    };
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.await.unwrap();
    assert_eq!(failed, 0);
    assert!(swaps > 5, "only {swaps} swaps");
    assert!(one.hits() > 0 && two.hits() > 0);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let slow = upstream("slow", Behaviour::Slow(Duration::from_millis(500))).await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&slow])])).await;
    let addr = proxy.local_addr();
    let in_flight = tokio::spawn(async move { send(&client(), addr, get("/slow")).await.status });
    assert!(eventually(Duration::from_secs(5), || slow.hits() == 1).await);
    let drained = proxy.shutdown().await;
    assert!(drained);
    assert_eq!(in_flight.await.unwrap(), 200);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut cfg = config(vec![route("shop/users", PathKind::Prefix, "/", &[&up])]);
    cfg.secrets.api_keys = vec![ApiKeyEntry {
        sha256: "00".repeat(32),
        consumer: "shop/app".into(),
    }];
    let proxy = start(cfg).await;
    let admin = proxy.admin_addr().unwrap();
    let c = client();
    send(&c, proxy.local_addr(), get("/")).await;
    send(&c, proxy.local_addr(), get("/").header("host", "x")).await;
    assert_eq!(send(&c, admin, get("/healthz")).await.status, 200);
    assert_eq!(send(&c, admin, get("/readyz")).await.status, 200);
    let metrics = String::from_utf8(send(&c, admin, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "api_requests_total{route=\"shop/users\",method=\"GET\",status_class=\"2xx\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("api_request_duration_seconds_bucket"),
        "{metrics}"
    );
    let config = send(&c, admin, get("/config")).await;
    let j = config.json();
    assert_eq!(j["generation"], "test-1");
    assert_eq!(j["routes"], 1);
    assert_eq!(j["route_ids"][0], "shop/users");
    assert!(
        !String::from_utf8_lossy(&config.body).contains("0000"),
        "no secrets"
    );

    let unloaded = ProxyServer::start_unloaded(ProxyOptions {
        audit: portcullis_proxy::AuditSink::Disabled,
        ..ProxyOptions::default()
    })
    .await
    .unwrap();
    let admin = unloaded.admin_addr().unwrap();
    assert_eq!(send(&c, admin, get("/readyz")).await.status, 503);
    assert_eq!(send(&c, unloaded.local_addr(), get("/")).await.status, 404);
    unloaded.swap_config(&config_for_ready(&up)).unwrap();
    assert_eq!(send(&c, admin, get("/readyz")).await.status, 200);
    assert_eq!(send(&c, unloaded.local_addr(), get("/")).await.status, 200);
}

fn config_for_ready(up: &Upstream) -> portcullis_compiler::GatewayConfig {
    config(vec![route("r", PathKind::Prefix, "/", &[up])])
}

/// Reads until the server closes the connection; `None` when it stays open past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_heads_and_idle_keep_alive_connections_are_closed() {
    let up = upstream("a", Behaviour::Slow(Duration::from_millis(900))).await;
    let options = ProxyOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let proxy = start_with(
        options,
        config(vec![route("r", PathKind::Prefix, "/", &[&up])]),
    )
    .await;

    // A slowloris client: a head trickled a byte at a time never completes in time.
    let mut slow = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let trickle = async {
        for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let started = tokio::time::Instant::now();
    trickle.await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the trickled head was refused before it ended"
    );
    assert!(closed_within(&mut slow, Duration::from_secs(5))
        .await
        .is_some());

    // A request slower than the header timeout is not cut: it is in flight. Then the idle
    // keep-alive connection is closed.
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed after the response");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"upstream\":\"a\""), "{text}");
}
