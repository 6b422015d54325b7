//! TLS over ringport streams (feature `tls`): rustls through tokio-rustls,
//! which runs over the tokio-trait adapter of [`crate::compat`].
//!
//! [`server_config`] builds a rustls server configuration (ring crypto,
//! ALPN `h2` and `http/1.1` by default), [`self_signed`] makes a certificate
//! for tests and demos, [`load_pem`] reads one from files, and [`accept`]
//! runs a server handshake with a deadline, so that a client that sends
//! garbage or stalls mid-handshake is cut off without holding its task.
//!
//! The TLS streams implement tokio's `AsyncRead`/`AsyncWrite` (and so, with
//! `hyper_util::rt::TokioIo`, hyper's); for futures-io's, wrap one with
//! [`compat`] (tokio-util's `Compat`).

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use rustls;
pub use tokio_rustls;
pub use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// A TLS stream (or any tokio-trait stream) seen through futures-io's
/// `AsyncRead`/`AsyncWrite`.
pub fn compat<S>(stream: S) -> tokio_util::compat::Compat<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    tokio_util::compat::TokioAsyncReadCompatExt::compat(stream)
}

/// The ALPN protocols [`server_config`] offers when asked for HTTP.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate chain and its private key.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// A self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> io::Result<Identity> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| io::Error::other(format!("generating a self-signed certificate: {e}")))?;
    Ok(Identity {
        certs: vec![cert.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
    })
}

/// Reads a PEM certificate chain from `cert` and a PEM private key (PKCS#8,
/// PKCS#1 or SEC1) from `key`; errors name the file and what is wrong.
pub fn load_pem(cert: &Path, key: &Path) -> io::Result<Identity> {
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(io::BufReader::new)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{}: no PEM certificate in it",
            cert.display()
        )));
    }
    let key_der = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?
        .ok_or_else(|| invalid(format!("{}: no PEM private key in it", key.display())))?;
    Ok(Identity {
        certs,
        key: key_der,
    })
}

/// A rustls server configuration (ring crypto, TLS 1.2 and 1.3) for `id`,
/// offering `alpn` in order of preference (e.g. [`HTTP_ALPN`]).
pub fn server_config(id: Identity, alpn: &[&[u8]]) -> io::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(id.certs, id.key)
        .map_err(|e| invalid(format!("the certificate or key is not usable: {e}")))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A rustls client configuration that trusts exactly `roots` (for tests and
/// for talking to a server with a self-signed certificate), offering `alpn`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.clone()).map_err(invalid)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Runs the server side of a handshake on `stream`, giving up after
/// `deadline` (`TimedOut`). A client that sends garbage fails at once
/// (`InvalidData`); one that stalls is cut off at the deadline. Either way
/// the stream is dropped, which closes it.
pub async fn accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    deadline: Duration,
) -> io::Result<server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match crate::timeout(deadline, acceptor.accept(stream)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done within {deadline:?}"),
        )),
    }
}
