//! The `cartesia-gateway` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use cartesia_gateway::config::ConfigError;
use cartesia_gateway::{Config, Gateway, telemetry};

const USAGE: &str = "\
Usage: cartesia-gateway [--config PATH]
       cartesia-gateway demo [--config PATH]

Runs the gateway with the config file at PATH (default: config.toml).
`demo` runs it against a local Cartesia stand-in on 127.0.0.1, creating a
development certificate in certs/ if needed, and prints a demo session.

Options:
  --config PATH   config file to read
  -h, --help      print this help
  -V, --version   print the version";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path = PathBuf::from("config.toml");
    let mut demo = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "demo" if !demo => demo = true,
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
    let result = if demo {
        run_demo(config_path)
    } else {
        run(config_path)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
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
        let listener = bind(config.server.listen, "server.listen").await?;
        let redirect = match config.redirect.clone() {
            Some(redirect) => Some((bind(redirect.listen, "redirect.listen").await?, redirect)),
            None => None,
        };
        let gateway = Gateway::new(config, |name| std::env::var(name).ok())
            .map_err(|error| error.to_string())?;

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
        let served = cartesia_gateway::serve(listener, Arc::new(gateway), shutdown_signal()).await;
        let _ = stop_redirects.send(());
        if let Some(task) = redirect_task {
            let _ = task.await;
        }
        served.map_err(|error| error.to_string())
    })
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

/// Loads the config file, telling a user who started in another directory
/// how to point at it.
fn load_config(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|error| match error {
        ConfigError::Read { .. } => format!(
            "{error}; run from the directory that contains config.toml or pass --config PATH"
        ),
        other => other.to_string(),
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
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
