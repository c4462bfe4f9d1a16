//! TLS on the TCP listener (`--tls-cert`, `--tls-key`): the PEM files, the rustls
//! server configuration built from them (ALPN `h2` and `http/1.1`), and its reload
//! on SIGHUP. A reload swaps the configuration new handshakes use; connections
//! already open keep the session they have, so none is dropped. A reload that fails
//! keeps the configuration in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from --tls-cert {}: {source}", path.display())]
    Cert { path: PathBuf, source: pem::Error },
    #[error("--tls-cert {} holds no PEM certificate", .0.display())]
    NoCert(PathBuf),
    #[error("cannot read a private key from --tls-key {}: {source}", path.display())]
    Key { path: PathBuf, source: pem::Error },
    #[error("--tls-cert {} with --tls-key {}: {source}", cert.display(), key.display())]
    Config { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

/// The certificate and key files, and the configuration last loaded from them.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Tls { cert: cert.to_owned(), key: key.to_owned(), config: RwLock::new(config) })
    }

    /// Reads both files again; new handshakes use them once they load.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }

    /// What accepts the next connection's handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert { path: cert.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    let config_error = |source| TlsError::Config { cert: cert.to_owned(), key: key.to_owned(), source };
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(config_error)?;
    // Offer HTTP/2 first: the connection builder serves whichever the client picks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
