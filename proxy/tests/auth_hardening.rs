//! Issue #27 (hardening II): identity, credentials and limits against a client that lies.
//! Every test talks to an in-process proxy over real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::idp::*;
use common::*;
use portcullis_compiler::config::*;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn consumer(id: &str) -> ConsumerConfig {
    let (namespace, username) = id.split_once('/').unwrap();
    ConsumerConfig {
        id: id.into(),
        namespace: namespace.into(),
        username: username.into(),
        ..Default::default()
    }
}

/// A header listed in `copyResponseHeaders` that the auth service does not return must not
/// reach the upstream with the client's value.
#[tokio::test]
async fn forward_auth_response_headers_cannot_be_injected_by_the_client() {
    let server = idp(Arc::new(|seen: &Seen| {
        match seen
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap())
        {
            Some("Bearer with-role") => {
                let mut r = json(200, "{}");
                r.headers_mut()
                    .insert("x-auth-role", "reader".parse().unwrap());
                r
            }
            Some("Bearer no-role") => json(200, "{}"),
            _ => json(401, "{}"),
        }
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("shop/app", PathKind::Prefix, "/", &[&up]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey, AuthMethodConfig::ForwardAuth],
        hide_credentials: true,
        forward_auth: Some(ForwardAuthConfig {
            url: server.url("/check"),
            copy_request_headers: vec!["authorization".into()],
            copy_response_headers: vec!["x-auth-role".into(), "x-auth-tenant".into()],
            cache_ttl_secs: 0,
            timeout_ms: 1000,
        }),
        ..Default::default()
    }));
    let mut cfg = config(vec![r]);
    cfg.consumers.push(consumer("shop/app"));
    cfg.secrets.api_keys.push(ApiKeyEntry {
        sha256: sha("app-key-123"),
        consumer: "shop/app".into(),
    });
    let proxy = start(cfg).await;
    let (c, a) = (client(), proxy.local_addr());

    let r = send(
        &c,
        a,
        get("/")
            .header("authorization", "Bearer no-role")
            .header("x-auth-role", "admin")
            .header("X-Auth-Tenant", "other"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-role"),
        None,
        "client value leaked"
    );
    assert_eq!(
        r.upstream_header("x-auth-tenant"),
        None,
        "client value leaked"
    );

    let r = send(
        &c,
        a,
        get("/")
            .header("authorization", "Bearer with-role")
            .header("x-auth-role", "admin"),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"]["x-auth-role"].clone();
    assert_eq!(seen, json!(["reader"]), "only the service's value");

    // Another method authenticated: forward auth never ran, the names are still the gateway's.
    let r = send(
        &c,
        a,
        get("/")
            .header("x-api-key", "app-key-123")
            .header("x-auth-role", "admin"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-credential-type").as_deref(),
        Some("api-key")
    );
    assert_eq!(r.upstream_header("x-auth-role"), None);
}

/// `hideCredentials` removes every credential the route accepts, not just the one used.
#[tokio::test]
async fn hide_credentials_removes_every_accepted_credential() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("shop/mixed", PathKind::Prefix, "/", &[&up]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey, AuthMethodConfig::Jwt],
        hide_credentials: true,
        api_key_query_param: Some("apikey".into()),
        jwt: Some(JwtConfig {
            consumer_keys: true,
            ..Default::default()
        }),
        ..Default::default()
    }));
    let mut cfg = config(vec![r]);
    cfg.consumers.push(consumer("shop/app"));
    cfg.secrets.api_keys.push(ApiKeyEntry {
        sha256: sha("app-key-123"),
        consumer: "shop/app".into(),
    });
    let proxy = start(cfg).await;
    let (c, a) = (client(), proxy.local_addr());
    let r = send(
        &c,
        a,
        get("/x?apikey=second-key&keep=1")
            .header("x-api-key", "app-key-123")
            .header("authorization", "Bearer someone.elses.token"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-credential-type").as_deref(),
        Some("api-key")
    );
    assert_eq!(r.upstream_header("x-api-key"), None);
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "bearer token leaked"
    );
    assert_eq!(r.json()["uri"], "/x?keep=1", "query key leaked");

    // Authenticated by the query parameter: the header copy goes too.
    let r = send(
        &c,
        a,
        get("/y?apikey=app-key-123").header("authorization", "Bearer a.b.c"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("authorization"), None);
    assert_eq!(r.json()["uri"], "/y");
}

/// Introspection: `exp` must be a non-negative integer in the future, else the token is not
/// valid, and such an answer is never cached.
#[tokio::test]
async fn introspection_exp_that_is_not_a_future_integer_is_refused() {
    let now = now_secs();
    let server = idp(Arc::new(move |seen: &Seen| {
        let body = String::from_utf8_lossy(&seen.body).to_string();
        let token = body
            .split('&')
            .find_map(|p| p.strip_prefix("token="))
            .unwrap()
            .to_string();
        let exp = match token.as_str() {
            "float-past" => json!(1.5e9),
            "float-future" => json!((now + 3600) as f64 + 0.5),
            "string-past" => json!("1500000000"),
            "string-future" => json!((now + 3600).to_string()),
            "negative" => json!(-5),
            "null" => serde_json::Value::Null,
            "past" => json!(now - 10),
            "nbf-float" => {
                return json(
                    200,
                    &json!({"active": true, "exp": now + 3600, "nbf": 1.0}).to_string(),
                )
            }
            _ => json!(now + 3600),
        };
        json(200, &json!({"active": true, "exp": exp}).to_string())
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("shop/intro", PathKind::Prefix, "/", &[&up]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::OAuth2Introspection],
        hide_credentials: true,
        oauth2_introspection: Some(IntrospectionConfig {
            url: server.url("/introspect"),
            client_id: "gw".into(),
            cache_ttl_secs: 300,
            timeout_ms: 1000,
        }),
        ..Default::default()
    }));
    let proxy = start(config(vec![r])).await;
    let (c, a) = (client(), proxy.local_addr());
    for token in [
        "float-past",
        "float-future",
        "string-past",
        "string-future",
        "negative",
        "null",
        "past",
        "nbf-float",
    ] {
        let before = server.hits();
        for _ in 0..2 {
            let auth = format!("Bearer {token}");
            let r = send(&c, a, get("/").header("authorization", &auth)).await;
            assert_eq!(r.status, 401, "{token}");
            assert!(
                ["invalid_claims", "expired"].contains(&reason(&r).as_str()),
                "{token}: {}",
                reason(&r)
            );
        }
        assert_eq!(server.hits(), before + 2, "{token}: never cached");
    }
    let r = send(&c, a, get("/").header("authorization", "Bearer good")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
}

/// On an `optional: true` route a present but malformed credential is a 401, never
/// anonymous.
#[tokio::test]
async fn optional_route_refuses_malformed_authorization() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("shop/opt", PathKind::Prefix, "/", &[&up]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey, AuthMethodConfig::Jwt],
        optional: true,
        hide_credentials: true,
        jwt: Some(JwtConfig {
            consumer_keys: true,
            ..Default::default()
        }),
        ..Default::default()
    }));
    let mut cfg = config(vec![r]);
    cfg.consumers.push(consumer("shop/app"));
    cfg.secrets.api_keys.push(ApiKeyEntry {
        sha256: sha("app-key-123"),
        consumer: "shop/app".into(),
    });
    let proxy = start(cfg).await;
    let (c, a) = (client(), proxy.local_addr());

    let r = send(&c, a, get("/")).await;
    assert_eq!(r.status, 200, "no credential: anonymous");
    assert_eq!(
        r.upstream_header("x-anonymous-consumer").as_deref(),
        Some("true")
    );
    let bad: [&[(&str, &str)]; 6] = [
        &[("authorization", "Bearer\ta.b.c")],
        &[("authorization", "Bearer  a.b.c")],
        &[("authorization", "Bearer")],
        &[("authorization", "Basic dXNlcjpwdw==")],
        &[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ],
        &[("authorization", "Bearer a.b.c d")],
    ];
    for headers in bad {
        let mut req = get("/");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = send(&c, a, req).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(reason(&r), "malformed", "{headers:?}");
    }
    // An API key that authenticates does not excuse a garbled bearer next to it... it is
    // simply the first success; the malformed header is then hidden from the upstream.
    let r = send(
        &c,
        a,
        get("/")
            .header("x-api-key", "app-key-123")
            .header("authorization", "Bearer\tx"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("authorization"), None);
    assert_eq!(up.hits(), 2);
}

fn cors_route(up: &Upstream, allow_headers: Vec<String>) -> RouteConfig {
    let mut r = route("shop/cors", PathKind::Prefix, "/", &[up]);
    r.cors = Some(Box::new(CorsConfig {
        allow_origins: vec!["https://app.example.com".into()],
        allow_methods: vec!["GET".into(), "POST".into()],
        allow_headers,
        expose_headers: vec![],
        allow_credentials: true,
        max_age_secs: None,
    }));
    r
}

fn vary_origin_count(reply: &Reply) -> usize {
    reply
        .headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .filter(|item| item.trim().eq_ignore_ascii_case("origin"))
        .count()
}

async fn cors_proxy(up: &Upstream) -> portcullis_proxy::RunningProxy {
    let mut with_headers = cors_route(up, vec!["X-Custom".into()]);
    with_headers.id = "shop/cors-h".into();
    with_headers.name = "cors-h".into();
    with_headers.paths = vec![PathRule {
        kind: PathKind::Prefix,
        value: "/h".into(),
    }];
    start(config(vec![cors_route(up, vec![]), with_headers])).await
}

/// Without `allowHeaders`, a preflight does not reflect the requested headers.
#[tokio::test]
async fn cors_preflight_without_allow_headers_reflects_nothing() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = cors_proxy(&up).await;
    let (c, a) = (client(), proxy.local_addr());
    for path in ["/", "/h"] {
        let pre = send(
            &c,
            a,
            get(path)
                .method("OPTIONS")
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization, x-api-key"),
        )
        .await;
        assert_eq!(pre.status, 204);
        let allowed = pre.header("access-control-allow-headers");
        if path == "/" {
            assert_eq!(allowed, None, "requested headers reflected");
        } else {
            assert_eq!(allowed, Some("X-Custom"));
        }
    }
}

/// `Vary: Origin` exactly once on every response of a CORS route.
#[tokio::test]
async fn cors_vary_origin_once_on_every_response() {
    let up = upstream("u", Behaviour::Echo).await;
    let proxy = cors_proxy(&up).await;
    let (c, a) = (client(), proxy.local_addr());
    for path in ["/", "/h"] {
        let pre = send(
            &c,
            a,
            get(path)
                .method("OPTIONS")
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization, x-api-key"),
        )
        .await;
        assert_eq!(pre.status, 204);
        assert_eq!(vary_origin_count(&pre), 1, "preflight {path}");
    }
    for origin in [
        Some("https://app.example.com"),
        Some("https://evil.example"),
        None,
    ] {
        let mut req = get("/");
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        let r = send(&c, a, req).await;
        assert_eq!(r.status, 200);
        assert_eq!(vary_origin_count(&r), 1, "{origin:?}");
    }
    let refused = send(
        &c,
        a,
        get("/")
            .method("OPTIONS")
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(vary_origin_count(&refused), 1);
}
