//! Observability with real parts (issue #21): the `portcullis-proxy` binary serving mixed
//! traffic (allowed, 401, 403 WAF, 429, 413, 502) to a real upstream on loopback, scraped by a
//! real Prometheus (Debian's `prometheus`), every dashboard panel and alert expression
//! evaluated through Prometheus' HTTP API, `promtool check metrics` on a scrape, `explain` on
//! recorded decisions, audit lines checked for ids and for leaked secrets, trace context to
//! the upstream, OTLP/HTTP spans to a receiver started here, and an audit writer stalled on a
//! pipe nobody reads.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-proxy");

// Credentials the tests send: none of them may appear in anything the proxy writes.
const API_KEY: &str = "obs-secret-key-7c1d9e";
const WRONG_KEY: &str = "wrong-secret-key-1f4a";
const BEARER: &str = "bearer-secret-91aa3c";
const COOKIE: &str = "cookie-secret-5b2f0d";
const COOKIE_SQLI: &str = "cookie-secret-sqli-88e1";
const QUERY_KEY: &str = "query-secret-77c0ab";
const SECRETS: [&str; 6] = [API_KEY, WRONG_KEY, BEARER, COOKIE, COOKIE_SQLI, QUERY_KEY];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-obs-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// A process killed when the test ends, pass or fail.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------- HTTP

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn get(port: u16, path: &str) -> Reply {
    http(port, "GET", path, &[], b"")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------- upstream

/// An HTTP/1.1 upstream (keep-alive) that answers 200 with the request headers it got, one
/// `name: value` per line, and remembers them.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || serve_upstream(stream, record));
        }
    });
    Upstream { port, seen }
}

fn serve_upstream(stream: TcpStream, seen: Arc<Mutex<Vec<HashMap<String, String>>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut headers = HashMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut echo = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                echo.push_str(&format!(
                    "{}: {}\n",
                    k.trim().to_ascii_lowercase(),
                    v.trim()
                ));
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(headers);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{echo}",
            echo.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------- proxy

struct Proxy {
    port: u16,
    admin: u16,
}

fn manifests(dir: &Path, upstream: u16, refused: u16) {
    let url = format!("http://127.0.0.1:{upstream}");
    std::fs::write(
        dir.join("obs.yaml"),
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: obs-keys, namespace: obs}}
stringData: {{api-key: {API_KEY}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {{name: app, namespace: obs}}
spec:
  apiKeys: [{{secretRef: {{name: obs-keys, key: api-key}}}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: WafPolicy
metadata: {{name: strict, namespace: obs}}
spec: {{mode: Block, anomalyThreshold: 5}}
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: per-ip, namespace: obs}}
spec:
  key: ClientIp
  limits: [{{requests: 3, period: 1m}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: search, namespace: obs}}
spec:
  paths: [{{type: Prefix, value: /search}}]
  wafPolicy: strict
  upstream: {{targets: [{{url: "{url}"}}]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: private, namespace: obs}}
spec:
  paths: [{{type: Prefix, value: /private}}]
  authentication: {{methods: [ApiKey], apiKey: {{header: X-API-Key}}}}
  upstream: {{targets: [{{url: "{url}"}}]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: login, namespace: obs}}
spec:
  paths: [{{type: Prefix, value: /login}}]
  rateLimitPolicies: [per-ip]
  upstream: {{targets: [{{url: "{url}"}}]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: upload, namespace: obs}}
spec:
  paths: [{{type: Prefix, value: /upload}}]
  requestValidation: {{maxBodySize: 1Ki}}
  upstream: {{targets: [{{url: "{url}"}}]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: broken, namespace: obs}}
spec:
  paths: [{{type: Prefix, value: /broken}}]
  upstream: {{targets: [{{url: "http://127.0.0.1:{refused}"}}]}}
"#
        ),
    )
    .unwrap();
}

/// The proxy, its kill-on-drop guard, and its stdout when it was piped.
fn start_proxy(
    dir: &Path,
    extra: &[&str],
    stdout: Stdio,
) -> (Proxy, Proc, Option<std::process::ChildStdout>) {
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("--manifests")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--workers", "1"])
        .args(extra)
        .stdout(stdout)
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let pipe = child.stdout.take();
    let guard = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "proxy not ready: {}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proxy { port, admin }, guard, pipe)
}

fn explain(admin: u16, id: &str) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args([
            "explain",
            id,
            "--admin",
            &format!("http://127.0.0.1:{admin}"),
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn metric(admin: u16, prefix: &str) -> f64 {
    get(admin, "/metrics")
        .body
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------- Prometheus

struct Prometheus {
    port: u16,
    _proc: Proc,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prometheus(scrape_port: u16) -> Prometheus {
    let dir = tempdir("prometheus");
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: portcullis\n    static_configs: [{{targets: ['127.0.0.1:{scrape_port}']}}]\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("the `prometheus` binary (Debian package prometheus, e2e/install-deps.sh)");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_ok(port, "/-/ready").is_none() {
        assert!(
            Instant::now() < deadline,
            "prometheus did not start: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Prometheus {
        port,
        _proc: proc,
        dir,
    }
}

fn get_ok(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let reply = parse_reply(&raw);
    (reply.status == 200).then_some(reply.body)
}

/// An instant query's result vector.
fn query(prom: &Prometheus, expr: &str) -> Vec<Value> {
    let body = get_ok(
        prom.port,
        &format!("/api/v1/query?query={}", urlencode(expr)),
    )
    .unwrap_or_else(|| panic!("query refused: {expr}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Polls until `expr` returns series (rates need two scrapes after the traffic).
fn series(prom: &Prometheus, expr: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = query(prom, expr);
        if !result.is_empty() {
            return result;
        }
        assert!(Instant::now() < deadline, "no series for {expr}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The alert expression without its trailing `> threshold`: the signal it compares.
fn signal(expr: &str) -> String {
    let cut = expr.rfind('>').unwrap();
    expr[..cut].trim().to_string()
}

// ---------------------------------------------------------------------------- tests

#[test]
fn mixed_traffic_is_explained_scraped_and_alerted_on_by_a_real_prometheus() {
    let dir = tempdir("mixed");
    let up = upstream();
    manifests(&dir, up.port, free_port());
    let audit = dir.join("audit.log");
    let (proxy, _child, _) = start_proxy(
        &dir,
        &[
            "--audit-file",
            audit.to_str().unwrap(),
            "--replica-id",
            "obs-replica-1",
        ],
        Stdio::null(),
    );
    let p = proxy.port;

    // A real Prometheus scrapes the admin port from the start: rates need a counter's value
    // before and after the traffic, so the broken route's 5xx series is seen once first.
    let prom = prometheus(proxy.admin);
    series(&prom, "up{job=\"portcullis\"} == 1");
    assert_eq!(get(p, "/broken").status, 502);
    series(
        &prom,
        "api_requests_total{route=\"obs/broken\",status_class=\"5xx\"}",
    );

    // Allowed, with credentials-looking material the proxy must never write down.
    for _ in 0..5 {
        let r = http(
            p,
            "GET",
            &format!("/search?q=shoes&api_key={QUERY_KEY}"),
            &[
                ("cookie", &format!("session={COOKIE}")),
                ("authorization", &format!("Bearer {BEARER}")),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = http(p, "GET", "/private/x", &[("x-api-key", API_KEY)], b"");
    assert_eq!(r.status, 200);
    // 401: no key, a wrong key.
    for _ in 0..3 {
        assert_eq!(get(p, "/private/x").status, 401);
    }
    let r = http(p, "GET", "/private/x", &[("x-api-key", WRONG_KEY)], b"");
    assert_eq!(r.status, 401);
    // 403: SQL injection in a query argument, then in a cookie (its value must stay out).
    let sqli = urlencode("1' OR '1'='1' --");
    let r = http(
        p,
        "GET",
        &format!("/search?q={sqli}&api_key={QUERY_KEY}"),
        &[("x-request-id", "waf-blocked-1")],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.headers["x-request-id"], "waf-blocked-1");
    let cookie = format!("session=' or 1=1 union select password from users -- {COOKIE_SQLI}");
    let r = http(
        p,
        "GET",
        "/search",
        &[("x-request-id", "waf-cookie-1"), ("cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // 429 after three logins a minute.
    for i in 0..3 {
        assert_eq!(get(p, "/login").status, 200, "login {i}");
    }
    let r = http(
        p,
        "GET",
        "/login",
        &[("x-request-id", "rate-limited-1")],
        b"",
    );
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].parse().unwrap();
    // 413 and 502.
    let r = http(p, "POST", "/upload", &[], &[b'x'; 2048]);
    assert_eq!(r.status, 413);
    for _ in 0..2 {
        assert_eq!(get(p, "/broken").status, 502);
    }

    // The decision records.
    let record: Value =
        serde_json::from_str(&get(proxy.admin, "/decisions/waf-blocked-1").body).unwrap();
    assert_eq!(record["step"], "waf");
    assert_eq!(record["replica"], "obs-replica-1");
    assert_eq!(record["trace_id"].as_str().unwrap().len(), 32);
    let findings = record["waf"][0]["findings"].as_array().unwrap();
    assert!(
        findings.iter().all(|f| f["target"] == "Query:q"),
        "{record}"
    );
    let rule_ids: Vec<String> = findings.iter().map(|f| f["rule_id"].to_string()).collect();
    let rule_id = &rule_ids[0];
    assert_eq!(
        get(proxy.admin, "/decisions/no-such-request").status,
        404,
        "unknown ids are a 404"
    );
    let waf: Value = serde_json::from_str(
        &get(
            proxy.admin,
            "/decisions?route=obs%2Fsearch&step=waf&limit=10",
        )
        .body,
    )
    .unwrap();
    let ids: Vec<&str> = waf["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["waf-cookie-1", "waf-blocked-1"], "{waf}");
    let cookie_record: Value =
        serde_json::from_str(&get(proxy.admin, "/decisions/waf-cookie-1").body).unwrap();
    assert!(
        cookie_record["waf"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["target"] == "Cookie:session" && f["excerpt"] == "[redacted]"),
        "{cookie_record}"
    );

    // explain: the WAF block names the step, the rule and the target, and the exclusion.
    let (ok, text, err) = explain(proxy.admin, "waf-blocked-1");
    assert!(ok, "{err}");
    assert!(text.starts_with("DENIED 403 at step waf"), "{text}");
    assert!(text.contains(&format!("rule {rule_id} ")), "{text}");
    assert!(text.contains("on Query:q"), "{text}");
    assert!(
        text.contains(&format!(
            "- {{ruleIds: [{}], paths: [\"/search\"], targets: [\"Query:q\"]}}",
            rule_ids.join(", ")
        )),
        "{text}"
    );
    // The rate-limited one: policy and retry time.
    let (ok, text, err) = explain(proxy.admin, "rate-limited-1");
    assert!(ok, "{err}");
    assert!(text.contains("DENIED 429 at step rate_limit"), "{text}");
    assert!(text.contains("RateLimitPolicy obs/per-ip"), "{text}");
    assert!(
        text.contains(&format!("{retry}s after the decision")),
        "{text}"
    );
    // Unknown id, unreachable admin: non-zero.
    let (ok, _, err) = explain(proxy.admin, "never-sent-1");
    assert!(!ok && err.contains("no decision record"), "{err}");
    let (ok, _, _) = explain(free_port(), "waf-blocked-1");
    assert!(!ok);

    // promtool check metrics on the scrape.
    let scrape = get(proxy.admin, "/metrics").body;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Every dashboard panel expression returns series.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/portcullis/files/grafana-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            let result = series(&prom, &expr);
            assert!(!result.is_empty(), "{}: {expr}", panel["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} panel expressions");
    // Denials by step name the steps the traffic met.
    let steps: Vec<String> = series(&prom, "sum by (step) (api_denials_total)")
        .iter()
        .map(|s| s["metric"]["step"].as_str().unwrap().to_string())
        .collect();
    for step in [
        "waf",
        "rate_limit",
        "authentication",
        "validation",
        "upstream",
    ] {
        assert!(steps.iter().any(|s| s == step), "{step} not in {steps:?}");
    }
    let rules: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("charts/portcullis/files/alerts.rules.yaml")).unwrap(),
    )
    .unwrap();
    let rules = rules["groups"][0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "HighErrorRate",
            "HighLatency",
            "RateLimitExceeded",
            "AuthenticationFailures"
        ]
    );
    for rule in rules {
        let result = series(&prom, &signal(rule["expr"].as_str().unwrap()));
        assert!(!result.is_empty(), "{}", rule["alert"]);
    }
    // HighErrorRate as written fires for the broken route only (all of its answers are 502).
    let firing: Vec<String> = series(&prom, rules[0]["expr"].as_str().unwrap())
        .iter()
        .map(|s| s["metric"]["route"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(firing, ["obs/broken"]);

    // Audit lines: JSON with request, trace and replica ids, and no secret anywhere.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 20 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 20, "one line per request");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(!v["request_id"].as_str().unwrap().is_empty(), "{line}");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32, "{line}");
        assert_eq!(v["replica"], "obs-replica-1", "{line}");
    }
    let written = [
        lines.join("\n"),
        std::fs::read_to_string(dir.join("stderr.log")).unwrap(),
        get(proxy.admin, "/decisions?limit=1000").body,
    ]
    .join("\n");
    for secret in SECRETS {
        assert!(!written.contains(secret), "{secret} was written down");
    }
    // The upstream did get the credentials (they were really sent).
    let seen = up.seen.lock().unwrap();
    assert!(seen
        .iter()
        .any(|h| h.get("cookie").is_some_and(|c| c.contains(COOKIE))));
    drop(seen);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn traceparent_reaches_the_upstream_with_the_same_trace_and_a_new_span() {
    let dir = tempdir("trace");
    let up = upstream();
    manifests(&dir, up.port, free_port());
    let audit = dir.join("audit.log");
    let (proxy, _child, _) = start_proxy(
        &dir,
        &["--audit-file", audit.to_str().unwrap()],
        Stdio::null(),
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http(
        proxy.port,
        "GET",
        "/search?q=a",
        &[
            ("traceparent", parent),
            ("tracestate", "vendor=abc"),
            ("x-request-id", "traced-1"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let got = up.seen.lock().unwrap().last().cloned().unwrap();
    let sent = &got["traceparent"];
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"), "sampled flag kept: {sent}");
    assert_ne!(&sent[36..52], "00f067aa0ba902b7", "a new span id");
    assert_eq!(got["tracestate"], "vendor=abc");
    // Unsampled parent stays unsampled.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    http(
        proxy.port,
        "GET",
        "/search?q=a",
        &[("traceparent", unsampled)],
        b"",
    );
    let got = up.seen.lock().unwrap().last().cloned().unwrap();
    assert!(got["traceparent"].ends_with("-00"));
    // No traceparent: the proxy starts a trace (unsampled by default).
    http(
        proxy.port,
        "GET",
        "/search?q=a",
        &[("x-request-id", "untraced-1")],
        b"",
    );
    let got = up.seen.lock().unwrap().last().cloned().unwrap();
    let started = &got["traceparent"];
    assert_eq!(started.len(), 55);
    assert!(started.ends_with("-00"));
    // The trace ids are in the audit lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let by_id = |id: &str| lines.iter().find(|l| l["request_id"] == id).cloned();
        if let (Some(a), Some(b)) = (by_id("traced-1"), by_id("untraced-1")) {
            assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(b["trace_id"].as_str().unwrap(), &started[3..35]);
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------- OTLP

/// A minimal OTLP/HTTP receiver: stores each POSTed body.
fn otlp_receiver() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    let mut content_type = String::new();
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if let Some(v) = l.strip_prefix("content-type:") {
                            content_type = v.trim().to_string();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    assert_eq!(content_type, "application/x-protobuf");
                    store.lock().unwrap().push(body);
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, bodies)
}

/// Protobuf fields of one message: (field number, wire type, bytes or integer).
enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn fields(mut buf: &[u8]) -> Vec<(u64, Field<'_>)> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = buf[0];
            *buf = &buf[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Field::Int(varint(&mut buf)),
            1 => {
                let v = u64::from_le_bytes(buf[..8].try_into().unwrap());
                buf = &buf[8..];
                Field::Int(v)
            }
            2 => {
                let n = varint(&mut buf) as usize;
                let v = &buf[..n];
                buf = &buf[n..];
                Field::Bytes(v)
            }
            other => panic!("wire type {other}"),
        };
        out.push((field, value));
    }
    out
}

fn sub<'a>(fields: &'a [(u64, Field<'a>)], n: u64) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(f, _)| *f == n)
        .filter_map(|(_, v)| match v {
            Field::Bytes(b) => Some(*b),
            Field::Int(_) => None,
        })
        .collect()
}

fn int(fields: &[(u64, Field<'_>)], n: u64) -> Option<u64> {
    fields.iter().find_map(|(f, v)| match v {
        Field::Int(i) if *f == n => Some(*i),
        _ => None,
    })
}

struct DecodedSpan {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: u64,
    start: u64,
    end: u64,
    attributes: HashMap<String, String>,
    error: bool,
}

fn decode_spans(body: &[u8]) -> (Vec<DecodedSpan>, HashMap<String, String>) {
    let attrs = |kvs: Vec<&[u8]>| -> HashMap<String, String> {
        kvs.into_iter()
            .map(|kv| {
                let f = fields(kv);
                let key = String::from_utf8(sub(&f, 1)[0].to_vec()).unwrap();
                let any = fields(sub(&f, 2)[0]);
                let value = match sub(&any, 1).first() {
                    Some(s) => String::from_utf8(s.to_vec()).unwrap(),
                    None => int(&any, 3).unwrap().to_string(),
                };
                (key, value)
            })
            .collect()
    };
    let mut spans = Vec::new();
    let mut resource = HashMap::new();
    for rs in sub(&fields(body), 1) {
        let rs = fields(rs);
        resource = attrs(sub(&fields(sub(&rs, 1)[0]), 1));
        for ss in sub(&rs, 2) {
            let ss = fields(ss);
            for span in sub(&ss, 2) {
                let f = fields(span);
                spans.push(DecodedSpan {
                    trace_id: sub(&f, 1)[0].to_vec(),
                    span_id: sub(&f, 2)[0].to_vec(),
                    parent: sub(&f, 4).first().map(|p| p.to_vec()).unwrap_or_default(),
                    name: String::from_utf8(sub(&f, 5)[0].to_vec()).unwrap(),
                    kind: int(&f, 6).unwrap(),
                    start: int(&f, 7).unwrap(),
                    end: int(&f, 8).unwrap(),
                    attributes: attrs(sub(&f, 9)),
                    error: sub(&f, 15)
                        .first()
                        .is_some_and(|s| int(&fields(s), 3) == Some(2)),
                });
            }
        }
    }
    (spans, resource)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sampled_requests_are_exported_as_otlp_spans_per_policy_step() {
    let dir = tempdir("otlp");
    let up = upstream();
    manifests(&dir, up.port, free_port());
    let (collector, bodies) = otlp_receiver();
    let (proxy, _child, _) = start_proxy(
        &dir,
        &[
            "--no-audit",
            "--replica-id",
            "otlp-replica",
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{collector}/v1/traces"),
        ],
        Stdio::null(),
    );
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let unsampled = "00-11111111111111111111111111111111-b7ad6b7169203331-00";
    let r = http(
        proxy.port,
        "GET",
        "/search?q=a",
        &[("traceparent", sampled)],
        b"",
    );
    assert_eq!(r.status, 200);
    let sqli = urlencode("1' OR '1'='1' --");
    let r = http(
        proxy.port,
        "GET",
        &format!("/search?q={sqli}"),
        &[("traceparent", sampled)],
        b"",
    );
    assert_eq!(r.status, 403);
    http(
        proxy.port,
        "GET",
        "/search?q=a",
        &[("traceparent", unsampled)],
        b"",
    );
    // No traceparent and the default sample ratio of 0: not exported either.
    http(proxy.port, "GET", "/search?q=a", &[], b"");

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let all: Vec<DecodedSpan> = bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| decode_spans(b).0)
            .collect();
        if all.iter().filter(|s| s.name == "request").count() >= 2 {
            break all;
        }
        assert!(Instant::now() < deadline, "no spans exported");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, resource) = decode_spans(&bodies.lock().unwrap()[0]);
    assert_eq!(resource["service.name"], "portcullis-proxy");
    assert_eq!(resource["service.instance.id"], "otlp-replica");
    for s in &spans {
        assert_eq!(
            hex(&s.trace_id),
            "0af7651916cd43dd8448eb211c80319c",
            "only sampled traces"
        );
        assert!(s.end >= s.start && s.start > 0);
    }
    let requests: Vec<&DecodedSpan> = spans.iter().filter(|s| s.name == "request").collect();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(
            hex(&r.parent),
            "b7ad6b7169203331",
            "the caller's span is the parent"
        );
        assert_eq!(r.kind, 2, "server span");
    }
    let allowed = requests
        .iter()
        .find(|r| r.attributes["http.response.status_code"] == "200")
        .unwrap();
    let blocked = requests
        .iter()
        .find(|r| r.attributes["http.response.status_code"] == "403")
        .unwrap();
    assert_eq!(blocked.attributes["portcullis.denied_by"], "waf");
    assert_eq!(allowed.attributes["http.route"], "obs/search");
    let children = |parent: &DecodedSpan| -> Vec<(String, bool)> {
        spans
            .iter()
            .filter(|s| s.parent == parent.span_id)
            .map(|s| {
                assert_eq!(s.kind, 1, "internal span");
                assert!(s.start >= parent.start && s.end <= parent.end + 1_000_000);
                (s.name.clone(), s.error)
            })
            .collect()
    };
    assert_eq!(
        children(allowed),
        [
            ("waf.head".to_string(), false),
            ("upstream".to_string(), false)
        ]
    );
    assert_eq!(children(blocked), [("waf.head".to_string(), true)]);
    // The upstream saw the proxy's request span as its parent.
    let seen = up.seen.lock().unwrap();
    let upstream_parent = &seen[0]["traceparent"][36..52];
    assert_eq!(upstream_parent, hex(&allowed.span_id));
    drop(seen);
    assert!(metric(proxy.admin, "api_trace_spans_total{result=\"exported\"}") >= 5.0);
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------- stalled audit

#[test]
fn a_stalled_audit_pipe_costs_allowed_lines_not_latency_and_keeps_denials() {
    let dir = tempdir("stall");
    let up = upstream();
    manifests(&dir, up.port, free_port());
    // stdout is a pipe this test does not read until the end: it fills (64 KiB), the writer
    // blocks, the queue (64 lines) fills.
    let (proxy, _child, stdout) = start_proxy(&dir, &["--audit-queue", "64"], Stdio::piped());
    let stdout = stdout.unwrap();
    let mut latencies = Vec::new();
    for _ in 0..1500 {
        let started = Instant::now();
        let r = get(proxy.port, "/search?q=a");
        latencies.push(started.elapsed());
        assert_eq!(r.status, 200);
    }
    let dropped = metric(
        proxy.admin,
        "api_audit_dropped_total{reason=\"queue_full\"}",
    );
    assert!(dropped > 500.0, "dropped {dropped}");
    // Denials after the flood still find room (allowed lines use 3/4 of the queue).
    let denial_ids: Vec<String> = (0..10).map(|i| format!("denied-after-stall-{i}")).collect();
    for id in &denial_ids {
        let r = http(proxy.port, "GET", "/nowhere", &[("x-request-id", id)], b"");
        assert_eq!(r.status, 404);
    }
    assert_eq!(
        metric(
            proxy.admin,
            "api_audit_dropped_total{reason=\"queue_full\"}"
        ),
        dropped,
        "no denial dropped"
    );
    // Latency while stalled: the last 500 requests, all lines dropped, are as quick as a
    // proxied request on loopback (a blocked request would take the test's 10 s timeout).
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
    // Now read the pipe: every denial's line is there.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("denied-after-stall-9") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(_) => break,
        }
    }
    for id in &denial_ids {
        assert!(
            text.contains(&format!("\"request_id\":\"{id}\"")),
            "{id} lost"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
