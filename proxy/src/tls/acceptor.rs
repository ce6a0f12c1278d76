//! The TLS handshake of one accepted connection.
//!
//! The ClientHello is read before any config is chosen (`LazyConfigAcceptor`), so each host
//! gets its own minimum version and client-certificate verifier on one listener, and the
//! certificate comes from the config that is current at that moment (hot swap).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::{ConnectionTls, PeerCertificate};
use crate::pipeline::Shared;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("no route terminates TLS")]
    NoCertificate,
    #[error("TLS handshake failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the handshake (bounded by `timeout`, like the header-read timeout of plain HTTP).
pub async fn accept(
    stream: TcpStream,
    shared: &Shared,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, ConnectionTls), HandshakeError> {
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let (policy, config, anchors) = shared
            .store
            .load()
            .tls
            .select(sni.as_deref())
            .ok_or(HandshakeError::NoCertificate)?;
        let stream = start.into_stream(config).await?;
        let peer = stream.get_ref().1.peer_certificates().and_then(|chain| {
            let mut peer = PeerCertificate::parse(chain.first()?.as_ref())?;
            peer.anchors = super::sni::verified_anchors(&anchors, chain);
            Some(Arc::new(peer))
        });
        Ok((stream, ConnectionTls { sni, policy, peer }))
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}
