//! Differential parsing: the same raw requests through Portcullis, nginx and HAProxy (each
//! in its default proxy configuration, in front of its own recording upstream), comparing
//! what reaches the upstream. Where they disagree, Portcullis must be the strict one: it
//! never forwards a request that a peer refuses, and what it forwards is in normal form.
//! The table it prints is the one in docs/security.md.
#![allow(clippy::unwrap_used)]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use portcullis_compiler::config::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one upstream received: method, target, the headers a test cares about, body.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

async fn recording_upstream() -> (SocketAddr, Recorder) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder::default();
    let rec = recorder.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let rec = rec.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body: hyper::body::Incoming = body;
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .unwrap_or_default();
                        let headers = parts
                            .headers
                            .iter()
                            .filter(|(name, _)| {
                                let n = name.as_str();
                                n.starts_with("x-")
                                    && !n.starts_with("x-forwarded")
                                    && n != "x-real-ip"
                                    && n != "x-request-id"
                                    || n.contains('_')
                                    || n == "transfer-encoding"
                                    || n == "cookie"
                            })
                            .map(|(n, v)| {
                                (
                                    n.as_str().to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        rec.0.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            headers,
                            body,
                        });
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, recorder)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Peer {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers too (a killed master
        // leaves them running).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn binary(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = format!("{dir}/{name}");
        if Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{name} is not installed: run e2e/install-deps.sh");
}

fn start_nginx(dir: &Path, upstream: SocketAddr) -> Peer {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nerror_log {d}/nginx-error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(binary("nginx"))
        .args(["-p", &d.to_string(), "-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Peer {
        name: "nginx",
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

fn start_haproxy(dir: &Path, upstream: SocketAddr) -> Peer {
    let port = free_port();
    let conf = format!(
        "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n\
         timeout server 5s\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
         backend b\n  server s {upstream}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(binary("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Peer {
        name: "haproxy",
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// Sends `request` and returns the response status (0: no answer, connection closed).
async fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Refused(u16),
    Forwarded(Seen),
}

impl Outcome {
    fn short(&self) -> String {
        match self {
            Outcome::Refused(0) => "closed".into(),
            Outcome::Refused(status) => format!("{status}"),
            Outcome::Forwarded(seen) => format!(
                "fwd {} {}{}",
                seen.method,
                seen.target,
                if seen.headers.is_empty() {
                    String::new()
                } else {
                    format!(
                        " [{}]",
                        seen.headers
                            .iter()
                            .map(|(n, v)| format!("{n}: {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        }
    }
}

const H: &str = "Host: a.example\r\n";

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\n{H}Connection: close\r\n\r\n").into_bytes()
    };
    let with = |extra: &str| format!("GET /h HTTP/1.1\r\n{H}{extra}Connection: close\r\n\r\n");
    let post = |headers: &str, body: &str| {
        format!("POST /b HTTP/1.1\r\n{H}{headers}Connection: close\r\n\r\n{body}")
    };
    vec![
        ("plain GET", get("/x?q=1")),
        ("encoded unreserved", get("/%70rivate")),
        ("dot segments", get("/public/../private")),
        ("encoded dot segments", get("/public/%2e%2e/private")),
        ("above the root", get("/../private")),
        ("double slash", get("//private")),
        ("encoded slash", get("/a%2Fb")),
        ("backslash", get("/a\\b")),
        ("encoded NUL", get("/a%00b")),
        ("bad escape", get("/a%zz")),
        ("Java path parameter", get("/public/..;/private")),
        ("fragment in target", get("/a#frag")),
        ("absolute-form", get("http://b.example/abs")),
        (
            "asterisk-form",
            b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "CONNECT",
            b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n".to_vec(),
        ),
        (
            "lower-case method",
            format!("delete /x HTTP/1.1\r\n{H}Connection: close\r\n\r\n").into_bytes(),
        ),
        (
            "extension method",
            format!("PURGE /x HTTP/1.1\r\n{H}Connection: close\r\n\r\n").into_bytes(),
        ),
        (
            "no Host (HTTP/1.1)",
            b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "two Host fields",
            format!("GET /x HTTP/1.1\r\n{H}Host: b.example\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        ),
        (
            "Host with a slash",
            b"GET /x HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "underscore header",
            with("X_User_ID: admin\r\n").into_bytes(),
        ),
        ("space before colon", with("X-A : 1\r\n").into_bytes()),
        ("obs-fold", with("X-A: 1\r\n 2\r\n").into_bytes()),
        (
            "bare LF",
            b"GET /h HTTP/1.1\nHost: a.example\nX-A: 1\nConnection: close\n\n".to_vec(),
        ),
        ("NUL in a header value", with("X-A: a\0b\r\n").into_bytes()),
        ("invalid header name", with("X@A: 1\r\n").into_bytes()),
        (
            "TE gzip, chunked",
            post(
                "Transfer-Encoding: gzip, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            )
            .into_bytes(),
        ),
        (
            "TE chunked twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            )
            .into_bytes(),
        ),
        (
            "TE and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            )
            .into_bytes(),
        ),
        (
            "two Content-Lengths",
            post("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd").into_bytes(),
        ),
        (
            "Content-Length list",
            post("Content-Length: 3, 3\r\n", "abc").into_bytes(),
        ),
        (
            "TE on HTTP/1.0",
            format!(
                "POST /b HTTP/1.0\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "chunk extension",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3;ext=1\r\nabc\r\n0\r\n\r\n",
            )
            .into_bytes(),
        ),
        (
            "chunk size 0x3",
            post("Transfer-Encoding: chunked\r\n", "0x3\r\nabc\r\n0\r\n\r\n").into_bytes(),
        ),
        (
            "negative Content-Length",
            post("Content-Length: -1\r\n", "").into_bytes(),
        ),
        (
            "plus-signed Content-Length",
            post("Content-Length: +3\r\n", "abc").into_bytes(),
        ),
        (
            "identity header from client",
            with("X-Consumer-Username: admin\r\n").into_bytes(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_is_never_less_strict_than_nginx_or_haproxy() {
    let dir = tempdir();
    let (ours_up, ours_rec) = recording_upstream().await;
    let (nginx_up, nginx_rec) = recording_upstream().await;
    let (haproxy_up, haproxy_rec) = recording_upstream().await;
    let mut r = route("shop/all", PathKind::Prefix, "/", &[]);
    r.upstream.targets = vec![TargetConfig {
        url: format!("http://{ours_up}"),
        weight: 1,
        service: None,
    }];
    let proxy = start(config(vec![r])).await;
    let nginx = start_nginx(&dir, nginx_up);
    let haproxy = start_haproxy(&dir, haproxy_up);
    wait_listening(nginx.addr).await;
    wait_listening(haproxy.addr).await;

    let mut table = vec![format!(
        "| request | Portcullis | {} | {} |\n| --- | --- | --- | --- |",
        nginx.name, haproxy.name
    )];
    // Where Portcullis forwards what a peer refuses, on purpose; each reason is the
    // difference, and why the upstream cannot read the request two ways.
    let intended: &[(&str, &str)] = &[
        (
            "fragment in target",
            "the HTTP parser drops the fragment: the upstream receives /a, never the fragment",
        ),
        (
            "absolute-form",
            "RFC 9112 §3.2.2: servers must accept absolute-form; it is routed by its own \
             authority and forwarded in origin-form",
        ),
        (
            "TE and Content-Length",
            "RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; hyper drops the \
             Content-Length, so the upstream receives one framing (chunked) only",
        ),
    ];
    let mut less_strict = Vec::new();
    for (name, request) in cases() {
        let mut outcomes = Vec::new();
        for (addr, recorder) in [
            (proxy.local_addr(), &ours_rec),
            (nginx.addr, &nginx_rec),
            (haproxy.addr, &haproxy_rec),
        ] {
            let status = status_of(addr, &request).await;
            // Give a forwarded request time to land at the upstream.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen = recorder.take();
            outcomes.push(match seen.into_iter().next() {
                Some(seen) if status == 200 => Outcome::Forwarded(seen),
                _ => Outcome::Refused(status),
            });
        }
        table.push(format!(
            "| {name} | {} | {} | {} |",
            outcomes[0].short(),
            outcomes[1].short(),
            outcomes[2].short()
        ));
        if let Outcome::Forwarded(ours) = &outcomes[0] {
            for (peer, outcome) in [("nginx", &outcomes[1]), ("haproxy", &outcomes[2])] {
                if let Outcome::Refused(status) = outcome {
                    if intended.iter().any(|(case, _)| *case == name) {
                        continue;
                    }
                    less_strict.push(format!(
                        "{name}: Portcullis forwarded {} {} but {peer} refused ({status})",
                        ours.method, ours.target
                    ));
                }
            }
            // What we forward is in normal form: no dot segment, no `//`, no `\`.
            let path = ours.target.split('?').next().unwrap_or("");
            assert!(
                !path.contains("/../")
                    && !path.contains("/./")
                    && !path.contains("//")
                    && !path.contains('\\'),
                "{name}: forwarded {path}"
            );
            // No client-sent identity or underscore header reaches our upstream.
            assert!(
                !ours
                    .headers
                    .iter()
                    .any(|(n, _)| n.contains('_') || n.starts_with("x-consumer")),
                "{name}: {:?}",
                ours.headers
            );
        }
    }
    println!("{}", table.join("\n"));
    for (case, why) in intended {
        println!("- {case}: {why}");
    }
    assert!(
        less_strict.is_empty(),
        "Portcullis was less strict than a peer:\n{}",
        less_strict.join("\n")
    );
    drop((nginx, haproxy));
    proxy.shutdown().await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-differential-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
