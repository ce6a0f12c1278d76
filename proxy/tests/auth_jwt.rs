//! JWT through the proxy: Wycheproof JWS vectors, hostile tokens, JWKS rotation and outages.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::idp::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis_compiler::config::*;
use portcullis_proxy::auth::clock::{Clock, ManualClock};
use portcullis_proxy::auth::AuthOptions;
use portcullis_proxy::ProxyOptions;
use serde_json::{json, Value};

fn jwt_auth(jwt: JwtConfig) -> AuthenticationConfig {
    AuthenticationConfig {
        methods: vec![AuthMethodConfig::Jwt],
        hide_credentials: true,
        jwt: Some(jwt),
        ..Default::default()
    }
}

fn all_algorithms() -> Vec<String> {
    [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn issuer_jwt(issuer: &str, jwks: &str, audiences: &[&str]) -> JwtConfig {
    JwtConfig {
        issuers: vec![JwtIssuerConfig {
            issuer: issuer.into(),
            jwks_uri: Some(jwks.into()),
            oidc_discovery: false,
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            consumer_claim: None,
        }],
        consumer_keys: false,
        key_claim: "kid".into(),
        algorithms: all_algorithms(),
        claims_to_verify: vec!["exp".into()],
        maximum_expiration_secs: Some(3600),
        clock_skew_secs: 0,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Wycheproof's JWS vectors, in the repository with their licence (`WYCHEPROOF-LICENSE`).
fn corpus_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wycheproof");
    assert!(
        dir.is_dir(),
        "{} is missing: it is part of the repository",
        dir.display()
    );
    dir
}

/// Every Wycheproof JWS vector through a real proxy. The corpus payloads are not JSON claim
/// sets ("foo", "Test", empty), so a JWT gateway must refuse even the valid ones; what the
/// test checks is *where*: a valid vector must pass the signature check and be refused only
/// at the claims step (`invalid_claims`), an invalid one must be refused before the payload
/// is trusted. Vectors outside the contract (ES512/P-521, a JWK pinned to another `alg`) are
/// counted as rejected by policy and must be rejected too.
#[tokio::test]
async fn wycheproof_jws_vectors_through_the_proxy() {
    let dir = corpus_dir();
    let corpus: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("wycheproof_json_web_signature_test.json")).unwrap(),
    )
    .unwrap();
    let groups = corpus["testGroups"].as_array().unwrap().clone();
    let docs: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let docs_c = docs.clone();
    let jwks = idp(Arc::new(move |seen: &Seen| {
        match docs_c.lock().unwrap().get(&seen.path) {
            Some(doc) => json(200, doc),
            None => json(404, "{}"),
        }
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let mut routes = Vec::new();
    let mut cfg = config(vec![]);
    for (i, group) in groups.iter().enumerate() {
        let key = if group["public"].is_object() {
            &group["public"]
        } else {
            &group["private"]
        };
        let mut r = route(
            &format!("wp/g{i}"),
            PathKind::Prefix,
            &format!("/g{i}"),
            &[&up],
        );
        let mut jwt = issuer_jwt("wycheproof", &jwks.url(&format!("/jwks/{i}")), &[]);
        jwt.claims_to_verify = vec![];
        jwt.maximum_expiration_secs = None;
        if key["kty"] == "oct" {
            // Symmetric keys are consumer keys (a published JWKS never carries them).
            jwt.issuers.clear();
            jwt.consumer_keys = true;
            let consumer = format!("wp/c{i}");
            // Two RFC 7520 groups share one HMAC key and kid: one consumer owns it.
            if cfg
                .secrets
                .jwt_secrets
                .iter()
                .any(|s| s.key_id == key["kid"].as_str().unwrap())
            {
                r.authentication = Some(Box::new(jwt_auth(jwt)));
                routes.push(r);
                continue;
            }
            cfg.consumers.push(ConsumerConfig {
                id: consumer.clone(),
                namespace: "wp".into(),
                username: format!("c{i}"),
                ..Default::default()
            });
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key["k"].as_str().unwrap())
                .unwrap();
            cfg.secrets.jwt_secrets.push(JwtSecretEntry {
                consumer,
                key_id: key["kid"].as_str().unwrap().into(),
                algorithm: key["alg"].as_str().unwrap_or("HS256").into(),
                secret_base64: base64::engine::general_purpose::STANDARD.encode(secret),
            });
        } else {
            let mut public = key.clone();
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                public.as_object_mut().unwrap().remove(private);
            }
            docs.lock().unwrap().insert(
                format!("/jwks/{i}"),
                json!({ "keys": [public] }).to_string(),
            );
        }
        r.authentication = Some(Box::new(jwt_auth(jwt)));
        routes.push(r);
    }
    cfg.routes = routes;
    let proxy = start(cfg).await;
    let c = client();
    let (mut valid_ok, mut invalid_ok, mut policy, mut failures) = (0, 0, 0, Vec::new());
    let mut contradictory = 0;
    let valid_jws: std::collections::HashSet<String> = groups
        .iter()
        .flat_map(|g| g["tests"].as_array().unwrap().iter())
        .filter(|t| t["result"] == "valid")
        .map(|t| t["jws"].as_str().unwrap().to_string())
        .collect();
    let mut total = 0;
    for (i, group) in groups.iter().enumerate() {
        let key = if group["public"].is_object() {
            &group["public"]
        } else {
            &group["private"]
        };
        for test in group["tests"].as_array().unwrap() {
            total += 1;
            let token = test["jws"].as_str().unwrap();
            let auth = bearer(token);
            let path = format!("/g{i}");
            let reply = send(
                &c,
                proxy.local_addr(),
                get(&path).header("authorization", &auth),
            )
            .await;
            let why = reason(&reply);
            let header_alg = token
                .split('.')
                .next()
                .and_then(|h| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(h)
                        .ok()
                })
                .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
                .and_then(|h| h["alg"].as_str().map(str::to_string))
                .unwrap_or_default();
            let strict_base64 = !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            let out_of_contract = header_alg == "ES512"
                || (strict_base64 && why == "malformed")
                || key["alg"]
                    .as_str()
                    .is_some_and(|a| a != header_alg && test["result"] == "valid");
            let id = test["tcId"].as_i64().unwrap();
            if reply.status == 200 {
                failures.push(format!("tc {id}: accepted ({})", test["comment"]));
                continue;
            }
            match test["result"].as_str().unwrap() {
                "valid" if why == "invalid_claims" => valid_ok += 1,
                "valid" if out_of_contract => policy += 1,
                "valid" => failures.push(format!("tc {id}: valid vector refused with {why:?}")),
                // The flattened corpus lists some "invalid" padding cases with exactly the same
                // string as a valid vector (the padding was lost); they cannot be told apart.
                _ if why == "invalid_claims" && valid_jws.contains(token) => contradictory += 1,
                _ if why == "invalid_claims" => failures.push(format!(
                    "tc {id}: invalid vector passed the signature check ({})",
                    test["comment"]
                )),
                _ => invalid_ok += 1,
            }
        }
    }
    println!(
        "Wycheproof JWS: {total} vectors; {valid_ok} valid with signature verified (then refused: payload is not a JWT claims set); {policy} valid but out of contract, rejected by policy (ES512/P-521 or JWK pinned to another alg); {invalid_ok} invalid, all rejected before the payload is trusted; {contradictory} marked invalid but byte-identical to a valid vector (rejected at the claims step); {} wrong",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(valid_ok + policy + invalid_ok + contradictory, total);
    assert!(total > 400, "corpus unexpectedly small: {total}");
}

struct Setup {
    proxy: portcullis_proxy::RunningProxy,
    up: Upstream,
    jwks: Idp,
    doc: Arc<Mutex<(u16, String)>>,
    clock: ManualClock,
}

fn jwks_doc(names: &[&str]) -> String {
    let keys: Vec<Value> = names
        .iter()
        .map(|n| serde_json::from_str(&fixture(&format!("{n}.jwk.json"))).unwrap())
        .collect();
    json!({ "keys": keys }).to_string()
}

async fn setup(keys: &[&str]) -> Setup {
    let doc = Arc::new(Mutex::new((200u16, jwks_doc(keys))));
    let doc_c = doc.clone();
    let jwks = idp(Arc::new(move |_: &Seen| {
        let (status, body) = doc_c.lock().unwrap().clone();
        json(status, &body)
    }))
    .await;
    let up = upstream("u", Behaviour::Echo).await;
    let mut issuer = route("shop/issuer", PathKind::Prefix, "/issuer", &[&up]);
    issuer.authentication = Some(Box::new(jwt_auth(issuer_jwt(
        "https://idp.test",
        &jwks.url("/jwks"),
        &["api"],
    ))));
    let mut keyed = route("shop/keyed", PathKind::Prefix, "/keyed", &[&up]);
    let mut consumer_jwt = issuer_jwt("unused", "http://127.0.0.1:1/", &[]);
    consumer_jwt.issuers.clear();
    consumer_jwt.consumer_keys = true;
    keyed.authentication = Some(Box::new(jwt_auth(consumer_jwt)));
    keyed.authorization = Some(Box::new(AuthorizationConfig {
        required_scopes: vec!["read".into()],
        required_roles: vec!["admin".into()],
        roles_claim: Some("realm_access.roles".into()),
        ..Default::default()
    }));
    let mut cfg = config(vec![issuer, keyed]);
    cfg.consumers.push(ConsumerConfig {
        id: "shop/mobile".into(),
        namespace: "shop".into(),
        username: "mobile".into(),
        groups: vec!["gold".into()],
        jwt_keys: vec![
            JwtPublicKeyConfig {
                key_id: "rsa1".into(),
                algorithm: "RS256".into(),
                public_key: fixture("rsa1.pub.pem"),
            },
            JwtPublicKeyConfig {
                key_id: "ec1".into(),
                algorithm: "ES256".into(),
                public_key: fixture("ec1.pub.pem"),
            },
        ],
        ..Default::default()
    });
    cfg.secrets.jwt_secrets.push(JwtSecretEntry {
        consumer: "shop/mobile".into(),
        key_id: "hmac1".into(),
        algorithm: "HS256".into(),
        secret_base64: base64::engine::general_purpose::STANDARD
            .encode("0123456789abcdef0123456789abcdef"),
    });
    let clock = ManualClock::starting_now();
    let options = ProxyOptions {
        auth: AuthOptions {
            clock: Arc::new(clock.clone()),
            ..AuthOptions::default()
        },
        ..ProxyOptions::default()
    };
    let proxy = start_with(options, cfg).await;
    Setup {
        proxy,
        up,
        jwks,
        doc,
        clock,
    }
}

fn claims(now: i64) -> Value {
    json!({"iss": "https://idp.test", "aud": "api", "sub": "user-1", "exp": now + 600, "iat": now,
           "scope": "read write", "realm_access": {"roles": ["admin"]}})
}

fn rs(kid: &str, key: &str, claims: &Value) -> String {
    sign_raw(
        &json!({"alg": "RS256", "kid": kid}),
        claims,
        &rsa_key(key),
        Algorithm::RS256,
    )
}

#[tokio::test]
async fn valid_tokens_identity_headers_and_spoofing() {
    let s = setup(&["rsa1"]).await;
    let c = client();
    // The proxy runs on the manual clock: a token stamped by the wall clock a second later
    // would be "issued in the future".
    let now = (s.clock.now_ms() / 1000) as i64;
    let token = rs("rsa1", "rsa1", &claims(now));
    let auth = bearer(&token);
    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/keyed")
            .header("authorization", &auth)
            .header("x-consumer-id", "shop/admin")
            .header("x-user-id", "root")
            .header("x-credential-type", "api-key")
            .header("x-consumer-groups", "admins"),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(
        r.upstream_header("x-consumer-id").as_deref(),
        Some("shop/mobile")
    );
    assert_eq!(
        r.upstream_header("x-consumer-groups").as_deref(),
        Some("gold")
    );
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("user-1"));
    assert_eq!(
        r.upstream_header("x-credential-type").as_deref(),
        Some("jwt")
    );
    assert_eq!(r.upstream_header("authorization"), None, "hideCredentials");

    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/issuer")
            .header("authorization", &auth)
            .header("x-consumer-id", "spoof"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-consumer-id"), None);
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("user-1"));

    // ES256 and HS256 consumer keys.
    let es = sign_raw(
        &json!({"alg": "ES256", "kid": "ec1"}),
        &claims(now),
        &ec_key("ec1"),
        Algorithm::ES256,
    );
    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/keyed").header("authorization", &bearer(&es)),
    )
    .await;
    assert_eq!(r.status, 200);
    let hs_key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
    let hs = sign_raw(
        &json!({"alg": "HS256", "kid": "hmac1"}),
        &claims(now),
        &hs_key,
        Algorithm::HS256,
    );
    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/keyed").header("authorization", &bearer(&hs)),
    )
    .await;
    assert_eq!(r.status, 200);

    // Authorization: scope and role.
    let mut no_scope = claims(now);
    no_scope["scope"] = json!("write");
    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/keyed").header("authorization", &bearer(&rs("rsa1", "rsa1", &no_scope))),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    let mut no_role = claims(now);
    no_role["realm_access"] = json!({"roles": ["user"]});
    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/keyed").header("authorization", &bearer(&rs("rsa1", "rsa1", &no_role))),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["request_id"].as_str().map(|s| !s.is_empty()),
        Some(true)
    );

    let r = send(&c, s.proxy.local_addr(), get("/keyed")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(s.up.hits(), 4);
}

#[tokio::test]
async fn hostile_tokens_are_rejected() {
    let s = setup(&["rsa1"]).await;
    let c = client();
    // The proxy runs on the manual clock: a token stamped by the wall clock a second later
    // would be "issued in the future".
    let now = (s.clock.now_ms() / 1000) as i64;
    let good = claims(now);
    let body = b64u(good.to_string().as_bytes());
    let mut cases: Vec<(String, String, &str)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64u(json!({"alg": alg, "kid": "rsa1"}).to_string().as_bytes());
        cases.push((
            format!("alg {alg}, empty sig"),
            format!("{h}.{body}."),
            "malformed",
        ));
        cases.push((
            format!("alg {alg}, junk sig"),
            format!("{h}.{body}.AAAA"),
            "bad_algorithm",
        ));
    }
    // HS256 keyed with the RSA public key PEM (key confusion).
    let pem = fixture("rsa1.pub.pem");
    let confused = sign_raw(
        &json!({"alg": "HS256", "kid": "rsa1"}),
        &good,
        &EncodingKey::from_secret(pem.as_bytes()),
        Algorithm::HS256,
    );
    cases.push((
        "HS256 with RSA public key".into(),
        confused,
        "bad_algorithm",
    ));
    // Embedded attacker key (jwk header) signed with that key.
    let attacker: Value = serde_json::from_str(&fixture("ec1.jwk.json")).unwrap();
    let embedded = sign_raw(
        &json!({"alg": "ES256", "kid": "rsa1", "jwk": attacker}),
        &good,
        &ec_key("ec1"),
        Algorithm::ES256,
    );
    cases.push(("embedded jwk".into(), embedded, "bad_algorithm"));
    let jku = sign_raw(
        &json!({"alg": "RS256", "kid": "evil", "jku": "http://evil/jwks"}),
        &good,
        &rsa_key("rsa2"),
        Algorithm::RS256,
    );
    cases.push(("jku to unknown key".into(), jku, ""));
    let crit = sign_raw(
        &json!({"alg": "RS256", "kid": "rsa1", "crit": ["exp"], "exp": 1}),
        &good,
        &rsa_key("rsa1"),
        Algorithm::RS256,
    );
    cases.push(("unknown crit".into(), crit, "unsupported_crit"));
    // Present but null is still present: serde reads `"crit": null` as an absent Option.
    for (member, reason) in [
        ("crit", "unsupported_crit"),
        ("b64", "unsupported_crit"),
        ("kid", "malformed"),
    ] {
        let mut header = json!({"alg": "RS256", "kid": "rsa1"});
        header[member] = Value::Null;
        let token = sign_raw(&header, &good, &rsa_key("rsa1"), Algorithm::RS256);
        cases.push((format!("{member}: null"), token, reason));
    }
    let dup = format!(
        "{}.{body}.AAAA",
        b64u(br#"{"alg":"RS256","alg":"none","kid":"rsa1"}"#)
    );
    cases.push(("duplicate alg".into(), dup, "malformed"));
    let mut c2 = good.clone();
    c2["exp"] = json!(now - 10);
    cases.push(("expired".into(), rs("rsa1", "rsa1", &c2), "expired"));
    let mut c3 = good.clone();
    c3["nbf"] = json!(now + 600);
    cases.push((
        "not yet valid".into(),
        rs("rsa1", "rsa1", &c3),
        "not_yet_valid",
    ));
    let mut c4 = good.clone();
    c4["exp"] = json!(now + 7200);
    cases.push((
        "too long lived".into(),
        rs("rsa1", "rsa1", &c4),
        "too_long_lived",
    ));
    let mut c5 = good.clone();
    c5.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp".into(), rs("rsa1", "rsa1", &c5), "missing_claim"));
    cases.push((
        "wrong signer".into(),
        rs("rsa1", "rsa2", &good),
        "invalid_signature",
    ));
    let tampered = {
        let t = rs("rsa1", "rsa1", &good);
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut evil = good.clone();
        evil["sub"] = json!("admin");
        parts[1] = b64u(evil.to_string().as_bytes());
        parts.join(".")
    };
    cases.push(("tampered payload".into(), tampered, "invalid_signature"));
    cases.push(("two parts".into(), "abc.def".into(), "malformed"));
    cases.push((
        "four parts".into(),
        format!("{}.x", rs("rsa1", "rsa1", &good)),
        "malformed",
    ));
    cases.push((
        "invalid base64".into(),
        format!("!!!.{body}.AAAA"),
        "malformed",
    ));
    cases.push((
        "padded base64".into(),
        format!("{}=.{body}.AAAA", b64u(br#"{"alg":"RS256","kid":"rsa1"}"#)),
        "malformed",
    ));
    cases.push((
        "invalid UTF-8 header".into(),
        format!("{}.{body}.AAAA", b64u(&[0xff, 0xfe, 0x7b])),
        "malformed",
    ));
    cases.push((
        "header not an object".into(),
        format!("{}.{body}.AAAA", b64u(b"[1,2]")),
        "malformed",
    ));
    let big = "A".repeat(40 * 1024);
    cases.push(("oversized".into(), format!("{big}.{big}.AAAA"), "malformed"));

    for (name, token, expected) in &cases {
        let r = send(
            &c,
            s.proxy.local_addr(),
            get("/keyed").header("authorization", &bearer(token)),
        )
        .await;
        assert_eq!(r.status, 401, "{name}");
        if !expected.is_empty() {
            assert_eq!(reason(&r), *expected, "{name}");
        }
    }
    // Issuer route: wrong iss, wrong aud, unknown kid.
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!(["other"]);
    for (token, expected) in [
        (rs("rsa1", "rsa1", &wrong_iss), "wrong_issuer"),
        (rs("rsa1", "rsa1", &wrong_aud), "wrong_audience"),
        (rs("rsa2", "rsa2", &good), "unknown_key"),
    ] {
        let r = send(
            &c,
            s.proxy.local_addr(),
            get("/issuer").header("authorization", &bearer(&token)),
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(reason(&r), expected);
    }
    // 64 KiB: refused at the connection's header limit or by the token limit, never passed.
    let huge = format!("{}.{}.AAAA", "A".repeat(32 * 1024), "A".repeat(32 * 1024));
    let r = send(
        &c,
        s.proxy.local_addr(),
        get("/keyed").header("authorization", &bearer(&huge)),
    )
    .await;
    assert!(r.status == 401 || r.status == 431, "{}", r.status);
    assert_eq!(s.up.hits(), 0);

    let admin = s.proxy.admin_addr().unwrap();
    let metrics = String::from_utf8(send(&c, admin, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("api_auth_failures_total{route=\"shop/keyed\",reason=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"wrong_audience\""));
}

#[tokio::test]
async fn jwks_rotation_cooldown_and_outages() {
    let s = setup(&["rsa1"]).await;
    let c = client();
    let a = s.proxy.local_addr();
    // The proxy runs on the manual clock: a token stamped by the wall clock a second later
    // would be "issued in the future".
    let now = (s.clock.now_ms() / 1000) as i64;
    let ok = |r: &Reply| r.status == 200;
    let r = send(
        &c,
        a,
        get("/issuer").header("authorization", &bearer(&rs("rsa1", "rsa1", &claims(now)))),
    )
    .await;
    assert!(ok(&r));
    assert_eq!(s.jwks.hits(), 1);
    // Unknown kid within the cooldown: one refetch at most, however many bogus kids arrive.
    for i in 0..20 {
        let t = rs(&format!("bogus-{i}"), "rsa2", &claims(now));
        let r = send(&c, a, get("/issuer").header("authorization", &bearer(&t))).await;
        assert_eq!(r.status, 401);
        assert_eq!(reason(&r), "unknown_key");
    }
    assert!(s.jwks.hits() <= 2, "hits {}", s.jwks.hits());
    // Rotation: rsa2 added, rsa1 removed.
    *s.doc.lock().unwrap() = (200, jwks_doc(&["rsa2"]));
    s.clock.advance_ms(6_000);
    let new_token = rs("rsa2", "rsa2", &claims(now + 1));
    let r = send(
        &c,
        a,
        get("/issuer").header("authorization", &bearer(&new_token)),
    )
    .await;
    assert_eq!(r.status, 200, "new kid accepted after the cooldown");
    let old = rs("rsa1", "rsa1", &claims(now + 2));
    let r = send(&c, a, get("/issuer").header("authorization", &bearer(&old))).await;
    assert_eq!(
        (r.status.as_u16(), reason(&r).as_str()),
        (401, "unknown_key"),
        "old kid gone"
    );

    // IdP down with a warm cache: keys past their refresh age still serve.
    *s.doc.lock().unwrap() = (500, "{}".into());
    s.clock.advance_ms(400_000);
    let hits = s.jwks.hits();
    let t = rs("rsa2", "rsa2", &claims(now + 400));
    let r = send(&c, a, get("/issuer").header("authorization", &bearer(&t))).await;
    assert_eq!(r.status, 200, "stale-if-error");
    assert!(
        eventually(Duration::from_secs(2), || s.jwks.hits() > hits).await,
        "background refresh attempted"
    );

    // Cold cache with the IdP down: denied (fail closed), 503.
    let down = refused_addr().await;
    let up = upstream("u2", Behaviour::Echo).await;
    let mut r2 = route("cold", PathKind::Prefix, "/", &[&up]);
    r2.authentication = Some(Box::new(jwt_auth(issuer_jwt(
        "https://idp.test",
        &format!("http://{down}/jwks"),
        &["api"],
    ))));
    let cold = start(config(vec![r2])).await;
    let r = send(
        &c,
        cold.local_addr(),
        get("/").header("authorization", &bearer(&rs("rsa1", "rsa1", &claims(now)))),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn oidc_discovery_over_https_with_a_test_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let issuer_ca = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer_ca)
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer = format!("https://localhost:{port}");
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
    let keys = jwks_doc(&["rsa1"]);
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits_c = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, discovery, keys, hits) = (
                acceptor.clone(),
                discovery.clone(),
                keys.clone(),
                hits_c.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = if req.uri().path() == "/jwks" {
                            keys.clone()
                        } else {
                            discovery.clone()
                        };
                        async move { Ok::<_, std::convert::Infallible>(json(200, &body)) }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });

    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("oidc", PathKind::Prefix, "/", &[&up]);
    let mut jwt = issuer_jwt(&issuer, "unused", &[]);
    jwt.issuers[0].jwks_uri = None;
    jwt.issuers[0].oidc_discovery = true;
    r.authentication = Some(Box::new(jwt_auth(jwt)));
    let options = ProxyOptions {
        auth: AuthOptions {
            extra_ca_pem: Some(ca.pem().into_bytes()),
            ..AuthOptions::default()
        },
        ..ProxyOptions::default()
    };
    let proxy = start_with(options, config(vec![r])).await;
    let c = client();
    let now = now_secs();
    let mut cl = claims(now);
    cl["iss"] = json!(issuer);
    let r = send(
        &c,
        proxy.local_addr(),
        get("/").header("authorization", &bearer(&rs("rsa1", "rsa1", &cl))),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "discovery + jwks"
    );
}
