//! The upstream keep-alive pool over real sockets: reuse, bodiless responses, stale
//! connections the upstream closed while idle, and early-dropped bodies.

#![allow(clippy::unwrap_used)]
mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_compiler::config::PathKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A hyper upstream that counts accepted connections and answers by path.
async fn counting_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let hits = Arc::new(AtomicUsize::new(0));
    let (accepted_c, hits_c) = (accepted.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted_c.fetch_add(1, Ordering::SeqCst);
            let hits = hits_c.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/no-content" => (StatusCode::NO_CONTENT, Bytes::new()),
                            "/empty" => (StatusCode::OK, Bytes::new()),
                            "/big" => (StatusCode::OK, Bytes::from(vec![b'x'; 4 << 20])),
                            _ => (StatusCode::OK, Bytes::from_static(b"ok\n")),
                        };
                        let mut response = Response::new(Full::new(body));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let upstream = Upstream {
        addr,
        name: "counting".into(),
        hits,
    };
    (upstream, accepted)
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (up, accepted) = counting_upstream().await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let c = client();
    for path in ["/", "/no-content", "/empty", "/", "/no-content", "/"] {
        let r = send(&c, proxy.local_addr(), get(path)).await;
        assert!(r.status.is_success(), "{path}: {}", r.status);
    }
    for _ in 0..5 {
        let r = send(&c, proxy.local_addr(), get("/").method("HEAD")).await;
        assert_eq!(r.status, 200);
        let r = send(
            &c,
            proxy.local_addr(),
            get("/").method("POST").body(b"payload"),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.hits(), 16);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "every sequential request, bodiless answers included, reuses the first connection"
    );
}

#[tokio::test]
async fn concurrent_requests_open_connections_then_reuse_them() {
    let (up, accepted) = counting_upstream().await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let c = client();
    for _ in 0..5 {
        let batch = (0..8).map(|_| send(&c, proxy.local_addr(), get("/")));
        for r in futures_util::future::join_all(batch).await {
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(up.hits(), 40);
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&opened),
        "at most one connection per concurrent request, reused across batches: {opened}"
    );
}

/// An upstream that answers one request per connection with keep-alive framing, then closes
/// the connection: the pool must notice and not send the next request into a dead socket.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let accepted_c = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted_c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn connections_closed_by_the_upstream_while_idle_are_not_reused() {
    let (addr, accepted) = closing_upstream().await;
    let up = Upstream {
        addr,
        name: "closing".into(),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let c = client();
    for i in 0..5 {
        let r = send(&c, proxy.local_addr(), get("/")).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        // Give the connection task time to see the close.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_response_abandoned_by_the_client_does_not_poison_the_pool() {
    let (up, accepted) = counting_upstream().await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    // Read only the head of a 4 MiB response, then hang up.
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The half-read connection is closed, not reused: the next requests still succeed.
    let c = client();
    for _ in 0..3 {
        let r = send(&c, proxy.local_addr(), get("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"ok\n");
    }
    assert!(accepted.load(Ordering::SeqCst) >= 2);
}
