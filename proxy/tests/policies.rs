#![allow(clippy::unwrap_used)]
mod common;

use std::sync::{Arc, Mutex};

use common::*;
use portcullis_compiler::config::*;
use portcullis_proxy::{AuditSink, ProxyOptions};
use sha2::{Digest, Sha256};

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn keyed_config(routes: Vec<RouteConfig>) -> portcullis_compiler::GatewayConfig {
    let mut cfg = config(routes);
    // Consumers authenticate only on routes of their own namespace.
    for route in &mut cfg.routes {
        route.namespace = "shop".into();
        route.id = format!("shop/{}", route.name);
    }
    cfg.consumers = vec![
        ConsumerConfig {
            id: "shop/gold-app".into(),
            namespace: "shop".into(),
            username: "gold-app".into(),
            groups: vec!["gold".into()],
            ..Default::default()
        },
        ConsumerConfig {
            id: "shop/bad-app".into(),
            namespace: "shop".into(),
            username: "bad-app".into(),
            groups: vec!["suspended".into()],
            ..Default::default()
        },
    ];
    cfg.secrets.api_keys = vec![
        ApiKeyEntry {
            sha256: sha("gold-key"),
            consumer: "shop/gold-app".into(),
        },
        ApiKeyEntry {
            sha256: sha("bad-key"),
            consumer: "shop/bad-app".into(),
        },
    ];
    cfg
}

fn api_key_auth(optional: bool) -> AuthenticationConfig {
    AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey],
        optional,
        hide_credentials: true,
        api_key_header: None,
        api_key_query_param: Some("apikey".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = start(config(vec![route("r", PathKind::Prefix, "/", &[&up])])).await;
    let c = client();
    let r = send(
        &c,
        proxy.local_addr(),
        get("/x")
            .header("host", "api.example.com")
            .header("x-request-id", "keep-me-123")
            .header("x-forwarded-for", "6.6.6.6")
            .header("connection", "x-private")
            .header("x-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic abc")
            .header("x-consumer-id", "spoofed")
            .header("x-consumer-username", "spoofed")
            .header("x-consumer-groups", "admin")
            .header("x-credential-type", "spoofed")
            .header("x-user-id", "spoofed"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("keep-me-123"));
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("keep-me-123")
    );
    // Untrusted peer: its X-Forwarded-For is replaced, not appended to.
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(r.upstream_header("host"), Some(up.addr.to_string()));
    for h in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "x-consumer-id",
        "x-consumer-username",
        "x-consumer-groups",
        "x-credential-type",
        "x-user-id",
    ] {
        assert_eq!(
            r.upstream_header(h),
            None,
            "{h} must not reach the upstream"
        );
    }
    let r = send(
        &c,
        proxy.local_addr(),
        get("/x").header("x-request-id", "bad id with spaces"),
    )
    .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(r.upstream_header("x-request-id"), Some(id));
}

#[tokio::test]
async fn trusted_proxies_xff_and_ip_restriction() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("r", PathKind::Prefix, "/", &[&up]);
    r.ip_restriction = Some(Box::new(IpRestrictionConfig {
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        deny: vec!["10.9.0.0/16".parse().unwrap()],
    }));
    let mut open = route("open", PathKind::Prefix, "/open", &[&up]);
    open.ip_restriction = Some(Box::new(IpRestrictionConfig {
        allow: vec![],
        deny: vec!["10.66.0.0/16".parse().unwrap()],
    }));
    let options = ProxyOptions {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..ProxyOptions::default()
    };
    let proxy = start_with(options, config(vec![r, open])).await;
    let c = client();
    let a = proxy.local_addr();
    let ok = send(
        &c,
        a,
        get("/").header("x-forwarded-for", "1.1.1.1, 10.1.2.3"),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.upstream_header("x-real-ip").as_deref(), Some("10.1.2.3"));
    assert_eq!(
        ok.upstream_header("x-forwarded-for").as_deref(),
        Some("1.1.1.1, 10.1.2.3, 127.0.0.1")
    );
    let denied = send(&c, a, get("/").header("x-forwarded-for", "10.9.0.1")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"], "client address is not allowed");
    assert_eq!(
        send(&c, a, get("/").header("x-forwarded-for", "8.8.8.8"))
            .await
            .status,
        403
    );
    // Empty allow list = any address; deny still applies.
    assert_eq!(
        send(&c, a, get("/open").header("x-forwarded-for", "8.8.8.8"))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&c, a, get("/open").header("x-forwarded-for", "10.66.1.1"))
            .await
            .status,
        403
    );
    // Without a trusted peer, XFF is ignored: 127.0.0.1 is not in 10/8.
    let untrusting = start(config(vec![route("r2", PathKind::Prefix, "/", &[&up])])).await;
    let r = send(
        &c,
        untrusting.local_addr(),
        get("/").header("x-forwarded-for", "10.1.2.3"),
    )
    .await;
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn api_keys_groups_and_optional() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut strict = route("strict", PathKind::Prefix, "/strict", &[&up]);
    strict.authentication = Some(Box::new(api_key_auth(false)));
    strict.authorization = Some(Box::new(AuthorizationConfig {
        allow_groups: vec!["gold".into()],
        deny_groups: vec!["suspended".into()],
        ..Default::default()
    }));
    let mut optional = route("optional", PathKind::Prefix, "/optional", &[&up]);
    optional.authentication = Some(Box::new(api_key_auth(true)));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let options = ProxyOptions {
        audit: AuditSink::Memory(lines.clone()),
        ..ProxyOptions::default()
    };
    let proxy = start_with(options, keyed_config(vec![strict, optional])).await;
    let c = client();
    let a = proxy.local_addr();

    let r = send(&c, a, get("/strict").header("x-consumer-id", "spoof")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"portcullis\"")
    );
    assert_eq!(r.json()["error"], "missing credentials");
    let r = send(&c, a, get("/strict").header("x-api-key", "wrong")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid credentials");

    let r = send(
        &c,
        a,
        get("/strict")
            .header("x-api-key", "gold-key")
            .header("x-consumer-id", "spoof"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-id").as_deref(),
        Some("shop/gold-app")
    );
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("gold-app")
    );
    assert_eq!(
        r.upstream_header("x-consumer-groups").as_deref(),
        Some("gold")
    );
    assert_eq!(
        r.upstream_header("x-credential-type").as_deref(),
        Some("api-key")
    );
    assert_eq!(r.upstream_header("x-api-key"), None, "hide_credentials");

    let r = send(&c, a, get("/strict?apikey=gold-key&x=1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/strict?x=1");

    let r = send(&c, a, get("/strict").header("x-api-key", "bad-key")).await;
    assert_eq!(r.status, 403);

    let r = send(&c, a, get("/optional")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("anonymous")
    );
    assert_eq!(r.upstream_header("x-consumer-id"), None);

    let admin = proxy.admin_addr().unwrap();
    let metrics = String::from_utf8(send(&c, admin, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "api_auth_failures_total{route=\"shop/strict\",reason=\"missing_credentials\"} 1"
        ),
        "{metrics}"
    );
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("gold-key") && !l.contains("apikey=")),
        "{lines:?}"
    );
    let denied: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "missing_credentials");
    assert_eq!(denied["route"], "shop/strict");
    let allowed: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(allowed["consumer"], "shop/gold-app");
    assert_eq!(allowed["path"], "/strict");
    assert_eq!(allowed["status"], 200);
}

#[tokio::test]
async fn response_headers_security_headers_and_cors() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("r", PathKind::Prefix, "/", &[&up]);
    r.security_headers = true;
    r.methods = vec!["GET".into()];
    r.response_headers
        .add
        .insert("Cache-Control".into(), "no-store".into());
    r.response_headers.remove = vec!["server".into(), "x-powered-by".into()];
    r.cors = Some(Box::new(CorsConfig {
        allow_origins: vec!["https://app.example.com".into()],
        allow_methods: vec!["GET".into()],
        allow_headers: vec!["Authorization".into()],
        expose_headers: vec!["X-Request-ID".into()],
        allow_credentials: false,
        max_age_secs: Some(600),
    }));
    r.authentication = Some(Box::new(api_key_auth(false)));
    let proxy = start(keyed_config(vec![r])).await;
    let c = client();
    let a = proxy.local_addr();

    let reply = send(
        &c,
        a,
        get("/")
            .header("x-api-key", "gold-key")
            .header("origin", "https://app.example.com"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("server"), None);
    assert_eq!(reply.header("x-powered-by"), None);
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        reply.header("strict-transport-security"),
        None,
        "no HSTS without TLS"
    );
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(reply.header("x-request-id").is_some());

    // Preflight: answered by the gateway, without credentials, routed by the requested method.
    let pre = send(
        &c,
        a,
        get("/")
            .method("OPTIONS")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(pre.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(pre.header("access-control-max-age"), Some("600"));
    assert_eq!(up.hits(), 1, "preflight must not reach the upstream");

    let evil = send(
        &c,
        a,
        get("/")
            .method("OPTIONS")
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(evil.status, 403);
    assert_eq!(evil.json()["error"], "origin not allowed");
    let evil = send(
        &c,
        a,
        get("/")
            .header("x-api-key", "gold-key")
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(evil.status, 200);
    assert_eq!(evil.header("access-control-allow-origin"), None);

    // Gateway errors carry the security headers and request id too.
    let unauth = send(&c, a, get("/")).await;
    assert_eq!(unauth.status, 401);
    assert_eq!(unauth.header("x-content-type-options"), Some("nosniff"));
    assert!(unauth.header("x-request-id").is_some());
}
