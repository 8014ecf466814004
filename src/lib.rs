//! cartesia-gateway: a TLS-terminating reverse proxy that lets browser apps
//! use Cartesia's text-to-speech and speech-to-text APIs without ever seeing
//! the Cartesia API key.
//!
//! Layout:
//! - [`config`] parses and validates the TOML config and its environment overrides.
//! - [`tls`] builds the rustls server and client configs.
//! - [`cert_reload`] replaces the server certificate when its files change or on SIGHUP.
//! - [`cert_validity`] reads a certificate's validity period from its DER encoding.
//! - [`server`] accepts TLS connections and serves HTTP/1.1 and HTTP/2 until shutdown.
//! - [`gateway`] contains the shared state and runs each request through the checks.
//! - [`admin`] serves metrics and health probes on the admin listener.
//! - [`redirect`] serves the optional plain-HTTP listener that only redirects to HTTPS.
//! - [`cors`] applies the allowed-origin list: CORS responses and origin checks.
//! - [`forwarded`] finds the client address, believing proxies only when trusted.
//! - [`routes`] is the fixed table of forwarded Cartesia endpoints.
//! - [`session`] finds and verifies the app's session JWT.
//! - [`tokens`] mints and caches per-user Cartesia access tokens.
//! - [`upstream`] is the pooled client to the Cartesia API and its header rules.
//! - [`proxy`] streams the HTTP routes.
//! - [`websocket`] handles WebSocket handshakes and relays messages.
//! - [`query`] reads and rewrites query strings.
//! - [`check`] runs the `check-config` command.
//! - [`body`] defines the body types of both legs.
//! - [`error`] maps every failure to one JSON response.
//! - [`secret`] keeps secrets out of logs.
//! - [`shutdown`] coordinates graceful shutdown.
//! - [`telemetry`] sets up logging.
//! - [`access`] writes one access event per request or WebSocket session.
//! - [`metrics`] defines and renders the Prometheus metrics.
//! - [`health`] decides liveness and readiness.
//! - `demo` (feature `stand-in`) runs the stand-in and the gateway together.
//! - `devcert` (feature `stand-in`) creates development certificates.
//! - `stand_in` (feature `stand-in`) is a local fake of the Cartesia API for
//!   tests and the demo; the gateway itself never uses it.

pub mod access;
pub mod admin;
pub mod body;
pub mod cert_reload;
pub mod cert_validity;
pub mod check;
pub mod config;
pub mod cors;
pub mod error;
pub mod forwarded;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod query;
pub mod redirect;
pub mod routes;
pub mod secret;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod websocket;

#[cfg(feature = "stand-in")]
pub mod demo;
#[cfg(feature = "stand-in")]
pub mod devcert;
#[cfg(feature = "stand-in")]
pub mod stand_in;

pub use config::Config;
pub use gateway::{Gateway, StartupError};
pub use server::serve;
