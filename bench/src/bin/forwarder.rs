//! The least a tokio HTTP/1.1 proxy can do per request, as a yardstick for issue #2's
//! benchmark (`bench/run-forwarder.sh`): one current-thread runtime, one upstream
//! connection per client connection, requests without a body, responses with
//! `Content-Length`, heads copied as parsed bytes (no header maps, no routing, no request
//! ids, no timeouts). Not a proxy anyone should run: it answers nothing it cannot forward.
//!
//! `forwarder LISTEN_ADDR UPSTREAM_ADDR`

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_HEADERS: usize = 64;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        bail!("usage: forwarder LISTEN_ADDR UPSTREAM_ADDR");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        loop {
            let (client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(client, &upstream).await {
                    eprintln!("forwarder: {e:#}");
                }
            });
        }
    })
}

async fn serve(mut client: TcpStream, upstream: &str) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (mut from_client, mut to_upstream, mut from_upstream) = (
        Vec::with_capacity(8192),
        Vec::with_capacity(8192),
        Vec::with_capacity(8192),
    );
    loop {
        let head_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(n) = request.parse(&from_client)? {
                to_upstream.clear();
                to_upstream.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
                to_upstream.push(b' ');
                to_upstream.extend_from_slice(request.path.unwrap_or("/").as_bytes());
                to_upstream.extend_from_slice(b" HTTP/1.1\r\n");
                for h in request.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") {
                        continue;
                    }
                    to_upstream.extend_from_slice(h.name.as_bytes());
                    to_upstream.extend_from_slice(b": ");
                    to_upstream.extend_from_slice(h.value);
                    to_upstream.extend_from_slice(b"\r\n");
                }
                to_upstream.extend_from_slice(b"x-forwarded-for: 127.0.0.1\r\n\r\n");
                break n;
            }
            if client.read_buf(&mut from_client).await? == 0 {
                return Ok(());
            }
        };
        from_client.drain(..head_len);
        up.write_all(&to_upstream).await?;
        let response_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = response.parse(&from_upstream)? {
                let body: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .context("upstream response without Content-Length")?;
                if from_upstream.len() >= n + body {
                    break n + body;
                }
            }
            if up.read_buf(&mut from_upstream).await? == 0 {
                bail!("upstream closed");
            }
        };
        client.write_all(&from_upstream[..response_len]).await?;
        from_upstream.drain(..response_len);
    }
}
