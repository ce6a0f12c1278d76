//! A fixed-rate HTTP/1.1 load generator for the soak (`bench/soak/run.sh`).
//!
//! `--connections` keep-alive connections share `--rate` requests per second: each sends
//! on its own schedule, and a request's latency counts from when it was *due*, not from
//! when it went out, so a stall shows as latency instead of hiding as a lower rate
//! (coordinated omission). Per second of the run it writes a CSV line: second, requests
//! due, answered 2xx, failed (other status, I/O error, timeout), p50, p99 and max latency
//! in ms. Exits non-zero when any request failed.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Default, Clone)]
struct Second {
    due: u64,
    ok: u64,
    failed: u64,
    latencies_us: Vec<u32>,
}

struct Args {
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    connections: usize,
    request: Vec<u8>,
    out: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut target = None;
    let mut rate = 1000.0;
    let mut duration = Duration::from_secs(10);
    let mut connections = 32;
    let mut path = "/".to_string();
    let mut headers = Vec::new();
    let mut body: Option<String> = None;
    let mut out = "soak.csv".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => target = Some(value()?.parse()?),
            "--rate" => rate = value()?.parse()?,
            "--duration" => duration = Duration::from_secs(value()?.parse()?),
            "--connections" => connections = value()?.parse()?,
            "--path" => path = value()?,
            "--header" => headers.push(value()?),
            "--body" => body = Some(value()?),
            "--out" => out = value()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let target: SocketAddr = target.context("--target HOST:PORT is required")?;
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: soak.example\r\n");
    for header in &headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if let Some(body) = &body {
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        request.push_str("\r\n");
    }
    Ok(Args {
        target,
        rate,
        duration,
        connections: connections.max(1),
        request: request.into_bytes(),
        out,
    })
}

/// Reads one response; returns its status. Bodies are read by Content-Length (the proxy
/// answers every request of this load with one).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(buf)? {
            let status = response.code.context("no status")?;
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .context("no content-length")?;
            while buf.len() < head + length {
                let mut chunk = [0u8; 16384];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..head + length);
            return Ok(status);
        }
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(
    args: Arc<Args>,
    index: usize,
    start: Instant,
    seconds: Arc<Mutex<Vec<Second>>>,
) {
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    // Spread the connections' schedules over one interval.
    let offset = interval.mul_f64(index as f64 / args.connections as f64);
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16384);
    let mut n: u32 = 0;
    loop {
        let due = start + offset + interval * n;
        n += 1;
        if due >= start + args.duration {
            return;
        }
        tokio::time::sleep_until(due).await;
        let second = (due - start).as_secs() as usize;
        let exchange = async {
            if stream.is_none() {
                let s = TcpStream::connect(args.target).await?;
                s.set_nodelay(true)?;
                stream = Some(s);
                buf.clear();
            }
            let s = stream.as_mut().context("no stream")?;
            s.write_all(&args.request).await?;
            read_response(s, &mut buf).await
        };
        let result = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        let latency = due.elapsed();
        let mut seconds = match seconds.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(slot) = seconds.get_mut(second) else {
            continue;
        };
        slot.due += 1;
        match result {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                slot.ok += 1;
                slot.latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
            }
            other => {
                slot.failed += 1;
                if slot.failed <= 3 {
                    eprintln!("second {second}: failed: {other:?}");
                }
                stream = None;
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let total_seconds = args.duration.as_secs() as usize;
    let seconds = Arc::new(Mutex::new(vec![Second::default(); total_seconds]));
    runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(100);
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(connection(args.clone(), i, start, seconds.clone())))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    let seconds = match seconds.lock() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let mut out = std::fs::File::create(&args.out)?;
    writeln!(out, "second,due,ok,failed,p50_ms,p99_ms,max_ms")?;
    let (mut due, mut ok, mut failed) = (0, 0, 0);
    let mut all = Vec::new();
    for (i, mut s) in seconds.into_iter().enumerate() {
        s.latencies_us.sort_unstable();
        writeln!(
            out,
            "{i},{},{},{},{:.3},{:.3},{:.3}",
            s.due,
            s.ok,
            s.failed,
            percentile(&s.latencies_us, 0.5),
            percentile(&s.latencies_us, 0.99),
            percentile(&s.latencies_us, 1.0)
        )?;
        due += s.due;
        ok += s.ok;
        failed += s.failed;
        all.extend_from_slice(&s.latencies_us);
    }
    all.sort_unstable();
    println!(
        "requests {due}, ok {ok}, failed {failed}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        percentile(&all, 1.0)
    );
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}
