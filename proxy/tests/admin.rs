//! The admin listener holds against slow and abusive clients: timeouts on half-sent requests
//! and idle connections, and no busy loop when the process runs out of file descriptors.
#![allow(clippy::unwrap_used)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Reads until the peer closes (or `limit` passes); returns what was read and how long the
/// connection stayed open.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration, bool) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
        if started.elapsed() >= limit {
            break false;
        }
    };
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
        closed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_closes_half_sent_requests_and_idle_connections() {
    let proxy = start(config(vec![])).await;
    let admin = proxy.admin_addr().unwrap();
    let result = tokio::task::spawn_blocking(move || {
        // A head that never completes.
        let mut slow = TcpStream::connect(admin).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .unwrap();
        // A keep-alive connection that goes quiet after one request.
        let mut idle = TcpStream::connect(admin).unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let slow = read_until_closed(&mut slow, Duration::from_secs(20));
        let idle = read_until_closed(&mut idle, Duration::from_secs(20));
        (slow, idle)
    })
    .await
    .unwrap();
    let ((_, slow_open, slow_closed), (idle_text, _, idle_closed)) = result;
    assert!(slow_closed, "half-sent request held open for {slow_open:?}");
    assert!(
        slow_open < Duration::from_secs(15),
        "half-sent request held {slow_open:?}"
    );
    assert!(idle_text.starts_with("HTTP/1.1 200"), "{idle_text}");
    assert!(idle_closed, "idle keep-alive connection never closed");
    // Normal use still works.
    let r = send(&client(), admin, get("/healthz")).await;
    assert_eq!(r.status, 200);
}

fn quickstart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of a process, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors, the admin accept loop must back off, not spin a core. Linux:
/// `sh -c ulimit` and `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
#[test]
fn admin_accept_backs_off_when_out_of_file_descriptors() {
    let (port, admin) = (free_port(), free_port());
    let command = format!(
        "ulimit -n 64 && exec {} --manifests {} --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:{admin}",
        env!("CARGO_BIN_EXE_portcullis-proxy"),
        quickstart().display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &command])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // More connections than descriptors: the proxy accepts until EMFILE, the rest wait in
    // the backlog and keep the listener readable.
    let held: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", admin)).ok())
        .collect();
    assert!(held.len() > 70, "only {} connections", held.len());
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(child.id());
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(child.id()) - before;
    let elapsed = window.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
    // A spinning accept loop burns a whole core (~100 ticks/s at USER_HZ=100); backing off
    // costs a few wake-ups per second.
    assert!(
        used < 40,
        "{used} CPU ticks in {elapsed:?} while out of descriptors: the accept loop spins"
    );
}
