//! TLS termination, SNI, hot swap, mutual TLS, HTTP/2 over TLS, redirects and upstream TLS,
//! with real handshakes against certificates generated here (rcgen) and `openssl s_client`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;
use portcullis_compiler::config::*;
use portcullis_compiler::GatewayConfig;
use portcullis_proxy::{ProxyOptions, RunningProxy};

fn tls_options() -> ProxyOptions {
    ProxyOptions {
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ProxyOptions::default()
    }
}

async fn start_tls(config: GatewayConfig) -> RunningProxy {
    start_with(tls_options(), config).await
}

fn hosted(id: &str, hosts: &[&str], up: &Upstream) -> RouteConfig {
    let mut r = route(id, PathKind::Prefix, "/", &[up]);
    r.hosts = hosts.iter().map(|h| h.to_string()).collect();
    r.security_headers = true;
    r
}

/// api.example.com (RSA), *.apps.example.com (ECDSA), both from `ca`.
async fn two_hosts(ca: &Ca) -> (RunningProxy, Issued, Issued) {
    let up = upstream("u", Behaviour::Echo).await;
    let rsa = ca.server(&["api.example.com"], true);
    let ec = ca.server(&["*.apps.example.com"], false);
    let mut cfg = config(vec![
        hosted("shop/api", &["api.example.com"], &up),
        hosted("shop/apps", &["*.apps.example.com"], &up),
    ]);
    terminate(&mut cfg, 0, "shop/api-tls", &rsa, None);
    terminate(&mut cfg, 1, "shop/apps-tls", &ec, None);
    (start_tls(cfg).await, rsa, ec)
}

#[tokio::test]
async fn tls13_and_tls12_handshakes_succeed_and_hsts_is_sent_only_on_tls() {
    let ca = Ca::new("Test CA");
    let (proxy, _, _) = two_hosts(&ca).await;
    let addr = proxy.tls_addr().unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let options = ClientOptions {
            ca: Some(&ca),
            versions: &[version],
            ..Default::default()
        };
        let stream = connect(addr, "api.example.com", &options).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        let mut conn = Conn::open(stream, false).await.unwrap();
        let reply = conn.get("api.example.com", "/x", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
        assert!(reply.headers.contains_key("strict-transport-security"));
        // The upstream learns the request came over TLS, whatever the client claims.
        let reply = conn
            .get("api.example.com", "/x", &[("x-forwarded-proto", "http")])
            .await
            .unwrap();
        assert_eq!(
            reply.upstream_header("x-forwarded-proto").as_deref(),
            Some("https")
        );
        let forwarded = reply.upstream_header("forwarded").unwrap_or_default();
        assert!(forwarded.contains(";proto=https"), "{forwarded}");
    }
    let plain = send(
        &client(),
        proxy.local_addr(),
        get("/x").header("host", "api.example.com"),
    )
    .await;
    assert_eq!(plain.status, 200);
    assert!(plain.header("strict-transport-security").is_none());
    assert_eq!(plain.header("x-content-type-options"), Some("nosniff"));
}

fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "api.example.com"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (e2e/install-deps.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let negotiated =
        output.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (negotiated, text)
}

#[tokio::test]
async fn openssl_peer_refuses_old_versions_and_non_aead_suites() {
    let ca = Ca::new("Test CA");
    let (proxy, _, _) = two_hosts(&ca).await;
    let port = proxy.tls_addr().unwrap().port();
    let result = tokio::task::spawn_blocking(move || {
        let cases: Vec<(&str, Vec<&str>, bool)> = vec![
            ("TLS 1.3", vec!["-tls1_3"], true),
            (
                "TLS 1.2 ECDHE-RSA-AES128-GCM",
                vec!["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                true,
            ),
            (
                "TLS 1.2 ECDHE-RSA-CHACHA20",
                vec!["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"],
                true,
            ),
            (
                "TLS 1.1",
                vec!["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
                false,
            ),
            (
                "TLS 1.0",
                vec!["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
                false,
            ),
            (
                "TLS 1.2 CBC (ECDHE-RSA-AES128-SHA)",
                vec!["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"],
                false,
            ),
            (
                "TLS 1.2 static RSA (AES128-GCM-SHA256)",
                vec!["-tls1_2", "-cipher", "AES128-GCM-SHA256"],
                false,
            ),
            (
                "TLS 1.2 ECDHE-RSA-AES256-SHA384 (CBC)",
                vec!["-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA384"],
                false,
            ),
        ];
        let mut failures = Vec::new();
        for (name, args, expected) in cases {
            let (negotiated, text) = s_client(port, &args);
            if negotiated != expected {
                failures.push(format!(
                    "{name}: expected {expected}, got {negotiated}\n{text}"
                ));
            }
        }
        failures
    })
    .await
    .unwrap();
    assert!(result.is_empty(), "{}", result.join("\n---\n"));
}

#[tokio::test]
async fn sni_picks_exact_wildcard_and_default_certificates() {
    let ca = Ca::new("Test CA");
    let (proxy, rsa, ec) = two_hosts(&ca).await;
    let addr = proxy.tls_addr().unwrap();
    for (sni, expected) in [
        ("api.example.com", &rsa),
        ("a.apps.example.com", &ec),
        ("B.Apps.Example.com", &ec),
        // Two extra labels do not match `*.apps.example.com`: default certificate.
        ("x.y.apps.example.com", &rsa),
        // An IP address sends no SNI: the default certificate (first TLS route).
        ("127.0.0.1", &rsa),
    ] {
        let recorder = Arc::new(Recorder::default());
        let options = ClientOptions {
            recorder: Some(recorder.clone()),
            ..Default::default()
        };
        connect(addr, sni, &options).await.unwrap();
        let seen = recorder.seen.lock().unwrap().clone().unwrap();
        assert_eq!(seen, expected.der, "SNI {sni}");
    }
    // Verified end to end against the CA for both key types.
    let verified = ClientOptions {
        ca: Some(&ca),
        ..Default::default()
    };
    for host in ["api.example.com", "z.apps.example.com"] {
        let reply = https_get(addr, host, host, "/", &verified).await.unwrap();
        assert_eq!(reply.status, 200, "{host}");
    }
}

#[tokio::test]
async fn certificate_rotation_under_load_never_fails_a_request() {
    let ca = Ca::new("Test CA");
    let up = upstream("u", Behaviour::Echo).await;
    let first = ca.server(&["api.example.com"], false);
    let mut cfg = config(vec![hosted("shop/api", &["api.example.com"], &up)]);
    terminate(&mut cfg, 0, "shop/api-tls", &first, None);
    let proxy = start_tls(cfg.clone()).await;
    let addr = proxy.tls_addr().unwrap();

    // A keep-alive connection opened before the rotations must survive them.
    let verified = ClientOptions {
        ca: Some(&ca),
        ..Default::default()
    };
    let mut long_lived = Conn::open(
        connect(addr, "api.example.com", &verified).await.unwrap(),
        false,
    )
    .await
    .unwrap();

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Instant::now() + Duration::from_millis(2500);
    let ca = Arc::new(ca);
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (ok, failed, ca) = (ok.clone(), failed.clone(), ca.clone());
        workers.push(tokio::spawn(async move {
            let options = ClientOptions {
                ca: Some(&ca),
                ..Default::default()
            };
            while Instant::now() < stop {
                match https_get(addr, "api.example.com", "api.example.com", "/", &options).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    let mut last = first;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = ca.server(&["api.example.com"], i % 2 == 0);
        let mut next = cfg.clone();
        next.generation = format!("rotation-{i}");
        next.tls_certificates.clear();
        next.secrets.tls_keys.clear();
        terminate(&mut next, 0, "shop/api-tls", &last, None);
        proxy.swap_config(&next).unwrap();
    }
    for w in workers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too few requests to mean anything"
    );
    // New handshakes get the newest certificate; the old connection still works.
    let recorder = Arc::new(Recorder::default());
    connect(
        addr,
        "api.example.com",
        &ClientOptions {
            recorder: Some(recorder.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(recorder.seen.lock().unwrap().clone().unwrap(), last.der);
    let reply = long_lived.get("api.example.com", "/", &[]).await.unwrap();
    assert_eq!(reply.status, 200);
}

use std::sync::Mutex;

/// secure.example.com requires client certificates (MutualTls); open.example.com verifies them
/// optionally and also takes API keys; plain.example.com has no client auth. One listener.
async fn mtls_proxy(ca: &Ca, clients: &Ca) -> RunningProxy {
    let up = upstream("u", Behaviour::Echo).await;
    let server = ca.server(
        &[
            "secure.example.com",
            "open.example.com",
            "plain.example.com",
        ],
        false,
    );
    let auth = AuthenticationConfig {
        methods: vec![AuthMethodConfig::MutualTls],
        hide_credentials: true,
        ..Default::default()
    };
    let mut secure = hosted("shop/secure", &["secure.example.com"], &up);
    secure.authentication = Some(Box::new(auth.clone()));
    let mut open = hosted("shop/open", &["open.example.com"], &up);
    open.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::MutualTls, AuthMethodConfig::ApiKey],
        api_key_header: Some("x-api-key".into()),
        ..auth
    }));
    let plain = hosted("shop/plain", &["plain.example.com"], &up);
    let mut cfg = config(vec![plain, secure, open]);
    terminate(&mut cfg, 0, "shop/tls", &server, None);
    let require = ClientAuthConfig {
        ca_pem: clients.pem(),
        mode: ClientAuthModeConfig::Require,
    };
    terminate(&mut cfg, 1, "shop/tls", &server, Some(require.clone()));
    terminate(
        &mut cfg,
        2,
        "shop/tls",
        &server,
        Some(ClientAuthConfig {
            mode: ClientAuthModeConfig::Optional,
            ..require
        }),
    );
    let mapped_fp = "ab".repeat(32);
    cfg.consumers = vec![
        ConsumerConfig {
            id: "shop/by-subject".into(),
            namespace: "shop".into(),
            username: "by-subject".into(),
            groups: vec!["gold".into()],
            mtls: Some(MtlsConfig {
                subjects: vec![canonical_dn([("CN", "mobile-app"), ("O", "Example")])],
                ..Default::default()
            }),
            ..Default::default()
        },
        ConsumerConfig {
            id: "shop/by-san".into(),
            namespace: "shop".into(),
            username: "by-san".into(),
            mtls: Some(MtlsConfig {
                sans: vec!["robot.clients.example.com".into()],
                fingerprints_sha256: vec![mapped_fp],
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    cfg.secrets.api_keys.push(ApiKeyEntry {
        sha256: portcullis_compiler::hash_api_key(b"open-sesame-key-123"),
        consumer: "shop/by-san".into(),
    });
    start_tls(cfg).await
}

#[tokio::test]
async fn mutual_tls_outcomes_and_consumer_identity_upstream() {
    let ca = Ca::new("Server CA");
    let clients = Ca::new("Clients CA");
    let other = Ca::new("Other CA");
    let proxy = mtls_proxy(&ca, &clients).await;
    let addr = proxy.tls_addr().unwrap();
    let mapped = clients.client("mobile-app", "Example", &["app.clients.example.com"], false);
    let by_san = clients.client("robot", "Example", &["robot.clients.example.com"], false);
    let unmapped = clients.client("stranger", "Example", &["stranger.example.com"], false);
    let expired = clients.client("mobile-app", "Example", &[], true);
    let wrong_ca = other.client("mobile-app", "Example", &[], false);
    let opts = |cert: Option<&'static Issued>| ClientOptions {
        ca: None,
        client_cert: cert,
        ..Default::default()
    };
    let leak = |i: Issued| -> &'static Issued { Box::leak(Box::new(i)) };
    let (mapped, by_san, unmapped, expired, wrong_ca) = (
        leak(mapped),
        leak(by_san),
        leak(unmapped),
        leak(expired),
        leak(wrong_ca),
    );
    let secure = "secure.example.com";

    // Require: no certificate, a wrong CA and an expired certificate never get a response.
    for (what, cert) in [
        ("none", None),
        ("wrong CA", Some(wrong_ca)),
        ("expired", Some(expired)),
    ] {
        let result = https_get(addr, secure, secure, "/", &opts(cert)).await;
        assert!(result.is_err(), "{what}: {:?}", result.map(|r| r.status));
    }
    // Verified but unmapped: 401 from MutualTls.
    let reply = https_get(addr, secure, secure, "/", &opts(Some(unmapped)))
        .await
        .unwrap();
    assert_eq!(reply.status, 401);
    // Mapped by subject (RDN order differs from the config) and by SAN.
    let reply = https_get(addr, secure, secure, "/", &opts(Some(mapped)))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.upstream_header("x-consumer-username").as_deref(),
        Some("by-subject")
    );
    assert_eq!(
        reply.upstream_header("x-consumer-groups").as_deref(),
        Some("gold")
    );
    assert_eq!(
        reply.upstream_header("x-credential-type").as_deref(),
        Some("mtls")
    );
    let reply = https_get(addr, secure, secure, "/", &opts(Some(by_san)))
        .await
        .unwrap();
    assert_eq!(
        reply.upstream_header("x-consumer-username").as_deref(),
        Some("by-san")
    );

    // A client cannot claim an identity with headers.
    let stream = connect(addr, secure, &opts(Some(unmapped))).await.unwrap();
    let mut conn = Conn::open(stream, false).await.unwrap();
    let reply = conn
        .get(secure, "/", &[("x-consumer-username", "by-subject")])
        .await
        .unwrap();
    assert_eq!(reply.status, 401);

    // Optional on the same listener: no certificate falls through to the API key.
    let open = "open.example.com";
    let stream = connect(addr, open, &opts(None)).await.unwrap();
    let mut conn = Conn::open(stream, false).await.unwrap();
    assert_eq!(conn.get(open, "/", &[]).await.unwrap().status, 401);
    let reply = conn
        .get(open, "/", &[("x-api-key", "open-sesame-key-123")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.upstream_header("x-credential-type").as_deref(),
        Some("api-key")
    );
    let reply = https_get(addr, open, open, "/", &opts(Some(mapped)))
        .await
        .unwrap();
    assert_eq!(
        reply.upstream_header("x-consumer-username").as_deref(),
        Some("by-subject")
    );
    // Optional still refuses a certificate from the wrong CA.
    assert!(https_get(addr, open, open, "/", &opts(Some(wrong_ca)))
        .await
        .is_err());

    // A connection negotiated for a host without client auth cannot reach the mTLS host:
    // 421, not a request served under the wrong handshake.
    let plain = "plain.example.com";
    let stream = connect(addr, plain, &opts(None)).await.unwrap();
    let mut conn = Conn::open(stream, false).await.unwrap();
    assert_eq!(conn.get(plain, "/", &[]).await.unwrap().status, 200);
    assert_eq!(conn.get(secure, "/", &[]).await.unwrap().status, 421);
    // And plain HTTP never reaches a route that verifies client certificates.
    let reply = send(
        &client(),
        proxy.local_addr(),
        get("/").header("host", secure),
    )
    .await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn http2_over_tls_with_an_h2_only_client() {
    let ca = Ca::new("Test CA");
    let (proxy, _, _) = two_hosts(&ca).await;
    let options = ClientOptions {
        ca: Some(&ca),
        alpn: vec![b"h2".to_vec()],
        ..Default::default()
    };
    let stream = connect(proxy.tls_addr().unwrap(), "api.example.com", &options)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut conn = Conn::open(stream, true).await.unwrap();
    for i in 0..3 {
        let reply = conn
            .get("api.example.com", &format!("/h2/{i}"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(reply.json()["uri"], format!("/h2/{i}"));
        assert_eq!(
            reply.upstream_header("x-forwarded-proto").as_deref(),
            Some("https")
        );
    }
}

#[tokio::test]
async fn plain_http_is_redirected_when_the_route_asks() {
    let ca = Ca::new("Test CA");
    let up = upstream("u", Behaviour::Echo).await;
    let cert = ca.server(&["api.example.com"], false);
    let mut cfg = config(vec![hosted("shop/api", &["api.example.com"], &up)]);
    terminate(&mut cfg, 0, "shop/api-tls", &cert, None);
    cfg.routes[0].tls.as_mut().unwrap().redirect_http = true;
    let proxy = start_tls(cfg).await;
    let reply = send(
        &client(),
        proxy.local_addr(),
        get("/a/b?c=1").header("host", "api.example.com:8080"),
    )
    .await;
    assert_eq!(reply.status, 308);
    let port = proxy.tls_addr().unwrap().port();
    assert_eq!(
        reply.header("location").unwrap(),
        format!("https://api.example.com:{port}/a/b?c=1")
    );
    assert_eq!(up.hits(), 0);
    let verified = ClientOptions {
        ca: Some(&ca),
        ..Default::default()
    };
    let reply = https_get(
        proxy.tls_addr().unwrap(),
        "api.example.com",
        "api.example.com",
        "/a",
        &verified,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
}

/// A TLS upstream that echoes the SNI it saw.
async fn tls_upstream(cert: &Issued) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let service = hyper::service::service_fn(move |_req| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!("sni={sni}"))),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_verifies_uses_server_name_and_can_skip_verification() {
    let upstream_ca = Ca::new("Upstream CA");
    let wrong_ca = Ca::new("Wrong CA");
    let cert = upstream_ca.server(&["users.internal"], false);
    let addr = tls_upstream(&cert).await;
    let dummy = upstream("unused", Behaviour::Echo).await;
    let mk = |path: &str, tls: UpstreamTlsConfig| {
        let mut r = route(&format!("shop{path}"), PathKind::Prefix, path, &[&dummy]);
        r.upstream.targets[0].url = format!("https://{addr}");
        r.upstream.tls = Some(tls);
        r
    };
    let verified = UpstreamTlsConfig {
        ca_pem: Some(upstream_ca.pem()),
        server_name: Some("users.internal".into()),
        insecure_skip_verify: false,
    };
    let cfg = config(vec![
        mk("/ok", verified.clone()),
        mk(
            "/wrong-ca",
            UpstreamTlsConfig {
                ca_pem: Some(wrong_ca.pem()),
                ..verified.clone()
            },
        ),
        mk(
            "/no-name",
            UpstreamTlsConfig {
                server_name: None,
                ..verified.clone()
            },
        ),
        mk(
            "/insecure",
            UpstreamTlsConfig {
                ca_pem: None,
                server_name: None,
                insecure_skip_verify: true,
            },
        ),
    ]);
    let proxy = start(cfg).await;
    let c = client();
    let reply = send(&c, proxy.local_addr(), get("/ok")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "sni=users.internal");
    assert_eq!(
        send(&c, proxy.local_addr(), get("/wrong-ca")).await.status,
        502
    );
    // Without serverName the certificate must cover 127.0.0.1, which it does not.
    assert_eq!(
        send(&c, proxy.local_addr(), get("/no-name")).await.status,
        502
    );
    let reply = send(&c, proxy.local_addr(), get("/insecure")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(dummy.hits(), 0);
}

#[tokio::test]
async fn standalone_manifests_with_a_kubernetes_tls_secret() {
    let ca = Ca::new("Test CA");
    let cert = ca.server(&["api.example.com"], true);
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: api-example-com-tls, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: hello, namespace: default}}
spec:
  hosts: [api.example.com]
  paths: [{{type: Prefix, value: /hello}}]
  upstream: {{directResponse: {{status: 200, body: "hello over tls"}}}}
  tls: {{secretName: api-example-com-tls, minVersion: TLS1.3}}
"#,
        indent(&cert.chain_pem),
        indent(&cert.key_pem)
    );
    let dir = std::env::temp_dir().join(format!("portcullis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), yaml).unwrap();
    let config = portcullis_proxy::standalone::load(std::slice::from_ref(&dir)).unwrap();
    let proxy = start_tls(config).await;
    let addr = proxy.tls_addr().unwrap();
    let verified = ClientOptions {
        ca: Some(&ca),
        ..Default::default()
    };
    let reply = https_get(
        addr,
        "api.example.com",
        "api.example.com",
        "/hello",
        &verified,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hello over tls");
    // minVersion TLS1.3: a TLS 1.2-only client is refused.
    let tls12 = ClientOptions {
        ca: Some(&ca),
        versions: &[&rustls::version::TLS12],
        ..Default::default()
    };
    assert!(connect(addr, "api.example.com", &tls12).await.is_err());
    std::fs::remove_dir_all(&dir).ok();
}
