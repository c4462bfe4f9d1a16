//! TLS to the brokers (`security.protocol=SSL|SASL_SSL`): the rustls client
//! configuration rskafka connects with, trusting the certificates of
//! `ssl.ca.location` (a PEM file, as Kafka's own clients take it) or else the
//! system's.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{crypto, ClientConfig, RootCertStore};

use super::uri::Tls;

/// The client configuration for `tls`, or why it cannot be made.
pub fn client_config(tls: &Tls) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|error| format!("cannot read ssl.ca.location {shown}: {error}"))?;
            if certs.is_empty() {
                return Err(format!("ssl.ca.location {shown} holds no certificate"));
            }
            for cert in certs {
                roots.add(cert).map_err(|error| format!("a certificate of {shown} is not usable: {error}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(format!(
                    "no system certificates to trust the brokers by ({:?}): give ssl.ca.location",
                    found.errors
                ));
            }
        }
    }
    // The provider named, not the process default: two are built in (aws-lc-rs for
    // the HTTPS listener and the object stores, ring for rskafka's own TLS).
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
