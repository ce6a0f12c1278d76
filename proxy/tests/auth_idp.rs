//! OAuth2 introspection and forward auth against real local servers; API key rotation.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::idp::*;
use common::*;
use portcullis_compiler::config::*;
use portcullis_proxy::auth::clock::ManualClock;
use portcullis_proxy::auth::AuthOptions;
use portcullis_proxy::ProxyOptions;
use serde_json::json;

fn clocked(clock: &ManualClock) -> ProxyOptions {
    ProxyOptions {
        auth: AuthOptions {
            clock: Arc::new(clock.clone()),
            ..AuthOptions::default()
        },
        ..ProxyOptions::default()
    }
}

#[tokio::test]
async fn introspection_cache_scopes_consumer_and_timeout() {
    let exp = now_secs() + 3600;
    let server = idp(Arc::new(move |seen: &Seen| {
        // gw:s3cret in Basic.
        if seen.headers.get("authorization").unwrap().to_str().unwrap() != "Basic Z3c6czNjcmV0" {
            return json(401, "{}");
        }
        let body = String::from_utf8_lossy(&seen.body).to_string();
        if body.contains("token=good") {
            json(200, &json!({"active": true, "scope": "read write", "client_id": "mobile-app", "sub": "user-7", "exp": exp}).to_string())
        } else if body.contains("token=slow") {
            let mut r = json(200, r#"{"active":true}"#);
            r.headers_mut().insert("x-test-delay-ms", "2000".parse().unwrap());
            r
        } else if body.contains("token=broken") {
            json(500, "oops")
        } else {
            json(200, r#"{"active":false}"#)
        }
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let auth = AuthenticationConfig {
        methods: vec![AuthMethodConfig::OAuth2Introspection],
        hide_credentials: true,
        oauth2_introspection: Some(IntrospectionConfig {
            url: server.url("/introspect"),
            client_id: "gw".into(),
            cache_ttl_secs: 60,
            timeout_ms: 300,
        }),
        ..Default::default()
    };
    let mut read = route("shop/read", PathKind::Prefix, "/read", &[&up]);
    read.authentication = Some(Box::new(auth.clone()));
    read.authorization = Some(Box::new(AuthorizationConfig {
        required_scopes: vec!["read".into()],
        ..Default::default()
    }));
    let mut admin = route("shop/admin", PathKind::Prefix, "/admin", &[&up]);
    admin.authentication = Some(Box::new(auth));
    admin.authorization = Some(Box::new(AuthorizationConfig {
        required_scopes: vec!["admin".into()],
        ..Default::default()
    }));
    let mut cfg = config(vec![read, admin]);
    cfg.consumers.push(ConsumerConfig {
        id: "shop/mobile-app".into(),
        namespace: "shop".into(),
        username: "mobile-app".into(),
        oauth2_client_ids: vec!["mobile-app".into()],
        ..Default::default()
    });
    for route in ["shop/read", "shop/admin"] {
        cfg.secrets.introspection_secrets.push(ClientSecretEntry {
            route: route.into(),
            secret: "s3cret".into(),
        });
    }
    let clock = ManualClock::starting_now();
    let proxy = start_with(clocked(&clock), cfg).await;
    let (c, a) = (client(), proxy.local_addr());

    for _ in 0..3 {
        let r = send(&c, a, get("/read").header("authorization", "Bearer good")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-consumer-id").as_deref(),
            Some("shop/mobile-app")
        );
        assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("user-7"));
        assert_eq!(
            r.upstream_header("x-credential-type").as_deref(),
            Some("oauth2")
        );
        assert_eq!(r.upstream_header("authorization"), None);
    }
    assert_eq!(server.hits(), 1, "cached by token hash");
    clock.advance_ms(61_000);
    let r = send(&c, a, get("/read").header("authorization", "Bearer good")).await;
    assert_eq!(r.status, 200);
    assert_eq!(server.hits(), 2, "cache expired after cacheTtl");

    let r = send(&c, a, get("/admin").header("authorization", "Bearer good")).await;
    assert_eq!(r.status, 403, "scope from the introspection answer");
    let r = send(
        &c,
        a,
        get("/read").header("authorization", "Bearer revoked"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(reason(&r), "inactive");
    let r = send(&c, a, get("/read").header("authorization", "Bearer slow")).await;
    assert_eq!(r.status, 503, "timeout fails closed");
    let r = send(&c, a, get("/read").header("authorization", "Bearer broken")).await;
    assert_eq!(r.status, 503);
    assert!(r.json()["request_id"].is_string());
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn forward_auth_semantics_cache_and_timeout() {
    let server = idp(Arc::new(|seen: &Seen| {
        assert!(seen.body.is_empty(), "no body to the auth service");
        let auth = seen
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut r = match auth.as_str() {
            "Bearer fa-good" => {
                assert_eq!(seen.headers["x-original-method"], "POST");
                assert_eq!(seen.headers["x-original-uri"], "/app/x?q=1");
                assert!(
                    seen.headers.get("x-secret").is_none(),
                    "only copied headers"
                );
                let mut r = json(200, "{}");
                r.headers_mut().insert("x-user-id", "u-42".parse().unwrap());
                r.headers_mut().insert("x-not-copied", "1".parse().unwrap());
                r
            }
            "Bearer fa-forbidden" => json(403, "{}"),
            "Bearer fa-hang" => {
                let mut r = json(200, "{}");
                r.headers_mut()
                    .insert("x-test-delay-ms", "2000".parse().unwrap());
                r
            }
            "Bearer fa-error" => json(502, "{}"),
            _ => {
                let mut r = json(401, "{}");
                r.headers_mut()
                    .insert("www-authenticate", "Basic realm=\"sso\"".parse().unwrap());
                r
            }
        };
        r.headers_mut().insert("x-seen", "1".parse().unwrap());
        r
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("shop/app", PathKind::Prefix, "/app", &[&up]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ForwardAuth],
        hide_credentials: true,
        forward_auth: Some(ForwardAuthConfig {
            url: server.url("/validate"),
            copy_request_headers: vec!["authorization".into()],
            copy_response_headers: vec!["x-user-id".into()],
            cache_ttl_secs: 300,
            timeout_ms: 300,
        }),
        ..Default::default()
    }));
    let clock = ManualClock::starting_now();
    let proxy = start_with(clocked(&clock), config(vec![r])).await;
    let (c, a) = (client(), proxy.local_addr());
    for _ in 0..3 {
        let r = send(
            &c,
            a,
            get("/app/x?q=1")
                .method("POST")
                .body(b"payload")
                .header("authorization", "Bearer fa-good")
                .header("x-secret", "no")
                .header("x-user-id", "spoofed")
                .header("x-consumer-id", "spoofed"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("u-42"));
        assert_eq!(r.upstream_header("x-consumer-id"), None);
        assert_eq!(r.upstream_header("x-not-copied"), None);
        assert_eq!(
            r.upstream_header("x-credential-type").as_deref(),
            Some("forward-auth")
        );
    }
    assert_eq!(server.hits(), 1, "cached per credential");
    clock.advance_ms(301_000);
    let r = send(
        &c,
        a,
        get("/app/x?q=1")
            .method("POST")
            .header("authorization", "Bearer fa-good"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(server.hits(), 2);

    let r = send(&c, a, get("/app").header("authorization", "Bearer nope")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"sso\""));
    let r = send(
        &c,
        a,
        get("/app").header("authorization", "Bearer fa-forbidden"),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        &c,
        a,
        get("/app").header("authorization", "Bearer fa-error"),
    )
    .await;
    assert_eq!(r.status, 503);
    let r = send(&c, a, get("/app").header("authorization", "Bearer fa-hang")).await;
    assert_eq!(r.status, 503, "timeout fails closed");
    let r = send(&c, a, get("/app")).await;
    assert_eq!(r.status, 401, "no credential header: missing");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn api_keys_rotation_disabled_and_mixed_methods() {
    use sha2::{Digest, Sha256};
    let sha = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("shop/keys", PathKind::Prefix, "/", &[&up]);
    r.authentication = Some(Box::new(AuthenticationConfig {
        methods: vec![AuthMethodConfig::ApiKey],
        hide_credentials: true,
        ..Default::default()
    }));
    let mut cfg = config(vec![r]);
    cfg.consumers.push(ConsumerConfig {
        id: "shop/app".into(),
        namespace: "shop".into(),
        username: "app".into(),
        ..Default::default()
    });
    for key in ["old-key-123", "new-key-456"] {
        cfg.secrets.api_keys.push(ApiKeyEntry {
            sha256: sha(key),
            consumer: "shop/app".into(),
        });
    }
    // A disabled consumer is absent from `consumers`; its key must not resolve.
    cfg.secrets.api_keys.push(ApiKeyEntry {
        sha256: sha("disabled-key"),
        consumer: "shop/gone".into(),
    });
    let proxy = start(cfg.clone()).await;
    let (c, a) = (client(), proxy.local_addr());
    for key in ["old-key-123", "new-key-456"] {
        let r = send(&c, a, get("/").header("x-api-key", key)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-credential-type").as_deref(),
            Some("api-key")
        );
        assert_eq!(r.upstream_header("x-api-key"), None);
    }
    let r = send(&c, a, get("/").header("x-api-key", "disabled-key")).await;
    assert_eq!(r.status, 401);
    // Rotation finished: the old key is removed at the next reload.
    cfg.secrets
        .api_keys
        .retain(|k| k.sha256 != sha("old-key-123"));
    cfg.generation = "test-2".into();
    proxy.swap_config(&cfg).unwrap();
    let r = send(&c, a, get("/").header("x-api-key", "old-key-123")).await;
    assert_eq!(r.status, 401);
    let r = send(&c, a, get("/").header("x-api-key", "new-key-456")).await;
    assert_eq!(r.status, 200);
}
