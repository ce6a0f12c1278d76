//! The one place that turns a denial or a failure into an HTTP response: its status, its
//! JSON body, and the headers a denial owes the client (`WWW-Authenticate` on a 401,
//! `Retry-After` and `RateLimit-*` on a 429).
//!
//! Every gateway-generated response is `{"error": "<message>", "request_id": "<id>"}` with
//! `content-type: application/json`. Messages are fixed strings chosen here, so internal
//! details (addresses, OS errors, regexes) never reach a client.
//!
//! Policy steps know nothing of this module: each returns its own error type, and the
//! `From` conversions below make it a [`GatewayError`].

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::auth::AuthError;
use crate::body::{full, ProxyBody};
use crate::client_body::FaultKind;
use crate::cors::CorsError;
use crate::counters::Enforcement;
use crate::ip_filter::IpDenied;
use crate::ratelimit::RateLimitError;
use crate::upstream::UpstreamError;
use crate::validate::ValidationError;
use crate::waf::WafError;

/// Everything that stops a request inside the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matched")]
    NoRoute,
    #[error(transparent)]
    Ip(#[from] IpDenied),
    #[error(transparent)]
    Cors(#[from] CorsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsRouteError),
    /// Never `WafError::Client`: the conversion below makes that `ClientBody`.
    #[error(transparent)]
    Waf(WafError),
    /// The request line or framing headers (method, target, Host, Transfer-Encoding, path).
    #[error(transparent)]
    Request(#[from] crate::request_target::RequestError),
    /// The client's body failed: timeout, too slow, malformed, or no buffer room.
    #[error(transparent)]
    ClientBody(FaultKind),
}

impl From<WafError> for GatewayError {
    /// A body that failed while the WAF read it is answered as the client's fault, exactly
    /// as when validation or the upstream reads it.
    fn from(error: WafError) -> Self {
        match error {
            WafError::Client(FaultKind::TooLarge) => UpstreamError::BodyTooLarge.into(),
            WafError::Client(kind) => GatewayError::ClientBody(kind),
            other => GatewayError::Waf(other),
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::Ip(_) | GatewayError::Cors(_) => StatusCode::FORBIDDEN,
            GatewayError::Auth(e) => e.status(),
            GatewayError::Validation(e) => match e {
                ValidationError::MissingHeader(_)
                | ValidationError::InvalidJson
                | ValidationError::JsonTooDeep
                | ValidationError::Schema(_)
                | ValidationError::UnreadableBody => StatusCode::BAD_REQUEST,
                ValidationError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ValidationError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ValidationError::Client(kind) => kind.status(),
            },
            GatewayError::Upstream(e) => match e {
                UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                UpstreamError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                UpstreamError::Connect | UpstreamError::Failed | UpstreamError::NoTargets => {
                    StatusCode::BAD_GATEWAY
                }
                // Nothing was tried: the Service has nowhere to send to right now.
                UpstreamError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            GatewayError::RateLimit(e) => match e {
                RateLimitError::Exceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                // Fail closed: the shared counters cannot be consulted.
                RateLimitError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                RateLimitError::DuplicateKeyHeader { .. } => StatusCode::BAD_REQUEST,
            },
            GatewayError::Tls(e) => e.status(),
            GatewayError::Waf(e) => match e {
                WafError::Blocked => StatusCode::FORBIDDEN,
                WafError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                WafError::Unreadable => StatusCode::BAD_REQUEST,
                WafError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                WafError::Client(kind) => kind.status(),
            },
            GatewayError::Request(e) => e.status(),
            GatewayError::ClientBody(kind) => kind.status(),
        }
    }

    /// Short machine-readable reason for the audit log and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::Ip(_) => "ip_denied",
            GatewayError::Cors(e) => e.reason(),
            GatewayError::Auth(e) => e.reason(),
            GatewayError::Validation(e) => e.reason(),
            GatewayError::Upstream(e) => e.reason(),
            GatewayError::RateLimit(e) => e.reason(),
            GatewayError::Tls(e) => e.reason(),
            GatewayError::Waf(e) => e.reason(),
            GatewayError::Request(e) => e.reason(),
            GatewayError::ClientBody(kind) => kind.reason(),
        }
    }

    /// Which report counter a denial counts in; `None` for denials the report does not
    /// count (no route, IP, CORS) and for failures that are not policy decisions (upstream).
    pub fn enforcement(&self) -> Option<Enforcement> {
        match self {
            GatewayError::Auth(_) => Some(Enforcement::AuthFailure),
            // 400, 413 and 415 from validation, and 413 from the streamed body limit.
            GatewayError::Validation(_) | GatewayError::Upstream(UpstreamError::BodyTooLarge) => {
                Some(Enforcement::ValidationFailed)
            }
            GatewayError::RateLimit(crate::ratelimit::RateLimitError::Exceeded(_)) => {
                Some(Enforcement::RateLimited)
            }
            GatewayError::Waf(_) => Some(Enforcement::WafBlocked),
            // A malformed request refused with 400, as validation refuses one.
            GatewayError::RateLimit(crate::ratelimit::RateLimitError::DuplicateKeyHeader {
                ..
            }) => Some(Enforcement::ValidationFailed),
            // A rate-limit backend failure (503) is not a client being limited.
            GatewayError::RateLimit(_)
            | GatewayError::Request(_)
            | GatewayError::ClientBody(_)
            | GatewayError::NoRoute
            | GatewayError::Ip(_)
            | GatewayError::Cors(_)
            | GatewayError::Upstream(_)
            | GatewayError::Tls(_) => None,
        }
    }

    /// The pipeline step that stopped the request (audit log).
    pub fn step(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "route",
            GatewayError::Ip(_) => "ip_restriction",
            GatewayError::Cors(_) => "cors",
            GatewayError::Auth(e) if e.is_authentication() => "authentication",
            GatewayError::Auth(_) => "authorization",
            GatewayError::Validation(_) => "validation",
            GatewayError::Upstream(_) => "upstream",
            GatewayError::RateLimit(_) => "rate_limit",
            GatewayError::Tls(_) => "tls",
            GatewayError::Waf(_) => "waf",
            GatewayError::Request(_) => "request",
            GatewayError::ClientBody(_) => "request_body",
        }
    }

    /// The client's answer. `bearer`: the route's authentication takes bearer tokens, so
    /// a 401 challenges with `Bearer` rather than the API-key scheme.
    pub fn into_response(self, request_id: &HeaderValue, bearer: bool) -> Response<ProxyBody> {
        let status = self.status();
        let details = match &self {
            GatewayError::Validation(ValidationError::Schema(pointers)) => {
                Some(pointers.as_slice())
            }
            _ => None,
        };
        let mut response = json_error(status, &self.to_string(), details, request_id);
        let headers = response.headers_mut();
        match &self {
            GatewayError::Auth(e) => {
                if let Some(challenge) = e.challenge(bearer) {
                    headers.insert(header::WWW_AUTHENTICATE, challenge);
                }
            }
            // `Retry-After` always on 429; `RateLimit-*` when the policy wants them.
            GatewayError::RateLimit(RateLimitError::Exceeded(e)) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(e.retry_after_secs.max(1)),
                );
                if let Some(limits) = &e.headers {
                    limits.apply(headers);
                }
            }
            _ => {}
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a [String]>,
}

/// Builds the gateway's JSON error response.
pub fn json_error(
    status: StatusCode,
    message: &str,
    details: Option<&[String]>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let body = ErrorBody {
        error: message,
        request_id: request_id.to_str().unwrap_or(""),
        details,
    };
    // Serializing plain strings cannot fail; fall back to a fixed body rather than panic.
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Message used when `sanitize_upstream_errors` replaces an upstream 5xx body.
pub const UPSTREAM_ERROR_MESSAGE: &str = "upstream error";
