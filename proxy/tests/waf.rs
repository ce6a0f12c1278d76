//! The WAF through the proxy: steps 6 and 9 of the pipeline, 403/405 JSON with the request
//! id, the audit line's findings, metrics, Detect mode, and bodies past `inspectBodyBytes`
//! forwarded intact.
#![allow(clippy::unwrap_used)]
mod common;

use std::sync::{Arc, Mutex};

use common::*;
use portcullis_compiler::config::*;
use portcullis_proxy::{AuditSink, ProxyOptions};
use portcullis_waf::{Action, Group, Operator, TransformKind};

fn policy(id: &str, mode: WafModeConfig, oversize: WafOversizeActionConfig) -> WafPolicyConfig {
    WafPolicyConfig {
        id: id.into(),
        namespace: "default".into(),
        global: false,
        mode,
        paranoia_level: 1,
        anomaly_threshold: 5,
        rule_groups: vec![
            Group::SqlInjection,
            Group::CrossSiteScripting,
            Group::PathTraversal,
            Group::CommandInjection,
            Group::RemoteFileInclusion,
            Group::PhpInjection,
            Group::JavaInjection,
            Group::ProtocolEnforcement,
            Group::ScannerDetection,
        ],
        allowed_methods: vec!["GET".into(), "POST".into()],
        limits: WafLimitsConfig {
            max_json_depth: 16,
            max_args: 64,
            max_arg_length: 4096,
            inspect_body_bytes: 1024,
            oversize_action: oversize,
        },
        custom_rules: vec![WafCustomRuleConfig {
            id: 10001,
            description: Some("internal tool marker".into()),
            targets: vec!["Header:X-Tool".into()],
            operator: Operator::Contains,
            value: "forbidden-tool".into(),
            transforms: vec![TransformKind::Lowercase],
            action: Action::Block,
            score: 5,
        }],
        exclusions: vec![WafExclusionConfig {
            rule_ids: vec![942100, 942200, 942180],
            paths: vec!["/search".into()],
            targets: vec!["Query:sql".into()],
        }],
    }
}

async fn start_waf(
    mode: WafModeConfig,
) -> (
    portcullis_proxy::RunningProxy,
    Upstream,
    Arc<Mutex<Vec<String>>>,
) {
    start_waf_with(mode, WafOversizeActionConfig::InspectPartial).await
}

async fn start_waf_with(
    mode: WafModeConfig,
    oversize: WafOversizeActionConfig,
) -> (
    portcullis_proxy::RunningProxy,
    Upstream,
    Arc<Mutex<Vec<String>>>,
) {
    let up = upstream("u", Behaviour::Echo).await;
    let mut r = route("default/api", PathKind::Prefix, "/", &[&up]);
    r.waf_policies = vec!["default/strict".into()];
    let mut cfg = config(vec![r]);
    cfg.waf_policies = vec![policy("default/strict", mode, oversize)];
    let lines = Arc::new(Mutex::new(Vec::new()));
    let options = ProxyOptions {
        audit: AuditSink::Memory(lines.clone()),
        ..ProxyOptions::default()
    };
    (start_with(options, cfg).await, up, lines)
}

fn last_audit(lines: &Arc<Mutex<Vec<String>>>) -> serde_json::Value {
    let lines = lines.lock().unwrap();
    serde_json::from_str(lines.last().unwrap()).unwrap()
}

#[tokio::test]
async fn blocks_attacks_in_head_and_body_and_forwards_clean_requests() {
    let (proxy, up, lines) = start_waf(WafModeConfig::Block).await;
    let c = client();
    let a = proxy.local_addr();

    // Step 6: query string, before the upstream is contacted.
    let r = send(
        &c,
        a,
        get("/items?q=1%27%20OR%20%271%27%3D%271").header("x-request-id", "req-sqli-1"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["request_id"], "req-sqli-1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(up.hits(), 0);
    let audit = last_audit(&lines);
    assert_eq!(audit["step"], "waf");
    assert_eq!(audit["reason"], "waf_blocked");
    let finding = &audit["waf"][0]["findings"][0];
    assert_eq!(finding["target"], "Query:q", "{audit}");
    assert_eq!(finding["group"], "sqli", "{audit}");
    assert!(
        audit["rule_ids"]
            .as_array()
            .unwrap()
            .contains(&942100.into()),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains("OR '1'='1'"),
        "the excerpt is bounded: {audit}"
    );

    // Clean GET and JSON with prose pass and reach the upstream unchanged.
    let r = send(&c, a, get("/items?page=2&sort=name")).await;
    assert_eq!(r.status, 200);
    let body = br#"{"title": "Weekly update", "text": "We will select a new vendor from the shortlist and drop the old one."}"#;
    let r = send(
        &c,
        a,
        get("/notes")
            .method("POST")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["body_len"], body.len());

    // Step 9: a payload in a JSON value.
    let r = send(
        &c,
        a,
        get("/notes")
            .method("POST")
            .header("content-type", "application/json")
            .body(br#"{"user": {"name": "<script>alert(1)</script>"}}"#),
    )
    .await;
    assert_eq!(r.status, 403);
    let audit = last_audit(&lines);
    let targets: Vec<&str> = audit["waf"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"Json:$.user.name"), "{audit}");

    // allowedMethods → 405; custom rule with action Block.
    let r = send(&c, a, get("/items").method("DELETE")).await;
    assert_eq!(r.status, 405);
    let r = send(&c, a, get("/items").header("x-tool", "Forbidden-Tool/1.0")).await;
    assert_eq!(r.status, 403);
    assert!(last_audit(&lines)["rule_ids"]
        .as_array()
        .unwrap()
        .contains(&10001.into()));

    // Exclusion: the search endpoint's `sql` argument may hold SQL.
    let r = send(&c, a, get("/search?sql=name%27%20OR%20%27a%27%3D%27a")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = send(&c, a, get("/other?sql=name%27%20OR%20%27a%27%3D%27a")).await;
    assert_eq!(r.status, 403);

    // Past inspectBodyBytes (1 KiB here) the body is forwarded, intact, and the audit says
    // it was not all inspected.
    let mut big = vec![b'a'; 4096];
    big.splice(0..0, b"note=".iter().copied());
    big.extend_from_slice(b"&later=1%27%20OR%20%271%27%3D%271");
    let r = send(
        &c,
        a,
        get("/upload")
            .method("POST")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(&big),
    )
    .await;
    assert_eq!(r.json()["body_len"], big.len());
    let audit = last_audit(&lines);
    assert_eq!(audit["waf"][0]["body_truncated"], true, "{audit}");
    assert_eq!(audit["waf"][0]["body_inspected_bytes"], 1024, "{audit}");

    let metrics = String::from_utf8(
        send(&c, proxy.admin_addr().unwrap(), get("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("api_waf_blocked_total{route=\"default/api\",rule_group=\"sqli\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn detect_mode_logs_and_counts_but_never_blocks() {
    let (proxy, up, lines) = start_waf(WafModeConfig::Detect).await;
    let c = client();
    let a = proxy.local_addr();
    let r = send(&c, a, get("/items?file=..%2F..%2F..%2Fetc%2Fpasswd")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
    let audit = last_audit(&lines);
    assert_eq!(audit["decision"], "allow");
    assert_eq!(audit["waf"][0]["blocked"], false, "{audit}");
    assert_eq!(audit["waf"][0]["mode"], "Detect");
    assert_eq!(audit["waf"][0]["findings"][0]["group"], "lfi", "{audit}");
    let metrics = String::from_utf8(
        send(&c, proxy.admin_addr().unwrap(), get("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("api_waf_detected_total{route=\"default/api\",rule_group=\"lfi\"}"),
        "{metrics}"
    );
}

/// Sends a chunked POST whose chunks are written one at a time (each flushed, with a pause),
/// so that the proxy receives them as separate body frames; returns status line and body.
async fn post_in_frames(addr: std::net::SocketAddr, chunks: &[&[u8]]) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"POST /notes HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The proxy may answer (413) and close before the last chunk: stop writing then, and
    // read its answer.
    for chunk in chunks {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if s.write_all(&frame).await.is_err() || s.flush().await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    // A reset after the answer (the proxy closed with our chunks unread) ends the read.
    let _ = s.read_to_end(&mut raw).await;
    assert!(raw.len() > 12, "no answer: {raw:?}");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk is enough for these small JSON answers.
        body.split("\r\n").nth(1).unwrap_or_default().to_string()
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The echo upstream answered and got exactly `body`.
fn assert_forwarded(status: u16, echo: &serde_json::Value, body: &[u8]) {
    use sha2::Digest;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], hex::encode(sha2::Sha256::digest(body)));
}

#[tokio::test]
async fn bodies_arriving_in_several_frames_are_inspected_whole_and_forwarded_intact() {
    let (proxy, up, lines) = start_waf(WafModeConfig::Block).await;
    let a = proxy.local_addr();

    // A benign JSON body in three frames reaches the upstream byte for byte.
    let parts: [&[u8]; 3] = [
        br#"{"title": "Weekly upd"#,
        br#"ate", "text": "We will pick a vendor"#,
        br#" from the shortlist."}"#,
    ];
    let whole = parts.concat();
    let (status, echo) = post_in_frames(a, &parts).await;
    assert_forwarded(status, &echo, &whole);

    // An attack split across frames is seen whole and blocked before the upstream.
    let hits = up.hits();
    let (status, answer) = post_in_frames(
        a,
        &[
            br#"{"user": {"name": "<scr"#,
            br#"ipt>alert(1)</scr"#,
            br#"ipt>"}}"#,
        ],
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(up.hits(), hits);
    let audit = last_audit(&lines);
    assert!(audit.to_string().contains("Json:$.user.name"), "{audit}");

    // Frames past inspectBodyBytes (1 KiB): the inspected prefix spans frames, the rest
    // streams on, and the upstream gets every byte in order.
    let frames: Vec<Vec<u8>> = (0..5u8)
        .map(|i| {
            let mut f = vec![b'a' + i; 600];
            if i == 0 {
                f.splice(0..0, br#"{"notes": ""#.iter().copied());
            }
            if i == 4 {
                f.extend_from_slice(br#""}"#);
            }
            f
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let whole = frames.concat();
    let (status, echo) = post_in_frames(a, &refs).await;
    assert_forwarded(status, &echo, &whole);
    let audit = last_audit(&lines);
    assert_eq!(audit["waf"][0]["body_truncated"], true, "{audit}");
    assert_eq!(audit["waf"][0]["body_inspected_bytes"], 1024, "{audit}");
}

/// `oversizeAction: Block` (the default): a body longer than `inspectBodyBytes` (1 KiB here)
/// is refused with 413 JSON, chunked or not, so an attack padded past the limit never reaches
/// the upstream; a body of exactly the limit passes, and `Detect` mode only records it.
#[tokio::test]
async fn bodies_past_the_inspected_size_are_refused_by_default() {
    let (proxy, up, lines) =
        start_waf_with(WafModeConfig::Block, WafOversizeActionConfig::Block).await;
    let a = proxy.local_addr();
    let c = client();

    // An attack at the end of a JSON body padded past the limit, with a Content-Length.
    let padded = format!(
        r#"{{"pad": "{}", "q": "1' UNION SELECT password FROM users--"}}"#,
        "a".repeat(2000)
    );
    let r = send(
        &c,
        a,
        get("/notes")
            .method("POST")
            .header("content-type", "application/json")
            .body(padded.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        answer["error"], "request body is larger than the web application firewall inspects",
        "{answer}"
    );
    let audit = last_audit(&lines);
    assert_eq!(audit["status"], 413, "{audit}");
    assert!(answer["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(up.hits(), 0);

    // The same in frames of a chunked body.
    let frames: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 400]).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let (status, answer) = post_in_frames(a, &refs).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(up.hits(), 0);

    // Exactly the limit, chunked: the end is seen, nothing is left uninspected.
    let exact = {
        let mut b = br#"{"notes": ""#.to_vec();
        b.resize(1024 - 2, b'x');
        b.extend_from_slice(br#""}"#);
        b
    };
    assert_eq!(exact.len(), 1024);
    let (status, echo) = post_in_frames(a, &[&exact[..600], &exact[600..]]).await;
    assert_forwarded(status, &echo, &exact);

    // An attack inside the inspected part is a 403, not a 413.
    let early = format!(
        r#"{{"q": "<script>alert(1)</script>", "pad": "{}"}}"#,
        "a".repeat(2000)
    );
    let r = send(
        &c,
        a,
        get("/notes")
            .method("POST")
            .header("content-type", "application/json")
            .body(early.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 403);

    // Detect mode never blocks: the body is forwarded and the audit line says it was cut.
    let (proxy, _up, lines) =
        start_waf_with(WafModeConfig::Detect, WafOversizeActionConfig::Block).await;
    let big = format!(r#"{{"pad": "{}"}}"#, "a".repeat(3000));
    let r = send(
        &c,
        proxy.local_addr(),
        get("/notes")
            .method("POST")
            .header("content-type", "application/json")
            .body(big.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 200);
    let audit = last_audit(&lines);
    assert_eq!(audit["waf"][0]["body_truncated"], true, "{audit}");
}
