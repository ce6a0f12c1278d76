//! Bodies whose type and content disagree, and XML markup that carries text (issue #26): a
//! payload is found whatever the `Content-Type` says and wherever XML puts it. Each case
//! asserts an injection finding, not just the parse error a mismatch also scores.
#![allow(clippy::unwrap_used)]

mod support;

use portcullis_waf::{Decision, Group};
use support::{engine, Req};

const SQLI: &str = "1' UNION SELECT password FROM users--";

fn injection_groups(req: &Req) -> Vec<Group> {
    let e = engine(1);
    let eval = req.evaluate(&e);
    assert_ne!(e.decision(&eval), Decision::Allow, "not blocked: {req:?}");
    let groups: Vec<Group> = eval
        .findings
        .iter()
        .map(|f| f.group)
        .filter(|g| *g != Group::ProtocolEnforcement)
        .collect();
    assert!(
        !groups.is_empty(),
        "only protocol findings: {:?}",
        eval.findings
    );
    groups
}

fn post(content_type: &str, body: &str) -> Req {
    Req::new("POST", "/api").body(content_type, body)
}

#[test]
fn xml_markup_that_carries_text_is_inspected() {
    for body in [
        format!("<q><![CDATA[{SQLI}]]></q>"),
        format!("<q><!-- {SQLI} --></q>"),
        "<?xml version=\"1.0\"?><?php system('id'); ?><q>x</q>".to_string(),
        "<!DOCTYPE q [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><q>&x;</q>".to_string(),
        format!("<q a=\"{SQLI}\">x</q>"),
        format!("<q>{SQLI}</q>"),
        "<q><![cdata[<script>alert(1)</script>]]></q>".to_string(),
    ] {
        for content_type in [
            "application/xml",
            "text/xml",
            "application/soap+xml",
            "application/atom+xml",
        ] {
            injection_groups(&post(content_type, &body));
        }
    }
    let soap = format!(
        "<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\"><soap:Body>\
         <m:GetUser xmlns:m=\"urn:x\"><m:id><![CDATA[{SQLI}]]></m:id></m:GetUser></soap:Body></soap:Envelope>"
    );
    injection_groups(&post("application/soap+xml; charset=utf-8", &soap));
}

#[test]
fn malformed_xml_is_inspected_raw() {
    // Unclosed CDATA: the parser cannot tell where it ends, so the body is inspected whole.
    let eval_groups = injection_groups(&post("application/xml", &format!("<q><![CDATA[{SQLI}")));
    assert!(eval_groups.contains(&Group::SqlInjection));
    injection_groups(&post("text/xml", &format!("<q {SQLI}")));
}

#[test]
fn every_parser_with_a_mismatching_body_still_finds_the_payload() {
    let json = format!("{{\"q\": \"{SQLI}\"}}");
    let xml = format!("<q>{SQLI}</q>");
    let form = format!("q={}", SQLI.replace(' ', "+"));
    let multipart =
        format!("--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n{SQLI}\r\n--b--\r\n");
    let cases = [
        ("multipart/form-data; boundary=zzz", &json),
        ("multipart/form-data; boundary=zzz", &xml),
        ("multipart/form-data", &json),
        ("application/json", &xml),
        ("application/json", &form),
        ("application/json", &multipart),
        ("application/xml", &json),
        ("application/xml", &form),
        ("application/x-www-form-urlencoded", &json),
        ("application/x-www-form-urlencoded", &multipart),
        ("text/plain", &json),
        ("application/octet-stream", &json),
        ("image/png", &form),
        ("", &json),
    ];
    for (content_type, body) in cases {
        let req = if content_type.is_empty() {
            let mut r = Req::new("POST", "/api");
            r.body = body.as_bytes().to_vec();
            r
        } else {
            post(content_type, body)
        };
        let groups = injection_groups(&req);
        assert!(
            groups.contains(&Group::SqlInjection),
            "{content_type} with {body}: {groups:?}"
        );
    }
}

#[test]
fn well_formed_xml_documents_pass() {
    let e = engine(1);
    for body in [
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><order id=\"42\"><item sku=\"A-1\">2</item>\
         <note><![CDATA[Leave at the door, please & thank you]]></note><!-- generated --></order>",
        "<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\"><soap:Body>\
         <m:GetPrice xmlns:m=\"https://www.w3schools.com/prices\"><m:Item>Apples</m:Item>\
         </m:GetPrice></soap:Body></soap:Envelope>",
        "<!DOCTYPE note SYSTEM \"note.dtd\"><note><to>Tove</to><body>Don't forget me</body></note>",
    ] {
        let eval = post("application/xml", body).evaluate(&e);
        assert_eq!(
            e.decision(&eval),
            Decision::Allow,
            "{body}: {:?}",
            eval.findings
        );
    }
}
