//! TLS settings for both legs: the server config that terminates client
//! connections and the client config that reaches the Cartesia API.
//!
//! Both use rustls with the aws-lc-rs provider, TLS 1.3 and 1.2 only. The
//! server offers ALPN `h2` and `http/1.1` and takes its certificate from a
//! [`CertificateResolver`], so a reload can replace the certificate while the
//! server config stays the same. The client trusts the webpki roots plus an
//! optional extra CA file.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{InconsistentKeys, RootCertStore};
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
    #[error(
        "the certificate in {cert} (server.cert_file) does not match the key in {key} (server.key_file): {reason}; point both keys at files of the same pair"
    )]
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
    let certificate = load_certified_key(cert_file, key_file)?;
    Ok(server_config_with(Arc::new(CertificateResolver::new(
        certificate,
    ))))
}

/// Builds the server config around `resolver`, which supplies the
/// certificate for every handshake.
pub fn server_config_with(resolver: Arc<CertificateResolver>) -> ServerTls {
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[&TLS13, &TLS12])
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Shared server TLS settings.
pub type ServerTls = Arc<rustls::ServerConfig>;

/// Loads a PEM certificate chain and private key and checks that the key
/// belongs to the first certificate of the chain.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_chain(cert_file)?;
    let key_error = |reason: String| TlsError::PrivateKey {
        path: key_file.display().to_string(),
        reason,
    };
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|error| key_error(pem_reason(&error)))?;
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|error| key_error(error.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(inconsistency)) => Err(TlsError::Mismatch {
            cert: cert_file.display().to_string(),
            key: key_file.display().to_string(),
            reason: match inconsistency {
                InconsistentKeys::KeyMismatch => {
                    "the private key is not the key of the first certificate".to_owned()
                }
                _ => "the key type does not allow comparing it with the certificate".to_owned(),
            },
        }),
        Err(error) => Err(TlsError::Certificate {
            path: cert_file.display().to_string(),
            reason: format!("invalid first certificate: {error}"),
        }),
    }
}

/// Computes the SHA-256 fingerprint of a certificate in the form that
/// `openssl x509 -noout -fingerprint -sha256` prints: upper-case hex pairs
/// joined by colons.
pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, certificate);
    let pairs: Vec<String> = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    pairs.join(":")
}

/// The certificate and key that new TLS handshakes present. Connections
/// that are already open keep the certificate they started with.
pub struct CertificateResolver {
    /// Locked only to clone or replace the `Arc`, never across an `.await`.
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateResolver {
    pub fn new(certificate: CertifiedKey) -> Self {
        CertificateResolver {
            current: RwLock::new(Arc::new(certificate)),
        }
    }

    /// Returns the certificate that a handshake starting now gets.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current)
    }

    /// Makes `certificate` the one new handshakes get. Returns false, and
    /// keeps the current one, when its chain is the same as the current
    /// chain: a key that matches the same certificate is the same key.
    pub fn replace(&self, certificate: CertifiedKey) -> bool {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.cert == certificate.cert {
            return false;
        }
        *current = Arc::new(certificate);
        true
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Shows the certificate's fingerprint only, never the key.
impl fmt::Debug for CertificateResolver {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current();
        let fingerprint = current.end_entity_cert().map(fingerprint).ok();
        formatter
            .debug_struct("CertificateResolver")
            .field("fingerprint", &fingerprint)
            .finish_non_exhaustive()
    }
}

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

/// Describes a PEM error without the file's contents: the I/O error, or
/// the kind of syntax error.
fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::Io(error) => error.to_string(),
        Error::NoItemsFound => "no PEM item of the expected type found".to_owned(),
        Error::MissingSectionEnd { .. } => "invalid PEM: a section has no END line".to_owned(),
        Error::IllegalSectionStart { .. } => "invalid PEM: malformed BEGIN line".to_owned(),
        Error::Base64Decode(_) => "invalid PEM: the base64 body does not decode".to_owned(),
        Error::SectionTooLarge => "invalid PEM: a section is larger than 256 MB".to_owned(),
        other => format!("invalid PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Writes a new self-signed certificate and its key into `dir` and
    /// returns the two file names.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_file = dir.join(format!("{name}-cert.pem"));
        let key_file = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, generated.cert.pem()).unwrap();
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// The base64 lines of a PEM file, which must never appear in a message.
    fn pem_body_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with("-----") && !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "a");
        let certified = load_certified_key(&cert_file, &key_file).unwrap();
        let expected = CertificateDer::from_pem_file(&cert_file).unwrap();
        assert_eq!(
            certified.cert,
            vec![expected],
            "chain read from {cert_file:?}"
        );
    }

    #[test]
    fn key_of_another_certificate_is_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, _) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let error = load_certified_key(&cert_file, &other_key).unwrap_err();
        assert!(
            matches!(error, TlsError::Mismatch { .. }),
            "a foreign key must be a mismatch: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("a-cert.pem"),
            "names the certificate: {message}"
        );
        assert!(message.contains("b-key.pem"), "names the key: {message}");
        for line in pem_body_lines(&other_key) {
            assert!(!message.contains(&line), "key material in: {message}");
        }
    }

    #[test]
    fn garbage_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "a");
        std::fs::write(&cert_file, "not a certificate\n").unwrap();
        let error = load_certified_key(&cert_file, &key_file).unwrap_err();
        assert!(
            matches!(error, TlsError::Certificate { .. }),
            "text without PEM is a certificate error: {error}"
        );
    }

    #[test]
    fn invalid_certificate_der_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "a");
        let bogus = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
        std::fs::write(&cert_file, bogus).unwrap();
        let error = load_certified_key(&cert_file, &key_file).unwrap_err();
        assert!(
            matches!(error, TlsError::Certificate { .. }),
            "a PEM block that is not X.509 is a certificate error: {error}"
        );
    }

    #[test]
    fn corrupt_key_names_no_content() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "a");
        let body = pem_body_lines(&key_file);
        let corrupt = format!(
            "-----BEGIN PRIVATE KEY-----\n{}!!\n-----END PRIVATE KEY-----\n",
            body.join("\n")
        );
        std::fs::write(&key_file, corrupt).unwrap();
        let error = load_certified_key(&cert_file, &key_file).unwrap_err();
        assert!(
            matches!(error, TlsError::PrivateKey { .. }),
            "a key that does not decode is a key error: {error}"
        );
        let message = error.to_string();
        for line in &body {
            assert!(
                !message.contains(line.as_str()),
                "key material in: {message}"
            );
        }
    }

    #[test]
    fn missing_key_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "a");
        std::fs::remove_file(&key_file).unwrap();
        let error = load_certified_key(&cert_file, &key_file).unwrap_err();
        assert!(
            matches!(error, TlsError::PrivateKey { .. }),
            "a missing key file is a key error: {error}"
        );
    }

    #[test]
    fn resolver_replaces_only_new_chains() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (cert_b, key_b) = write_pair(dir.path(), "b");
        let resolver = CertificateResolver::new(load_certified_key(&cert_a, &key_a).unwrap());
        let first = resolver.current();

        let same = load_certified_key(&cert_a, &key_a).unwrap();
        assert!(!resolver.replace(same), "the same chain is no change");
        assert!(
            Arc::ptr_eq(&first, &resolver.current()),
            "an unchanged chain keeps the current certificate"
        );

        let other = load_certified_key(&cert_b, &key_b).unwrap();
        let expected = other.cert.clone();
        assert!(resolver.replace(other), "a new chain is a change");
        assert_eq!(
            resolver.current().cert,
            expected,
            "the new chain is current"
        );
        assert_ne!(first.cert, expected, "the old chain is gone");
    }

    #[test]
    fn resolver_debug_shows_fingerprint_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "a");
        let resolver = CertificateResolver::new(load_certified_key(&cert_file, &key_file).unwrap());
        let text = format!("{resolver:?}");
        let der = CertificateDer::from_pem_file(&cert_file).unwrap();
        assert!(text.contains(&fingerprint(&der)), "{text}");
        assert!(!text.to_lowercase().contains("key"), "{text}");
    }

    #[test]
    fn fingerprint_matches_openssl_format() {
        // The SHA-256 digest of "abc", a widely published test vector.
        let der = CertificateDer::from(b"abc".to_vec());
        assert_eq!(
            fingerprint(&der),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
