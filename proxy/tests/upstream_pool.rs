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

/// A proxy with one route to a [`closing_upstream`], and that upstream's accept count.
async fn proxy_to_closing_upstream() -> (portcullis_proxy::RunningProxy, Arc<AtomicUsize>) {
    let (addr, accepted) = closing_upstream().await;
    let up = Upstream {
        addr,
        name: "closing".into(),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    (proxy, accepted)
}

/// An upstream that answers one request per connection with keep-alive framing, then closes
/// the connection: the pool must notice and not send the next request into a dead socket.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    scripted_upstream(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec(),
            true,
        )
    })
    .await
}

#[tokio::test]
async fn connections_closed_by_the_upstream_while_idle_are_not_reused() {
    let (proxy, accepted) = proxy_to_closing_upstream().await;
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

/// A raw upstream: reads each request head (bodiless requests only) and answers with the
/// response `answer` gives for it, closing the connection after it when `answer` says so.
async fn scripted_upstream(
    answer: fn(&str) -> (Vec<u8>, bool),
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
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
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (bytes, close) = answer(&path);
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if close {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn scripted(addr: std::net::SocketAddr) -> Upstream {
    Upstream {
        addr,
        name: "scripted".into(),
        hits: Arc::new(AtomicUsize::new(0)),
    }
}

fn framing_answers(path: &str) -> (Vec<u8>, bool) {
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/interim" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
                .to_vec(),
            false,
        ),
        "/until-close" => (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
            true,
        ),
        "/conflicting-length" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
            false,
        ),
        "/garbage" => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), false),
        "/bad-chunk" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/http10" => (
            b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold!".to_vec(),
            false,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec(),
            false,
        ),
    }
}

#[tokio::test]
async fn upstream_response_framings_are_decoded_and_reuse_follows_them() {
    let (addr, accepted) = scripted_upstream(framing_answers).await;
    let up = scripted(addr);
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let c = client();

    let r = send(&c, proxy.local_addr(), get("/chunked")).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello world"[..]));
    let r = send(&c, proxy.local_addr(), get("/interim")).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"final"[..]));
    let r = send(&c, proxy.local_addr(), get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "chunked and interim answers leave the connection reusable"
    );

    let r = send(&c, proxy.local_addr(), get("/until-close")).await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (200, &b"until the end"[..])
    );
    let r = send(&c, proxy.local_addr(), get("/http10")).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"old!"[..]));
    let r = send(&c, proxy.local_addr(), get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a body delimited by the close and an HTTP/1.0 answer end their connections"
    );
}

#[tokio::test]
async fn invalid_upstream_responses_are_502_json() {
    let (addr, _) = scripted_upstream(framing_answers).await;
    let up = scripted(addr);
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let c = client();
    for path in ["/conflicting-length", "/garbage"] {
        let r = send(&c, proxy.local_addr(), get(path)).await;
        assert_eq!(r.status, 502, "{path}");
        assert!(r.json()["request_id"].is_string(), "{path}: {:?}", r.body);
    }
    // A broken chunked body after a good head: the client sees an aborted response, and
    // the next request still works.
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /bad-chunk HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    assert!(!got.windows(5).any(|w| w == b"hello"), "{got:?}");
    let r = send(&c, proxy.local_addr(), get("/")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn idle_connections_closed_under_the_request_are_retried_for_bodiless_gets() {
    let (proxy, accepted) = proxy_to_closing_upstream().await;
    let c = client();
    // No pause between requests: the close may not have been seen when the next request
    // goes out, and then the request is sent again on a fresh connection.
    for i in 0..20 {
        let r = send(&c, proxy.local_addr(), get("/")).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
    assert!(accepted.load(Ordering::SeqCst) >= 20);
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_whatever_their_framing() {
    let up = upstream("echo", Behaviour::Echo).await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    // Chunked from the client: forwarded chunked, length preserved.
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut got = vec![0u8; 8192];
    let mut n = 0;
    while !String::from_utf8_lossy(&got[..n]).contains("body_len") {
        let m = stream.read(&mut got[n..]).await.unwrap();
        assert!(m > 0, "{:?}", String::from_utf8_lossy(&got[..n]));
        n += m;
    }
    let text = String::from_utf8_lossy(&got[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_len\":7"), "{text}");
    assert!(
        text.contains("\"transfer-encoding\":[\"chunked\"]"),
        "{text}"
    );

    // Large bodies with a length, several times over one keep-alive connection.
    let c = client();
    let big = vec![b'z'; 3 << 20];
    for _ in 0..3 {
        let r = send(&c, proxy.local_addr(), get("/big").method("PUT").body(&big)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body_len"], 3 << 20);
        assert_eq!(r.json()["headers"]["content-length"][0], "3145728");
    }
    let r = send(&c, proxy.local_addr(), get("/empty").method("POST")).await;
    assert_eq!(r.json()["headers"]["content-length"][0], "0");
    let r = send(&c, proxy.local_addr(), get("/none")).await;
    assert!(r.json()["headers"].get("content-length").is_none());
}
