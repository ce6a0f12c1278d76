//! Gateway API `RequestHeaderModifier`: request headers removed, set (replacing) and added
//! (appending) before the request is forwarded. Names and values are parsed once per config.

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_compiler::config::{HeaderMatch, RequestHeadersConfig};

#[derive(Debug, thiserror::Error)]
#[error("invalid request header {0:?}")]
pub struct RequestHeaderError(String);

pub struct CompiledRequestHeaders {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn pairs(list: &[HeaderMatch]) -> Result<Vec<(HeaderName, HeaderValue)>, RequestHeaderError> {
    list.iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| RequestHeaderError(h.name.clone()))?;
            let value =
                HeaderValue::from_str(&h.value).map_err(|_| RequestHeaderError(h.name.clone()))?;
            Ok((name, value))
        })
        .collect()
}

impl CompiledRequestHeaders {
    pub fn new(config: &RequestHeadersConfig) -> Result<Self, RequestHeaderError> {
        Ok(CompiledRequestHeaders {
            remove: config
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|_| RequestHeaderError(n.clone()))
                })
                .collect::<Result<_, _>>()?,
            set: pairs(&config.set)?,
            add: pairs(&config.add)?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let h = |n: &str, v: &str| HeaderMatch {
            name: n.into(),
            value: v.into(),
        };
        let compiled = CompiledRequestHeaders::new(&RequestHeadersConfig {
            remove: vec!["x-debug".into()],
            set: vec![h("x-env", "prod")],
            add: vec![h("x-via", "portcullis")],
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-env", HeaderValue::from_static("dev"));
        headers.insert("x-via", HeaderValue::from_static("lb"));
        compiled.apply(&mut headers);
        assert!(headers.get("x-debug").is_none());
        assert_eq!(headers["x-env"], "prod");
        let via: Vec<_> = headers.get_all("x-via").iter().collect();
        assert_eq!(via, vec!["lb", "portcullis"]);
    }
}
