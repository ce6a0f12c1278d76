//! The upstream HTTP/1 response head parser (`upstream::h1::parse_head`): what an upstream,
//! or whoever sits between us and it, sends back.
//!
//! Input: one flag byte (bit 0: the request was `HEAD`), then the bytes read so far.
//! Properties beyond "no panic":
//! - a complete head ends where the parser says: the same bytes alone give the same head,
//!   and a prefix of them is incomplete (never an error, never another head);
//! - no hop-by-hop field, nor one a `Connection` field names, reaches the response;
//! - a head with both `Transfer-Encoding` and `Content-Length` (a smuggling sign) is never
//!   reused, and neither is a body that runs to the close;
//! - `HEAD`, 204 and 304 answers have no body; a final answer is never 1xx.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::forward_headers::is_hop_by_hop;
use portcullis_proxy::upstream::h1::{parse_head, ResponseFraming, ResponseHead};

fn summary(head: &Option<ResponseHead>) -> Option<String> {
    head.as_ref().map(|h| {
        format!(
            "{:?} {:?} {:?} {}",
            h.response.status(),
            h.response.headers(),
            h.framing,
            h.reusable
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let Ok(Some((used, head))) = parse_head(buf, head_request) else {
        return;
    };
    assert!(used > 0 && used <= buf.len());

    match parse_head(&buf[..used], head_request) {
        Ok(Some((again, again_head))) => {
            assert_eq!(again, used);
            assert_eq!(summary(&again_head), summary(&head));
        }
        _ => panic!("the head's own bytes do not parse to it"),
    }
    let cuts = if used <= 64 {
        (0..used).collect::<Vec<_>>()
    } else {
        vec![0, 1, used / 3, used / 2, used - 2, used - 1]
    };
    for cut in cuts {
        assert!(
            matches!(parse_head(&buf[..cut], head_request), Ok(None)),
            "a prefix of {cut} bytes is not incomplete"
        );
    }

    let Some(head) = head else {
        return; // an interim 1xx answer, skipped by the caller
    };
    assert!(!head.response.status().is_informational());

    // What the raw head says, read independently.
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut raw = httparse::Response::new(&mut fields);
    let _ = raw.parse(&buf[..used]);
    let mut named: Vec<String> = Vec::new();
    let (mut te, mut cl) = (false, false);
    for f in raw.headers.iter() {
        let name = f.name.to_ascii_lowercase();
        te |= name == "transfer-encoding";
        cl |= name == "content-length";
        if name == "connection" {
            for token in String::from_utf8_lossy(f.value).split(',') {
                named.push(token.trim().to_ascii_lowercase());
            }
        }
    }
    for name in head.response.headers().keys() {
        assert!(!is_hop_by_hop(name), "hop-by-hop {name} kept");
        assert!(
            !named.iter().any(|n| n == name.as_str()),
            "{name} is named by Connection but kept"
        );
    }
    let status = head.response.status().as_u16();
    if head_request || status == 204 || status == 304 {
        assert_eq!(head.framing, ResponseFraming::Empty);
    }
    if te && cl && head.framing != ResponseFraming::Empty {
        assert!(!head.reusable, "TE + CL head marked reusable");
    }
    if head.framing == ResponseFraming::UntilClose {
        assert!(!head.reusable);
    }
    if let ResponseFraming::Length(n) = head.framing {
        assert!(n > 0);
    }
});
