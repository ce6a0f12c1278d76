//! The operator's HTTP endpoints: the admin listener (`/healthz`, `/readyz`, `/metrics`) and
//! the TLS listener of the admission webhook.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::webhook::{self, ServingCert, SharedWebhook};

/// Admission requests are small; anything larger is refused before parsing.
const MAX_REVIEW_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook TLS setup: {0}")]
    Tls(String),
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
}

/// Serves the admin endpoints until the process ends.
pub async fn serve_admin(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> Result<SocketAddr, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let response = match req.uri().path() {
                            "/healthz" => text(StatusCode::OK, "ok\n"),
                            "/readyz" if state.ready.load(Ordering::Relaxed) => {
                                text(StatusCode::OK, "ready\n")
                            }
                            "/readyz" => {
                                text(StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
                            }
                            "/metrics" => {
                                let mut r = text(StatusCode::OK, state.metrics.encode());
                                r.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                                );
                                r
                            }
                            _ => text(StatusCode::NOT_FOUND, "not found\n"),
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn acceptor(cert: &ServingCert) -> Result<TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn handle(req: Request<Incoming>, state: SharedWebhook) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != webhook::PATH {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "review too large\n"),
    };
    let review = webhook::review(&body, Some(&state.stores));
    let mut response = text(StatusCode::OK, review.to_string());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves the admission webhook over TLS until the process ends.
pub async fn serve_webhook(
    addr: SocketAddr,
    cert: &ServingCert,
    state: SharedWebhook,
) -> Result<SocketAddr, ServerError> {
    let acceptor = acceptor(cert)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, state).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(local)
}
