//! Shared test helpers: config builders, in-process upstreams and a client.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
pub mod idp;
pub mod tls;

use portcullis_compiler::config::*;
use portcullis_compiler::GatewayConfig;
use portcullis_proxy::{AuditSink, ProxyOptions, ProxyServer, RunningProxy};
use serde_json::Value;
use tokio::net::TcpListener;

pub fn route(id: &str, kind: PathKind, path: &str, targets: &[&Upstream]) -> RouteConfig {
    let (namespace, name) = id.split_once('/').unwrap_or(("default", id));
    RouteConfig {
        id: format!("{namespace}/{name}"),
        namespace: namespace.into(),
        name: name.into(),
        hosts: vec![],
        paths: vec![PathRule {
            kind,
            value: path.into(),
        }],
        methods: vec![],
        headers: vec![],
        query_params: vec![],
        path_normalization: PathNormalizationConfig::default(),
        strip_path: false,
        rewrite_prefix: None,
        upstream: UpstreamConfig {
            refuse_internal_addresses: false,
            targets: targets
                .iter()
                .map(|u| TargetConfig {
                    url: u.url(),
                    weight: 1,
                    service: None,
                })
                .collect(),
            load_balancing: LoadBalancing::RoundRobin,
            connect_timeout_ms: 1000,
            read_timeout_ms: 5000,
            send_timeout_ms: 5000,
            retries: 0,
            direct_response: None,
            tls: None,
        },
        authentication: None,
        authorization: None,
        ip_restriction: None,
        request_validation: None,
        response_headers: ResponseHeadersConfig::default(),
        security_headers: false,
        cors: None,
        sanitize_upstream_errors: false,
        rate_limit_policies: vec![],
        tls: None,
        waf_policies: vec![],
        request_headers: None,
        rewrite_path: None,
        redirect: None,
    }
}

pub fn config(routes: Vec<RouteConfig>) -> GatewayConfig {
    GatewayConfig {
        generation: "test-1".into(),
        routes,
        ..GatewayConfig::default()
    }
}

pub fn direct(status: u16, body: &str) -> DirectResponseConfig {
    DirectResponseConfig {
        status,
        body: body.into(),
        content_type: Some("text/plain".into()),
    }
}

pub async fn start(config: GatewayConfig) -> RunningProxy {
    start_with(ProxyOptions::default(), config).await
}

pub async fn start_with(options: ProxyOptions, config: GatewayConfig) -> RunningProxy {
    let options = ProxyOptions {
        audit: match options.audit {
            AuditSink::Stdout => AuditSink::Disabled,
            other => other,
        },
        ..options
    };
    ProxyServer::start(options, config).await.unwrap()
}

#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Echo the request as JSON.
    Echo,
    /// Answer this status with a plain body.
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
    /// Echo after a delay.
    Slow(Duration),
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub async fn upstream(name: &str, behaviour: Behaviour) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (name_c, hits_c) = (name.to_string(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (name, hits) = (name_c.clone(), hits_c.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (name, hits) = (name.clone(), hits.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(answer(&name, behaviour, req).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: name.into(),
        hits,
    }
}

async fn answer(name: &str, behaviour: Behaviour, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match behaviour {
        Behaviour::Status(code) => {
            let _ = req.into_body().collect().await;
            let mut r = Response::new(Full::new(Bytes::from(format!(
                "internal detail from {name}"
            ))));
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            r.headers_mut().insert("x-upstream", name.parse().unwrap());
            r
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(Full::new(Bytes::new()))
        }
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            echo(name, req).await
        }
        Behaviour::Echo => echo(name, req).await,
    }
}

async fn echo(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"body error")));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_insert_with(Vec::new)
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let json = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
    });
    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("server", "echo/1.0".parse().unwrap());
    r.headers_mut()
        .insert("x-powered-by", "tests".parse().unwrap());
    r.headers_mut().insert("x-upstream", name.parse().unwrap());
    r
}

/// An address on which nothing listens.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The upstream's view of a request header (echo upstream).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<&'a [u8]>,
}

pub fn get(path: &str) -> Req<'_> {
    Req {
        method: "GET",
        path,
        headers: vec![],
        body: None,
    }
}

impl<'a> Req<'a> {
    pub fn method(mut self, m: &'a str) -> Self {
        self.method = m;
        self
    }
    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }
    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }
}

pub async fn send(client: &TestClient, addr: SocketAddr, req: Req<'_>) -> Reply {
    let mut builder = Request::builder()
        .method(req.method)
        .uri(format!("http://{addr}{}", req.path));
    for (k, v) in &req.headers {
        builder = builder.header(*k, *v);
    }
    let body = Full::new(Bytes::copy_from_slice(req.body.unwrap_or(b"")));
    let response = client.request(builder.body(body).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// The Redis tests' policy: `limit` requests an hour per route, fixed window, no quota,
/// `Deny` when the backend fails, response headers on, over `backend`; each test adjusts
/// what it is about.
pub fn redis_limit_policy(
    id: &str,
    limit: u64,
    backend: RateLimitBackendConfig,
) -> RateLimitPolicyConfig {
    RateLimitPolicyConfig {
        id: id.into(),
        namespace: "default".into(),
        global: false,
        key: RateLimitKeyConfig::Route,
        header: None,
        algorithm: RateLimitAlgorithmConfig::FixedWindow,
        limits: vec![LimitConfig {
            requests: limit,
            period_ms: 3_600_000,
            burst: None,
        }],
        tiers: vec![],
        quota: None,
        backend,
        on_backend_failure: OnBackendFailureConfig::Deny,
        response_headers: true,
        ipv6_prefix_length: 64,
    }
}

/// A Redis backend at `urls` (a cluster's seeds when `cluster`), TLS for `rediss://`, no
/// credentials, no Sentinel.
pub fn redis_backend(urls: Vec<String>, cluster: bool, timeout_ms: u64) -> RateLimitBackendConfig {
    let tls = urls.iter().any(|u| u.starts_with("rediss://"));
    RateLimitBackendConfig::Redis {
        urls,
        cluster,
        timeout_ms,
        has_password: false,
        username: None,
        sentinel: None,
        tls,
    }
}
