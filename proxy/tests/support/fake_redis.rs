//! A fake Redis on a loopback port that speaks just enough RESP to be connected to (`AUTH`,
//! `SELECT`, `SCRIPT LOAD`, `PING`; `CLUSTER SLOTS`, as a one-node cluster owning every
//! slot) and then answers every script call with a reply that never
//! ends: an array header of the test's choosing followed by integers, streamed in chunks.
//! It runs on its own thread and runtime, so a proxy that hogs its own runtime cannot slow
//! the attacker down (as a real remote peer would not be).
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone)]
pub struct Hostile {
    /// Sent first in answer to `EVALSHA`/`EVAL`, e.g. `*1000000000\r\n`.
    pub header: &'static [u8],
    /// Then `:1\r\n` repeated to this many bytes per write...
    pub chunk: usize,
    /// ...with this pause between writes, for as long as the connection takes them.
    pub pause: Duration,
}

pub struct FakeRedis {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Script calls answered (with the hostile reply) so far.
    pub calls: Arc<AtomicUsize>,
    /// Bytes of hostile replies written so far.
    pub streamed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeRedis {
    pub fn start(hostile: Hostile) -> FakeRedis {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let fake = FakeRedis {
            addr,
            connections: Arc::default(),
            calls: Arc::default(),
            streamed: Arc::default(),
            stop: Arc::default(),
        };
        let (connections, calls, streamed, stop) = (
            fake.connections.clone(),
            fake.calls.clone(),
            fake.streamed.clone(),
            fake.stop.clone(),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                while !stop.load(Ordering::Acquire) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
                    let Ok(Ok((stream, _))) = accepted else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (hostile, calls, streamed, stop) = (
                        hostile.clone(),
                        calls.clone(),
                        streamed.clone(),
                        stop.clone(),
                    );
                    tokio::spawn(serve(stream, addr, hostile, calls, streamed, stop));
                }
            });
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

async fn serve(
    mut stream: TcpStream,
    addr: SocketAddr,
    hostile: Hostile,
    calls: Arc<AtomicUsize>,
    streamed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut input = Vec::new();
    loop {
        let command = loop {
            if let Some((command, len)) = command(&input) {
                input.drain(..len);
                break command;
            }
            let mut buf = [0u8; 16 << 10];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            }
        };
        let name = command.first().map(|c| c.to_ascii_uppercase());
        match name.as_deref() {
            Some(b"SCRIPT") => {
                // A script's SHA-1 is 40 hex digits; any will do.
                let reply = format!("$40\r\n{}\r\n", "0".repeat(40));
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(b"CLUSTER") => {
                // [[first slot, last slot, [host, port]]]: this node owns every slot.
                let reply = format!(
                    "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{}\r\n",
                    addr.port()
                );
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(b"EVALSHA") | Some(b"EVAL") => {
                calls.fetch_add(1, Ordering::SeqCst);
                if stream.write_all(hostile.header).await.is_err() {
                    return;
                }
                let chunk = b":1\r\n".repeat(hostile.chunk / 4);
                while !stop.load(Ordering::Acquire) {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    streamed.fetch_add(chunk.len(), Ordering::SeqCst);
                    tokio::time::sleep(hostile.pause).await;
                }
                return;
            }
            _ => {
                if stream.write_all(b"+OK\r\n").await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One command (an array of bulk strings) from the start of `buf`, and its length.
fn command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let rest = buf.get(at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..end], at + end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let arg = buf.get(next..next + len)?;
        args.push(arg.to_vec());
        at = next + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((args, at))
}
