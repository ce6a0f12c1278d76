//! CORS. Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) for routes
//! with a CORS policy are answered by the gateway and never reach the upstream; they are
//! answered before authentication because browsers never attach credentials to them.
//! Routing a preflight uses the requested method, so a `methods: [GET]` route still gets its
//! preflight. Actual requests from an allowed origin get the `Access-Control-*` response
//! headers; a disallowed origin gets none (and its preflight a 403).

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use portcullis_compiler::config::CorsConfig;

use crate::body::{empty, ProxyBody};

#[derive(Debug, thiserror::Error)]
pub enum CorsError {
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("method not allowed by CORS policy")]
    MethodNotAllowed,
}

impl CorsError {
    pub fn reason(&self) -> &'static str {
        match self {
            CorsError::OriginNotAllowed => "cors_origin_not_allowed",
            CorsError::MethodNotAllowed => "cors_method_not_allowed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid CORS value {0:?}")]
pub struct CorsConfigError(String);

pub struct CompiledCors {
    origins: Vec<String>,
    any_origin: bool,
    methods: Vec<Method>,
    methods_value: Option<HeaderValue>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    max_age_value: Option<HeaderValue>,
    credentials: bool,
}

fn joined(items: &[String]) -> Result<Option<HeaderValue>, CorsConfigError> {
    if items.is_empty() {
        return Ok(None);
    }
    let value = items.join(", ");
    HeaderValue::from_str(&value)
        .map(Some)
        .map_err(|_| CorsConfigError(value))
}

impl CompiledCors {
    pub fn new(config: &CorsConfig) -> Result<Self, CorsConfigError> {
        let methods = config
            .allow_methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| CorsConfigError(m.clone())))
            .collect::<Result<_, _>>()?;
        Ok(CompiledCors {
            origins: config.allow_origins.clone(),
            any_origin: config.allow_origins.iter().any(|o| o == "*"),
            methods,
            methods_value: joined(&config.allow_methods)?,
            headers_value: joined(&config.allow_headers)?,
            expose_value: joined(&config.expose_headers)?,
            max_age_value: config.max_age_secs.map(HeaderValue::from),
            credentials: config.allow_credentials,
        })
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || origin.to_str().is_ok_and(|o| {
                self.origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(o))
            })
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        // "*" cannot be combined with credentials, so echo the origin in that case.
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<ProxyBody>, CorsError> {
        let origin = headers
            .get(header::ORIGIN)
            .filter(|o| self.origin_allowed(o))
            .ok_or(CorsError::OriginNotAllowed)?;
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .ok_or(CorsError::MethodNotAllowed)?;
        if !self.methods.is_empty() && !self.methods.contains(&requested) {
            return Err(CorsError::MethodNotAllowed);
        }
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        let methods = match &self.methods_value {
            Some(v) => v.clone(),
            None => {
                HeaderValue::from_str(requested.as_str()).unwrap_or(HeaderValue::from_static("GET"))
            }
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        // Without `allowHeaders` nothing is echoed: the browser then sends only the
        // CORS-safelisted request headers (Fetch §2.2.2), which it never lists in
        // `Access-Control-Request-Headers`. Reflecting the request would allow any header
        // (Authorization, X-Api-Key, …) on any route that did not ask for it.
        if let Some(v) = &self.headers_value {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.max_age_value {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        vary_origin(out);
        Ok(response)
    }

    /// Runs on every response of the route (preflights and gateway errors too).
    pub fn apply_actual(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap) {
        // Whatever the origin (allowed, other, absent), the answer depends on it: a cache
        // that stored the no-CORS answer must not hand it to an allowed origin, or the
        // reverse.
        vary_origin(out);
        let Some(origin) = origin.filter(|o| self.origin_allowed(o)) else {
            return;
        };
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        if let Some(v) = &self.expose_value {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// Adds `Vary: Origin` unless some `Vary` already names it (or is `*`), so a response that
/// passes here twice (a preflight) or whose upstream already varies on Origin carries it once.
fn vary_origin(out: &mut HeaderMap) {
    let present = out.get_all(header::VARY).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|item| {
            let item = item.trim_ascii();
            item == b"*" || item.eq_ignore_ascii_case(b"origin")
        })
    });
    if !present {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method to route a preflight by.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
}
