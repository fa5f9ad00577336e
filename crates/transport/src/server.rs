//! The server side: an axum router served over TLS to peers whose certificate the project's
//! authority issued, each request carrying the `Peer` its connection proved to be.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tower::ServiceExt;

use crate::authority::fingerprint_of_der;
use crate::identity::peer_of;
use crate::revocation::{RevocationCheck, Revoked};
use crate::{Identity, TransportError};

/// How long a connection may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The fingerprint of the certificate a peer presented (`fingerprint_of`): a role may hold
/// only the one certificate last issued to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub String);

/// The identity a server presents, replaceable while it serves (a renewed certificate).
#[derive(Debug)]
pub struct ServerIdentity {
    current: RwLock<Arc<CertifiedKey>>,
    roots: Arc<rustls::RootCertStore>,
    revoked: Arc<Revoked>,
}

impl ServerIdentity {
    pub fn new(identity: &Identity) -> Result<Arc<ServerIdentity>, TransportError> {
        Ok(Arc::new(ServerIdentity {
            current: RwLock::new(Arc::new(certified_key(identity)?)),
            roots: Arc::new(identity.roots()?),
            revoked: Default::default(),
        }))
    }

    /// Refuses the certificates with these fingerprints (`fingerprint_of`) in every handshake
    /// from now on, in place of those refused before.
    pub fn refuse(&self, fingerprints: BTreeSet<String>) {
        self.revoked.replace(fingerprints);
    }

    /// Whether `certificate` is refused now: a connection made before its revocation may
    /// still be open.
    pub fn refuses(&self, certificate: &PeerCertificate) -> bool {
        self.revoked.contains(&certificate.0)
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> Result<(), TransportError> {
        let key = Arc::new(certified_key(identity)?);
        *self.current.write().expect("identity lock") = key;
        Ok(())
    }

    /// TLS for accepting connections with this identity (`handshake`).
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TransportError> {
        Ok(tokio_rustls::TlsAcceptor::from(self.config()?))
    }

    /// TLS for connecting with this identity's certificate, the renewed one once replaced, to
    /// servers whose certificate the same authority issued for the address called.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, TransportError> {
        Ok(
            rustls::ClientConfig::builder_with_provider(crate::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(self.roots.clone())
                .with_client_cert_resolver(self.clone()),
        )
    }

    fn config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TransportError> {
        let verifier = Arc::new(RevocationCheck {
            issued: WebPkiClientVerifier::builder_with_provider(
                self.roots.clone(),
                crate::provider(),
            )
            .build()?,
            revoked: self.revoked.clone(),
        });
        let config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("identity lock").clone())
    }
}

impl rustls::client::ResolvesClientCert for ServerIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("identity lock").clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(identity: &Identity) -> Result<CertifiedKey, TransportError> {
    Ok(CertifiedKey::from_der(
        vec![identity.certificate_der()?],
        identity.key_der()?,
        &crate::provider(),
    )?)
}

/// Serves `router` on `listener` until `shutdown`, then lets the requests under way finish.
/// A connection without a certificate of the project's authority ends in its handshake;
/// handlers find the caller as an `axum::Extension<Peer>`, and which of its certificates it
/// presented as an `axum::Extension<PeerCertificate>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    identity: Arc<ServerIdentity>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = identity.acceptor().map_err(std::io::Error::other)?;
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (acceptor, router, watcher) = (acceptor.clone(), router.clone(), connections.watcher());
        tokio::spawn(async move {
            let Some((stream, peer, certificate)) = handshake(&acceptor, tcp, address).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    request.extensions_mut().insert(certificate.clone());
                    router.clone().oneshot(request)
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%address, %error, "connection ended");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// The TLS handshake of an accepted connection, within a time limit: the stream, and the role
/// and certificate its peer proved; `None` (said in the log) for a peer without a certificate
/// of the project's authority, or one that names no role.
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    address: std::net::SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    crate::Peer,
    PeerCertificate,
)> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%address, %error, "TLS handshake refused");
            return None;
        }
        Err(_) => return None,
    };
    let presented = stream.get_ref().1.peer_certificates()?.first()?;
    let Some(peer) = peer_of(presented) else {
        tracing::info!(%address, "a certificate that names no Lockstep role");
        return None;
    };
    let certificate = PeerCertificate(fingerprint_of_der(presented));
    Some((stream, peer, certificate))
}
