//! Response header policy: hop-by-hop removal, the route's `responseHeaders` add/remove,
//! security headers, and `X-Request-ID` on every response (errors included).

use http::{header, HeaderMap, HeaderName, HeaderValue};
use portcullis_compiler::config::ResponseHeadersConfig;

#[derive(Debug, thiserror::Error)]
#[error("invalid response header {name:?}")]
pub struct ResponseHeaderError {
    name: String,
}

#[derive(Default)]
pub struct CompiledResponseHeaders {
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    security: bool,
}

impl CompiledResponseHeaders {
    pub fn new(
        config: &ResponseHeadersConfig,
        security: bool,
    ) -> Result<Self, ResponseHeaderError> {
        let err = |name: &str| ResponseHeaderError {
            name: name.to_string(),
        };
        let add = config
            .add
            .iter()
            .map(|(name, value)| {
                Ok((
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| err(name))?,
                    HeaderValue::from_str(value).map_err(|_| err(name))?,
                ))
            })
            .collect::<Result<_, ResponseHeaderError>>()?;
        let remove = config
            .remove
            .iter()
            .map(|name| HeaderName::from_bytes(name.as_bytes()).map_err(|_| err(name)))
            .collect::<Result<_, _>>()?;
        Ok(CompiledResponseHeaders {
            add,
            remove,
            security,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
        if self.security {
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            // Browsers ignore HSTS over plain HTTP, and sending it there is misleading.
            if tls {
                headers.insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000; includeSubDomains"),
                );
            }
        }
    }
}

/// Headers an upstream response must not pass on (they describe the upstream connection).
pub fn strip_upstream_hop_by_hop(headers: &mut HeaderMap) {
    crate::forward_headers::strip_hop_by_hop(headers);
}

pub fn set_request_id(headers: &mut HeaderMap, request_id: &HeaderValue) {
    const X_REQUEST_ID: HeaderName = HeaderName::from_static(crate::request_id::HEADER);
    headers.insert(X_REQUEST_ID, request_id.clone());
}
