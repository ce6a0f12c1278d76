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
    // Methods are tried in order and the first success authenticates (docs/authentication.md):
    // a valid API key wins over a garbled bearer next to it, which then never reaches the
    // upstream (hideCredentials).
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

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-hardening-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A disabled consumer's `oauth2ClientIds` no longer authenticate through introspection
/// (through the real compiler: disabled consumers are not in the delivered config at all).
#[tokio::test]
async fn disabled_consumer_client_ids_do_not_authenticate_via_introspection() {
    let exp = now_secs() + 3600;
    let server = idp(Arc::new(move |seen: &Seen| {
        let body = String::from_utf8_lossy(&seen.body).to_string();
        let client = if body.contains("token=disabled-token") {
            "disabled-app"
        } else if body.contains("token=shared-token") {
            "shared-app"
        } else if body.contains("token=unknown-token") {
            "someone-else"
        } else {
            "enabled-app"
        };
        json(
            200,
            &json!({"active": true, "client_id": client, "sub": "u", "exp": exp}).to_string(),
        )
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let yaml = format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: intro, namespace: shop}}
spec:
  paths: [{{type: Prefix, value: /}}]
  upstream: {{targets: [{{url: "{upstream}"}}]}}
  authentication:
    methods: [OAuth2Introspection]
    oauth2Introspection: {{url: "{idp}", clientId: gw, clientSecretRef: {{name: idp, key: secret}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: idp, namespace: shop}}
stringData: {{secret: s3cret}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {{name: enabled, namespace: shop}}
spec:
  oauth2ClientIds: [enabled-app, shared-app]
---
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {{name: disabled, namespace: shop}}
spec:
  disabled: true
  oauth2ClientIds: [disabled-app, shared-app]
"#,
        upstream = up.url(),
        idp = server.url("/introspect"),
    );
    let dir = tempdir("disabled");
    std::fs::write(dir.join("all.yaml"), yaml).unwrap();
    let cfg = portcullis_proxy::standalone::load(std::slice::from_ref(&dir)).unwrap();
    let proxy = start(cfg).await;
    let (c, a) = (client(), proxy.local_addr());

    let r = send(
        &c,
        a,
        get("/").header("authorization", "Bearer enabled-token"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-id").as_deref(),
        Some("shop/enabled")
    );
    let r = send(
        &c,
        a,
        get("/").header("authorization", "Bearer disabled-token"),
    )
    .await;
    assert_eq!(r.status, 401, "a disabled consumer's client authenticated");
    assert_eq!(reason(&r), "unknown_consumer");
    // Claimed by an enabled consumer too: that one is the client.
    let r = send(
        &c,
        a,
        get("/").header("authorization", "Bearer shared-token"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-id").as_deref(),
        Some("shop/enabled")
    );
    // A client no consumer lists stays a principal without a consumer, as documented.
    let r = send(
        &c,
        a,
        get("/").header("authorization", "Bearer unknown-token"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-consumer-id"), None);
    let _ = std::fs::remove_dir_all(&dir);
}

mod mtls {
    use super::*;
    use common::tls::*;
    use portcullis_proxy::{ProxyOptions, RunningProxy};
    use rcgen::{CertificateParams, DnType, DnValue};

    const HOST: &str = "secure.example.com";

    /// One MutualTls route on `HOST` trusting every CA in `trusted`.
    async fn proxy(
        server_ca: &Ca,
        trusted: &[&Ca],
        consumers: Vec<ConsumerConfig>,
    ) -> RunningProxy {
        let up = upstream("u", Behaviour::Echo).await;
        let mut r = route("shop/secure", PathKind::Prefix, "/", &[&up]);
        r.hosts = vec![HOST.into()];
        r.authentication = Some(Box::new(AuthenticationConfig {
            methods: vec![AuthMethodConfig::MutualTls],
            hide_credentials: true,
            ..Default::default()
        }));
        let mut cfg = config(vec![r]);
        let server = server_ca.server(&[HOST], false);
        let ca_pem: String = trusted.iter().map(|ca| ca.pem()).collect();
        terminate(
            &mut cfg,
            0,
            "shop/tls",
            &server,
            Some(ClientAuthConfig {
                ca_pem,
                mode: ClientAuthModeConfig::Require,
            }),
        );
        cfg.consumers = consumers;
        let options = ProxyOptions {
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ProxyOptions::default()
        };
        start_with(options, cfg).await
    }

    fn subject_consumer(name: &str, subject: &str, cas: &[&Ca]) -> ConsumerConfig {
        ConsumerConfig {
            mtls: Some(MtlsConfig {
                subjects: vec![parse_dn(subject).unwrap()],
                ca_fingerprints_sha256: cas.iter().map(|ca| ca.fingerprint()).collect(),
                ..Default::default()
            }),
            ..consumer(&format!("shop/{name}"))
        }
    }

    /// The consumer the proxy maps `cert` to (`None` for a 401).
    async fn who(proxy: &RunningProxy, cert: &Issued) -> Option<String> {
        let options = ClientOptions {
            client_cert: Some(cert),
            ..Default::default()
        };
        let reply = https_get(proxy.tls_addr().unwrap(), HOST, HOST, "/", &options)
            .await
            .unwrap();
        match reply.status {
            200 => reply.upstream_header("x-consumer-username"),
            401 => None,
            other => panic!("status {other}"),
        }
    }

    fn params(attributes: &[(DnType, DnValue)]) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for (t, v) in attributes {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        params
    }

    fn oid(arcs: &[u64]) -> DnType {
        DnType::CustomDnType(arcs.to_vec())
    }

    fn utf8(v: &str) -> DnValue {
        DnValue::Utf8String(v.into())
    }

    /// `SN` is the surname (2.5.4.4), not the serial number (2.5.4.5).
    #[tokio::test]
    async fn subject_sn_is_the_surname() {
        let (server_ca, clients) = (Ca::new("Server CA"), Ca::new("Clients CA"));
        let proxy = proxy(
            &server_ca,
            &[&clients],
            vec![
                subject_consumer("by-surname", "CN=pat,SN=Smith", &[]),
                subject_consumer("by-serial", "CN=pat,serialNumber=Smith", &[]),
            ],
        )
        .await;
        let surname = clients.client_with(params(&[
            (DnType::CommonName, utf8("pat")),
            (oid(&[2, 5, 4, 4]), utf8("Smith")),
        ]));
        let serial = clients.client_with(params(&[
            (DnType::CommonName, utf8("pat")),
            (
                oid(&[2, 5, 4, 5]),
                DnValue::PrintableString("Smith".try_into().unwrap()),
            ),
        ]));
        assert_eq!(who(&proxy, &surname).await.as_deref(), Some("by-surname"));
        assert_eq!(who(&proxy, &serial).await.as_deref(), Some("by-serial"));
    }

    /// Every attribute name docs/tls.md allows, as a user writes it, matches a certificate
    /// carrying that attribute (and only that one).
    #[tokio::test]
    async fn every_documented_subject_attribute_matches() {
        let ia5 = |v: &str| DnValue::Ia5String(v.try_into().unwrap());
        let printable = |v: &str| DnValue::PrintableString(v.try_into().unwrap());
        // (name as written in a ConsumerCredential, OID, value as the certificate encodes it)
        let cases: Vec<(&str, DnType, DnValue, &str)> = vec![
            ("L", DnType::LocalityName, utf8("Berlin"), "Berlin"),
            (
                "ST",
                DnType::StateOrProvinceName,
                utf8("Bavaria"),
                "Bavaria",
            ),
            ("O", DnType::OrganizationName, utf8("Example"), "Example"),
            ("OU", DnType::OrganizationalUnitName, utf8("Ops"), "Ops"),
            ("C", DnType::CountryName, printable("DE"), "DE"),
            ("STREET", oid(&[2, 5, 4, 9]), utf8("Main St 1"), "Main St 1"),
            (
                "DC",
                oid(&[0, 9, 2342, 19200300, 100, 1, 25]),
                ia5("example"),
                "example",
            ),
            (
                "UID",
                oid(&[0, 9, 2342, 19200300, 100, 1, 1]),
                utf8("u-1"),
                "u-1",
            ),
            ("SN", oid(&[2, 5, 4, 4]), utf8("Smith"), "Smith"),
            (
                "serialNumber",
                oid(&[2, 5, 4, 5]),
                printable("A-123"),
                "A-123",
            ),
            ("GN", oid(&[2, 5, 4, 42]), utf8("Pat"), "Pat"),
            ("title", oid(&[2, 5, 4, 12]), utf8("Engineer"), "Engineer"),
            ("initials", oid(&[2, 5, 4, 43]), utf8("PS"), "PS"),
            (
                "generationQualifier",
                oid(&[2, 5, 4, 44]),
                utf8("III"),
                "III",
            ),
            ("dnQualifier", oid(&[2, 5, 4, 46]), printable("q1"), "q1"),
            ("pseudonym", oid(&[2, 5, 4, 65]), utf8("patty"), "patty"),
            ("postalCode", oid(&[2, 5, 4, 17]), utf8("10115"), "10115"),
            (
                "emailAddress",
                oid(&[1, 2, 840, 113549, 1, 9, 1]),
                ia5("pat@example.com"),
                "pat@example.com",
            ),
        ];
        // The table covers every name the compiler accepts (CN is in every subject below).
        assert_eq!(cases.len() + 1, DN_ATTRIBUTES.len());
        let (server_ca, clients) = (Ca::new("Server CA"), Ca::new("Clients CA"));
        let consumers = cases
            .iter()
            .enumerate()
            .map(|(i, (name, _, _, value))| {
                subject_consumer(&format!("c{i}"), &format!("CN=pat-{i},{name}={value}"), &[])
            })
            .collect();
        let proxy = proxy(&server_ca, &[&clients], consumers).await;
        for (i, (name, t, v, _)) in cases.into_iter().enumerate() {
            let cert = clients.client_with(params(&[
                (DnType::CommonName, utf8(&format!("pat-{i}"))),
                (t, v),
            ]));
            assert_eq!(
                who(&proxy, &cert).await,
                Some(format!("c{i}")),
                "attribute {name}"
            );
        }
    }

    /// A consumer bound to a CA (`caSecretRef`) is not matched by the same subject from
    /// another CA the route trusts; the same subject under two CAs can be two consumers.
    #[tokio::test]
    async fn consumer_subject_is_bound_to_its_ca() {
        let server_ca = Ca::new("Server CA");
        let (partners, internal, other) = (
            Ca::new("Partners CA"),
            Ca::new("Internal CA"),
            Ca::new("Other CA"),
        );
        let proxy = proxy(
            &server_ca,
            &[&partners, &internal, &other],
            vec![
                subject_consumer("partner", "CN=app,O=Example", &[&partners]),
                subject_consumer("internal", "CN=app,O=Example", &[&internal]),
                subject_consumer("anyone", "CN=free,O=Example", &[]),
            ],
        )
        .await;
        let from = |ca: &Ca, cn: &str| ca.client(cn, "Example", &[], false);
        assert_eq!(
            who(&proxy, &from(&partners, "app")).await.as_deref(),
            Some("partner")
        );
        assert_eq!(
            who(&proxy, &from(&internal, "app")).await.as_deref(),
            Some("internal")
        );
        assert_eq!(who(&proxy, &from(&other, "app")).await, None, "foreign CA");
        assert_eq!(
            who(&proxy, &from(&other, "free")).await.as_deref(),
            Some("anyone"),
            "unbound: any trusted CA"
        );
    }
}

/// An expired or not-yet-valid serving certificate is still served but reported: a warning
/// condition on the route (`--check` prints it) and a log line at load.
mod certificate_validity {
    use super::*;
    use common::tls::*;
    use portcullis_proxy::ProxyOptions;
    use rcgen::{CertificateParams, DnType};

    fn server_cert(ca: &Ca, host: &str, years: Option<(i32, i32)>) -> Issued {
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, host);
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        ca.client_with(params)
    }

    fn indent(pem: &str) -> String {
        pem.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    }

    fn manifests(name: &str, issued: &Issued) -> String {
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: {name}-tls}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{crt}  tls.key: |
{key}---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}}}
spec:
  hosts: [{name}.example.com]
  paths: [{{type: Prefix, value: /}}]
  tls: {{secretName: {name}-tls}}
  upstream: {{directResponse: {{status: 200, body: "{name}"}}}}
---
"#,
            crt = indent(&issued.chain_pem),
            key = indent(&issued.key_pem),
        )
    }

    #[tokio::test]
    async fn expired_and_future_certificates_are_reported_and_still_served() {
        let ca = Ca::new("Server CA");
        let certs = [
            (
                "expired",
                server_cert(&ca, "expired.example.com", Some((2020, 2021))),
            ),
            (
                "future",
                server_cert(&ca, "future.example.com", Some((2100, 2101))),
            ),
            ("valid", server_cert(&ca, "valid.example.com", None)),
        ];
        let dir = tempdir("validity");
        let yaml: String = certs.iter().map(|(n, c)| manifests(n, c)).collect();
        std::fs::write(dir.join("all.yaml"), yaml).unwrap();

        let mut out = Vec::new();
        let ok = portcullis_proxy::check::run(std::slice::from_ref(&dir), &mut out).unwrap();
        let report = String::from_utf8(out).unwrap();
        assert!(ok, "a warning does not fail --check:\n{report}");
        let line = |route: &str| {
            report
                .lines()
                .find(|l| l.starts_with(&format!("ApiRoute default/{route}:")))
                .unwrap_or_else(|| panic!("{route} missing:\n{report}"))
                .to_string()
        };
        let expired = line("expired");
        assert!(
            expired.contains("Accepted=True")
                && expired.contains("ResolvedRefs=False (CertificateExpired)")
                && expired.contains("expired on"),
            "{expired}"
        );
        let future = line("future");
        assert!(
            future.contains("ResolvedRefs=False (CertificateNotYetValid)")
                && future.contains("not valid before"),
            "{future}"
        );
        assert!(line("valid").contains("ResolvedRefs=True"), "{report}");
        assert!(
            report.contains("warning: ApiRoute default/expired: spec.tls.secretName"),
            "{report}"
        );

        // Still served, as the status says: the handshake presents the expired certificate.
        let cfg = portcullis_proxy::standalone::load(std::slice::from_ref(&dir)).unwrap();
        let options = ProxyOptions {
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ProxyOptions::default()
        };
        let proxy = start_with(options, cfg).await;
        let recorder = Arc::new(Recorder::default());
        let host = "expired.example.com";
        let reply = https_get(
            proxy.tls_addr().unwrap(),
            host,
            host,
            "/",
            &ClientOptions {
                recorder: Some(recorder.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(
            recorder.seen.lock().unwrap().as_ref(),
            Some(&certs[0].1.der)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
