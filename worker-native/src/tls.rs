//! The transport under the WebSocket: plain TCP for `ws://`, TLS (rustls, ring provider) for
//! `wss://`, trusting the webpki roots plus the certificates of
//! [`Options::ca_certs`](crate::Options::ca_certs). The module download over `https://`
//! uses the same trust.
//!
//! A TLS failure that trying again cannot fix (a `wss://` URL against a plain port, a
//! certificate that is not trusted, a CA file that cannot be used) is an
//! [`Error::Config`], so that a worker does not retry it; a refused or reset TCP connection
//! stays an [`Error::Connection`].

use std::{path::Path, sync::Arc};

use distchan_protocol::{Error, Result};
use rustls::{
    pki_types::{pem::PemObject, ServerName},
    CertificateError, ClientConfig, RootCertStore,
};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_util::either::Either;

pub use rustls::pki_types::CertificateDer;

/// The byte stream a worker's WebSocket runs over: plain TCP or TLS over TCP.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Reads every certificate of the PEM file at `path` (a file may hold several), for
/// [`Options::ca_certs`](crate::Options::ca_certs).
///
/// Fails with [`Error::Config`] when the file cannot be read, is not PEM, or holds no
/// certificate.
pub fn read_pem_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        Error::config_from(format!("cannot read the CA certificate file {shown}"), e)
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::config_from(format!("{shown} is not a valid PEM certificate file"), e)
        })?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{shown} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

/// A rustls client configuration trusting the webpki roots and `extra`.
pub(crate) fn client_config(extra: &[CertificateDer<'static>]) -> Result<ClientConfig> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| {
            Error::config_from("a CA certificate given cannot be used as a trust anchor", e)
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config_from("no TLS protocol version available", e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Opens the connection `uri` names (`ws://` or `wss://`), with the TLS handshake for
/// `wss://`.
pub(crate) async fn connect(uri: &Uri, extra: &[CertificateDer<'static>]) -> Result<Stream> {
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let tls = match scheme.as_deref() {
        Some("wss") => true,
        Some("ws") => false,
        other => {
            return Err(Error::config(format!(
                "the coordinator's URL must start with ws:// or wss://, not {:?}",
                other.unwrap_or("")
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| Error::config(format!("the URL {uri} names no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::connection_from(format!("connecting to {addr}"), e))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    if !tls {
        return Ok(Either::Left(tcp));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::config_from(format!("{host:?} is not a valid TLS server name"), e))?;
    let connector = TlsConnector::from(Arc::new(client_config(extra)?));
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok(Either::Right(stream)),
        Err(e) => Err(handshake_error(&addr, host, e)),
    }
}

/// What a failed TLS handshake with `addr` means for the user.
fn handshake_error(addr: &str, host: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Error::config_from(
            format!(
                "the TLS certificate of {addr} is not valid for the name {host:?} (connect with \
                 a host name the certificate names)"
            ),
            e,
        ),
        Some(rustls::Error::InvalidCertificate(_)) => Error::config_from(
            format!(
                "the TLS certificate of {host} is not trusted (if the coordinator uses a \
                 private or self-signed certificate, give its CA with --ca-cert)"
            ),
            e,
        ),
        // The other side spoke something else than TLS, or hung up on the hello.
        Some(_) => Error::config_from(
            format!(
                "TLS handshake with {addr} failed (is the coordinator serving TLS on that port?)"
            ),
            e,
        ),
        None if e.kind() == ErrorKind::UnexpectedEof => Error::config_from(
            format!(
                "TLS handshake with {addr} failed: the connection was closed (is the \
                 coordinator serving TLS on that port?)"
            ),
            e,
        ),
        None => Error::connection_from(format!("TLS handshake with {addr}"), e),
    }
}
