//! The admin listener: `/healthz` (process is up), `/readyz` (a config is loaded),
//! `/metrics` (Prometheus text) and `/config` (generation and a summary, never secrets).

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{full, ProxyBody};
use crate::pipeline::Shared;

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = shutdown.changed() => break,
        };
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, &request)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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
        "/metrics" => text(
            StatusCode::OK,
            shared.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
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
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
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
