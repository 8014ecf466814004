//! Runs `cartesia-gateway check-config` the way an operator does: the real
//! binary in its own process, a config file on disk, a development
//! certificate made at test time, and secrets only in the child's
//! environment or in files. A valid config exits 0 and prints the settings
//! without secrets. Every broken input exits 1 with an error that names the
//! key or file, and every command-line mistake exits 2 with the usage.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cartesia_gateway::devcert::{self, DevCertificate};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const BINARY: &str = env!("CARGO_BIN_EXE_cartesia-gateway");

/// Environment variable of the HMAC session secret unless the config names another.
const SECRET_ENV: &str = "GATEWAY_SESSION_SECRET";
/// Environment variable of the Cartesia API key unless the config names a file.
const API_KEY_ENV: &str = "CARTESIA_API_KEY";
const SESSION_SECRET: &str = "check-config-session-secret-0123456789abcdef";
const API_KEY: &str = "sk_car_check_config_0123456789abcdefghij";
/// Contents of the secret files that [`Setup::new`] writes.
const FILE_SESSION_SECRET: &str = "check-config-file-secret-abcdefghijklmnopqrstuv";
const FILE_API_KEY: &str = "sk_car_check_config_from_file_0123456789";
const SHORT_FILE_SECRET: &str = "short-file-secret";

/// The `[server]` lines that every table case starts with.
const SERVER_HEADER: &str = "[server]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n";

/// A temporary directory with a development certificate and secret files.
struct Setup {
    dir: tempfile::TempDir,
    certs: DevCertificate,
}

/// One config that `check-config` reads. `{dir}`, `{cert_file}`,
/// `{key_file}` and `{ca_file}` in the text fields are replaced with the
/// paths of the [`Setup`].
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    /// Lines added to `[server]` after `cert_file` and `key_file`.
    server: &'static str,
    /// Sections after `[server]`.
    sections: &'static str,
    /// Variables set in the child's environment besides the session secret
    /// and the API key, replacing those when the name is the same.
    env: &'static [(&'static str, &'static str)],
    /// Default variables left out of the child's environment.
    unset: &'static [&'static str],
    /// Texts that must appear: in stderr for a rejected config (the key,
    /// and the fix where the message gives one), in stdout for a valid one.
    expected: &'static [&'static str],
}

const DEFAULT_CASE: Case = Case {
    name: "",
    server: "",
    sections: "",
    env: &[],
    unset: &[],
    expected: &[],
};

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let certs = devcert::generate(dir.path()).unwrap();
        let files = [
            ("session-secret", format!("{FILE_SESSION_SECRET}\n")),
            ("short-secret", format!("{SHORT_FILE_SECRET}\n")),
            ("api-key", format!("{FILE_API_KEY}\n")),
            ("not-pem.txt", "this is not a PEM file\n".to_owned()),
        ];
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        Setup { dir, certs }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the path placeholders in `text`.
    fn expand(&self, text: &str) -> String {
        text.replace("{dir}", &self.dir().display().to_string())
            .replace("{cert_file}", &self.certs.cert_file.display().to_string())
            .replace("{key_file}", &self.certs.key_file.display().to_string())
            .replace("{ca_file}", &self.certs.ca_file.display().to_string())
    }

    fn config_text(&self, case: &Case) -> String {
        self.expand(&format!("{SERVER_HEADER}{}{}", case.server, case.sections))
    }

    /// Writes `text` as the config file and returns its path.
    fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Builds the child's environment for `case`: the session secret and the
    /// API key, with the case's `env` and `unset` applied.
    fn environment(case: &Case) -> Vec<(String, String)> {
        let mut environment = BTreeMap::new();
        let defaults = [(SECRET_ENV, SESSION_SECRET), (API_KEY_ENV, API_KEY)];
        for (name, value) in defaults.into_iter().chain(case.env.iter().copied()) {
            environment.insert(name.to_owned(), value.to_owned());
        }
        for name in case.unset {
            environment.remove(*name);
        }
        environment.into_iter().collect()
    }

    /// Runs `check-config` on the config of `case`.
    fn check(&self, case: &Case) -> Output {
        let path = self.write_config(&self.config_text(case));
        run(
            self.dir(),
            &["check-config", "--config", path.to_str().unwrap()],
            &Self::environment(case),
        )
    }

    /// Collects every secret the child can see: values of the secret
    /// variables in its environment, the secret files and the private key's
    /// PEM body.
    fn secrets(&self, case: &Case) -> Vec<String> {
        let mut secrets: Vec<String> = Self::environment(case)
            .into_iter()
            .filter(|(name, _)| name.contains("SECRET") || name.contains("API_KEY"))
            .map(|(_, value)| value)
            .collect();
        secrets.extend([FILE_SESSION_SECRET, FILE_API_KEY, SHORT_FILE_SECRET].map(str::to_owned));
        secrets.extend(pem_body_lines(&self.certs.key_file));
        secrets
    }
}

/// Runs the binary in `dir` with exactly `environment`.
fn run(dir: &Path, args: &[&str], environment: &[(String, String)]) -> Output {
    Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .output()
        .unwrap()
}

/// Reads the base64 lines of a PEM file.
fn pem_body_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----") && !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Formats the problems found in one case's output, or returns `None` when
/// there are none.
fn report(name: &str, problems: &[String], output: &Output) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let mut text = format!("{name}:\n");
    for problem in problems {
        let _ = writeln!(text, "  - {problem}");
    }
    let _ = write!(
        text,
        "  stdout: {:?}\n  stderr: {:?}",
        stdout(output),
        stderr(output)
    );
    Some(text)
}

/// Checks the output of a config that must be rejected.
fn rejection_report(
    name: &str,
    output: &Output,
    expected: &[String],
    secrets: &[String],
) -> Option<String> {
    let stdout = stdout(output);
    let stderr = stderr(output);
    let mut problems = Vec::new();
    if output.status.code() != Some(1) {
        problems.push(format!("exit status is {}, expected 1", output.status));
    }
    if stderr.contains("panicked") {
        problems.push("the process panicked".to_owned());
    }
    if !stderr.starts_with("error: ") {
        problems.push("stderr does not start with \"error: \"".to_owned());
    }
    if !stdout.is_empty() {
        problems.push("stdout is not empty".to_owned());
    }
    for text in expected {
        if !stderr.contains(text.as_str()) {
            problems.push(format!("stderr does not contain {text:?}"));
        }
    }
    problems.extend(leaked_secrets(&stdout, &stderr, secrets));
    report(name, &problems, output)
}

/// Checks the output of a config that must be accepted.
fn acceptance_report(
    name: &str,
    output: &Output,
    expected: &[String],
    secrets: &[String],
) -> Option<String> {
    let stdout = stdout(output);
    let stderr = stderr(output);
    let mut problems = Vec::new();
    if !output.status.success() {
        problems.push(format!("exit status is {}, expected 0", output.status));
    }
    if !stdout.starts_with("config is valid") {
        problems.push("stdout does not start with \"config is valid\"".to_owned());
    }
    for text in expected {
        if !stdout.lines().any(|line| line == text.as_str()) {
            problems.push(format!("stdout has no line {text:?}"));
        }
    }
    problems.extend(leaked_secrets(&stdout, &stderr, secrets));
    report(name, &problems, output)
}

fn leaked_secrets(stdout: &str, stderr: &str, secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|secret| stdout.contains(secret.as_str()) || stderr.contains(secret.as_str()))
        .map(|secret| format!("the output contains the secret {secret:?}"))
        .collect()
}

/// Runs `check-config` on every case with one setup, then fails with the
/// report of every case whose output is wrong.
fn assert_cases(
    cases: &[Case],
    check_output: fn(&str, &Output, &[String], &[String]) -> Option<String>,
) {
    let setup = Setup::new();
    let mut reports = Vec::new();
    for case in cases {
        let output = setup.check(case);
        let expected: Vec<String> = case
            .expected
            .iter()
            .map(|text| setup.expand(text))
            .collect();
        reports.extend(check_output(
            case.name,
            &output,
            &expected,
            &setup.secrets(case),
        ));
    }
    assert!(reports.is_empty(), "{}", reports.join("\n"));
}

fn assert_rejected(cases: &[Case]) {
    assert_cases(cases, rejection_report);
}

fn assert_accepted(cases: &[Case]) {
    assert_cases(cases, acceptance_report);
}

#[test]
fn valid_config_is_described_without_secrets() {
    let setup = Setup::new();
    let case = Case {
        name: "defaults",
        ..DEFAULT_CASE
    };
    let output = setup.check(&case);
    let certificate = CertificateDer::from_pem_file(&setup.certs.cert_file).unwrap();
    let fingerprint = cartesia_gateway::tls::fingerprint(&certificate);
    let expected = [
        "server.listen = 127.0.0.1:8443".to_owned(),
        setup.expand(&format!(
            "server.cert_file = {{cert_file}} (SHA-256 {fingerprint})"
        )),
        setup.expand("server.key_file = {key_file} (matches the certificate)"),
        "server.max_connections = 10000".to_owned(),
        "server.trusted_proxies = []".to_owned(),
        "session.algorithms = [\"HS256\"]".to_owned(),
        format!("session key = HMAC secret from environment variable {SECRET_ENV} (set)"),
        "upstream.base_url = https://api.cartesia.ai/".to_owned(),
        format!("Cartesia API key = from environment variable {API_KEY_ENV} (set)"),
        "tokens.lifetime_secs = 300".to_owned(),
        "tokens.refresh_margin_secs = 60".to_owned(),
        "cors.allowed_origins = []".to_owned(),
        "Strict-Transport-Security = \"max-age=31536000\"".to_owned(),
        "admin = http://127.0.0.1:9090 (/metrics, /livez, /readyz)".to_owned(),
        "redirect = off".to_owned(),
    ];
    if let Some(report) = acceptance_report(case.name, &output, &expected, &setup.secrets(&case)) {
        panic!("{report}");
    }
}

#[test]
fn valid_variants_are_described() {
    assert_accepted(&[
        Case {
            name: "admin listener with TLS",
            sections: "[admin]\nlisten = \"127.0.0.1:9443\"\ntls = true\n",
            expected: &["admin = https://127.0.0.1:9443 (/metrics, /livez, /readyz)"],
            ..DEFAULT_CASE
        },
        Case {
            name: "admin listener off",
            sections: "[admin]\nenabled = false\n",
            expected: &["admin = off"],
            ..DEFAULT_CASE
        },
        Case {
            name: "redirect listener",
            sections: "[redirect]\nlisten = \"127.0.0.1:8080\"\npublic_host = \"voice.example.com\"\n",
            expected: &["redirect = 127.0.0.1:8080 -> https://voice.example.com:8443"],
            ..DEFAULT_CASE
        },
        Case {
            name: "hsts preload with includeSubDomains",
            sections: "[hsts]\npreload = true\ninclude_subdomains = true\n",
            expected: &[
                "Strict-Transport-Security = \"max-age=31536000; includeSubDomains; preload\"",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "secrets from files",
            sections: "[session]\nsecret_file = \"{dir}/session-secret\"\n\
                       [upstream]\napi_key_file = \"{dir}/api-key\"\n",
            unset: &[SECRET_ENV, API_KEY_ENV],
            expected: &[
                "session key = HMAC secret from file {dir}/session-secret",
                "Cartesia API key = from file {dir}/api-key",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "upstream CA file",
            sections: "[upstream]\nca_file = \"{ca_file}\"\n",
            expected: &["upstream.ca_file = {ca_file}"],
            ..DEFAULT_CASE
        },
        Case {
            name: "listen address from the environment",
            env: &[("CARTESIA_GATEWAY__SERVER__LISTEN", "127.0.0.1:18443")],
            expected: &["server.listen = 127.0.0.1:18443"],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn shutdown_delay_is_described() {
    assert_accepted(&[Case {
        name: "shutdown delay at its maximum",
        server: "shutdown_delay_secs = 300\n",
        expected: &["server.shutdown_delay_secs = 300"],
        ..DEFAULT_CASE
    }]);
}

#[test]
fn unknown_keys_and_syntax_errors_are_named() {
    assert_rejected(&[
        Case {
            name: "unknown key in [server]",
            server: "lisen = \"127.0.0.1:8443\"\n",
            expected: &["unknown field `lisen`", "in `server`", "`listen`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [session]",
            sections: "[session]\nsecret = \"x\"\n",
            expected: &["unknown field `secret`", "in `session`", "`secret_env`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [upstream]",
            sections: "[upstream]\nurl = \"https://127.0.0.1:8444\"\n",
            expected: &["unknown field `url`", "in `upstream`", "`base_url`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [tokens]",
            sections: "[tokens]\nlifetime = 300\n",
            expected: &["unknown field `lifetime`", "in `tokens`", "`lifetime_secs`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [log]",
            sections: "[log]\nlevl = \"info\"\n",
            expected: &["unknown field `levl`", "in `log`", "`level`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [hsts]",
            sections: "[hsts]\nmax_age = 600\n",
            expected: &["unknown field `max_age`", "in `hsts`", "`max_age_secs`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [cors]",
            sections: "[cors]\norigins = []\n",
            expected: &["unknown field `origins`", "in `cors`", "`allowed_origins`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [redirect]",
            sections: "[redirect]\nhost = \"voice.example.com\"\n",
            expected: &["unknown field `host`", "in `redirect`", "`public_host`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [websocket]",
            sections: "[websocket]\nidle_timeout = 60\n",
            expected: &[
                "unknown field `idle_timeout`",
                "in `websocket`",
                "`idle_timeout_secs`",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown key in [admin]",
            sections: "[admin]\nenable = true\n",
            expected: &["unknown field `enable`", "in `admin`", "`enabled`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unknown section",
            sections: "[servr]\nlisten = \"127.0.0.1:8443\"\n",
            expected: &["unknown field `servr`", "`server`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "unterminated string",
            server: "listen = \"127.0.0.1:8443\n",
            expected: &["TOML parse error at line 4"],
            ..DEFAULT_CASE
        },
        Case {
            name: "number where a string belongs",
            server: "listen = 8443\n",
            expected: &["in `server.listen`", "expected a string"],
            ..DEFAULT_CASE
        },
        Case {
            name: "string where a number belongs",
            sections: "[tokens]\nlifetime_secs = \"300\"\n",
            expected: &["in `tokens.lifetime_secs`", "expected u64"],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn server_values_name_the_key() {
    assert_rejected(&[
        Case {
            name: "server.listen without a port",
            server: "listen = \"nonsense\"\n",
            expected: &["`server.listen`", "such as \"0.0.0.0:8443\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.shutdown_delay_secs above 300",
            server: "shutdown_delay_secs = 301\n",
            expected: &["`server.shutdown_delay_secs`", "at most 300"],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.max_connections zero",
            server: "max_connections = 0\n",
            expected: &["`server.max_connections`", "at least 1"],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.max_header_bytes below 8192",
            server: "max_header_bytes = 8191\n",
            expected: &["`server.max_header_bytes`", "at least 8192"],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.max_request_body_bytes zero",
            server: "max_request_body_bytes = 0\n",
            expected: &["`server.max_request_body_bytes`", "at least 1"],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.tls_handshake_timeout_secs zero",
            server: "tls_handshake_timeout_secs = 0\n",
            expected: &["`server.tls_handshake_timeout_secs`", "at least 1 second"],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.cert_reload_interval_secs above one day",
            server: "cert_reload_interval_secs = 86401\n",
            expected: &["`server.cert_reload_interval_secs`", "at most 86400"],
            ..DEFAULT_CASE
        },
        Case {
            name: "server.trusted_proxies not an address",
            server: "trusted_proxies = [\"proxy.internal\"]\n",
            expected: &["`server.trusted_proxies`", "\"proxy.internal\""],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn listener_values_name_the_key() {
    assert_rejected(&[
        Case {
            name: "admin.listen without a port",
            sections: "[admin]\nlisten = \"nonsense\"\n",
            expected: &["`admin.listen`", "such as \"127.0.0.1:9090\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "admin.listen equal to server.listen",
            sections: "[admin]\nlisten = \"127.0.0.1:8443\"\n",
            expected: &["`admin.listen`", "server.listen", "its own port"],
            ..DEFAULT_CASE
        },
        Case {
            name: "admin.listen equal to redirect.listen",
            sections: "[admin]\nlisten = \"127.0.0.1:8080\"\n\
                       [redirect]\nlisten = \"127.0.0.1:8080\"\npublic_host = \"voice.example.com\"\n",
            expected: &["`admin.listen`", "redirect.listen", "its own port"],
            ..DEFAULT_CASE
        },
        Case {
            name: "redirect.public_host without redirect.listen",
            sections: "[redirect]\npublic_host = \"voice.example.com\"\n",
            expected: &["`redirect.listen`", "set redirect.listen"],
            ..DEFAULT_CASE
        },
        Case {
            name: "redirect.listen without redirect.public_host",
            sections: "[redirect]\nlisten = \"127.0.0.1:8080\"\n",
            expected: &["`redirect.public_host`", "such as \"voice.example.com\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "redirect.public_host with a scheme",
            sections: "[redirect]\nlisten = \"127.0.0.1:8080\"\npublic_host = \"https://voice.example.com\"\n",
            expected: &["`redirect.public_host`", "without scheme, port or path"],
            ..DEFAULT_CASE
        },
        Case {
            name: "redirect.listen equal to server.listen",
            sections: "[redirect]\nlisten = \"127.0.0.1:8443\"\npublic_host = \"voice.example.com\"\n",
            expected: &["`redirect.listen`", "server.listen"],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn browser_values_name_the_key() {
    assert_rejected(&[
        Case {
            name: "hsts.preload without include_subdomains",
            sections: "[hsts]\npreload = true\n",
            expected: &["`hsts.preload`", "hsts.include_subdomains = true"],
            ..DEFAULT_CASE
        },
        Case {
            name: "hsts.preload with a max-age below one year",
            sections: "[hsts]\npreload = true\ninclude_subdomains = true\nmax_age_secs = 86400\n",
            expected: &["`hsts.preload`", "at least 31536000"],
            ..DEFAULT_CASE
        },
        Case {
            name: "cors.allowed_origins with a path",
            sections: "[cors]\nallowed_origins = [\"https://app.example.com/app\"]\n",
            expected: &[
                "`cors.allowed_origins`",
                "\"https://app.example.com/app\"",
                "give only scheme, host and port",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "cors.allowed_origins with a wildcard host",
            sections: "[cors]\nallowed_origins = [\"https://*.example.com\"]\n",
            expected: &[
                "`cors.allowed_origins`",
                "\"https://*.example.com\"",
                "wildcard",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "cors.allowed_origins as a bare wildcard",
            sections: "[cors]\nallowed_origins = [\"*\"]\n",
            expected: &["`cors.allowed_origins`", "https://app.example.com"],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn session_values_name_the_key() {
    assert_rejected(&[
        Case {
            name: "session.algorithms unknown",
            sections: "[session]\nalgorithms = [\"HS999\"]\n",
            expected: &["`session.algorithms`", "\"HS999\"", "use HS256"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.algorithms mixing HMAC and public key",
            sections: "[session]\nalgorithms = [\"HS256\", \"RS256\"]\n",
            expected: &["`session.algorithms`", "do not mix"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.algorithms mixing public key types",
            sections: "[session]\nalgorithms = [\"RS256\", \"ES256\"]\npublic_key_file = \"{dir}/missing.pem\"\n",
            expected: &["`session.algorithms`", "one key type"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.algorithms empty",
            sections: "[session]\nalgorithms = []\n",
            expected: &["`session.algorithms`", "at least one algorithm"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session secret too short",
            env: &[(SECRET_ENV, "tooShortSecret7")],
            expected: &["`session.secret_env`", "at least 32"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session secret file too short",
            sections: "[session]\nsecret_file = \"{dir}/short-secret\"\n",
            unset: &[SECRET_ENV],
            expected: &["`session.secret_file`", "at least 32"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session secret variable not set",
            unset: &[SECRET_ENV],
            expected: &["`session.secret_env`", SECRET_ENV, "session.secret_file"],
            ..DEFAULT_CASE
        },
        Case {
            name: "custom session secret variable not set",
            sections: "[session]\nsecret_env = \"APP_SESSION_SECRET\"\n",
            expected: &["`session.secret_env`", "APP_SESSION_SECRET is not set"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.secret_file missing",
            sections: "[session]\nsecret_file = \"{dir}/missing-secret\"\n",
            unset: &[SECRET_ENV],
            expected: &["`session.secret_file`", "{dir}/missing-secret"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.secret_env and session.secret_file both set",
            sections: "[session]\nsecret_env = \"APP_SESSION_SECRET\"\nsecret_file = \"{dir}/session-secret\"\n",
            expected: &["`session.secret_file`", "not both"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.public_key_file missing",
            sections: "[session]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{dir}/missing.pem\"\n",
            expected: &["`session.public_key_file`", "{dir}/missing.pem"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.public_key_file not set for RS256",
            sections: "[session]\nalgorithms = [\"RS256\"]\n",
            expected: &["`session.public_key_file`", "set the PEM public key file"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.public_key_file with HS256",
            sections: "[session]\npublic_key_file = \"{dir}/missing.pem\"\n",
            expected: &["`session.public_key_file`", "session.secret_env"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.public_key_file holding a private key",
            sections: "[session]\nalgorithms = [\"ES256\"]\npublic_key_file = \"{key_file}\"\n",
            expected: &["`session.public_key_file`", "contains a private key"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.cookie_name with a space",
            sections: "[session]\ncookie_name = \"my session\"\n",
            expected: &["`session.cookie_name`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "session.default_grants unknown",
            sections: "[session]\ndefault_grants = [\"admin\"]\n",
            expected: &[
                "`session.default_grants`",
                "\"admin\"",
                "\"tts\" or \"stt\"",
            ],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn upstream_and_token_values_name_the_key() {
    assert_rejected(&[
        Case {
            name: "upstream.base_url over plain HTTP",
            sections: "[upstream]\nbase_url = \"http://127.0.0.1:8444\"\n",
            expected: &["`upstream.base_url`", "https://"],
            ..DEFAULT_CASE
        },
        Case {
            name: "upstream.base_url with a path",
            sections: "[upstream]\nbase_url = \"https://127.0.0.1:8444/v1\"\n",
            expected: &["`upstream.base_url`", "must not have a path"],
            ..DEFAULT_CASE
        },
        Case {
            name: "upstream.cartesia_version not a date",
            sections: "[upstream]\ncartesia_version = \"latest\"\n",
            expected: &["`upstream.cartesia_version`", "YYYY-MM-DD"],
            ..DEFAULT_CASE
        },
        Case {
            name: "upstream.api_key_file missing",
            sections: "[upstream]\napi_key_file = \"{dir}/missing-api-key\"\n",
            expected: &["`upstream.api_key_file`", "{dir}/missing-api-key"],
            ..DEFAULT_CASE
        },
        Case {
            name: "API key variable not set",
            unset: &[API_KEY_ENV],
            expected: &[API_KEY_ENV, "upstream.api_key_file"],
            ..DEFAULT_CASE
        },
        Case {
            name: "API key with a space",
            env: &[(API_KEY_ENV, "sk_car_pasted with_space")],
            expected: &[API_KEY_ENV, "contains spaces"],
            ..DEFAULT_CASE
        },
        Case {
            name: "upstream.ca_file missing",
            sections: "[upstream]\nca_file = \"{dir}/missing-ca.pem\"\n",
            expected: &["upstream.ca_file", "{dir}/missing-ca.pem"],
            ..DEFAULT_CASE
        },
        Case {
            name: "upstream.ca_file not PEM",
            sections: "[upstream]\nca_file = \"{dir}/not-pem.txt\"\n",
            expected: &[
                "upstream.ca_file",
                "{dir}/not-pem.txt",
                "no PEM certificate",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "tokens.lifetime_secs above 3600",
            sections: "[tokens]\nlifetime_secs = 3601\n",
            expected: &["`tokens.lifetime_secs`", "3600"],
            ..DEFAULT_CASE
        },
        Case {
            name: "tokens.refresh_margin_secs equal to the lifetime",
            sections: "[tokens]\nlifetime_secs = 120\nrefresh_margin_secs = 120\n",
            expected: &[
                "`tokens.refresh_margin_secs`",
                "less than tokens.lifetime_secs",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "tokens.refresh_margin_secs above the lifetime",
            sections: "[tokens]\nrefresh_margin_secs = 600\n",
            expected: &[
                "`tokens.refresh_margin_secs`",
                "less than tokens.lifetime_secs",
            ],
            ..DEFAULT_CASE
        },
        Case {
            name: "tokens.cache_capacity zero",
            sections: "[tokens]\ncache_capacity = 0\n",
            expected: &["`tokens.cache_capacity`", "at least 1"],
            ..DEFAULT_CASE
        },
        Case {
            name: "tokens.max_failing_mints_per_sec zero",
            sections: "[tokens]\nmax_failing_mints_per_sec = 0\n",
            expected: &["`tokens.max_failing_mints_per_sec`", "at least 1"],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn log_and_environment_values_name_the_key() {
    assert_rejected(&[
        Case {
            name: "log.level invalid level",
            sections: "[log]\nlevel = \"info,cartesia_gateway=loud\"\n",
            expected: &["log.level", "\"info,cartesia_gateway=loud\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "log.level invalid directive",
            sections: "[log]\nlevel = \"=info\"\n",
            expected: &["log.level", "invalid filter directive"],
            ..DEFAULT_CASE
        },
        Case {
            name: "RUST_LOG invalid",
            env: &[("RUST_LOG", "=debug")],
            expected: &["RUST_LOG", "\"=debug\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "log.format unknown",
            sections: "[log]\nformat = \"xml\"\n",
            expected: &["`log.format`", "\"xml\"", "\"auto\", \"json\" or \"text\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "override of server.listen without a port",
            env: &[("CARTESIA_GATEWAY__SERVER__LISTEN", "nonsense")],
            expected: &["`server.listen`", "\"nonsense\""],
            ..DEFAULT_CASE
        },
        Case {
            name: "override of a number with text",
            env: &[("CARTESIA_GATEWAY__TOKENS__LIFETIME_SECS", "five minutes")],
            expected: &["in `tokens.lifetime_secs`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "override of an unknown key",
            env: &[("CARTESIA_GATEWAY__SERVER__LISEN", "127.0.0.1:8443")],
            expected: &["unknown field `lisen`", "in `server`"],
            ..DEFAULT_CASE
        },
        Case {
            name: "override variable without a key",
            env: &[("CARTESIA_GATEWAY__LISTEN", "127.0.0.1:8443")],
            expected: &[
                "CARTESIA_GATEWAY__LISTEN",
                "use CARTESIA_GATEWAY__SECTION__KEY",
            ],
            ..DEFAULT_CASE
        },
    ]);
}

#[test]
fn certificate_files_are_named() {
    let setup = Setup::new();
    let other_dir = tempfile::tempdir().unwrap();
    let other_certs = devcert::generate(other_dir.path()).unwrap();
    let missing = setup.dir().join("missing-cert.pem");
    let not_pem = setup.dir().join("not-pem.txt");
    let certs = &setup.certs;

    // Each case gives cert_file, key_file and the texts stderr must contain.
    let cases = [
        (
            "server.cert_file missing",
            &missing,
            &certs.key_file,
            vec![path_text(&missing), "server.cert_file".to_owned()],
        ),
        (
            "server.key_file missing",
            &certs.cert_file,
            &missing,
            vec![path_text(&missing), "server.key_file".to_owned()],
        ),
        (
            "server.cert_file not PEM",
            &not_pem,
            &certs.key_file,
            vec![path_text(&not_pem), "server.cert_file".to_owned()],
        ),
        (
            "server.key_file holding a certificate",
            &certs.cert_file,
            &certs.cert_file,
            vec![path_text(&certs.cert_file), "server.key_file".to_owned()],
        ),
        // The key of a second, unrelated development certificate.
        (
            "server.key_file of another certificate",
            &certs.cert_file,
            &other_certs.key_file,
            vec![
                path_text(&certs.cert_file),
                path_text(&other_certs.key_file),
                "does not match".to_owned(),
            ],
        ),
    ];

    let mut secrets = setup.secrets(&DEFAULT_CASE);
    secrets.extend(pem_body_lines(&other_certs.key_file));

    let mut reports = Vec::new();
    for (name, cert_file, key_file, expected) in cases {
        let text = format!(
            "[server]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert_file.display(),
            key_file.display()
        );
        let config = setup.write_config(&text);
        let output = run(
            setup.dir(),
            &["check-config", "--config", config.to_str().unwrap()],
            &Setup::environment(&DEFAULT_CASE),
        );
        reports.extend(rejection_report(name, &output, &expected, &secrets));
    }
    assert!(reports.is_empty(), "{}", reports.join("\n"));
}

#[test]
fn missing_config_file_is_named() {
    let setup = Setup::new();
    let environment = Setup::environment(&DEFAULT_CASE);
    let missing = setup.dir().join("missing.toml");
    let cases = [
        (
            "--config naming a missing file",
            vec!["check-config", "--config", missing.to_str().unwrap()],
            path_text(&missing),
        ),
        (
            "default config.toml absent",
            vec!["check-config"],
            "config.toml".to_owned(),
        ),
        (
            "--config naming a directory",
            vec!["check-config", "--config", setup.dir().to_str().unwrap()],
            path_text(setup.dir()),
        ),
    ];
    let mut reports = Vec::new();
    for (name, args, file) in cases {
        let output = run(setup.dir(), &args, &environment);
        let expected = [format!("cannot read config file {file}")];
        reports.extend(rejection_report(name, &output, &expected, &[]));
    }
    assert!(reports.is_empty(), "{}", reports.join("\n"));
}

#[test]
fn config_option_before_command_is_accepted() {
    let setup = Setup::new();
    let config = setup.write_config(&setup.config_text(&DEFAULT_CASE));
    let output = run(
        setup.dir(),
        &["--config", config.to_str().unwrap(), "check-config"],
        &Setup::environment(&DEFAULT_CASE),
    );
    let expected = ["server.listen = 127.0.0.1:8443".to_owned()];
    let secrets = setup.secrets(&DEFAULT_CASE);
    if let Some(report) = acceptance_report("option first", &output, &expected, &secrets) {
        panic!("{report}");
    }
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "unknown option",
            &["--verbose"],
            "unknown argument \"--verbose\"",
        ),
        (
            "unknown option after the command",
            &["check-config", "--dry-run"],
            "unknown argument \"--dry-run\"",
        ),
        (
            "--config without a path",
            &["check-config", "--config"],
            "--config needs a path",
        ),
        (
            "command given twice",
            &["check-config", "check-config"],
            "unknown argument \"check-config\"",
        ),
    ];
    for (name, args, message) in cases {
        let output = run(dir.path(), args, &[]);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: stderr {stderr:?}");
        assert!(
            stderr.starts_with(&format!("error: {message}")),
            "{name}: stderr {stderr:?}"
        );
        assert!(
            stderr.contains("Usage: cartesia-gateway [--config PATH]"),
            "{name}: no usage in stderr {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}: stderr {stderr:?}");
        assert!(
            output.stdout.is_empty(),
            "{name}: stdout {:?}",
            stdout(&output)
        );
    }
}

#[test]
fn help_and_version_exit_with_0() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--help", "-h"] {
        let output = run(dir.path(), &[flag], &[]);
        let stdout = stdout(&output);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{flag}: stderr {:?}",
            stderr(&output)
        );
        assert!(
            stdout.starts_with("Usage: cartesia-gateway"),
            "{flag}: {stdout:?}"
        );
        assert!(stdout.contains("check-config"), "{flag}: {stdout:?}");
        assert!(
            stdout.contains("Exit codes: 0 success, 1 invalid config"),
            "{flag}: {stdout:?}"
        );
        assert!(
            stdout.contains("2 invalid command-line arguments"),
            "{flag}: {stdout:?}"
        );
    }
    for flag in ["--version", "-V"] {
        let output = run(dir.path(), &[flag], &[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{flag}: stderr {:?}",
            stderr(&output)
        );
        assert_eq!(
            stdout(&output),
            format!("cartesia-gateway {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}
