//! `portcullis-proxy explain <request-id>`: fetches a decision record from a replica's admin
//! listener and tells a person why the request got its answer and what would change it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("--admin {0:?}: expected http://HOST:PORT")]
    AdminUrl(String),
    #[error("request id {0:?}: only letters, digits, '.', '_' and '-' can be a request id")]
    RequestId(String),
    #[error("cannot reach the admin listener at {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("no decision record for request {id} on {url} (unknown, evicted, or served by another replica: see the `replica` field of its audit line)")]
    NotFound { id: String, url: String },
    #[error("the admin listener answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the admin listener's answer is not a decision record: {0}")]
    Malformed(String),
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET <admin>/decisions/<id>` with a plain HTTP/1.1 client (the admin listener is local
/// or port-forwarded; no TLS, no redirects).
pub fn fetch(admin: &str, request_id: &str) -> Result<Value, ExplainError> {
    if !crate::request_id::is_valid(request_id.as_bytes()) {
        return Err(ExplainError::RequestId(request_id.to_string()));
    }
    let authority = admin
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| ExplainError::AdminUrl(admin.to_string()))?;
    let connect = |source| ExplainError::Connect {
        url: admin.to_string(),
        source,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| ExplainError::AdminUrl(admin.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(connect)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(connect)?;
    write!(
        stream,
        "GET /decisions/{request_id} HTTP/1.1\r\nhost: {authority}\r\naccept: application/json\r\nconnection: close\r\n\r\n"
    )
    .map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ExplainError::Malformed("no HTTP head".into()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ExplainError::Malformed("no status".into()))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    match status {
        200 => serde_json::from_str(&body).map_err(|e| ExplainError::Malformed(e.to_string())),
        404 => Err(ExplainError::NotFound {
            id: request_id.to_string(),
            url: admin.to_string(),
        }),
        status => Err(ExplainError::Status {
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The record for a person: a verdict line, the evidence, then what to change.
pub fn render(record: &Value) -> String {
    let mut out = String::new();
    let verdict = str_of(record, "verdict");
    let status = record.get("status").and_then(Value::as_u64).unwrap_or(0);
    let route = record
        .get("route")
        .and_then(Value::as_str)
        .unwrap_or("(no route)");
    let step = str_of(record, "step");
    let reason = str_of(record, "reason");
    let method = str_of(record, "method");
    let path = str_of(record, "path");
    if verdict == "deny" {
        let _ = writeln!(
            out,
            "DENIED {status} at step {step} ({reason}) on route {route}: {method} {path}"
        );
    } else {
        let _ = writeln!(out, "ALLOWED {status} on route {route}: {method} {path}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Evidence");
    let field = |out: &mut String, label: &str, key: &str| {
        if let Some(v) = record.get(key).and_then(Value::as_str) {
            let _ = writeln!(out, "  {label:<12} {v}");
        }
    };
    field(&mut out, "request id", "request_id");
    field(&mut out, "trace id", "trace_id");
    field(&mut out, "time", "timestamp");
    field(&mut out, "replica", "replica");
    field(&mut out, "config", "generation");
    field(&mut out, "consumer", "consumer");
    field(&mut out, "message", "message");
    if let Some(rl) = record.get("rate_limit") {
        let _ = writeln!(out, "  {:<12} {}", "policy", str_of(rl, "policy"));
        if let Some(limit) = rl.get("limit").and_then(Value::as_str) {
            let _ = writeln!(out, "  {:<12} {limit}", "limit");
        }
        if let Some(retry) = rl.get("retry_after_secs").and_then(Value::as_u64) {
            let _ = writeln!(out, "  {:<12} {retry}s after the decision", "retry after");
        }
    }
    let waf = record
        .get("waf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for policy in waf {
        let _ = writeln!(
            out,
            "  WafPolicy {} (mode {}): anomaly score {}{}",
            str_of(policy, "policy"),
            str_of(policy, "mode"),
            policy.get("score").and_then(Value::as_u64).unwrap_or(0),
            if policy.get("blocked").and_then(Value::as_bool) == Some(true) {
                ", blocked"
            } else {
                ""
            }
        );
        for f in policy
            .get("findings")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let _ = writeln!(
                out,
                "    rule {} ({}, +{}) on {}: {} — matched \"{}\"",
                f.get("rule_id").and_then(Value::as_u64).unwrap_or(0),
                str_of(f, "group"),
                f.get("score").and_then(Value::as_u64).unwrap_or(0),
                str_of(f, "target"),
                str_of(f, "message"),
                str_of(f, "excerpt"),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "What to change");
    out.push_str(&advice(record, step, reason, waf));
    out
}

fn advice(record: &Value, step: &str, reason: &str, waf: &[Value]) -> String {
    let mut out = String::new();
    let path = str_of(record, "path");
    let route = str_of(record, "route");
    match step {
        "" => {
            let _ = writeln!(
                out,
                "  Nothing: every policy of the route let the request through."
            );
        }
        "waf" if reason == "waf_blocked" => {
            let blocking: Vec<&Value> = waf
                .iter()
                .filter(|p| p.get("blocked").and_then(Value::as_bool) == Some(true))
                .collect();
            let _ = writeln!(
                out,
                "  If this request is legitimate, exclude the matching rules for this path and target\n  in the WafPolicy (keep the exclusion as narrow as the evidence):\n"
            );
            for policy in blocking {
                let name = str_of(policy, "policy");
                let (namespace, name) = name.split_once('/').unwrap_or(("default", name));
                let mut by_target: Vec<(String, Vec<u64>)> = Vec::new();
                for f in policy
                    .get("findings")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    let target = str_of(f, "target").to_string();
                    let id = f.get("rule_id").and_then(Value::as_u64).unwrap_or(0);
                    match by_target.iter_mut().find(|(t, _)| *t == target) {
                        Some((_, ids)) => ids.push(id),
                        None => by_target.push((target, vec![id])),
                    }
                }
                let _ = writeln!(out, "    apiVersion: portcullis.dev/v1alpha1");
                let _ = writeln!(out, "    kind: WafPolicy");
                let _ = writeln!(
                    out,
                    "    metadata: {{name: {name}, namespace: {namespace}}}"
                );
                let _ = writeln!(out, "    spec:");
                let _ = writeln!(out, "      exclusions:");
                for (target, ids) in by_target {
                    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                    let target = if matches!(target.as_str(), "Path" | "Request" | "") {
                        String::new()
                    } else {
                        format!(", targets: [{}]", yaml_string(&target))
                    };
                    let _ = writeln!(
                        out,
                        "        - {{ruleIds: [{}], paths: [{}]{target}}}",
                        ids.join(", "),
                        yaml_string(path),
                    );
                }
            }
            let _ = writeln!(
                out,
                "\n  Merge it into the policy's existing `exclusions` (kubectl edit wafpolicy, or the manifest)."
            );
        }
        "waf" if reason == "method_not_allowed" => {
            let _ = writeln!(
                out,
                "  Add {} to the WafPolicy's allowedMethods if the route should accept it.",
                str_of(record, "method")
            );
        }
        "rate_limit" => {
            let rl = record.get("rate_limit").cloned().unwrap_or(Value::Null);
            let policy = str_of(&rl, "policy");
            let retry = rl.get("retry_after_secs").and_then(Value::as_u64);
            match reason {
                "rate_limited" => {
                    let _ = writeln!(
                        out,
                        "  The client used up RateLimitPolicy {policy} ({}).",
                        str_of(&rl, "limit")
                    );
                    if let Some(retry) = retry {
                        let _ = writeln!(
                            out,
                            "  Its window lets it in again {retry}s after the decision (the Retry-After it got)."
                        );
                    }
                    let _ = writeln!(
                        out,
                        "  To allow more, raise `limits` (or add a `tiers` entry for the consumer's group)\n  in RateLimitPolicy {policy}."
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  RateLimitPolicy {policy}: {reason}; check its backend (Redis) or the key header."
                    );
                }
            }
        }
        "authentication" => {
            let _ = writeln!(
                out,
                "  The request carried no valid credential for route {route} ({reason}).\n  Send a valid API key or token, or check the ConsumerCredential / issuer settings."
            );
        }
        "authorization" => {
            let _ = writeln!(
                out,
                "  The caller authenticated but lacks the groups, scopes or roles route {route} requires\n  ({reason}): grant them to the consumer, or change spec.authorization."
            );
        }
        "validation" => {
            let _ = writeln!(
                out,
                "  The request broke route {route}'s requestValidation ({reason}): fix the request, or\n  change the route's limits (maxBodySize, content types, schema)."
            );
        }
        "upstream" => {
            let _ = writeln!(
                out,
                "  Not a policy decision: the upstream of route {route} failed ({reason}).\n  Check the upstream targets (api_upstream_errors_total, the ApiRoute's status)."
            );
        }
        "ip_restriction" => {
            let _ = writeln!(
                out,
                "  The client IP is outside route {route}'s ipRestriction: add it to the allow list\n  (or check --trusted-proxies if the proxy sees a load balancer's address)."
            );
        }
        "route" => {
            let _ = writeln!(
                out,
                "  No ApiRoute matched this host, path and method: add one, or fix the request."
            );
        }
        other => {
            let _ = writeln!(out, "  Step {other} refused the request ({reason}).");
        }
    }
    out
}

/// A YAML flow scalar that needs no escaping rules from the reader: always double-quoted.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn waf_denial_names_step_rule_target_and_exclusion() {
        let record = serde_json::json!({
            "request_id": "abc", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "timestamp": "2026-01-01T00:00:00.000Z", "replica": "r1", "generation": "g",
            "route": "shop/search", "consumer": null, "method": "GET", "path": "/search",
            "status": 403, "verdict": "deny", "step": "waf", "reason": "waf_blocked",
            "waf": [{"policy": "shop/strict", "mode": "Block", "score": 5, "blocked": true,
                "findings": [{"rule_id": 942100, "group": "SqlInjection", "target": "Query:q",
                    "score": 5, "excerpt": "1' or '1'='1", "message": "SQL injection"}]}]
        });
        let text = render(&record);
        assert!(text.starts_with("DENIED 403 at step waf (waf_blocked) on route shop/search"));
        assert!(
            text.contains("rule 942100 (SqlInjection, +5) on Query:q"),
            "{text}"
        );
        assert!(
            text.contains("metadata: {name: strict, namespace: shop}"),
            "{text}"
        );
        assert!(
            text.contains("- {ruleIds: [942100], paths: [\"/search\"], targets: [\"Query:q\"]}"),
            "{text}"
        );
    }

    #[test]
    fn rate_limited_names_policy_and_retry() {
        let record = serde_json::json!({
            "request_id": "abc", "route": "shop/login", "method": "POST", "path": "/login",
            "status": 429, "verdict": "deny", "step": "rate_limit", "reason": "rate_limited",
            "rate_limit": {"policy": "shop/per-ip", "limit": "5 per 60000ms", "retry_after_secs": 42}
        });
        let text = render(&record);
        assert!(
            text.contains("RateLimitPolicy shop/per-ip (5 per 60000ms)"),
            "{text}"
        );
        assert!(text.contains("42s after the decision"), "{text}");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
