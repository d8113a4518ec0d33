//! HTTPS and `wss://` served by the coordinator itself: the certificate chain and key, read
//! from PEM, for rustls (ring provider). The TLS handshake runs per connection, in the
//! connection's own task, bounded by [`Config::header_read_timeout`](crate::Config::header_read_timeout),
//! so a slow or silent client never holds up the accepting of others (see `server`).

use std::{fmt, path::Path, sync::Arc};

use distchan_protocol::Error;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};
use tokio_rustls::TlsAcceptor;

/// The coordinator's TLS identity: a certificate chain and its private key.
///
/// ```no_run
/// # fn demo() -> Result<(), distchan_coordinator::Error> {
/// use distchan_coordinator::{Config, TlsConfig};
///
/// let config = Config {
///     tls: Some(TlsConfig::from_pem_files("cert.pem", "key.pem")?),
///     ..Config::default()
/// };
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
}

impl TlsConfig {
    /// Reads the certificate chain (leaf first) from the PEM file `cert` and the private
    /// key (PKCS#8, PKCS#1 or SEC1) from the PEM file `key`.
    ///
    /// Fails with [`Error::Config`] when a file cannot be read, holds no certificate or
    /// key, or the key does not match the certificate.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::config_from(format!("cannot read the TLS {what} {}", path.display()), e)
            })
        };
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "key")?;
        Self::from_pem_named(
            &cert_pem,
            &key_pem,
            &cert.display().to_string(),
            &key.display().to_string(),
        )
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from the PEM text itself.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        Self::from_pem_named(cert_pem, key_pem, "the certificate", "the key")
    }

    /// A ready rustls server configuration, for settings the PEM constructors do not offer.
    /// It should offer `http/1.1` in ALPN or none.
    pub fn from_server_config(server: Arc<ServerConfig>) -> Self {
        TlsConfig { server }
    }

    fn from_pem_named(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &str,
        key_name: &str,
    ) -> Result<Self, Error> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::config_from(format!("{cert_name} is not valid PEM"), e))?;
        if certs.is_empty() {
            return Err(Error::config(format!(
                "{cert_name} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            Error::config_from(format!("{key_name} holds no usable PEM private key"), e)
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config_from("no TLS protocol version available", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                Error::config_from(
                    format!("the TLS certificate {cert_name} and key {key_name} cannot be used"),
                    e,
                )
            })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            server: Arc::new(server),
        })
    }

    /// Accepts TLS connections with this identity.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}
