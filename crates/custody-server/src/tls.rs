//! TLS and mutual TLS on the API listener, with rustls.
//!
//! Certificates come from PEM files named in the config (`custody tls init` makes a provider
//! CA, a node certificate and client certificates). With a client CA configured, a client
//! may present a certificate signed by it; its subject common name is a principal id, which
//! then authenticates the request without a bearer token (and must agree with one if both
//! are sent). With `require_client_cert`, a client without such a certificate is refused in
//! the handshake.
//!
//! The accept loop is written here rather than taken from a crate: axum's `serve` has no TLS
//! hook, and each connection's verified client identity has to reach the handlers as a
//! request extension, which needs the handshake result in hand.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use custody_core::PrincipalId;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Where the certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// The node's private key (PEM).
    pub key: PathBuf,
    /// CA whose client certificates identify principals (PEM); none turns mTLS off.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate from `client_ca`.
    pub require_client_cert: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file is unreadable or holds nothing usable.
    #[error("TLS file `{}`: {detail}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The principal a verified client certificate names (its subject common name), if the
/// connection presented one.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity(pub Option<PrincipalId>);

fn file_err(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), detail: detail.to_string() }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut BufReader::new(f)).collect::<Result<_, _>>().map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| file_err(path, e))?
        .ok_or_else(|| file_err(path, "no private key in it"))
}

/// Builds the rustls server configuration.
///
/// # Errors
/// [`TlsError`] naming the file or setting that is wrong.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if files.require_client_cert { v } else { v.allow_unauthenticated() };
            builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        None if files.require_client_cert => {
            return Err(TlsError::Config("require_client_cert needs a client CA (tls_client_ca)".into()));
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| file_err(&files.key, format!("does not match the certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The principal id in a certificate's subject common name.
fn identity(cert: &CertificateDer<'_>) -> Option<PrincipalId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    PrincipalId::new(cn).ok()
}

/// Serves `app` over TLS on `listener` until `shutdown` turns true. Connections in progress
/// are not waited for at shutdown; a handshake has 10 s.
///
/// # Errors
/// Only a failing `accept` on the listener.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        // As on plain TCP (`setup::serve`): no wait for a delayed ACK between segments.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let who = ClientIdentity(tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(identity));
            let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(who.clone());
                req.map(axum::body::Body::new)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
