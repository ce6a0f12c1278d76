//! Issue #19's defects, each over real sockets: path confusion against upstream frameworks
//! that decode and normalise (Python WSGI, Node), underscore identity headers, method case,
//! client faults charged to the upstream, stalled bodies, and the request-line checks.
#![allow(clippy::unwrap_used)]
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_compiler::config::*;
use portcullis_proxy::client_body::BodyLimits;
use portcullis_proxy::ProxyOptions;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream server process (Python or Node) on a free loopback port.
struct Framework {
    child: Child,
    addr: SocketAddr,
}

impl Framework {
    fn start(program: &str, script: &str) -> Framework {
        let script = format!("{}/tests/support/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(program)
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} {script}: {e} (install it: e2e/install-deps.sh)")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{program} printed {line:?}"));
        Framework {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target(url: String) -> TargetConfig {
    TargetConfig {
        url,
        weight: 1,
        service: None,
    }
}

/// A public catch-all route and a protected `/private` route (API key), both to `url`.
fn public_and_private(url: &str) -> portcullis_compiler::GatewayConfig {
    let dummy = route("shop/public", PathKind::Prefix, "/", &[]);
    let mut public = dummy.clone();
    public.upstream.targets = vec![target(url.to_string())];
    let mut private = route("shop/private", PathKind::Prefix, "/private", &[]);
    private.upstream.targets = vec![target(url.to_string())];
    private.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey],
        hide_credentials: true,
        api_key_header: Some("x-api-key".into()),
        ..Default::default()
    }));
    // Rewrites into a public prefix must not climb out of it.
    let mut api = route("shop/api", PathKind::Prefix, "/api", &[]);
    api.upstream.targets = vec![target(url.to_string())];
    api.rewrite_prefix = Some("/public/api".into());
    let mut cfg = config(vec![public, private, api]);
    cfg.consumers = vec![ConsumerConfig {
        id: "shop/app".into(),
        namespace: "shop".into(),
        username: "app".into(),
        ..Default::default()
    }];
    cfg.secrets.api_keys = vec![ApiKeyEntry {
        sha256: hex::encode(Sha256::digest(b"the-key")),
        consumer: "shop/app".into(),
    }];
    cfg
}

/// Sends raw bytes and returns (status, body) of the response.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn get_path(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

const CONFUSIONS: &[&str] = &[
    "/%70rivate",
    "/priv%61te",
    "/PRIV%61TE/../private",
    "/private%2fx",
    "/private%2Fx",
    "/public/../private",
    "/public/%2e%2e/private",
    "/public/%2E%2E/private",
    "/public/.%2e/private",
    "/public/..%2fprivate",
    "/public/..%5cprivate",
    "/public/..\\private",
    "/public\\..\\private",
    "/./private",
    "//private",
    "///private/x",
    "/public//..//private",
    "/public/..//../private",
    "/public/..;/private",
    "/api/../../private",
    "/api/..%2f..%2fprivate",
    "/api/%2e%2e/%2e%2e/private",
    "/%2fprivate",
    "/%5cprivate",
    "/private%00",
    "/%2e/private",
];

/// Every spelling of `/private` either reaches the private route (and its 401) or is
/// refused; none reaches the protected handler without the key.
async fn no_confusion_reaches_the_private_handler(framework: &Framework) {
    let proxy = start(public_and_private(&framework.url())).await;
    let addr = proxy.local_addr();
    // Sanity: the key opens the private handler, and the public one answers.
    let (status, body) = get_path(addr, "/private", "X-API-Key: the-key\r\n").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"handler\": \"private\"") || body.contains("\"handler\":\"private\""));
    let (status, body) = get_path(addr, "/public/x", "").await;
    assert_eq!(status, 200, "{body}");
    let mut outcomes = Vec::new();
    for path in CONFUSIONS {
        let (status, body) = get_path(addr, path, "").await;
        let reached = status == 200 && body.replace(' ', "").contains("\"handler\":\"private\"");
        assert!(
            !reached,
            "{path} reached the private handler without a key: {body}"
        );
        assert!(
            matches!(status, 400 | 401),
            "{path}: expected 400 or 401, got {status} {body}"
        );
        outcomes.push((path, status));
    }
    // Normalised spellings meet the private route's authentication, not a 400.
    for (path, status) in outcomes {
        if ["/%70rivate", "/public/../private", "//private"].contains(path) {
            assert_eq!(status, 401, "{path}");
        }
        // Climbing above the root is refused, as nginx does.
        if ["/api/../../private", "/public/..//../private"].contains(path) {
            assert_eq!(status, 400, "{path}");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn path_confusions_against_python_wsgi() {
    let wsgi = Framework::start("python3", "wsgi_upstream.py");
    no_confusion_reaches_the_private_handler(&wsgi).await;
}

#[tokio::test]
async fn path_confusions_against_node() {
    let node = Framework::start("node", "node_upstream.js");
    no_confusion_reaches_the_private_handler(&node).await;
}

#[tokio::test]
async fn the_upstream_sees_the_normalised_path_and_encoded_slashes_pass_only_when_allowed() {
    let wsgi = Framework::start("python3", "wsgi_upstream.py");
    let mut files = route("shop/files", PathKind::Prefix, "/files", &[]);
    files.upstream.targets = vec![target(wsgi.url())];
    files.path_normalization = PathNormalizationConfig {
        merge_slashes: false,
        pass_encoded_slashes: true,
    };
    let mut strict = route("shop/strict", PathKind::Prefix, "/strict", &[]);
    strict.upstream.targets = vec![target(wsgi.url())];
    let proxy = start(config(vec![files, strict])).await;
    let addr = proxy.local_addr();
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

    let (status, body) = get_path(addr, "/strict/a/./b/../%63?q=%2e%2e", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["path"], "/strict/a/c");
    let (status, _) = get_path(addr, "/strict/a%2Fb", "").await;
    assert_eq!(status, 400);
    let (status, body) = get_path(addr, "/strict//a", "").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/strict/a");

    // PassEncoded: forwarded encoded (WSGI decodes it, so PATH_INFO shows the slash).
    let (status, body) = get_path(addr, "/files/a%2fb", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["path"], "/files/a/b");
    // mergeSlashes: false keeps empty segments when merging them again gives the match.
    let (status, body) = get_path(addr, "/files//a//b", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["path"], "/files//a//b");
    // ... and refuses a path whose meaning they change.
    let (status, _) = get_path(addr, "/files/x//../a", "").await;
    assert_eq!(status, 400);
    proxy.shutdown().await;
}

#[tokio::test]
async fn underscore_and_forwarding_headers_do_not_reach_a_wsgi_upstream() {
    let wsgi = Framework::start("python3", "wsgi_upstream.py");
    let proxy = start(public_and_private(&wsgi.url())).await;
    let addr = proxy.local_addr();
    let (status, body) = get_path(
        addr,
        "/public",
        "X_Consumer_Username: admin\r\nX_User_ID: 1\r\nX_Real_IP: 6.6.6.6\r\n\
         Forwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Port: 443\r\n\
         X-Forwarded-Prefix: /admin\r\nX-Forwarded-Ssl: on\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let env = &serde_json::from_str::<serde_json::Value>(&body).unwrap()["env"];
    assert!(env.get("HTTP_X_CONSUMER_USERNAME").is_none(), "{env}");
    assert!(env.get("HTTP_X_USER_ID").is_none(), "{env}");
    assert_eq!(env["HTTP_X_REAL_IP"], "127.0.0.1");
    assert!(env.get("HTTP_X_FORWARDED_PREFIX").is_none(), "{env}");
    assert!(env.get("HTTP_X_FORWARDED_SSL").is_none(), "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_PORT"], addr.port().to_string());
    assert_eq!(env["HTTP_X_FORWARDED_PROTO"], "http");
    let forwarded = env["HTTP_FORWARDED"].as_str().unwrap();
    assert!(
        forwarded.starts_with("for=127.0.0.1;proto=http"),
        "{forwarded}"
    );
    assert!(!forwarded.contains("6.6.6.6"), "{forwarded}");
    proxy.shutdown().await;

    // The option keeps them (nginx's underscores_in_headers on).
    let proxy = start_with(
        ProxyOptions {
            allow_underscores_in_headers: true,
            ..ProxyOptions::default()
        },
        public_and_private(&wsgi.url()),
    )
    .await;
    let (_, body) = get_path(proxy.local_addr(), "/public", "X_Tenant: blue\r\n").await;
    let env = &serde_json::from_str::<serde_json::Value>(&body).unwrap()["env"];
    assert_eq!(env["HTTP_X_TENANT"], "blue");
    proxy.shutdown().await;
}

#[tokio::test]
async fn lower_case_methods_are_refused_before_routing() {
    let wsgi = Framework::start("python3", "wsgi_upstream.py");
    let mut cfg = public_and_private(&wsgi.url());
    // A DELETE-only protected route; the catch-all would take other methods.
    let mut delete = route("shop/delete", PathKind::Prefix, "/items", &[]);
    delete.upstream.targets = vec![target(wsgi.url())];
    delete.methods = vec!["DELETE".into()];
    delete.authentication = cfg.routes[1].authentication.clone();
    cfg.routes.push(delete);
    let proxy = start(cfg).await;
    let addr = proxy.local_addr();
    for method in ["delete", "Delete", "dELETE", "get"] {
        let (status, body) = raw(
            addr,
            format!("{method} /items/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{method}: {body}");
        assert!(body.contains("request_id"), "{body}");
    }
    let (status, _) = raw(
        addr,
        b"DELETE /items/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_line_host_and_framing_checks() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut hosted = route("shop/hosted", PathKind::Prefix, "/", &[]);
    hosted.hosts = vec!["api.example.com".into()];
    hosted.upstream.direct_response = Some(direct(200, "api host"));
    let proxy = start(config(vec![
        hosted,
        route("shop/any", PathKind::Prefix, "/", &[&up]),
    ]))
    .await;
    let a = proxy.local_addr();
    let cases: &[(&[u8], u16)] = &[
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\nConnection: close\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"GET / HTTP/1.0\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200),
    ];
    for (request, want) in cases {
        let (status, body) = raw(a, request).await;
        assert_eq!(
            status,
            *want,
            "{:?}: {body}",
            String::from_utf8_lossy(request)
        );
    }
    // A fully qualified host name with its trailing dot finds the host's routes.
    let (status, body) = raw(
        a,
        b"GET / HTTP/1.1\r\nHost: api.example.com.\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "api host"));
    let (_, body) = raw(
        a,
        b"GET / HTTP/1.1\r\nHost: API.example.com.:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(body, "api host");
    assert_eq!(
        up.hits(),
        2,
        "only the two valid requests reached the upstream"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_cookies_reach_an_http1_upstream_as_one_field() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let response = h2
        .request(
            hyper::Request::get(format!("http://{}/c", proxy.local_addr()))
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
    proxy.shutdown().await;
}

/// Two healthy targets behind consistent hashing: every request from 127.0.0.1 goes to the
/// same one, so ejecting it would move the traffic to the other.
async fn hashed_pair() -> (Upstream, Upstream, portcullis_compiler::GatewayConfig) {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let mut r = route("shop/upload", PathKind::Prefix, "/", &[&a, &b]);
    r.upstream.load_balancing = LoadBalancing::ConsistentHash;
    let mut limited = route("shop/limited", PathKind::Prefix, "/limited", &[&a, &b]);
    limited.upstream.load_balancing = LoadBalancing::ConsistentHash;
    limited.request_validation = Some(Box::new(ValidationConfig {
        max_body_bytes: Some(10),
        ..Default::default()
    }));
    (a, b, config(vec![r, limited]))
}

#[tokio::test]
async fn client_faults_are_client_errors_and_never_eject_a_healthy_target() {
    let (a, b, cfg) = hashed_pair().await;
    let proxy = start_with(
        ProxyOptions {
            body_limits: BodyLimits {
                read_timeout: Duration::from_millis(300),
                ..BodyLimits::default()
            },
            ..ProxyOptions::default()
        },
        cfg,
    )
    .await;
    let addr = proxy.local_addr();
    let client = client();
    send(&client, addr, get("/warm")).await;
    let (chosen, other) = if a.hits() == 1 { (&a, &b) } else { (&b, &a) };
    assert_eq!(chosen.hits(), 1);

    for round in 0..6 {
        // Malformed chunked framing: 400.
        let (status, body) = raw(
            addr,
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nZZ\r\nbad\r\n",
        )
        .await;
        assert_eq!(status, 400, "round {round}: {body}");
        // Too large, streamed (no Content-Length): 413.
        let (status, body) = raw(
            addr,
            b"POST /limited HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n20\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status, 413, "round {round}: {body}");
    }
    // A body that stalls: 408 after the body read timeout, not 504 after the upstream's.
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The chosen target still takes the traffic: nothing was charged to it.
    let before = (chosen.hits(), other.hits());
    for _ in 0..5 {
        assert_eq!(send(&client, addr, get("/after")).await.status, 200);
    }
    assert_eq!(chosen.hits(), before.0 + 5);
    assert_eq!(other.hits(), before.1);
    proxy.shutdown().await;
}

fn schema_route(up: &Upstream) -> RouteConfig {
    let mut r = route("shop/json", PathKind::Prefix, "/json", &[up]);
    r.request_validation = Some(Box::new(ValidationConfig {
        json_schema: Some(serde_json::json!({"type": ["object", "array"]})),
        ..Default::default()
    }));
    r
}

#[tokio::test]
async fn stalled_and_trickling_bodies_on_buffering_routes_time_out() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = start_with(
        ProxyOptions {
            body_limits: BodyLimits {
                read_timeout: Duration::from_millis(400),
                min_rate: 200,
                min_rate_grace: Duration::from_millis(300),
            },
            ..ProxyOptions::default()
        },
        config(vec![schema_route(&up)]),
    )
    .await;
    let addr = proxy.local_addr();
    // 50 connections that send half a body and stop: all closed with 408, in bounded time.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(
                b"POST /json HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":",
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }));
    }
    for task in stalled {
        let text = task.await.unwrap();
        assert!(text.starts_with("HTTP/1.1 408"), "{text:.200}");
        assert!(text.contains("request_id"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A trickle that keeps the read timeout at bay (a byte every 150 ms) but stays under
    // the minimum rate: 408 too.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /json HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    for _ in 0..100 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:.200}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn buffered_bodies_share_one_budget() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = start_with(
        ProxyOptions {
            max_buffered_body_bytes: 1500,
            ..ProxyOptions::default()
        },
        config(vec![schema_route(&up)]),
    )
    .await;
    let addr = proxy.local_addr();
    let head = b"POST /json HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 1001\r\n\r\n";
    // The first request holds 1000 buffered bytes while it waits for its last two.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(head).await.unwrap();
    first
        .write_all(format!("[{}", "1,".repeat(499)).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A second body does not fit next to it: 503, at once.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(head).await.unwrap();
    second
        .write_all(format!("[{}1]", "1,".repeat(499)).as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 503"));
    // The first completes; its bytes are released and a third fits again.
    first.write_all(b"1]").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let reply = send(
        &client(),
        addr,
        get("/json")
            .method("POST")
            .header("content-type", "application/json")
            .body(format!("[{}1]", "1,".repeat(499)).as_bytes()),
    )
    .await;
    assert_eq!(reply.status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_stalled_http2_stream_times_out_alone() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = start_with(
        ProxyOptions {
            body_limits: BodyLimits {
                read_timeout: Duration::from_millis(300),
                ..BodyLimits::default()
            },
            ..ProxyOptions::default()
        },
        config(vec![schema_route(&up)]),
    )
    .await;
    let h2: Client<
        HttpConnector,
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    > = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    // One stream sends a part of its body and then nothing (the sender is kept alive).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    tx.send(Ok(Frame::data(Bytes::from_static(b"{\"a\":"))))
        .await
        .unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let url = format!("http://{}/json", proxy.local_addr());
    let stalled = h2.request(
        hyper::Request::post(&url)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap(),
    );
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), stalled)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The connection still serves other streams.
    let ok = h2
        .request(
            hyper::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")).boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(tx);
    proxy.shutdown().await;
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_are_shed_at_once() {
    let up = upstream("u", Behaviour::Slow(Duration::from_millis(800))).await;
    let proxy = start_with(
        ProxyOptions {
            max_in_flight: Some(2),
            ..ProxyOptions::default()
        },
        config(vec![route("r", PathKind::Prefix, "/", &[&up])]),
    )
    .await;
    let addr = proxy.local_addr();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let reply = send(&client(), addr, get("/slow")).await;
            (
                reply.status,
                reply.header("retry-after").map(str::to_string),
                started.elapsed(),
            )
        }));
        // Let the first two be admitted before the rest arrive.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut ok = 0;
    for task in tasks {
        let (status, retry_after, elapsed) = task.await.unwrap();
        match status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(send(&client(), addr, get("/after")).await.status, 200);
    let metrics = reqwest_metrics(proxy.admin_addr().unwrap()).await;
    assert!(metrics.contains("api_requests_shed_total 4"), "{metrics}");
    proxy.shutdown().await;
}

async fn reqwest_metrics(admin: SocketAddr) -> String {
    let reply = send(&client(), admin, get("/metrics")).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test]
async fn one_http2_connection_cannot_exceed_its_stream_cap() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // An upstream that records the most requests it ever held at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now_c, peak_c) = (now.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (now, peak) = (now_c.clone(), peak_c.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let (now, peak) = (now.clone(), peak.clone());
                    async move {
                        let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(held, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        now.fetch_sub(1, Ordering::SeqCst);
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
    let mut r = route("r", PathKind::Prefix, "/", &[]);
    r.upstream.targets = vec![target(format!("http://{up_addr}"))];
    let proxy = start_with(
        ProxyOptions {
            http2_max_concurrent_streams: 3,
            max_connections_per_ip: Some(1),
            ..ProxyOptions::default()
        },
        config(vec![r]),
    )
    .await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let url = format!("http://{}/s", proxy.local_addr());
    // One request first, so the client has the server's SETTINGS (a client that opens
    // streams past the cap before reading them gets REFUSED_STREAM for the excess).
    let first = h2
        .request(
            hyper::Request::get(&url)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (h2, url) = (h2.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            h2.request(
                hyper::Request::get(url)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=3).contains(&peak), "peak {peak}");
    proxy.shutdown().await;
}
