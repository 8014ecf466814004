//! The official Cartesia Python SDK (PyPI `cartesia` 4.2.0) through the real
//! gateway, with the stand-in as upstream and real TLS on both legs.
//!
//! The SDK runs in a virtual environment at `<target dir>/sdk-venv`, which the
//! first test to need it creates with `python3 -m venv` and `pip install`
//! from PyPI. A missing `python3` or `venv` module fails the tests with a
//! message saying what to install; they are never skipped. The environment is
//! built in a directory of its own and renamed into place once complete, so
//! test processes that run at the same time never see or share a half-built
//! one. To rebuild it, delete `<target dir>/sdk-venv`.
//!
//! The SDK calls are in `tests/sdk/stand_in_smoke.py`. Python runs as a child
//! process that this test polls from the async runtime, so the gateway and the
//! stand-in keep serving while it runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{ProcessOutput, run_to_completion, unix_nanos};
use common::*;
use tokio::sync::OnceCell;

/// The SDK release the tests drive, as a pip requirement.
const SDK_REQUIREMENT: &str = "cartesia[websockets]==4.2.0";
/// File in a complete virtual environment that contains [`SDK_REQUIREMENT`].
const READY_MARKER: &str = "cartesia-gateway-sdk-requirement.txt";
/// Limit for `python3 -m venv`.
const VENV_CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Limit for installing the SDK from PyPI, downloads included.
const PIP_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Limit for one run of the SDK script. A full run takes a few seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Environment variable that passes the session JWT to the SDK script, which
/// keeps it out of process listings.
const SESSION_ENV: &str = "CARTESIA_GATEWAY_TEST_SESSION";
/// Proxy variables that would send the SDK's traffic for 127.0.0.1 elsewhere.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_session_gets_speech_and_transcripts() {
    let python = sdk_python().await;
    let harness = Harness::start().await;
    let session = harness.session("sdk-user", &["tts", "stt"]);

    let run = run_sdk_script(&python, &harness, &session, &["--gateway"]).await;

    assert!(run.succeeded(), "the SDK script failed\n{run}");
    for check in [
        "token: tts.generate WAV is valid",
        "token: tts.generate_sse",
        "token: tts websocket contexts",
        "token: stt manual_finalize websocket",
        "token: stt auto_finalize websocket",
        "token: stt.transcribe",
        "browser-style query handshakes",
        "tampered token gets 401",
    ] {
        assert!(run.passed(check), "check {check:?} did not pass\n{run}");
    }

    let requests = harness.stand_in.requests();
    for route in [
        "/tts/bytes",
        "/tts/sse",
        "/tts/websocket",
        "/stt/websocket",
        "/stt/turns/websocket",
        "/stt",
    ] {
        assert!(
            requests.iter().any(|request| request.path == route),
            "the stand-in received no request for {route}"
        );
    }
    assert_stand_in_saw_only_its_tokens(&harness, &session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_session_without_stt_gets_403() {
    let python = sdk_python().await;
    let harness = Harness::start().await;
    let session = harness.session("tts-only-user", &["tts"]);

    let run = run_sdk_script(
        &python,
        &harness,
        &session,
        &["--gateway", "--without-grant", "stt"],
    )
    .await;

    assert!(run.succeeded(), "the SDK script failed\n{run}");
    for check in [
        "token: tts.generate WAV is valid",
        "token: tts websocket contexts",
        "stt manual_finalize websocket gets 403",
        "stt auto_finalize websocket gets 403",
        "stt.transcribe gets 403",
    ] {
        assert!(run.passed(check), "check {check:?} did not pass\n{run}");
    }

    let requests = harness.stand_in.requests();
    assert!(
        requests
            .iter()
            .any(|request| request.path == "/tts/websocket"),
        "the stand-in received no TTS WebSocket handshake"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_session_without_tts_gets_403() {
    let python = sdk_python().await;
    let harness = Harness::start().await;
    let session = harness.session("stt-only-user", &["stt"]);

    let run = run_sdk_script(
        &python,
        &harness,
        &session,
        &["--gateway", "--without-grant", "tts"],
    )
    .await;

    assert!(run.succeeded(), "the SDK script failed\n{run}");
    for check in [
        "tts.generate gets 403",
        "tts.generate_sse gets 403",
        "tts websocket gets 403",
        "token: stt manual_finalize websocket",
        "token: stt auto_finalize websocket",
        "token: stt.transcribe",
    ] {
        assert!(run.passed(check), "check {check:?} did not pass\n{run}");
    }

    let requests = harness.stand_in.requests();
    assert!(
        requests
            .iter()
            .any(|request| request.path == "/stt/websocket"),
        "the stand-in received no STT WebSocket handshake"
    );
    let tts_paths: Vec<&str> = requests
        .iter()
        .map(|request| request.path.as_str())
        .filter(|path| path.starts_with("/tts"))
        .collect();
    assert!(
        tts_paths.is_empty(),
        "TTS requests without the grant reached the stand-in: {tts_paths:?}"
    );
    assert_stand_in_saw_only_its_tokens(&harness, &session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_python_example_writes_wav() {
    let python = sdk_python().await;
    let harness = Harness::start().await;
    let session = harness.session("demo-user", &["tts", "stt"]);
    let work_dir = harness.dir.path().join("demo-example");
    std::fs::create_dir_all(&work_dir).expect("create the example's directory");
    let url = format!("https://localhost:{}", harness.addr.port());
    let program = work_dir.join("example.py");
    std::fs::write(&program, cartesia_gateway::demo::python_example(&url))
        .expect("write the example program");

    let mut command = sdk_command(&python, &harness, "SESSION", &session);
    command.arg(&program).current_dir(&work_dir);
    let run = run_masked(command, &work_dir.join("example"), &session).await;

    assert!(run.succeeded(), "the demo's Python example failed\n{run}");
    assert!(
        run.stdout.contains("wrote hello-sdk.wav\n"),
        "the example did not report the WAV file\n{run}"
    );
    assert!(
        run.stdout.contains("transcript: received "),
        "the example printed no transcript\n{run}"
    );

    let wav = work_dir.join("hello-sdk.wav");
    let mut check = Command::new(&python);
    check.args([
        "-c",
        "import sys, wave\n\
         with wave.open(sys.argv[1], 'rb') as wav:\n    \
         frames = wav.getnframes()\n    \
         assert len(wav.readframes(frames)) == frames * 2, 'WAV data shorter than its header'\n    \
         print(wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), frames)",
    ]);
    check.arg(&wav);
    let checked = run_masked(check, &work_dir.join("wave-check"), &session).await;
    assert!(
        checked.succeeded(),
        "Python's wave module rejected {}\n{checked}",
        wav.display()
    );
    let fields: Vec<&str> = checked.stdout.split_whitespace().collect();
    assert_eq!(
        fields.get(..3),
        Some(&["1", "2", "24000"][..]),
        "WAV format\n{checked}"
    );
    assert_ne!(
        fields.get(3),
        Some(&"0"),
        "the WAV file has no frames\n{checked}"
    );
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
        let in_query = request
            .query
            .as_deref()
            .is_some_and(|query| query.contains(session));
        assert!(
            !in_query,
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

/// Runs `tests/sdk/stand_in_smoke.py` against the gateway with `session` as
/// the SDK's `token`, trusting the harness CA.
async fn run_sdk_script(
    python: &Path,
    harness: &Harness,
    session: &str,
    extra_args: &[&str],
) -> ProcessOutput {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/stand_in_smoke.py");
    let mut command = sdk_command(python, harness, SESSION_ENV, session);
    command
        .arg(&script)
        .args(["--base-url", &harness.url(), "--token-env", SESSION_ENV])
        .args(extra_args);
    run_masked(command, &harness.dir.path().join("sdk-script"), session).await
}

/// Returns a command for `python` that trusts the harness CA, reaches
/// 127.0.0.1 without a proxy and finds `session` in the variable `session_env`.
fn sdk_command(python: &Path, harness: &Harness, session_env: &str, session: &str) -> Command {
    let mut command = Command::new(python);
    command
        .env(session_env, session)
        .env("SSL_CERT_FILE", &harness.certs.ca_file)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("SSL_CERT_DIR");
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// Runs `command` for up to [`SCRIPT_TIMEOUT`] and replaces `session` in its
/// output with a marker, so a failure message never prints the JWT.
async fn run_masked(command: Command, log_prefix: &Path, session: &str) -> ProcessOutput {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = run_to_completion(command, log_prefix, SCRIPT_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    ProcessOutput {
        stdout: output.stdout.replace(session, "<session JWT>"),
        stderr: output.stderr.replace(session, "<session JWT>"),
        ..output
    }
}

/// Returns the Python interpreter of the SDK's virtual environment, creating
/// the environment first when it is missing. The tests in one process share a
/// single creation, which the first caller makes.
async fn sdk_python() -> PathBuf {
    static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();
    PYTHON
        .get_or_init(|| async {
            ensure_venv().await.unwrap_or_else(|message| {
                panic!("the Python SDK environment is unusable: {message}")
            })
        })
        .await
        .clone()
}

/// Builds `<target dir>/sdk-venv` unless a complete one is there.
///
/// A complete environment contains [`READY_MARKER`] with [`SDK_REQUIREMENT`].
/// A new one is built under a unique name and renamed into place, which is
/// atomic: when another process renames its own first, this one is deleted
/// and theirs is used.
async fn ensure_venv() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("CARGO_TARGET_TMPDIR has no parent directory")?
        .to_owned();
    let venv = target.join("sdk-venv");
    if is_ready(&venv) {
        return Ok(venv_python(&venv));
    }

    let unique = format!("{}-{}", std::process::id(), unix_nanos());
    if venv.exists() {
        // Left by an older requirement or an interrupted manual setup. Another
        // process may move it at the same moment, so a failed rename is fine.
        let stale = target.join(format!("sdk-venv.stale-{unique}"));
        if std::fs::rename(&venv, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }

    remove_abandoned_builds(&target);
    let partial = target.join(format!("sdk-venv.partial-{unique}"));
    let built = build_venv(&partial).await;
    if let Err(message) = built {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(message);
    }
    match std::fs::rename(&partial, &venv) {
        Ok(()) => Ok(venv_python(&venv)),
        Err(_) if is_ready(&venv) => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(venv_python(&venv))
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(format!(
                "moving {} to {} failed: {error}",
                partial.display(),
                venv.display()
            ))
        }
    }
}

/// Creates a virtual environment at `dir` and installs the SDK into it.
async fn build_venv(dir: &Path) -> Result<(), String> {
    let logs = tempfile::tempdir().map_err(|error| format!("cannot create a temp dir: {error}"))?;

    let mut create = Command::new("python3");
    create.arg("-m").arg("venv").arg(dir);
    let created = run_to_completion(create, &logs.path().join("venv"), VENV_CREATE_TIMEOUT)
        .await
        .map_err(|error| {
            format!(
                "cannot run python3 ({error}); the SDK tests need Python 3 with the venv module \
                 on PATH (Debian and Ubuntu: apt-get install python3 python3-venv)"
            )
        })?;
    if !created.succeeded() {
        return Err(format!(
            "`python3 -m venv {}` failed; install the venv module \
             (Debian and Ubuntu: apt-get install python3-venv)\n{created}",
            dir.display()
        ));
    }

    let mut install = Command::new(venv_python(dir));
    install.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        SDK_REQUIREMENT,
    ]);
    let installed = run_to_completion(install, &logs.path().join("pip"), PIP_INSTALL_TIMEOUT)
        .await
        .map_err(|error| format!("cannot run pip in {}: {error}", dir.display()))?;
    if !installed.succeeded() {
        return Err(format!(
            "`pip install {SDK_REQUIREMENT}` failed; PyPI must be reachable\n{installed}"
        ));
    }

    std::fs::write(dir.join(READY_MARKER), SDK_REQUIREMENT)
        .map_err(|error| format!("cannot write {READY_MARKER} in {}: {error}", dir.display()))
}

/// Deletes the partial builds of test processes that were killed. A build
/// older than both timeouts together cannot belong to a running test.
fn remove_abandoned_builds(target: &Path) {
    let Ok(entries) = std::fs::read_dir(target) else {
        return;
    };
    let max_age = VENV_CREATE_TIMEOUT + PIP_INSTALL_TIMEOUT;
    for entry in entries.flatten() {
        let is_partial = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with("sdk-venv.partial-"));
        let age = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if is_partial && age.is_some_and(|age| age > max_age) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn is_ready(venv: &Path) -> bool {
    std::fs::read_to_string(venv.join(READY_MARKER)).is_ok_and(|text| text == SDK_REQUIREMENT)
        && venv_python(venv).is_file()
}

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

impl ProcessOutput {
    /// Returns true when the SDK script printed `ok   <check>` for that check.
    fn passed(&self, check: &str) -> bool {
        self.stdout
            .lines()
            .any(|line| line.strip_prefix("ok   ") == Some(check))
    }
}
