//! The admin listener: `/healthz` (process is up), `/readyz` (a config is loaded),
//! `/metrics` (Prometheus text), `/config` (generation and a summary, never secrets) and
//! `/decisions/<request-id>`, `/decisions?route=&step=&limit=` (decision records).
//!
//! Its connections have a timeout of their own, fixed because nothing legitimate talks to it
//! slowly (probes, scrapers, an operator's curl): a connection on which no request has been
//! answered for [`QUIET_TIMEOUT`] (a head that never completes, an idle keep-alive
//! connection) is closed, so half-sent requests cannot pile up open sockets. Accept errors
//! (EMFILE when the process is out of file descriptors) back off like the main listener
//! instead of spinning.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::{full, ProxyBody};
use crate::monotonic::now_ms;
use crate::pipeline::Shared;
use crate::router::form_decode;

/// The longest a connection stays open without a request being answered: from its start
/// or the previous response to the next complete head, HTTP/1 or HTTP/2.
pub const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: the listener stays readable, so retrying at once would
                    // spin a core until a descriptor frees up.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            },
            _ = shutdown.changed() => break,
        };
        tokio::spawn(serve_connection(
            stream,
            shared.clone(),
            builder.clone(),
            shutdown.clone(),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // When the last response was produced (or the connection opened). Admin responses are
    // small complete bodies, so "answered" is close enough to "sent" for an idle clock.
    let last = Arc::new(AtomicU64::new(now_ms()));
    let service_last = last.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        let last = service_last.clone();
        async move {
            let response = respond(&shared, &request);
            last.store(now_ms(), Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // One timer per connection: a slow head and an idle keep-alive wait look alike from here
    // (nothing answered lately), and both end the same way.
    let limit_ms = QUIET_TIMEOUT.as_millis() as u64;
    let tick = Duration::from_millis((limit_ms / 4).max(50));
    let mut closing_since = None;
    loop {
        tokio::select! {
            _ = connection.as_mut() => break,
            _ = shutdown.changed(), if closing_since.is_none() => {
                closing_since = Some(now_ms());
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick) => {
                let now = now_ms();
                match closing_since {
                    None if now.saturating_sub(last.load(Ordering::Relaxed)) >= limit_ms => {
                        closing_since = Some(now);
                        connection.as_mut().graceful_shutdown();
                    }
                    // A graceful close waits for a head being read; a client that never
                    // finishes it is cut off one more period later.
                    Some(since) if now.saturating_sub(since) >= limit_ms => break,
                    _ => {}
                }
            }
        }
    }
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            "text/plain",
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => {
            if shared.store.is_loaded() {
                text(StatusCode::OK, "ready\n", "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no config loaded\n",
                    "text/plain",
                )
            }
        }
        // Prometheus asks for OpenMetrics; anything else gets the classic text format.
        "/metrics"
            if request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text")) =>
        {
            text(
                StatusCode::OK,
                shared.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        "/metrics" => text(
            StatusCode::OK,
            shared.metrics.encode_text(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/config" => {
            let runtime = shared.store.load();
            let summary = serde_json::json!({
                "generation": runtime.generation,
                "loaded": shared.store.is_loaded(),
                "routes": runtime.routes.len(),
                "route_ids": runtime.routes.iter().map(|r| r.config.id.as_str()).collect::<Vec<_>>(),
                "consumers": runtime.keys.consumer_count(),
            });
            text(StatusCode::OK, summary.to_string(), "application/json")
        }
        "/decisions" => {
            let query = Query::parse(request.uri().query().unwrap_or(""));
            let records =
                shared
                    .decisions
                    .latest(query.route.as_deref(), query.step.as_deref(), query.limit);
            let records: Vec<&crate::decisions::DecisionRecord> =
                records.iter().map(|r| &**r).collect();
            let body = serde_json::to_vec(&serde_json::json!({ "decisions": records }))
                .unwrap_or_default();
            text(StatusCode::OK, body, "application/json")
        }
        path => match path.strip_prefix("/decisions/") {
            Some(id) => match shared.decisions.find(id) {
                Some(record) => text(
                    StatusCode::OK,
                    serde_json::to_vec(&*record).unwrap_or_default(),
                    "application/json",
                ),
                None => {
                    let id = if crate::request_id::is_valid(id.as_bytes()) {
                        id
                    } else {
                        ""
                    };
                    let body = serde_json::json!({
                        "error": "no decision record for this request id (unknown, evicted, or served by another replica)",
                        "request_id": id,
                    });
                    text(StatusCode::NOT_FOUND, body.to_string(), "application/json")
                }
            },
            None => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
        },
    }
}

/// `GET /decisions` filters.
struct Query {
    route: Option<String>,
    step: Option<String>,
    limit: usize,
}

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

impl Query {
    fn parse(query: &str) -> Self {
        let mut out = Query {
            route: None,
            step: None,
            limit: DEFAULT_LIMIT,
        };
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = form_decode(value).into_owned();
            match key {
                "route" if !value.is_empty() => out.route = Some(value),
                "step" if !value.is_empty() => out.step = Some(value),
                "limit" => {
                    out.limit = value
                        .parse()
                        .map_or(DEFAULT_LIMIT, |n: usize| n.min(MAX_LIMIT))
                }
                _ => {}
            }
        }
        out
    }
}

fn text(
    status: StatusCode,
    body: impl Into<bytes::Bytes>,
    content_type: &'static str,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_queries() {
        let q = Query::parse("route=shop%2Forders&step=waf&limit=5");
        assert_eq!(q.route.as_deref(), Some("shop/orders"));
        assert_eq!(q.step.as_deref(), Some("waf"));
        assert_eq!(q.limit, 5);
        let q = Query::parse("limit=999999&x=%");
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(form_decode("a%2"), "a%2");
        assert_eq!(form_decode("%41b"), "Ab");
    }
}
