//! The `demo` command: the Cartesia stand-in and the gateway together on
//! 127.0.0.1, with a development certificate and a signed demo session.
//!
//! The gateway runs with the normal config file, except that the demo serves
//! the development certificate from `certs/`, points `upstream.base_url` at
//! the stand-in, trusts the development CA, and supplies the stand-in's API
//! key in place of `CARTESIA_API_KEY` or `upstream.api_key_file`. When the
//! session secret variable is not set, a random secret is used for this run
//! only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::{API_KEY_ENV, Config, ENV_PREFIX, SessionKeySource};
use crate::stand_in::StandIn;
use crate::{Gateway, devcert, tls};

/// Lifetime of the printed demo session.
const DEMO_SESSION_SECS: u64 = 24 * 3600;

/// User id of the demo session.
const DEMO_USER: &str = "demo-user";

/// Model and voice in the printed examples.
const DEMO_MODEL: &str = "sonic-3";
const DEMO_VOICE: &str = "a0e99841-438c-4a64-b679-ae501e7d6091";

/// Runs the demo until `shutdown` completes.
pub async fn run(config_path: &Path, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let certs_dir = Path::new("certs");
    let (certs, created) = devcert::ensure(certs_dir).map_err(|error| error.to_string())?;
    if created {
        println!(
            "Created a development certificate in {}/",
            certs_dir.display()
        );
    }

    let text = std::fs::read_to_string(config_path)
        .map_err(|error| format!("cannot read config file {}: {error}", config_path.display()))?;
    let base = Config::from_toml_str(&text, std::env::vars()).map_err(|error| error.to_string())?;
    let SessionKeySource::SecretEnv(secret_name) = base.session.key.clone() else {
        return Err(
            "the demo signs its session with an HMAC secret from session.secret_env; \
             use a config with HS256 and session.secret_env"
                .to_owned(),
        );
    };
    let session_secret = std::env::var(&secret_name).unwrap_or_else(|_| random_hex(32));
    let api_key = format!("sk_car_demo_{}", random_hex(12));

    let stand_in = StandIn::new(api_key.clone());
    let stand_in_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| format!("cannot start the stand-in: {error}"))?;
    let stand_in_addr = stand_in_listener
        .local_addr()
        .map_err(|error| error.to_string())?;
    let stand_in_tls =
        tls::server_config(&certs.cert_file, &certs.key_file).map_err(|error| error.to_string())?;
    let (stop_stand_in, stand_in_stopped) = oneshot::channel::<()>();
    let stand_in_task = tokio::spawn(stand_in.serve(stand_in_listener, stand_in_tls, async move {
        let _ = stand_in_stopped.await;
    }));

    let overrides = [
        ("UPSTREAM__BASE_URL", format!("https://{stand_in_addr}")),
        ("UPSTREAM__CA_FILE", certs.ca_file.display().to_string()),
    ];
    let environment = std::env::vars().chain(
        overrides
            .into_iter()
            .map(|(key, value)| (format!("{ENV_PREFIX}{key}"), value)),
    );
    let mut config =
        Config::from_toml_str(&text, environment).map_err(|error| error.to_string())?;
    // The printed commands trust the development CA, and the stand-in accepts
    // only its own API key, so neither may come from the config file.
    config.server.cert_file = certs.cert_file.clone();
    config.server.key_file = certs.key_file.clone();
    config.upstream.api_key_file = None;
    let session = sign_session(&config, &session_secret)?;
    let listen = config.server.listen;
    let gateway = Gateway::new(config, |name| {
        if name == secret_name {
            Some(session_secret.clone())
        } else if name == API_KEY_ENV {
            Some(api_key.clone())
        } else {
            std::env::var(name).ok()
        }
    })
    .map_err(|error| error.to_string())?;
    let listener = TcpListener::bind(listen).await.map_err(|error| {
        format!(
            "cannot listen on {listen} (server.listen): {error}; \
             free the port or set {ENV_PREFIX}SERVER__LISTEN=127.0.0.1:<port>"
        )
    })?;
    let addr = listener.local_addr().map_err(|error| error.to_string())?;
    let admin = match &gateway.config().admin {
        Some(admin) => Some(TcpListener::bind(admin.listen).await.map_err(|error| {
            format!(
                "cannot listen on {} (admin.listen): {error}; \
                 free the port, set {ENV_PREFIX}ADMIN__LISTEN=127.0.0.1:<port> \
                 or {ENV_PREFIX}ADMIN__ENABLED=false",
                admin.listen
            )
        })?),
        None => None,
    };
    let admin_addr = match &admin {
        Some(listener) => Some(listener.local_addr().map_err(|error| error.to_string())?),
        None => None,
    };

    print_instructions(addr.port(), &certs.ca_file, &session, admin_addr);
    let gateway = Arc::new(gateway);
    let main = crate::serve(listener, Arc::clone(&gateway), shutdown);
    let served = crate::admin::serve_alongside(admin, gateway, main).await;
    let _ = stop_stand_in.send(());
    let _ = stand_in_task.await;
    served.map_err(|error| error.to_string())
}

fn sign_session(config: &Config, secret: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| error.to_string())?
        .as_secs();
    let mut claims = json!({
        config.session.user_claim.as_str(): DEMO_USER,
        config.session.grants_claim.as_str(): ["tts", "stt"],
        "iat": now,
        "exp": now + DEMO_SESSION_SECS,
    });
    if let Some(issuer) = &config.session.issuer {
        claims["iss"] = json!(issuer);
    }
    if let Some(audience) = &config.session.audience {
        claims["aud"] = json!(audience);
    }
    let algorithm = config.session.algorithms[0];
    let algorithm = if matches!(algorithm, Algorithm::HS384 | Algorithm::HS512) {
        algorithm
    } else {
        Algorithm::HS256
    };
    let key = EncodingKey::from_secret(secret.as_bytes())
        .map_err(|error| format!("the session secret cannot sign the demo session: {error}"))?;
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key)
        .map_err(|error| format!("signing the demo session failed: {error}"))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn print_instructions(port: u16, ca_file: &Path, session: &str, admin: Option<SocketAddr>) {
    // An absolute CA path keeps the commands working from any directory.
    let ca_file = std::path::absolute(ca_file).unwrap_or_else(|_| ca_file.to_owned());
    println!("{}", instructions(port, &ca_file, session));
    if let Some(admin) = admin {
        println!("Admin listener: curl http://{admin}/metrics (or /livez, /readyz)\n");
    }
}

/// Builds the text the demo prints: the URL, the session and commands that
/// use them.
///
/// The commands start at column 0 so that a pasted block runs as printed:
/// the shell only ends a `<<'PY'` here-document at an unindented `PY`, and
/// Python rejects an indented first line.
fn instructions(port: u16, ca_file: &Path, session: &str) -> String {
    let url = format!("https://localhost:{port}");
    let ca = ca_file.display();
    let python = python_example(&url);
    format!(
        r#"
cartesia-gateway demo is running against a local Cartesia stand-in.

Gateway URL:   {url}
Trust this CA: {ca}
Demo session (user "{DEMO_USER}", grants tts and stt, valid 24 hours).
Run this in each shell where you paste the commands below:

export SESSION='{session}'

Synthesize speech into a WAV file through the gateway:

curl --fail-with-body --cacert {ca} {url}/tts/bytes \
  -H "Authorization: Bearer $SESSION" -H 'Content-Type: application/json' \
  -d '{{"model_id": "{DEMO_MODEL}", "transcript": "Hello from the gateway", "voice": {{"mode": "id", "id": "{DEMO_VOICE}"}}, "output_format": {{"container": "wav", "encoding": "pcm_s16le", "sample_rate": 24000}}}}' \
  -o hello.wav

Synthesize and transcribe with the official Python SDK, in a virtual
environment (the stand-in's transcript describes the audio it received):

python3 -m venv .venv && . .venv/bin/activate
pip install 'cartesia[websockets]==4.2.0'
SSL_CERT_FILE={ca} python3 - <<'PY'
{python}PY

Press Ctrl-C to stop.
"#
    )
}

/// Returns the Python program the demo prints: it writes `hello-sdk.wav`
/// with the official SDK through the gateway at `url`, then transcribes it.
/// The session JWT comes from the `SESSION` environment variable.
pub fn python_example(url: &str) -> String {
    format!(
        r#"import os
from cartesia import Cartesia

client = Cartesia(token=os.environ["SESSION"], base_url="{url}")
client.tts.generate(
    model_id="{DEMO_MODEL}",
    transcript="Hello from the gateway",
    voice={{"mode": "id", "id": "{DEMO_VOICE}"}},
    output_format={{"container": "wav", "encoding": "pcm_s16le", "sample_rate": 24000}},
).write_to_file("hello-sdk.wav")
print("wrote hello-sdk.wav")
with open("hello-sdk.wav", "rb") as audio:
    transcript = client.stt.transcribe(file=audio, model="ink-whisper")
print("transcript:", transcript.text)
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_heredoc_ends_at_unindented_marker() {
        let text = instructions(8443, Path::new("/certs/dev-ca.pem"), "header.claims.sig");
        let start = text.find("<<'PY'\n").expect("the here-document starts");
        let body = &text[start + "<<'PY'\n".len()..];
        let end = body
            .find("\nPY\n")
            .expect("an unindented PY ends the here-document");
        let program = &body[..end];
        assert!(
            program.starts_with("import os\n"),
            "the program starts unindented: {program}"
        );
        assert_eq!(program, python_example("https://localhost:8443").trim_end());
    }

    #[test]
    fn commands_start_at_column_zero() {
        let text = instructions(8443, Path::new("/certs/dev-ca.pem"), "header.claims.sig");
        for command in [
            "export SESSION='header.claims.sig'",
            "curl --fail-with-body --cacert /certs/dev-ca.pem https://localhost:8443/tts/bytes",
            "python3 -m venv .venv",
            "SSL_CERT_FILE=/certs/dev-ca.pem python3 - <<'PY'",
        ] {
            assert!(
                text.lines().any(|line| line.starts_with(command)),
                "no line starts with {command:?}:\n{text}"
            );
        }
    }
}
