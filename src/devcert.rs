//! Development certificates for local runs and tests.
//!
//! Creates a throwaway certificate authority and a server certificate it
//! signs for `localhost`, `127.0.0.1` and `::1`. Clients trust the CA file
//! (for example with `SSL_CERT_FILE` or `NODE_EXTRA_CA_CERTS`); the CA's
//! private key is never written, so the CA can sign nothing else. These
//! certificates are for development only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// How long a development certificate stays valid.
const VALIDITY_DAYS: i64 = 365;

/// File names of a development certificate set.
#[derive(Clone, Debug)]
pub struct DevCertificate {
    /// The CA certificate that clients trust.
    pub ca_file: PathBuf,
    /// The server certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
}

impl DevCertificate {
    /// The standard file names in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        DevCertificate {
            ca_file: dir.join("dev-ca.pem"),
            cert_file: dir.join("dev-cert.pem"),
            key_file: dir.join("dev-key.pem"),
        }
    }

    fn all_exist(&self) -> bool {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .iter()
            .all(|path| path.is_file())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("generating the development certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Returns the development certificate in `dir`, creating it when any of
/// its files is missing. The flag is true when new files were written.
pub fn ensure(dir: &Path) -> Result<(DevCertificate, bool), DevCertError> {
    let files = DevCertificate::in_dir(dir);
    if files.all_exist() {
        return Ok((files, false));
    }
    generate(dir).map(|files| (files, true))
}

/// Writes a new CA, server certificate and key into `dir`.
pub fn generate(dir: &Path) -> Result<DevCertificate, DevCertError> {
    let files = DevCertificate::in_dir(dir);
    fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_owned(),
        source,
    })?;

    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("cartesia-gateway development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = name("localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &ca)?;

    write(&files.ca_file, ca.pem().as_bytes(), false)?;
    write(&files.cert_file, certificate.pem().as_bytes(), false)?;
    write(&files.key_file, key.serialize_pem().as_bytes(), true)?;
    Ok(files)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Writes a file; private keys get mode 0600 on Unix.
fn write(path: &Path, contents: &[u8], private: bool) -> Result<(), DevCertError> {
    let error = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_into_tls_configs() {
        let dir = tempfile::tempdir().unwrap();
        let (files, created) = ensure(dir.path()).unwrap();
        assert!(created);
        assert!(crate::tls::server_config(&files.cert_file, &files.key_file).is_ok());
        assert!(crate::tls::client_config(Some(&files.ca_file)).is_ok());
        let key = fs::read_to_string(&files.key_file).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let ca = fs::read_to_string(&files.ca_file).unwrap();
        assert!(!ca.contains("PRIVATE KEY"));
    }

    #[test]
    fn existing_certificate_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = ensure(dir.path()).unwrap();
        let before = fs::read(&first.cert_file).unwrap();
        let (second, created) = ensure(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(fs::read(second.cert_file).unwrap(), before);
    }

    #[cfg(unix)]
    #[test]
    fn private_key_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let mode = fs::metadata(files.key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
