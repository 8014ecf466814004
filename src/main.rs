//! The `cartesia-gateway` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use cartesia_gateway::config::{ConfigError, DEFAULT_CONFIG_FILE};
use cartesia_gateway::{Config, Gateway, cert_reload, telemetry};

const USAGE: &str = "\
Usage: cartesia-gateway [--config PATH]
       cartesia-gateway check-config [--config PATH]
       cartesia-gateway demo [--config PATH]

Runs the gateway with the config file at PATH (default: config.toml).
`check-config` validates the config, certificate and key files, the session
key and the Cartesia API key without serving, then prints the settings the
gateway would run with, secrets redacted.
`demo` runs it against a local Cartesia stand-in on 127.0.0.1, creating a
development certificate in certs/ if needed, and prints a demo session.

Environment: CARTESIA_GATEWAY__<SECTION>__<KEY> overrides any config key,
RUST_LOG overrides log.level, and CARTESIA_API_KEY holds the Cartesia API
key unless upstream.api_key_file is set.

Exit codes: 0 success, 1 invalid config or startup failure (the message
names the key or file), 2 invalid command-line arguments.

Options:
  --config PATH   config file to read
  -h, --help      print this help
  -V, --version   print the version";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path = PathBuf::from(DEFAULT_CONFIG_FILE);
    let mut command = Command::Run;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "demo" if command == Command::Run => command = Command::Demo,
            "check-config" if command == Command::Run => command = Command::CheckConfig,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("cartesia-gateway {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--config" => match args.next() {
                Some(path) => config_path = PathBuf::from(path),
                None => return usage_error("--config needs a path"),
            },
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let result = match command {
        Command::Run => run(config_path),
        Command::Demo => run_demo(config_path),
        Command::CheckConfig => check(&config_path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Run,
    Demo,
    CheckConfig,
}

fn check(config_path: &Path) -> Result<(), String> {
    let description =
        cartesia_gateway::check::check_config(config_path, std::env::vars(), |name| {
            std::env::var(name).ok()
        })?;
    print!("{description}");
    Ok(())
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

fn run(config_path: PathBuf) -> Result<(), String> {
    let config = load_config(&config_path)?;
    telemetry::init(&config.log)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
    runtime.block_on(async move {
        raise_open_file_limit(config.server.max_connections);
        let listen = config.server.listen;
        let redirect_config = config.redirect.clone();
        // Load certificates and keys before binding, so a port that accepts
        // connections always belongs to a gateway that can serve them.
        let gateway = Gateway::new(config, |name| std::env::var(name).ok())
            .map_err(|error| error.to_string())?;
        let listener = bind(listen, "server.listen").await?;
        let admin = match &gateway.config().admin {
            Some(admin) => Some(bind(admin.listen, "admin.listen").await?),
            None => None,
        };
        let redirect = match redirect_config {
            Some(redirect) => Some((bind(redirect.listen, "redirect.listen").await?, redirect)),
            None => None,
        };
        let gateway = Arc::new(gateway);
        reload_certificate_on_hangup(&gateway);

        let (stop_redirects, redirects_stopped) = tokio::sync::oneshot::channel::<()>();
        let redirect_task = redirect.map(|(listener, redirect)| {
            tokio::spawn(cartesia_gateway::redirect::serve_redirects(
                listener,
                redirect,
                async move {
                    let _ = redirects_stopped.await;
                },
            ))
        });
        let main = cartesia_gateway::serve(listener, Arc::clone(&gateway), shutdown_signal());
        let served = cartesia_gateway::admin::serve_alongside(admin, gateway, main).await;
        let _ = stop_redirects.send(());
        if let Some(task) = redirect_task {
            let _ = task.await;
        }
        served.map_err(|error| error.to_string())
    })
}

/// Raises the soft limit on open files towards the hard limit, since every
/// connection needs a descriptor and containers often start with 1024.
fn raise_open_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 => tracing::warn!(
            open_file_limit = limit,
            max_connections,
            "the open-file limit is below server.max_connections; raise it (ulimit -n, LimitNOFILE)"
        ),
        Ok(limit) => tracing::debug!(open_file_limit = limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "raising the open-file limit failed"),
    }
}

async fn bind(address: SocketAddr, key: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(address).await.map_err(|error| {
        format!("cannot listen on {address} ({key}): {error}; free the port or choose another with {key}")
    })
}

#[cfg(feature = "stand-in")]
fn run_demo(config_path: PathBuf) -> Result<(), String> {
    let config = load_config(&config_path)?;
    telemetry::init(&config.log)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
    runtime.block_on(cartesia_gateway::demo::run(&config_path, shutdown_signal()))
}

#[cfg(not(feature = "stand-in"))]
fn run_demo(_config_path: PathBuf) -> Result<(), String> {
    Err("this build has no demo; build with the default `stand-in` feature".to_owned())
}

/// Reloads the server certificate on every SIGHUP. A failed reload is
/// logged and the current certificate stays. Registering the handler also
/// stops SIGHUP from ending the process.
#[cfg(unix)]
fn reload_certificate_on_hangup(gateway: &Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP, so certificates reload only through the file check");
            return;
        }
    };
    let gateway = Arc::clone(gateway);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let gateway = Arc::clone(&gateway);
            let reload = move || cert_reload::reload(&gateway, cert_reload::Trigger::Signal);
            if let Err(error) = tokio::task::spawn_blocking(reload).await {
                tracing::warn!(%error, "certificate reload task failed");
            }
        }
    });
}

#[cfg(not(unix))]
fn reload_certificate_on_hangup(_gateway: &Arc<Gateway>) {}

/// Loads the config file, telling a user who started in another directory
/// how to point at it.
fn load_config(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|error| match error {
        ConfigError::Read { .. } if path == Path::new(DEFAULT_CONFIG_FILE) => format!(
            "{error}; run from the directory that contains config.toml or pass --config PATH"
        ),
        other => other.to_string(),
    })
}

/// Exit code when a second signal cuts the drain short.
const FORCED_EXIT_CODE: i32 = 1;

/// Completes on the first SIGINT or SIGTERM, which starts a graceful
/// shutdown. A second signal ends the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received; a second signal exits at once");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second shutdown signal; exiting without draining");
        #[allow(clippy::exit, reason = "a second signal asks for an immediate exit")]
        std::process::exit(FORCED_EXIT_CODE);
    });
}

/// Completes on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
