//! Certificate reload without a restart. [`watch`] checks `server.cert_file`
//! and `server.key_file` every `server.cert_reload_interval_secs`, and the
//! SIGHUP handler in `main` calls [`reload`] directly.
//!
//! A reload loads both files, checks that the key belongs to the first
//! certificate and only then replaces the certificate that new handshakes
//! get. Open connections keep the certificate they started with. A pair that
//! fails to load is logged at error with both file names and the reason, and
//! the last good certificate keeps serving.
//!
//! The watcher notices a change by comparing each file's modification time,
//! size and SHA-256 of its contents, read through any symlinks. That catches
//! a write in place, a rename over the file, and the symlink swap with which
//! Kubernetes updates a mounted Secret.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::config::ServerConfig;
use crate::gateway::Gateway;
use crate::tls::{self, CertificateResolver, TlsError};

/// The cause of a reload, logged as the `trigger` field of its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the certificate or key file change.
    FileChange,
    /// The process received SIGHUP.
    Signal,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Signal => "sighup",
        }
    }
}

/// Loads the certificate named in `server` for startup and logs its
/// fingerprint.
pub fn load(server: &ServerConfig) -> Result<Arc<CertificateResolver>, TlsError> {
    let certificate = tls::load_certified_key(&server.cert_file, &server.key_file)?;
    log_in_use(server, &certificate.cert);
    Ok(Arc::new(CertificateResolver::new(certificate)))
}

/// Loads the pair named in `server` into `resolver`. Returns whether the
/// certificate changed, and logs at info when it did.
pub(crate) fn install(
    resolver: &CertificateResolver,
    server: &ServerConfig,
) -> Result<bool, TlsError> {
    let certificate = tls::load_certified_key(&server.cert_file, &server.key_file)?;
    let chain = certificate.cert.clone();
    let changed = resolver.replace(certificate);
    if changed {
        log_in_use(server, &chain);
    }
    Ok(changed)
}

fn log_in_use(server: &ServerConfig, chain: &[rustls_pki_types::CertificateDer<'_>]) {
    let fingerprint = chain.first().map(tls::fingerprint).unwrap_or_default();
    tracing::info!(
        cert_file = %server.cert_file.display(),
        sha256 = %fingerprint,
        chain_len = chain.len(),
        "certificate in use for new TLS handshakes"
    );
}

/// Reloads the gateway's certificate and logs the outcome. Returns whether a
/// new certificate is in use. A failure is logged here, not returned,
/// because the last good certificate keeps serving and the caller has
/// nothing else to do. File reads block, so async callers run this on the
/// blocking pool.
pub fn reload(gateway: &Gateway, trigger: Trigger) -> bool {
    let span = tracing::info_span!("cert_reload", trigger = trigger.as_str());
    let _entered = span.enter();
    match gateway.reload_certificate() {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!("certificate unchanged");
            false
        }
        Err(error) => {
            let server = &gateway.config().server;
            tracing::error!(
                cert_file = %server.cert_file.display(),
                key_file = %server.key_file.display(),
                %error,
                "certificate reload failed; the previous certificate stays in use"
            );
            false
        }
    }
}

/// Starts checking the certificate files every `interval`. The check stops
/// when the returned [`Watcher`] is dropped.
pub fn watch(gateway: Arc<Gateway>, interval: Duration) -> Watcher {
    let span = tracing::info_span!("cert_watch", interval_secs = interval.as_secs());
    Watcher(tokio::spawn(
        run_watcher(gateway, interval).instrument(span),
    ))
}

/// The running file watcher, which stops when dropped.
pub struct Watcher(JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_watcher(gateway: Arc<Gateway>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // With no snapshot, the first check reloads, which also catches a change
    // made between startup and that check.
    let mut last: Option<Snapshot> = None;
    loop {
        ticks.tick().await;
        let checked_gateway = Arc::clone(&gateway);
        let previous = last.take();
        let check = tokio::task::spawn_blocking(move || check(&checked_gateway, previous));
        match check.await {
            Ok(snapshot) => last = Some(snapshot),
            Err(error) => tracing::warn!(%error, "certificate file check failed"),
        }
    }
}

/// Reads both files and reloads when they differ from `previous`.
fn check(gateway: &Gateway, previous: Option<Snapshot>) -> Snapshot {
    let server = &gateway.config().server;
    let snapshot = Snapshot::read(&server.cert_file, &server.key_file);
    if previous.as_ref() != Some(&snapshot) {
        reload(gateway, Trigger::FileChange);
    }
    snapshot
}

/// The state of the certificate and key files at one check. It has no
/// `Debug` because it contains a digest of the private key file.
#[derive(Clone, PartialEq, Eq)]
struct Snapshot {
    cert: FileState,
    key: FileState,
}

impl Snapshot {
    fn read(cert_file: &Path, key_file: &Path) -> Snapshot {
        Snapshot {
            cert: FileState::read(cert_file),
            key: FileState::read(key_file),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
enum FileState {
    Present {
        modified: Option<SystemTime>,
        len: u64,
        sha256: Vec<u8>,
    },
    /// The file cannot be opened or read, for example because it is missing.
    Unreadable(io::ErrorKind),
}

impl FileState {
    /// Opens the file once, so the metadata and the contents belong to the
    /// same file even while it is being replaced.
    fn read(path: &Path) -> FileState {
        let read = || -> io::Result<FileState> {
            let mut file = File::open(path)?;
            let metadata = file.metadata()?;
            let mut contents = Vec::new();
            file.read_to_end(&mut contents)?;
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &contents);
            Ok(FileState::Present {
                modified: metadata.modified().ok(),
                len: metadata.len(),
                sha256: digest.as_ref().to_vec(),
            })
        };
        read().unwrap_or_else(|error| FileState::Unreadable(error.kind()))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn unchanged_file_is_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        fs::write(&path, "first").unwrap();
        assert!(FileState::read(&path) == FileState::read(&path));
    }

    #[test]
    fn same_size_and_time_new_content_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        fs::write(&path, "first").unwrap();
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        let before = FileState::read(&path);

        fs::write(&path, "other").unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let after = FileState::read(&path);
        let FileState::Present { modified: time, .. } = &after else {
            panic!("the rewritten file must be readable");
        };
        assert_eq!(*time, Some(modified), "the test must keep the time");
        assert!(before != after, "the content hash must tell them apart");
    }

    #[test]
    fn new_modification_time_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        fs::write(&path, "first").unwrap();
        let before = FileState::read(&path);
        let later = SystemTime::now() + Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(
            before != FileState::read(&path),
            "a touched file is checked"
        );
    }

    #[test]
    fn rename_over_file_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        fs::write(&path, "first").unwrap();
        let before = FileState::read(&path);
        let staged = dir.path().join("cert.pem.tmp");
        fs::write(&staged, "second").unwrap();
        fs::rename(&staged, &path).unwrap();
        assert!(before != FileState::read(&path), "a renamed-in file is new");
    }

    #[test]
    fn missing_file_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        assert!(FileState::read(&path) == FileState::Unreadable(io::ErrorKind::NotFound));
        fs::write(&path, "first").unwrap();
        assert!(
            FileState::read(&path) != FileState::Unreadable(io::ErrorKind::NotFound),
            "a file that appears is a change"
        );
    }

    #[test]
    fn snapshot_differs_when_only_key_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        fs::write(&cert, "cert").unwrap();
        fs::write(&key, "key one").unwrap();
        let before = Snapshot::read(&cert, &key);
        fs::write(&key, "key two").unwrap();
        assert!(before != Snapshot::read(&cert, &key));
    }

    /// Kubernetes mounts each Secret key as a symlink through `..data`,
    /// itself a symlink to a timestamped directory, and updates the Secret
    /// by renaming a new `..data` link over the old one.
    #[cfg(unix)]
    #[test]
    fn secret_symlink_swap_differs() {
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("..2024_01_01")).unwrap();
        fs::create_dir(root.join("..2024_02_01")).unwrap();
        fs::write(root.join("..2024_01_01/tls.crt"), "first").unwrap();
        fs::write(root.join("..2024_02_01/tls.crt"), "second").unwrap();
        symlink("..2024_01_01", root.join("..data")).unwrap();
        symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
        let path = root.join("tls.crt");
        let before = FileState::read(&path);

        symlink("..2024_02_01", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert!(
            before != FileState::read(&path),
            "the swapped Secret is new"
        );
    }
}
