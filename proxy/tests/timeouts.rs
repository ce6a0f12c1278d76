//! Send and read timeouts against raw-socket upstreams that stall on purpose.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use portcullis_compiler::config::{PathKind, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that accepts connections and then does `behaviour` with the socket.
async fn raw_upstream<F, Fut>(behaviour: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behaviour(stream));
        }
    });
    format!("http://{addr}")
}

fn raw_route(url: String, send_ms: u64, read_ms: u64) -> portcullis_compiler::GatewayConfig {
    let mut r = route("t", PathKind::Prefix, "/", &[]);
    r.upstream.targets = vec![TargetConfig {
        url,
        weight: 1,
        service: None,
    }];
    r.upstream.send_timeout_ms = send_ms;
    r.upstream.read_timeout_ms = read_ms;
    config(vec![r])
}

/// Reads the status code of the first response on `stream`.
async fn read_status(stream: &mut tokio::net::tcp::OwnedReadHalf) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_hits_the_send_timeout() {
    // Reads the request head, then never reads again: the body backs up in the socket.
    let url = raw_upstream(|mut s| async move {
        let mut head = [0u8; 1024];
        let _ = s.read(&mut head).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let proxy = start(raw_route(url, 300, 60_000)).await;

    let client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    let total: usize = 256 << 20;
    writer
        .write_all(
            format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {total}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 << 10];
        let mut sent = 0;
        while sent < total {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    let status = tokio::time::timeout(Duration::from_secs(20), read_status(&mut reader))
        .await
        .expect("no answer: the send timeout did not fire");
    assert_eq!(status, 504);
    // The read timeout (60 s) must not be what ended it.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    feeder.abort();
}

#[tokio::test]
async fn a_slow_but_moving_body_is_not_cut_by_the_read_timeout() {
    // Sends the body in pieces, each pause shorter than the read timeout; the total is longer.
    let url = raw_upstream(|mut s| async move {
        let mut head = [0u8; 4096];
        let _ = s.read(&mut head).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await;
        for byte in b"hello" {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = s.write_all(&[*byte]).await;
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let proxy = start(raw_route(url, 1_000, 400)).await;
    let reply = send(&client(), proxy.local_addr(), get("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"hello");
}

#[tokio::test]
async fn a_stalled_response_body_is_aborted_at_the_read_timeout() {
    let url = raw_upstream(|mut s| async move {
        let mut head = [0u8; 4096];
        let _ = s.read(&mut head).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            .await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let proxy = start(raw_route(url, 1_000, 300)).await;

    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    // The proxy must close the connection rather than hang: a truncated body is the signal.
    let read_all = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read_all.is_ok(), "the proxy kept a stalled body open");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("partial"), "{text}");
}
