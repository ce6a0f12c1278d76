//! Ingress and Gateway API objects on a real API server, served by a real proxy: the
//! operator compiles them into routes, the proxy balances over the Services' endpoints
//! (on a bridge of the test's own: the API server refuses loopback endpoints), and status
//! is written back as the Ingress and Gateway API conventions ask.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_e2e::*;
use serde_json::Value;

const SQLI: &str = "/search?q=1%27%20OR%20%271%27%3D%271";

fn service(namespace: &str, name: &str, port: u16, ips: &[std::net::IpAddr]) -> String {
    let addresses: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: {namespace}}}
subsets: [{{addresses: [{}], ports: [{{name: http, port: {port}}}]}}]
"#,
        addresses.join(", ")
    )
}

/// The proxies' Service: its cluster IP becomes the Ingresses' and Gateways' address.
const PROXY_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: portcullis-proxy, namespace: portcullis-system}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn get(port: u16, host: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    http_full(port, "GET", host, path, &[]).unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn events_for(cluster: &Cluster, namespace: &str, name: &str) -> Vec<Value> {
    let out = cluster.kubectl(
        &[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "json",
        ],
        None,
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    list["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn ingress_of_our_class_is_served_and_gains_a_waf_by_annotation() {
    let Some(cluster) = Cluster::start("ingress") else {
        return;
    };
    let bridge = Bridge::create("in", 1);
    let web = Echo::start(bridge.addresses[0], "web");
    let other = Echo::start(bridge.addresses[0], "other");
    let (_operator, _) = spawn_operator(&cluster, "operator", &[]);
    let (_proxy, port, _) = spawn_proxy(&cluster, "proxy", &[]);
    cluster.apply(PROXY_SERVICE).unwrap();
    cluster
        .apply(&format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: portcullis}}
spec: {{controller: portcullis.dev/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: nginx}}
spec: {{controller: k8s.io/ingress-nginx}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: portcullis.dev/v1alpha1
kind: WafPolicy
metadata: {{name: strict, namespace: shop}}
spec: {{mode: Block}}
{}{}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: shop, namespace: shop}}
spec:
  ingressClassName: portcullis
  rules:
    - host: shop.test
      http:
        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: theirs, namespace: shop}}
spec:
  ingressClassName: nginx
  rules:
    - host: other.test
      http:
        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: other, port: {{number: 80}}}}}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: typo
  namespace: shop
  annotations: {{portcullis.dev/waf-polcy: strict}}
spec:
  ingressClassName: portcullis
  rules:
    - host: typo.test
      http:
        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]
"#,
            service("shop", "web", web.addr.port(), &bridge.addresses),
            service("shop", "other", other.addr.port(), &bridge.addresses),
        ))
        .unwrap();

    // The unchanged Ingress is served through the Service's endpoints.
    wait_for("the Ingress to be served", Duration::from_secs(30), || {
        (get(port, "shop.test", "/").2 == "web").then_some(())
    });
    // Without a WAF the injection goes through.
    assert_eq!(get(port, "shop.test", SQLI).0, 200);
    // Another class's Ingress is not ours: no route, no status.
    assert_eq!(get(port, "other.test", "/").0, 404);
    // An invalid one is not served, and says why in an Event.
    assert_eq!(get(port, "typo.test", "/").0, 404);
    let event = wait_for(
        "an Event on the invalid Ingress",
        Duration::from_secs(15),
        || {
            events_for(&cluster, "shop", "typo")
                .into_iter()
                .find(|e| e["type"] == "Warning")
        },
    );
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("portcullis.dev/waf-polcy"),
        "{event}"
    );

    // status.loadBalancer: the proxy Service's address, on ours only.
    let cluster_ip = cluster
        .get("services", "portcullis-system", "portcullis-proxy")
        .unwrap()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("status.loadBalancer", Duration::from_secs(15), || {
        let ingress = cluster.get("ingresses", "shop", "shop")?;
        (ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == cluster_ip.as_str()).then_some(())
    });
    let theirs = cluster.get("ingresses", "shop", "theirs").unwrap();
    assert!(
        theirs["status"]["loadBalancer"]["ingress"].is_null(),
        "{}",
        theirs["status"]
    );

    // One annotation attaches the WafPolicy: the same request is now blocked.
    cluster
        .kubectl(
            &[
                "annotate",
                "ingress",
                "-n",
                "shop",
                "shop",
                "portcullis.dev/waf-policy=strict",
            ],
            None,
        )
        .status
        .success()
        .then_some(())
        .unwrap();
    let (status, headers, body) = wait_for("the WAF to block", Duration::from_secs(15), || {
        let response = get(port, "shop.test", SQLI);
        (response.0 == 403).then_some(response)
    });
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert!(body.contains("request_id"), "{body}");
    // Ordinary requests still pass.
    assert_eq!(get(port, "shop.test", "/?q=shoes").2, "web");
}

#[test]
fn httproute_on_our_gateway_serves_with_filters_and_weights() {
    let Some(cluster) = Cluster::start("gateway") else {
        return;
    };
    let out = cluster.kubectl(
        &[
            "apply",
            "--validate=false",
            "-f",
            &repo_root()
                .join("charts/portcullis/gateway-api")
                .to_string_lossy(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the Gateway API to be served",
        Duration::from_secs(30),
        || {
            cluster
                .kubectl(&["get", "httproutes", "-A"], None)
                .status
                .success()
                .then_some(())
        },
    );
    let bridge = Bridge::create("gw", 3);
    let v1 = Echo::start(bridge.addresses[0], "v1");
    let v2 = Echo::start(bridge.addresses[1], "v2");
    let ledger = Echo::start(bridge.addresses[2], "ledger");
    let (_operator, _) = spawn_operator(&cluster, "operator", &[]);
    let (_proxy, port, _) = spawn_proxy(&cluster, "proxy", &[]);
    cluster.apply(PROXY_SERVICE).unwrap();
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: infra}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: payments}}
{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: public, namespace: infra}}
spec:
  gatewayClassName: portcullis
  listeners:
    - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: shop}}
spec:
  parentRefs: [{{name: public, namespace: infra}}]
  hostnames: [app.test]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {{set: [{{name: X-Env, value: prod}}], remove: [X-Debug]}}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: X-Served-By, value: portcullis}}]}}
        - type: URLRewrite
          urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /internal}}}}
      backendRefs:
        - {{name: v1, port: 80, weight: 3}}
        - {{name: v2, port: 80, weight: 1}}
    - matches: [{{path: {{type: Exact, value: /old}}}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {{scheme: https, hostname: new.test, statusCode: 301}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: sneaky, namespace: shop}}
spec:
  parentRefs: [{{name: public, namespace: infra}}]
  hostnames: [sneaky.test]
  rules:
    - backendRefs: [{{name: ledger, namespace: payments, port: 80}}]
"#,
            service("shop", "v1", v1.addr.port(), &bridge.addresses[..1]),
            service("shop", "v2", v2.addr.port(), &bridge.addresses[1..2]),
            service(
                "payments",
                "ledger",
                ledger.addr.port(),
                &bridge.addresses[2..]
            ),
        ))
        .unwrap();

    // Weighted backends: smooth weighted round robin, exactly 3:1.
    wait_for(
        "the HTTPRoute to be served",
        Duration::from_secs(30),
        || (get(port, "app.test", "/api/x").0 == 200).then_some(()),
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let (status, headers, body) = http_full(
            port,
            "GET",
            "app.test",
            "/api/orders?id=7",
            &[("x-debug", "1")],
        )
        .unwrap();
        assert_eq!(status, 200);
        // Filters: request headers set and removed, path rewritten, response header set.
        assert_eq!(header(&headers, "x-seen-x-env"), Some("prod"));
        assert_eq!(header(&headers, "x-seen-x-debug"), None);
        assert_eq!(
            header(&headers, "x-seen-path"),
            Some("/internal/orders?id=7")
        );
        assert_eq!(header(&headers, "x-served-by"), Some("portcullis"));
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("v1".to_string(), 30), ("v2".to_string(), 10)])
    );

    let (status, headers, _) = get(port, "app.test", "/old?x=1");
    assert_eq!(status, 301);
    assert_eq!(
        header(&headers, "location"),
        Some("https://new.test/old?x=1")
    );

    // Route status, per parent, with the spec's reasons.
    let parent = |name: &str, type_: &str| -> Option<Value> {
        let route = cluster.get("httproutes", "shop", name)?;
        let parent = route["status"]["parents"]
            .as_array()?
            .iter()
            .find(|p| p["controllerName"] == "portcullis.dev/gateway-controller")?
            .clone();
        parent["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    };
    wait_for("app Accepted", Duration::from_secs(15), || {
        parent("app", "Accepted").filter(|c| c["status"] == "True")
    });
    // A Service in another namespace without a ReferenceGrant: refused, 500 for the rule.
    let refused = wait_for("sneaky RefNotPermitted", Duration::from_secs(15), || {
        parent("sneaky", "ResolvedRefs").filter(|c| c["status"] == "False")
    });
    assert_eq!(refused["reason"], "RefNotPermitted", "{refused}");
    assert_eq!(get(port, "sneaky.test", "/").0, 500);
    // The grant in the Service's namespace lets it through.
    cluster
        .apply(
            r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: payments}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#,
        )
        .unwrap();
    wait_for(
        "the granted backend to serve",
        Duration::from_secs(15),
        || (get(port, "sneaky.test", "/").2 == "ledger").then_some(()),
    );
    wait_for("sneaky ResolvedRefs", Duration::from_secs(15), || {
        parent("sneaky", "ResolvedRefs").filter(|c| c["status"] == "True")
    });

    // Gateway and GatewayClass status.
    let gateway = wait_for("Gateway Programmed", Duration::from_secs(15), || {
        let gateway = cluster.get("gateways", "infra", "public")?;
        let programmed = gateway["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True");
        (programmed && gateway["status"]["listeners"][0]["attachedRoutes"] == 2).then_some(gateway)
    });
    assert!(
        gateway["status"]["addresses"][0]["value"].is_string(),
        "{}",
        gateway["status"]
    );
    wait_for("GatewayClass Accepted", Duration::from_secs(15), || {
        let class = cluster.get("gatewayclasses", "", "portcullis")?;
        class["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Accepted" && c["status"] == "True")
            .cloned()
    });
}

#[test]
fn ingress_tls_terminates_with_the_listed_secret() {
    let Some(cluster) = Cluster::start("ingress-tls") else {
        return;
    };
    let bridge = Bridge::create("it", 1);
    let secure = Echo::start(bridge.addresses[0], "secure");
    let (cert, key) = (cluster.state.join("tls.crt"), cluster.state.join("tls.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=secure.test"])
        .args(["-addext", "subjectAltName=DNS:secure.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls_port = free_port();
    let (_operator, _) = spawn_operator(&cluster, "operator", &[]);
    let (_proxy, port, _) = spawn_proxy(
        &cluster,
        "proxy",
        &["--tls-listen", &format!("127.0.0.1:{tls_port}")],
    );
    cluster
        .apply(&format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: portcullis}}
spec: {{controller: portcullis.dev/ingress-controller}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
{}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: secure
  namespace: shop
  annotations: {{portcullis.dev/ssl-redirect: "true"}}
spec:
  ingressClassName: portcullis
  tls: [{{hosts: [secure.test], secretName: secure-tls}}]
  rules:
    - host: secure.test
      http:
        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: secure, port: {{number: 80}}}}}}}}]
"#,
            service("shop", "secure", secure.addr.port(), &bridge.addresses),
        ))
        .unwrap();
    let created = cluster.kubectl(
        &[
            "create",
            "secret",
            "tls",
            "secure-tls",
            "-n",
            "shop",
            "--cert",
            &cert.to_string_lossy(),
            "--key",
            &key.to_string_lossy(),
        ],
        None,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    // HTTPS with the Secret's certificate (verified against it), served by the endpoints.
    let body = wait_for("HTTPS on secure.test", Duration::from_secs(30), || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .args([
                "--resolve",
                &format!("secure.test:{tls_port}:127.0.0.1"),
                &format!("https://secure.test:{tls_port}/hello"),
            ])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && body == "secure").then_some(body)
    });
    assert_eq!(body, "secure");
    // Plain HTTP is redirected (portcullis.dev/ssl-redirect).
    let (status, headers, _) = get(port, "secure.test", "/hello");
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("https://secure.test:{tls_port}/hello").as_str())
    );
}
