//! Faults, each with the behaviour it must have: bounded in time, fail closed where security
//! is involved, and the process never exits. (JWKS and introspection outages are in
//! auth_jwt.rs and auth_idp.rs; the API server going away and a corrupt ConfigMap/Secret in
//! kube_mode.rs and e2e/tests/cluster.rs.)
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-proxy");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn request(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// An HTTP/1.1 upstream on a thread: answers every request after `delay`; `reset` makes it
/// send a head and part of the body, then reset the connection.
fn upstream(delay: Duration, reset: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                if reset {
                    // Read only the start of the request: closing with the rest unread
                    // makes the kernel send a reset, not a FIN (std has no SO_LINGER).
                    let mut start = [0u8; 16];
                    let _ = stream.read_exact(&mut start);
                    std::thread::sleep(delay);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b");
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // Read one request head (the tests send no bodies).
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    std::thread::sleep(delay);
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
                    );
                }
            });
        }
    });
    (port, served)
}

fn manifests(dir: &Path, routes: &[(&str, &str, u16)]) {
    let mut yaml = String::new();
    for (name, prefix, port) in routes {
        yaml.push_str(&format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  paths: [{{type: Prefix, value: {prefix}}}]\n  upstream:\n    targets: [{{url: \"http://127.0.0.1:{port}\"}}]\n---\n"
        ));
    }
    std::fs::write(dir.join("routes.yaml"), yaml).unwrap();
}

struct Proxy {
    child: Child,
    port: u16,
    admin: u16,
}

impl Proxy {
    fn start(dir: &Path, extra: &[&str]) -> Proxy {
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(BIN)
            .arg("--manifests")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proxy = Proxy { child, port, admin };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !request(admin, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            assert!(Instant::now() < deadline, "proxy did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(Instant::now() < deadline, "proxy did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_under_load_fails_no_in_flight_request() {
    let dir = tempdir("sigterm");
    let (up, served) = upstream(Duration::from_millis(600), false);
    manifests(&dir, &[("slow", "/", up)]);
    let mut proxy = Proxy::start(&dir, &["--no-audit"]);
    let port = proxy.port;
    let clients: Vec<_> = (0..24)
        .map(|_| std::thread::spawn(move || request(port, "/work")))
        .collect();
    // Every request is in flight (the upstream holds each for 600 ms) when SIGTERM comes.
    std::thread::sleep(Duration::from_millis(250));
    proxy.signal("TERM");
    for client in clients {
        let reply = client.join().unwrap().unwrap_or_default();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.100}");
        assert!(reply.ends_with("ok"), "{reply:.100}");
    }
    assert_eq!(served.load(Ordering::SeqCst), 24);
    let exit = proxy.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    // Stopped: new connections are refused.
    assert!(request(port, "/work").is_none());
}

#[test]
fn an_audit_file_on_a_full_disk_costs_lines_not_requests() {
    let dir = tempdir("full");
    let (up, _) = upstream(Duration::ZERO, false);
    manifests(&dir, &[("r", "/", up)]);
    // /dev/full fails every write with ENOSPC, like a full disk.
    let mut proxy = Proxy::start(&dir, &["--audit-file", "/dev/full"]);
    for _ in 0..50 {
        let reply = request(proxy.port, "/x").unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.100}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = request(proxy.admin, "/metrics").unwrap();
        let dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("api_audit_dropped_total{reason=\"write_failed\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if dropped == 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped {dropped}: {metrics:.300}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proxy.alive());
}

#[test]
fn the_audit_file_is_reopened_on_sighup() {
    let dir = tempdir("rotate");
    let (up, _) = upstream(Duration::ZERO, false);
    manifests(&dir, &[("r", "/", up)]);
    let log = dir.join("audit.log");
    let proxy = Proxy::start(&dir, &["--audit-file", log.to_str().unwrap()]);
    let lines = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"request_id\""))
            .count()
    };
    let wait_for = |path: &Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(path) != n {
            assert!(
                Instant::now() < deadline,
                "{} has {} lines",
                path.display(),
                lines(path)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    request(proxy.port, "/before").unwrap();
    wait_for(&log, 1);
    let rotated = dir.join("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(200));
    // The line that notices the reopen may still land in the rotated file.
    request(proxy.port, "/after").unwrap();
    request(proxy.port, "/after").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(&rotated) + lines(&log) != 3 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lines(&log) >= 1, "nothing was written to the reopened file");
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("\"/after\""), "{written}");
}

#[test]
fn an_upstream_reset_mid_response_aborts_that_response_only() {
    let dir = tempdir("reset");
    let (resetting, _) = upstream(Duration::ZERO, true);
    let (healthy, _) = upstream(Duration::ZERO, false);
    manifests(
        &dir,
        &[("reset", "/reset", resetting), ("ok", "/", healthy)],
    );
    let mut proxy = Proxy::start(&dir, &["--no-audit"]);
    for _ in 0..10 {
        let started = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /reset HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        // The head had already gone to the client: the body is cut short and the
        // connection closed (a client sees fewer bytes than Content-Length), at once.
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(!text.ends_with(&"x".repeat(10)), "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.len() < 1000, "{text}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let ok = request(proxy.port, "/fine").unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok:.100}");
    }
    assert!(proxy.alive());
}
