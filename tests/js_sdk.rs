//! The official Cartesia JS SDK (npm `@cartesia/cartesia-js` 4.2.0) in Node.js
//! through the real gateway, with the stand-in as upstream and real TLS on
//! both legs.
//!
//! The SDK and the `ws` package, at the exact versions in
//! `tests/sdk/package.json`, live in `<target dir>/js-sdk`. The first test to
//! need them runs `npm install` there, so that run needs the npm registry. A
//! missing or too old `node`, or a missing `npm`, fails the tests with a
//! message saying what to install; they are never skipped. The install is
//! built in a directory of its own and renamed into place once complete, so
//! test processes that run at the same time never see or share a half-built
//! one. To reinstall, delete `<target dir>/js-sdk`.
//!
//! The SDK calls are in `tests/sdk/stand_in_smoke.mjs`, which exercises both
//! of the SDK's WebSocket transports: the `ws` package with the token in a
//! header, and the global WebSocket with the token in the `access_token`
//! query parameter, as in a browser. Node.js runs as a child process that
//! this test polls from the async runtime, so the gateway and the stand-in
//! keep serving while it runs. The script prints a JSON report, which the
//! tests read together with what the stand-in recorded.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cartesia_gateway::stand_in::RecordedRequest;
use common::process::{ProcessOutput, run_to_completion, unix_nanos};
use common::*;
use serde::Deserialize;
use tokio::sync::OnceCell;

/// The npm manifest that pins the SDK and `ws`. A copy in the install
/// directory marks the install as complete.
const PACKAGE_JSON: &str = include_str!("sdk/package.json");
/// File in a complete install that contains [`PACKAGE_JSON`].
const READY_MARKER: &str = "cartesia-gateway-ready.json";
/// The `X-Cartesia-Client` header and `cartesia_client` query value the SDK
/// sends.
const SDK_CLIENT: &str = "cartesia-js/4.2.0";
/// The API version the SDK sends.
const SDK_API_VERSION: &str = "2026-08-14";
/// The oldest Node.js with a global WebSocket, which needs
/// `--experimental-websocket` before Node.js 22.
const MIN_NODE: (u32, u32) = (20, 10);
/// Limit for `node --version`.
const NODE_VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for installing the SDK with npm, downloads included.
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Limit for one run of the SDK script. A full run takes a few seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Environment variable that passes the session JWT to the SDK script, which
/// keeps it out of process listings.
const SESSION_ENV: &str = "CARTESIA_GATEWAY_TEST_SESSION";
/// Variables cleared for the script, because they could send its traffic
/// through a proxy, turn off certificate checks or load other code.
const CLEARED_VARIABLES: [&str; 11] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "NODE_OPTIONS",
    "NODE_PATH",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_session_gets_speech_and_transcripts() {
    let sdk = js_sdk().await;
    let harness = Harness::start().await;
    let session = harness.session("js-sdk-user", &["tts", "stt"]);

    let run = run_sdk_script(sdk, &harness, &session, &[]).await;

    let report = run.report();
    assert_checks_passed(
        &run,
        &report,
        &[
            "tts.generate returns a valid WAV",
            "tts.generateSSE streams audio and timestamps",
            "tts.websocket contexts over ws",
            "tts.websocket over native WebSocket",
            "stt.manualFinalize over ws",
            "stt.manualFinalize over native WebSocket",
            "stt.autoFinalize over ws",
            "stt.autoFinalize over native WebSocket",
            "stt.transcribe",
            "tampered token gets 401",
            "no unhandled rejections",
        ],
    );
    assert!(run.succeeded(), "the SDK script failed\n{run}");

    let wav = report.detail("tts.generate returns a valid WAV");
    assert_eq!(wav["sample_rate"], 16_000, "WAV report: {wav}");
    assert_eq!(wav["channels"], 1, "WAV report: {wav}");
    assert!(
        wav["frames"].as_u64().is_some_and(|frames| frames > 0),
        "WAV report: {wav}"
    );
    let batch = report.detail("stt.transcribe");
    let expected_text = format!("received {} bytes", wav["bytes"]);
    assert!(
        batch["text"]
            .as_str()
            .is_some_and(|text| text.starts_with(&expected_text)),
        "the batch transcript does not describe the WAV from tts.generate: {batch}"
    );
    let rejected = report.detail("tampered token gets 401");
    assert_eq!(rejected["error_code"], "invalid_session", "{rejected}");

    let requests = harness.stand_in.requests();
    for route in ["/tts/bytes", "/tts/sse", "/stt"] {
        let sent: Vec<&RecordedRequest> = requests.iter().filter(|r| r.path == route).collect();
        assert!(
            !sent.is_empty(),
            "the stand-in received no request for {route}"
        );
        for request in sent {
            assert_eq!(
                header(request, "x-cartesia-client"),
                Some(SDK_CLIENT),
                "X-Cartesia-Client of {route}"
            );
            assert_eq!(
                header(request, "cartesia-version"),
                Some(SDK_API_VERSION),
                "Cartesia-Version of {route}"
            );
        }
    }
    for route in ["/tts/websocket", "/stt/websocket", "/stt/turns/websocket"] {
        assert_handshakes_from_both_transports(&requests, route);
    }
    assert_stand_in_saw_only_its_tokens(&harness, &session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_session_without_stt_gets_403() {
    let sdk = js_sdk().await;
    let harness = Harness::start().await;
    let session = harness.session("js-tts-only-user", &["tts"]);

    let run = run_sdk_script(sdk, &harness, &session, &["--without-grant", "stt"]).await;

    let report = run.report();
    assert_checks_passed(
        &run,
        &report,
        &[
            "tts.generate returns a valid WAV",
            "tts.websocket over native WebSocket",
            "stt.manualFinalize over ws gets 403",
            "stt.autoFinalize over ws gets 403",
            "stt.manualFinalize over native WebSocket is rejected",
            "stt.transcribe gets 403",
            "stt.transcribe of 32 s gets 403",
            "no unhandled rejections",
        ],
    );
    assert!(run.succeeded(), "the SDK script failed\n{run}");

    let batch = report.detail("stt.transcribe gets 403");
    assert_eq!(batch["class"], "PermissionDeniedError", "{batch}");
    assert_eq!(batch["error_code"], "grant_missing", "{batch}");
    for check in [
        "stt.manualFinalize over ws gets 403",
        "stt.autoFinalize over ws gets 403",
    ] {
        let detail = report.detail(check);
        assert_eq!(
            detail["error"], "Unexpected server response: 403",
            "{check}: {detail}"
        );
    }

    let requests = harness.stand_in.requests();
    for route in ["/tts/bytes", "/tts/websocket"] {
        assert!(
            requests.iter().any(|request| request.path == route),
            "the stand-in received no request for {route}"
        );
    }
    let stt_paths: Vec<&str> = requests
        .iter()
        .map(|request| request.path.as_str())
        .filter(|path| path.starts_with("/stt"))
        .collect();
    assert!(
        stt_paths.is_empty(),
        "STT requests without the grant reached the stand-in: {stt_paths:?}"
    );
    assert_stand_in_saw_only_its_tokens(&harness, &session);
}

/// Asserts that every check in `expected` ran and passed, and that the script
/// ran no check that failed.
fn assert_checks_passed(run: &ProcessOutput, report: &Report, expected: &[&str]) {
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|check| !check.ok)
        .map(|check| format!("{}: {}", check.name, check.error.as_deref().unwrap_or("")))
        .collect();
    assert!(
        failed.is_empty(),
        "SDK checks failed on Node.js {}:\n{}\n{run}",
        report.node,
        failed.join("\n")
    );
    for name in expected {
        assert!(
            report.checks.iter().any(|check| check.name == *name),
            "the SDK script did not run {name:?}\n{run}"
        );
    }
}

/// Asserts that `route` received a handshake from the `ws` transport, which
/// sends the client identity as a header, and one from the global WebSocket,
/// which sends it and the API version in the query.
fn assert_handshakes_from_both_transports(requests: &[RecordedRequest], route: &str) {
    let handshakes: Vec<&RecordedRequest> = requests
        .iter()
        .filter(|request| request.path == route && request.websocket)
        .collect();

    let from_ws = handshakes
        .iter()
        .filter(|request| header(request, "x-cartesia-client") == Some(SDK_CLIENT))
        .count();
    assert!(
        from_ws > 0,
        "no handshake on {route} carried X-Cartesia-Client: {handshakes:?}"
    );

    let client_param = format!("cartesia_client={}", SDK_CLIENT.replace('/', "%2F"));
    let version_param = format!("cartesia_version={SDK_API_VERSION}");
    let from_native: Vec<&&RecordedRequest> = handshakes
        .iter()
        .filter(|request| query_has(request, &client_param))
        .collect();
    assert!(
        !from_native.is_empty(),
        "no handshake on {route} carried {client_param} in the query: {handshakes:?}"
    );
    for request in from_native {
        assert!(
            query_has(request, &version_param),
            "a query handshake on {route} lost {version_param}: {request:?}"
        );
        assert!(
            header(request, "x-cartesia-client").is_none(),
            "a query handshake on {route} also had X-Cartesia-Client: {request:?}"
        );
        for name in ["access_token", "api_key"] {
            let prefix = format!("{name}=");
            let forwarded = request
                .query
                .as_deref()
                .is_some_and(|query| query.split('&').any(|pair| pair.starts_with(&prefix)));
            assert!(
                !forwarded,
                "the gateway forwarded {name} in the query of {route}"
            );
        }
    }
}

/// Checks that the session JWT never reached the stand-in and that every
/// request carried the API key (minting only) or a token the stand-in issued.
fn assert_stand_in_saw_only_its_tokens(harness: &Harness, session: &str) {
    let requests = harness.stand_in.requests();
    let issued = harness.stand_in.issued_tokens();
    assert!(!requests.is_empty(), "the stand-in received no requests");

    for request in &requests {
        let route = format!("{} {}", request.method, request.path);
        let in_headers = request
            .headers
            .iter()
            .any(|(_, value)| value.contains(session));
        assert!(
            !in_headers,
            "the session JWT reached the stand-in in a header of {route}"
        );
        assert!(
            !request
                .query
                .as_deref()
                .is_some_and(|query| query.contains(session)),
            "the session JWT reached the stand-in in the query of {route}"
        );

        let credential = request.credential.as_deref();
        if request.path == "/access-token" {
            assert_eq!(
                credential,
                Some(API_KEY),
                "{route} did not carry the API key"
            );
        } else {
            let credential = credential.unwrap_or_else(|| panic!("{route} carried no credential"));
            assert!(
                issued.iter().any(|token| token == credential),
                "{route} carried a credential the stand-in never issued"
            );
        }
    }
}

fn header<'a>(request: &'a RecordedRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(header, _)| header == name)
        .map(|(_, value)| value.as_str())
}

fn query_has(request: &RecordedRequest, pair: &str) -> bool {
    request
        .query
        .as_deref()
        .is_some_and(|query| query.split('&').any(|item| item == pair))
}

/// The JSON report that `stand_in_smoke.mjs` prints as its last line.
#[derive(Deserialize)]
struct Report {
    /// `process.version` of the Node.js that ran the script.
    node: String,
    checks: Vec<CheckResult>,
}

#[derive(Deserialize)]
struct CheckResult {
    name: String,
    ok: bool,
    /// Values the check measured, present when it passed.
    #[serde(default)]
    detail: serde_json::Value,
    /// The failure message and stack, present when it failed.
    #[serde(default)]
    error: Option<String>,
}

impl Report {
    fn detail(&self, name: &str) -> &serde_json::Value {
        self.checks
            .iter()
            .find(|check| check.name == name)
            .map(|check| &check.detail)
            .unwrap_or_else(|| panic!("the report has no check {name:?}"))
    }
}

/// The installed SDK and how to run Node.js for it.
struct JsSdk {
    /// `<target dir>/js-sdk`, which contains `node_modules`.
    dir: PathBuf,
    /// Flags that give this Node.js a global WebSocket.
    node_flags: &'static [&'static str],
}

/// Runs `tests/sdk/stand_in_smoke.mjs` against the gateway with `session` as
/// the SDK's `token`, trusting the harness CA.
///
/// Node.js resolves packages from the script's own directory, so the script
/// is copied into the harness directory next to a `node_modules` link to the
/// install.
async fn run_sdk_script(
    sdk: &JsSdk,
    harness: &Harness,
    session: &str,
    extra_args: &[&str],
) -> ProcessOutput {
    let work_dir = harness.dir.path().join("js-sdk-script");
    std::fs::create_dir_all(&work_dir).expect("create the script's directory");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/stand_in_smoke.mjs");
    let script = work_dir.join("stand_in_smoke.mjs");
    std::fs::copy(&source, &script).expect("copy the SDK script");
    std::os::unix::fs::symlink(sdk.dir.join("node_modules"), work_dir.join("node_modules"))
        .expect("link node_modules next to the SDK script");

    let mut command = Command::new("node");
    command
        .args(sdk.node_flags)
        .arg(&script)
        .args(["--base-url", &harness.url(), "--token-env", SESSION_ENV])
        .args(extra_args)
        .current_dir(&work_dir)
        .env(SESSION_ENV, session)
        .env("NODE_EXTRA_CA_CERTS", &harness.certs.ca_file);
    for name in CLEARED_VARIABLES {
        command.env_remove(name);
    }

    let output = run_to_completion(command, &work_dir.join("node"), SCRIPT_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("cannot run node: {error}"));
    ProcessOutput {
        stdout: output.stdout.replace(session, "<session JWT>"),
        stderr: output.stderr.replace(session, "<session JWT>"),
        ..output
    }
}

/// Returns the SDK install, creating it first when it is missing. The tests
/// in one process share a single creation, which the first caller makes.
async fn js_sdk() -> &'static JsSdk {
    static SDK: OnceCell<JsSdk> = OnceCell::const_new();
    SDK.get_or_init(|| async {
        let node_flags = check_node().await.unwrap_or_else(|message| {
            panic!("Node.js is unusable for the JS SDK tests: {message}")
        });
        let dir = ensure_install()
            .await
            .unwrap_or_else(|message| panic!("the JS SDK install is unusable: {message}"));
        JsSdk { dir, node_flags }
    })
    .await
}

/// Checks that `node` is at least [`MIN_NODE`] and returns the flags it needs
/// for a global WebSocket.
async fn check_node() -> Result<&'static [&'static str], String> {
    let logs = tempfile::tempdir().map_err(|error| format!("cannot create a temp dir: {error}"))?;
    let mut version = Command::new("node");
    version.arg("--version");
    let output = run_to_completion(version, &logs.path().join("node"), NODE_VERSION_TIMEOUT)
        .await
        .map_err(|error| {
            format!(
                "cannot run node ({error}); install Node.js {}.{} or newer and npm \
                 (Debian and Ubuntu: apt-get install nodejs npm)",
                MIN_NODE.0, MIN_NODE.1
            )
        })?;
    if !output.succeeded() {
        return Err(format!("`node --version` failed\n{output}"));
    }
    let text = output.stdout.trim();
    let (major, minor) = parse_node_version(text)
        .ok_or_else(|| format!("`node --version` printed {text:?}, expected vMAJOR.MINOR.PATCH"))?;
    if (major, minor) < MIN_NODE {
        return Err(format!(
            "node is {text}; the SDK's browser-style WebSocket path needs Node.js {}.{} or newer",
            MIN_NODE.0, MIN_NODE.1
        ));
    }
    Ok(if major < 22 {
        &["--experimental-websocket"]
    } else {
        &[]
    })
}

fn parse_node_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.strip_prefix('v')?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Builds `<target dir>/js-sdk` unless a complete one is there.
///
/// A complete install contains [`READY_MARKER`] with [`PACKAGE_JSON`]. A new
/// one is built under a unique name and renamed into place, which is atomic:
/// when another process renames its own first, this one is deleted and
/// theirs is used.
async fn ensure_install() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("CARGO_TARGET_TMPDIR has no parent directory")?
        .to_owned();
    let install = target.join("js-sdk");
    if is_ready(&install) {
        return Ok(install);
    }

    let unique = format!("{}-{}", std::process::id(), unix_nanos());
    if install.exists() {
        // Left by older pins or an interrupted manual install. Another process
        // may move it at the same moment, so a failed rename is fine.
        let stale = target.join(format!("js-sdk.stale-{unique}"));
        if std::fs::rename(&install, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }

    remove_abandoned_builds(&target);
    let partial = target.join(format!("js-sdk.partial-{unique}"));
    if let Err(message) = npm_install(&partial).await {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(message);
    }
    match std::fs::rename(&partial, &install) {
        Ok(()) => Ok(install),
        Err(_) if is_ready(&install) => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(install)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(format!(
                "moving {} to {} failed: {error}",
                partial.display(),
                install.display()
            ))
        }
    }
}

/// Installs the packages of [`PACKAGE_JSON`] into `dir` with npm.
async fn npm_install(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    std::fs::write(dir.join("package.json"), PACKAGE_JSON)
        .map_err(|error| format!("cannot write package.json in {}: {error}", dir.display()))?;

    let logs = tempfile::tempdir().map_err(|error| format!("cannot create a temp dir: {error}"))?;
    let mut install = Command::new("npm");
    install
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-package-lock",
            "--ignore-scripts",
        ])
        .current_dir(dir)
        .env("npm_config_update_notifier", "false");
    let installed = run_to_completion(install, &logs.path().join("npm"), NPM_INSTALL_TIMEOUT)
        .await
        .map_err(|error| {
            format!(
                "cannot run npm ({error}); install npm \
                 (Debian and Ubuntu: apt-get install nodejs npm)"
            )
        })?;
    if !installed.succeeded() {
        return Err(format!(
            "`npm install` of tests/sdk/package.json failed; the npm registry must be reachable\n\
             {installed}"
        ));
    }
    for package in ["@cartesia/cartesia-js", "ws"] {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        if !manifest.is_file() {
            return Err(format!(
                "`npm install` succeeded but {} is missing",
                manifest.display()
            ));
        }
    }

    std::fs::write(dir.join(READY_MARKER), PACKAGE_JSON)
        .map_err(|error| format!("cannot write {READY_MARKER} in {}: {error}", dir.display()))
}

/// Deletes the partial installs of test processes that were killed. An
/// install older than its timeout cannot belong to a running test.
fn remove_abandoned_builds(target: &Path) {
    let Ok(entries) = std::fs::read_dir(target) else {
        return;
    };
    for entry in entries.flatten() {
        let is_partial = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with("js-sdk.partial-"));
        let age = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if is_partial && age.is_some_and(|age| age > NPM_INSTALL_TIMEOUT) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn is_ready(install: &Path) -> bool {
    std::fs::read_to_string(install.join(READY_MARKER)).is_ok_and(|text| text == PACKAGE_JSON)
        && install.join("node_modules").is_dir()
}

impl ProcessOutput {
    /// Parses the JSON report on the last line of stdout.
    fn report(&self) -> Report {
        let last_line = self
            .stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty());
        last_line
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("the SDK script printed no JSON report\n{self}"))
    }
}
