//! Shared by the integration tests: where the corpora live and how to turn a corpus case
//! into engine input.
#![allow(dead_code)]

use std::path::PathBuf;

/// `waf/tests/corpora`: the attack corpora, copied into the repository with their licences
/// (`waf/CRS-LICENSE`, `waf/libinjection/COPYING`). Always `Some`: a missing corpus fails
/// the test that reads it instead of skipping it.
pub fn corpora() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpora");
    assert!(
        dir.join("waf").is_dir(),
        "corpus folder {} is missing: it is part of the repository",
        dir.display()
    );
    Some(dir)
}

/// An owned request: method, URI, headers, body.
#[derive(Debug, Clone, Default)]
pub struct Req {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn new(method: &str, uri: &str) -> Self {
        Req {
            method: method.into(),
            uri: uri.into(),
            headers: vec![("Host".into(), b"api.example.com".to_vec())],
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    pub fn json(self, body: &str) -> Self {
        let mut r = self.header("Content-Type", "application/json");
        r.body = body.as_bytes().to_vec();
        r
    }

    pub fn body(mut self, content_type: &str, body: impl AsRef<[u8]>) -> Self {
        self = self.header("Content-Type", content_type);
        self.body = body.as_ref().to_vec();
        self
    }

    pub fn evaluate(&self, engine: &portcullis_waf::Engine) -> portcullis_waf::Evaluation {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let head = portcullis_waf::RequestHead {
            method: &self.method,
            uri: &self.uri,
            headers: &headers,
            client_ip: None,
        };
        engine.inspect(&head, &self.body)
    }

    /// A raw HTTP/1.1 request (the corpus's `raw_b64` cases).
    pub fn from_raw(raw: &[u8]) -> Option<Req> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
            .unwrap_or((raw.len(), 0));
        let head = String::from_utf8_lossy(&raw[..split.0]);
        let body = raw[(split.0 + split.1).min(raw.len())..].to_vec();
        let mut lines = head.lines();
        let mut first = lines.next()?.split_whitespace();
        let method = first.next()?.to_string();
        let uri = first.next().unwrap_or("/").to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().as_bytes().to_vec()))
            .collect();
        Some(Req {
            method,
            uri,
            headers,
            body,
        })
    }
}

pub fn engine(pl: u8) -> portcullis_waf::Engine {
    portcullis_waf::Engine::new(portcullis_waf::PolicyConfig {
        paranoia_level: pl,
        ..Default::default()
    })
    .expect("built-in rules compile")
}
