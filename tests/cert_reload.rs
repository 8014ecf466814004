//! Certificate reload over real TLS. The file watcher and the reload that
//! SIGHUP triggers replace the certificate for new handshakes, and open
//! connections keep working. A broken pair is rejected with an error log
//! while the last good certificate keeps serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cartesia_gateway::cert_reload::{self, Trigger};
use cartesia_gateway::devcert::{self, DevCertificate};
use cartesia_gateway::tls::{self, TlsError};
use cartesia_gateway::{Config, Gateway};
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Watcher interval for these tests, in the harness's TOML.
const FAST_WATCH: &str = "cert_reload_interval_secs = 1";
/// Maximum wait for the watcher or a signal to take effect: a few watcher
/// intervals.
const RELOAD_WAIT: Duration = Duration::from_secs(5);
/// Pause between polls while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Message of the error log for a rejected pair.
const RELOAD_FAILED: &str = "certificate reload failed; the previous certificate stays in use";
/// Message of the info log for a new certificate.
const IN_USE: &str = "certificate in use for new TLS handshakes";

/// Installs the global subscriber on first use; every test shares it.
fn log() -> &'static CapturedLog {
    static LOG: OnceLock<CapturedLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = CapturedLog::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(log.clone())
            .with_ansi(false)
            .try_init()
            .expect("this test binary installs the only subscriber");
        log
    })
}

/// Builds a client config that trusts both CAs, offers HTTP/1.1 and never resumes
/// a session, so every handshake receives the server's certificate.
fn trust_both(first: &DevCertificate, second: &DevCertificate) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca_file in [&first.ca_file, &second.ca_file] {
        roots.add(certificate(ca_file)).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Reads the first certificate in a PEM file.
fn certificate(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

async fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::clone(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap()
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, connection) = stream.get_ref();
    let chain = connection
        .peer_certificates()
        .expect("the server sent a chain");
    chain[0].clone().into_owned()
}

/// Opens a connection and returns the certificate it receives.
async fn served(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    peer_certificate(&connect(addr, config).await)
}

/// Opens new connections until one receives `expected`, for at most
/// [`RELOAD_WAIT`].
async fn serves_within_wait(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    expected: &CertificateDer<'_>,
) -> bool {
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    while tokio::time::Instant::now() < deadline {
        if served(addr, config).await == *expected {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    served(addr, config).await == *expected
}

/// Waits until the captured log has more than `seen` lines with all of
/// `parts`, for at most [`RELOAD_WAIT`].
async fn log_grows(parts: &[&str], seen: usize) -> bool {
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    while tokio::time::Instant::now() < deadline {
        if log().lines_with(parts).len() > seen {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    log().lines_with(parts).len() > seen
}

/// Writes a new CA, certificate and key for localhost into a new directory.
fn second_pair() -> (tempfile::TempDir, DevCertificate) {
    let dir = tempfile::tempdir().unwrap();
    let certs = devcert::generate(dir.path()).unwrap();
    (dir, certs)
}

/// Replaces the gateway's files the way deployment tools do: each new file
/// is written next to the old one and renamed over it.
fn rename_pair_into(target: &DevCertificate, source: &DevCertificate) {
    for (from, to) in [
        (&source.cert_file, &target.cert_file),
        (&source.key_file, &target.key_file),
    ] {
        let staged = to.with_extension("pem.new");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
}

/// Overwrites the gateway's files in place.
fn write_pair_into(target: &DevCertificate, source: &DevCertificate) {
    std::fs::write(&target.cert_file, std::fs::read(&source.cert_file).unwrap()).unwrap();
    std::fs::write(&target.key_file, std::fs::read(&source.key_file).unwrap()).unwrap();
}

/// Collects the base64 lines of the key files, which must never reach a
/// log.
fn key_material(certs: &[&DevCertificate]) -> Vec<String> {
    certs
        .iter()
        .flat_map(|certs| {
            let text = std::fs::read_to_string(&certs.key_file).unwrap();
            text.lines()
                .filter(|line| !line.starts_with("-----") && !line.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_key_material(text: &str, material: &[String]) {
    for line in material {
        assert!(
            !text.contains(line.as_str()),
            "a line of a private key appears in the output"
        );
    }
}

async fn tts_request(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    session: &str,
) -> (u16, Bytes) {
    let request = Request::post("/tts/bytes")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            tts_bytes_body("Still here").to_string(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test]
async fn watcher_serves_replaced_certificate() {
    log();
    let harness = Harness::start_with(Options {
        server: FAST_WATCH,
        ..Options::default()
    })
    .await;
    let (_dir, second) = second_pair();
    let client = trust_both(&harness.certs, &second);
    let original = certificate(&harness.certs.cert_file);
    let replacement = certificate(&second.cert_file);
    assert_eq!(
        served(harness.addr, &client).await,
        original,
        "before the swap the gateway serves its first certificate"
    );

    rename_pair_into(&harness.certs, &second);
    assert!(
        serves_within_wait(harness.addr, &client, &replacement).await,
        "a new handshake gets the renamed-in certificate within {RELOAD_WAIT:?}"
    );
    let fingerprint = tls::fingerprint(&replacement);
    assert!(
        log_grows(&[IN_USE, &fingerprint], 0).await,
        "the new certificate's fingerprint is logged at info"
    );
}

#[tokio::test]
async fn open_connection_survives_certificate_swap() {
    log();
    let harness = Harness::start_with(Options {
        server: FAST_WATCH,
        ..Options::default()
    })
    .await;
    let (_dir, second) = second_pair();
    let client = trust_both(&harness.certs, &second);
    let session = harness.session("carol", &["tts"]);

    let stream = connect(harness.addr, &client).await;
    assert_eq!(
        peer_certificate(&stream),
        certificate(&harness.certs.cert_file),
        "the open connection started with the first certificate"
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (status, body) = tts_request(&mut sender, &session).await;
    assert_eq!(status, 200, "request before the swap: {body:?}");

    write_pair_into(&harness.certs, &second);
    assert!(
        serves_within_wait(harness.addr, &client, &certificate(&second.cert_file)).await,
        "a new handshake gets the certificate written in place"
    );

    let (status, body) = tts_request(&mut sender, &session).await;
    assert_eq!(status, 200, "request on the old connection after the swap");
    assert_eq!(
        &body[..4],
        b"RIFF",
        "the old connection still streams audio"
    );
}

/// Breaks the gateway's files with `break_files`, then checks that the
/// watcher logs the rejection with `reason`, keeps the first certificate,
/// and still picks up a good pair afterwards.
async fn assert_broken_pair_rejected(break_files: impl FnOnce(&DevCertificate), reason: &str) {
    log();
    let harness = Harness::start_with(Options {
        server: FAST_WATCH,
        ..Options::default()
    })
    .await;
    let (_dir, second) = second_pair();
    let client = trust_both(&harness.certs, &second);
    let original = certificate(&harness.certs.cert_file);
    let material = key_material(&[&harness.certs, &second]);
    let cert_file = harness.certs.cert_file.display().to_string();
    let key_file = harness.certs.key_file.display().to_string();

    break_files(&harness.certs);
    assert!(
        log_grows(&[RELOAD_FAILED, &cert_file, &key_file], 0).await,
        "the rejection is logged at error with both file names"
    );
    let errors = log().lines_with(&[RELOAD_FAILED, &cert_file]);
    assert!(
        errors.iter().all(|line| line.contains("ERROR")),
        "the rejection is logged at error: {errors:?}"
    );
    assert!(
        errors.iter().any(|line| line.contains(reason)),
        "the log names the reason {reason:?}: {errors:?}"
    );
    assert_eq!(
        served(harness.addr, &client).await,
        original,
        "the last good certificate keeps serving"
    );

    rename_pair_into(&harness.certs, &second);
    assert!(
        serves_within_wait(harness.addr, &client, &certificate(&second.cert_file)).await,
        "the watcher still works after a rejected pair"
    );
    assert_no_key_material(&log().text(), &material);
}

#[tokio::test]
async fn garbage_certificate_keeps_last_good() {
    let reason = "no PEM certificate found";
    assert_broken_pair_rejected(
        |certs| std::fs::write(&certs.cert_file, "this is not PEM\n").unwrap(),
        reason,
    )
    .await;
}

#[tokio::test]
async fn mismatched_key_keeps_last_good() {
    // A new certificate next to the old key: its public key differs.
    let (_dir, other) = second_pair();
    let reason = "the private key is not the key of the first certificate";
    assert_broken_pair_rejected(
        |certs| {
            std::fs::copy(&other.cert_file, &certs.cert_file)
                .map(drop)
                .unwrap()
        },
        reason,
    )
    .await;
}

#[tokio::test]
async fn missing_key_keeps_last_good() {
    assert_broken_pair_rejected(
        |certs| std::fs::remove_file(&certs.key_file).unwrap(),
        "cannot read private key file",
    )
    .await;
}

/// A gateway started by this file, so a test can call its [`Gateway`].
struct OwnGateway {
    _dir: tempfile::TempDir,
    certs: DevCertificate,
    gateway: Arc<Gateway>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Starts a gateway with the watcher off, so only explicit reloads change
/// its certificate. It never contacts its upstream in these tests.
async fn start_without_watcher() -> OwnGateway {
    let dir = tempfile::tempdir().unwrap();
    let certs = devcert::generate(dir.path()).unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
cert_reload_interval_secs = 0

[session]
secret_env = "TEST_SESSION_SECRET"
audience = "cartesia-gateway-tests"

[upstream]
base_url = "https://127.0.0.1:9"

[admin]
listen = "127.0.0.1:0"
"#,
        cert = certs.cert_file.display(),
        key = certs.key_file.display(),
    );
    let config = Config::from_toml_str(&text, std::iter::empty()).unwrap();
    assert_eq!(
        config.server.cert_reload_interval, None,
        "the watcher is off"
    );
    let gateway = Gateway::new(config, |name| match name {
        "TEST_SESSION_SECRET" => Some(SESSION_SECRET.to_owned()),
        "CARTESIA_API_KEY" => Some(API_KEY.to_owned()),
        _ => None,
    })
    .unwrap();
    let gateway = Arc::new(gateway);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(cartesia_gateway::serve(
        listener,
        Arc::clone(&gateway),
        async move {
            let _ = stopped.await;
        },
    ));
    OwnGateway {
        _dir: dir,
        certs,
        gateway,
        addr,
        _stop: stop,
    }
}

#[tokio::test]
async fn reload_certificate_reports_each_outcome() {
    log();
    let own = start_without_watcher().await;
    let (_dir, second) = second_pair();
    let client = trust_both(&own.certs, &second);
    let original = certificate(&own.certs.cert_file);
    let replacement = certificate(&second.cert_file);
    let cert_file = own.certs.cert_file.display().to_string();

    let unchanged = own.gateway.reload_certificate().unwrap();
    assert!(!unchanged, "reloading the same files changes nothing");

    std::fs::write(&own.certs.cert_file, "garbage").unwrap();
    let error = own.gateway.reload_certificate().unwrap_err();
    assert!(
        matches!(error, TlsError::Certificate { .. }),
        "garbage is a certificate error: {error}"
    );
    let errors_before = log().lines_with(&[RELOAD_FAILED, &cert_file]).len();
    assert!(
        !cert_reload::reload(&own.gateway, Trigger::Signal),
        "the SIGHUP reload of garbage installs nothing"
    );
    assert_eq!(
        log()
            .lines_with(&[RELOAD_FAILED, &cert_file, "sighup"])
            .len(),
        errors_before + 1,
        "the SIGHUP reload logs one error naming its trigger"
    );
    assert_eq!(
        served(own.addr, &client).await,
        original,
        "the first certificate serves after the garbage"
    );

    write_pair_into(&own.certs, &second);
    assert!(
        cert_reload::reload(&own.gateway, Trigger::Signal),
        "the SIGHUP reload installs the new pair"
    );
    assert_eq!(
        served(own.addr, &client).await,
        replacement,
        "a new handshake gets the new certificate"
    );
    let again = own.gateway.reload_certificate().unwrap();
    assert!(!again, "a second reload of the same pair changes nothing");

    let foreign_key = write_foreign_key(&own.certs.key_file);
    std::fs::copy(&foreign_key, &own.certs.key_file).unwrap();
    let error = own.gateway.reload_certificate().unwrap_err();
    assert!(
        matches!(error, TlsError::Mismatch { .. }),
        "a key of another certificate is a mismatch: {error}"
    );
    assert_eq!(
        served(own.addr, &client).await,
        replacement,
        "the last good certificate keeps serving after a mismatch"
    );
}

/// Writes the key of a new certificate next to `key_file` and returns its
/// name.
fn write_foreign_key(key_file: &Path) -> std::path::PathBuf {
    let path = key_file.with_extension("foreign.pem");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&path, generated.signing_key.serialize_pem()).unwrap();
    path
}

/// The gateway binary as a child process; killed when dropped.
#[cfg(unix)]
struct Binary {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

#[cfg(unix)]
impl Binary {
    fn lines_with(&self, part: &str) -> Vec<String> {
        let lines = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .filter(|line| line.contains(part))
            .cloned()
            .collect()
    }

    /// Waits for a stderr line containing `part`, for at most [`RELOAD_WAIT`].
    async fn wait_for_line(&self, part: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
        loop {
            if let Some(line) = self.lines_with(part).pop() {
                return Some(line);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP failed: {status}");
    }
}

#[cfg(unix)]
impl Drop for Binary {
    fn drop(&mut self) {
        let status = self.child.try_wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            let stderr = self.lines_with("").join("\n");
            eprintln!("gateway status before kill: {status:?}\ngateway stderr:\n{stderr}");
        }
    }
}

#[cfg(unix)]
fn start_binary(config_file: &Path) -> Binary {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cartesia-gateway"))
        .arg("--config")
        .arg(config_file)
        .env_remove("RUST_LOG")
        // The test reads the human-readable log lines.
        .env("CARTESIA_GATEWAY__LOG__FORMAT", "text")
        .env("CARTESIA_API_KEY", API_KEY)
        .env("TEST_SESSION_SECRET", SESSION_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
    Binary {
        child,
        stderr: lines,
        reader: Some(reader),
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_certificate_in_binary() {
    let dir = tempfile::tempdir().unwrap();
    let certs = devcert::generate(dir.path()).unwrap();
    let (_second_dir, second) = second_pair();
    let client = trust_both(&certs, &second);
    let material = key_material(&[&certs, &second]);
    let config_file = dir.path().join("config.toml");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
cert_reload_interval_secs = 0

[session]
secret_env = "TEST_SESSION_SECRET"
audience = "cartesia-gateway-tests"

[upstream]
base_url = "https://127.0.0.1:9"
"#,
        cert = certs.cert_file.display(),
        key = certs.key_file.display(),
    );
    std::fs::write(&config_file, config).unwrap();

    let mut binary = start_binary(&config_file);
    let listening = binary
        .wait_for_line("gateway listening")
        .await
        .expect("the gateway starts and logs its address");
    let addr: SocketAddr = listening
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    assert_eq!(
        served(addr, &client).await,
        certificate(&certs.cert_file),
        "the binary serves its first certificate"
    );

    write_pair_into(&certs, &second);
    binary.hang_up();
    let replacement = certificate(&second.cert_file);
    assert!(
        serves_within_wait(addr, &client, &replacement).await,
        "after SIGHUP a new handshake gets the new certificate"
    );
    let in_use = binary.wait_for_line(&tls::fingerprint(&replacement)).await;
    assert!(
        in_use.is_some_and(|line| line.contains(IN_USE) && line.contains("sighup")),
        "the binary logs the new fingerprint with the SIGHUP trigger"
    );

    std::fs::write(&certs.cert_file, "this is not PEM\n").unwrap();
    binary.hang_up();
    let failed = binary.wait_for_line(RELOAD_FAILED).await;
    assert!(
        failed.is_some_and(|line| line.contains("ERROR") && line.contains("dev-cert.pem")),
        "a SIGHUP with a broken file logs an error naming it"
    );
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "the binary survives SIGHUP and a broken file"
    );
    assert_eq!(
        served(addr, &client).await,
        replacement,
        "the last good certificate keeps serving"
    );
    let stderr = binary.lines_with("").join("\n");
    assert_no_key_material(&stderr, &material);
}
