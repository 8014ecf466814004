//! TLS settings for both legs: the server config that terminates client
//! connections and the client config that reaches the Cartesia API.
//!
//! Both use rustls with the aws-lc-rs provider, TLS 1.3 and 1.2 only. The
//! server offers ALPN `h2` and `http/1.1`. The client trusts the webpki
//! roots plus an optional extra CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::version::{TLS12, TLS13};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How to make a certificate, appended to certificate errors.
const CERT_HINT: &str = "run `cartesia-gateway demo` once to create a development certificate, \
or see certs/README.md";

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path} (server.cert_file): {reason}; {CERT_HINT}")]
    Certificate { path: String, reason: String },
    #[error("cannot read private key file {path} (server.key_file): {reason}; {CERT_HINT}")]
    PrivateKey { path: String, reason: String },
    #[error("the certificate in {cert} does not match the key in {key}: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot read CA file {path} (upstream.ca_file): {reason}")]
    CaFile { path: String, reason: String },
}

/// Loads a PEM certificate chain and private key into a server config.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
    let chain = load_chain(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| TlsError::PrivateKey {
        path: key_file.display().to_string(),
        reason: pem_reason(&error),
    })?;
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[&TLS13, &TLS12])
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Mismatch {
            cert: cert_file.display().to_string(),
            key: key_file.display().to_string(),
            reason: error.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Shared server TLS settings.
pub type ServerTls = Arc<rustls::ServerConfig>;

/// Builds the upstream client config: webpki roots plus the certificates
/// in `extra_ca_file`, if any.
pub fn client_config(extra_ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_file {
        let ca_error = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|error| ca_error(pem_reason(&error)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ca_error(pem_reason(&error)))?;
        if certificates.is_empty() {
            return Err(ca_error("no PEM certificate found".to_owned()));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| ca_error(error.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[&TLS13, &TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| cert_error(pem_reason(&error)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cert_error(pem_reason(&error)))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate found".to_owned()));
    }
    Ok(chain)
}

fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(error) => error.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected type found".to_owned()
        }
        other => format!("invalid PEM: {other:?}"),
    }
}
