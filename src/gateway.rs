//! The gateway's shared state and its request handler: route lookup,
//! session check, token lookup, then hand-off to the HTTP proxy or the
//! WebSocket relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, STRICT_TRANSPORT_SECURITY};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use jsonwebtoken::DecodingKey;
use tracing::Instrument;

use crate::access::{AccessBody, AccessRecord};
use crate::body::ResponseBody;
use crate::config::{API_KEY_ENV, Config, ConfigError};
use crate::cors::{self, CorsPolicy, OriginCheck};
use crate::error::{GatewayError, Side};
use crate::health::{Health, Readiness};
use crate::metrics::{Metrics, SharedMetrics};
use crate::routes::{Route, RouteKind};
use crate::secret::Secret;
use crate::session::{self, CredentialSource, Session, SessionVerifier};
use crate::shutdown::Shutdown;
use crate::tls::{self, CertificateResolver, ServerTls, TlsError};
use crate::tokens::{MintError, MintedToken, TokenCache, TokenSource};
use crate::upstream::Upstream;
use crate::{cert_reload, forwarded, proxy, websocket};

/// A reason the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Shared state of a running gateway.
pub struct Gateway {
    pub(crate) config: Config,
    pub(crate) sessions: SessionVerifier,
    pub(crate) tokens: TokenCache,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) tls: ServerTls,
    /// The certificate that `tls` presents, replaced by
    /// [`Gateway::reload_certificate`].
    certificate: Arc<CertificateResolver>,
    pub(crate) cors: CorsPolicy,
    /// `Strict-Transport-Security`, sent on every HTTPS response.
    hsts: HeaderValue,
    pub(crate) metrics: SharedMetrics,
    pub(crate) health: Arc<Health>,
}

/// The body of every response the gateway sends on the HTTPS listener.
pub type ClientBody = AccessBody<ResponseBody>;

/// A request that passed the session and grant checks, with its token.
pub struct Authorized {
    pub route: Route,
    pub session: Arc<Session>,
    pub credential: CredentialSource,
    pub token: Arc<MintedToken>,
    pub token_source: TokenSource,
}

/// Decision of [`Gateway::admit`] for a request that passed its checks.
enum Admitted {
    /// A response the gateway makes itself, as for a CORS preflight.
    Answered(Response<ResponseBody>),
    Http(Authorized),
    WebSocket(websocket::ClientHandshake, Authorized),
}

/// Per-connection facts the handler needs.
#[derive(Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    pub shutdown: Shutdown,
    /// The connection's place under `server.max_connections`, held until
    /// the connection and any WebSocket relayed over it have ended.
    pub slot: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl Gateway {
    /// Loads certificates and key material named in `config` and reads
    /// secrets through `read_env`, which tests replace.
    pub fn new(
        config: Config,
        read_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Gateway, StartupError> {
        let certificate = cert_reload::load(&config.server)?;
        let tls = tls::server_config_with(Arc::clone(&certificate));
        let client_tls = tls::client_config(config.upstream.ca_file.as_deref())?;
        let api_key = load_api_key(&config, &read_env)?;
        let session_key: DecodingKey = session::load_decoding_key(&config.session, &read_env)?;
        let upstream = Arc::new(Upstream::new(&config.upstream, client_tls));
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let cors = CorsPolicy::new(
            config.cors.allowed_origins.clone(),
            config.cors.max_age.as_secs(),
        );
        Ok(Gateway {
            sessions: SessionVerifier::new(&config.session, session_key),
            cors,
            hsts: config.hsts.header_value(),
            tokens: TokenCache::new(
                &config.tokens,
                Arc::clone(&upstream),
                &api_key,
                Arc::clone(&metrics),
                Arc::clone(&health),
            ),
            upstream,
            tls,
            certificate,
            config,
            metrics,
            health,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn server_tls(&self) -> ServerTls {
        Arc::clone(&self.tls)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Checks readiness now. While a permanent mint failure makes the
    /// gateway unready, this also starts a background mint at most every
    /// [`crate::health::MINT_RECHECK_INTERVAL`], whose success clears it.
    pub fn readiness(self: &Arc<Self>) -> Readiness {
        let certificate = self.certificate.current();
        let readiness = self
            .health
            .readiness(certificate.cert.first(), std::time::SystemTime::now());
        self.metrics.set_ready(readiness.ready);
        if self.health.take_mint_recheck(Instant::now()) && !self.health.is_shutting_down() {
            let gateway = Arc::clone(self);
            tokio::spawn(async move {
                tracing::info!("checking whether minting works again");
                gateway.tokens.recheck().await;
            });
        }
        readiness
    }

    /// Renders the metrics in the OpenMetrics text format, after bringing
    /// the readiness and certificate gauges up to date.
    pub fn render_metrics(self: &Arc<Self>) -> String {
        self.readiness();
        let certificate = self.certificate.current();
        if let Some(validity) = certificate
            .cert
            .first()
            .and_then(|der| crate::cert_validity::validity(der.as_ref()).ok())
        {
            self.metrics
                .set_certificate_expiry(validity.not_after_unix_seconds());
        }
        self.metrics.render()
    }

    /// Loads `server.cert_file` and `server.key_file` again and, if the key
    /// belongs to the certificate, gives the new certificate to new TLS
    /// handshakes. Returns whether the certificate changed. On an error the
    /// current certificate stays. Reads files, so it blocks.
    pub fn reload_certificate(&self) -> Result<bool, TlsError> {
        cert_reload::install(&self.certificate, &self.config.server)
    }

    /// Handles one client request; errors become JSON responses here.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        connection: Connection,
    ) -> Response<ClientBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let route = Route::from_path(request.uri().path());
        let client_ip = forwarded::client_ip(
            connection.peer,
            request.headers(),
            &self.config.server.trusted_proxies,
        );
        let mut record = AccessRecord::new(
            started,
            Arc::clone(&self.metrics),
            client_ip,
            method.clone(),
            route,
            request.uri().query(),
        );
        let span = tracing::info_span!(
            "req",
            client.addr = %client_ip,
            method = %method,
            route = route.map_or("unknown", Route::path),
        );
        // The record stays outside the span, so that its access event,
        // written when the record is dropped, carries only its own fields,
        // also when the client leaves before the response head.
        let record_ref = &mut record;
        let response = async move {
            let record = record_ref;
            let origin = self.cors.check(request.headers());
            let result = match route {
                None => {
                    proxy::discard_body(request.into_body());
                    Err(GatewayError::NotFound)
                }
                Some(route) => {
                    self.dispatch(route, request, &connection, &origin, record)
                        .await
                }
            };
            let mut response = match result {
                Ok(response) => {
                    tracing::debug!(
                        status = response.status().as_u16(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "response head sent"
                    );
                    response
                }
                Err(error) => {
                    self.record_error(&error, record);
                    error.to_response()
                }
            };
            self.add_response_headers(&mut response, &origin);
            response
        }
        .instrument(span)
        .await;
        record.response_head(response.status().as_u16());
        response.map(|body| AccessBody::new(body, record))
    }

    /// Adds HSTS to every response, and the CORS headers to responses for
    /// an allowed origin.
    ///
    /// NOTE: the 400 and 431 responses that hyper writes itself for requests
    /// it cannot parse never reach the handler, so they carry neither.
    fn add_response_headers(&self, response: &mut Response<ResponseBody>, origin: &OriginCheck) {
        response
            .headers_mut()
            .insert(STRICT_TRANSPORT_SECURITY, self.hsts.clone());
        match origin {
            OriginCheck::Allowed(origin) => self.cors.apply(origin, response),
            OriginCheck::Denied => cors::add_vary(response.headers_mut()),
            OriginCheck::Absent => {}
        }
    }

    async fn dispatch(
        &self,
        route: Route,
        mut request: Request<Incoming>,
        connection: &Connection,
        origin: &OriginCheck,
        record: &mut AccessRecord,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        match self.admit(route, &mut request, origin, record).await {
            Ok(Admitted::Answered(response)) => Ok(response),
            Ok(Admitted::Http(authorized)) => {
                proxy::forward(self, request, &authorized, record).await
            }
            Ok(Admitted::WebSocket(handshake, authorized)) => {
                websocket::forward(self, request, handshake, &authorized, connection, record).await
            }
            Err(error) => {
                // A declared oversized body is refused with
                // `Connection: close` instead of being read.
                if !matches!(error, GatewayError::BodyTooLarge) {
                    proxy::discard_body(request.into_body());
                }
                Err(error)
            }
        }
    }

    /// Runs every check that comes before forwarding: preflight, method,
    /// declared length, handshake, session, grant, origin and token.
    async fn admit(
        &self,
        route: Route,
        request: &mut Request<Incoming>,
        origin: &OriginCheck,
        record: &mut AccessRecord,
    ) -> Result<Admitted, GatewayError> {
        if cors::is_preflight(request.method(), request.headers()) {
            return match origin {
                OriginCheck::Allowed(_) => Ok(Admitted::Answered(
                    self.cors.preflight(route, request.headers()),
                )),
                OriginCheck::Absent | OriginCheck::Denied => Err(GatewayError::OriginNotAllowed),
            };
        }
        if request.method() != route.method() {
            if request.method() == Method::OPTIONS {
                // An OPTIONS that is not a preflight needs a session like
                // any other request before it learns anything about the route.
                self.check_session(route, request.headers(), request.uri().query(), record)?;
            }
            return Err(GatewayError::MethodNotAllowed {
                allowed: route.method(),
            });
        }
        match route.kind() {
            RouteKind::Http => {
                proxy::check_declared_length(
                    request.headers(),
                    self.config.server.max_request_body_bytes,
                )?;
                let authorized = self
                    .authorize(
                        route,
                        request.headers(),
                        request.uri().query(),
                        origin,
                        record,
                    )
                    .await?;
                Ok(Admitted::Http(authorized))
            }
            RouteKind::WebSocket => {
                let handshake = websocket::ClientHandshake::validate(request)?;
                if *origin == OriginCheck::Denied {
                    return Err(GatewayError::OriginNotAllowed);
                }
                let authorized = self
                    .authorize(
                        route,
                        request.headers(),
                        request.uri().query(),
                        origin,
                        record,
                    )
                    .await?;
                Ok(Admitted::WebSocket(handshake, authorized))
            }
        }
    }

    /// Finds and verifies the session and checks the route's grant. The
    /// user goes into `record` as soon as the session verifies, so a denied
    /// grant is logged with its user.
    fn check_session(
        &self,
        route: Route,
        headers: &HeaderMap,
        query: Option<&str>,
        record: &mut AccessRecord,
    ) -> Result<(Arc<Session>, CredentialSource), GatewayError> {
        let websocket = route.kind() == RouteKind::WebSocket;
        let (token, credential) =
            session::extract(headers, query, &self.config.session.cookie_name, websocket)?;
        let session = self.sessions.verify(&token)?;
        record.set_user(&session.user_id);
        let grant = route.grant();
        if !session.grants.contains(grant) {
            return Err(GatewayError::GrantMissing { grant });
        }
        Ok((session, credential))
    }

    /// Checks the session, grant and origin rules for `route`, then fetches
    /// its token.
    async fn authorize(
        &self,
        route: Route,
        headers: &HeaderMap,
        query: Option<&str>,
        origin: &OriginCheck,
        record: &mut AccessRecord,
    ) -> Result<Authorized, GatewayError> {
        let (session, credential) = self.check_session(route, headers, query, record)?;
        cors::check_cookie_origin(route.kind(), credential, origin, headers)?;
        let grant = route.grant();
        let found = self.tokens.get(&session.user_id, grant).await;
        // A failed mint is a miss too.
        let hit = matches!(found, Ok((_, TokenSource::Cache)));
        self.metrics.token_lookup(hit);
        let (token, token_source) = found.map_err(GatewayError::Mint)?;
        record.set_token_source(token_source);
        tracing::debug!(
            user.id = %session.user_id,
            credential = credential.as_str(),
            token.source = token_source.as_str(),
            token.fingerprint = %token.fingerprint,
            "request authorized"
        );
        Ok(Authorized {
            route,
            session,
            credential,
            token,
            token_source,
        })
    }
}

impl Gateway {
    /// Logs an error once, at the level its side calls for, counts it, and
    /// gives the access record its reason: for a session rejection the same
    /// reason as the `session_rejections_total` metric, otherwise the
    /// error's stable code.
    ///
    /// Denials (session, grant, origin) are logged at debug here because
    /// the access event already reports them at info with their reason.
    fn record_error(&self, error: &GatewayError, record: &mut AccessRecord) {
        match error {
            GatewayError::Session(session) => record.set_reason(session.reason()),
            other => record.set_reason(other.parts().1),
        }
        match error {
            GatewayError::Session(session) => self.metrics.session_rejected(session.reason()),
            GatewayError::GrantMissing { .. } => self.metrics.session_rejected("grant_missing"),
            GatewayError::UpstreamConnect(_) => self.metrics.upstream_error("connect"),
            GatewayError::UpstreamTimeout => self.metrics.upstream_error("timeout"),
            GatewayError::UpstreamHandshake(_) => {
                self.metrics.upstream_error("websocket_handshake");
            }
            _ => {}
        }
        match (error, error.side()) {
            (GatewayError::Session(session), _) => {
                tracing::debug!(reason = session.reason(), "session rejected");
            }
            (GatewayError::GrantMissing { grant }, _) => {
                tracing::debug!(
                    reason = "grant_missing",
                    grant = grant.as_str(),
                    "request denied"
                );
            }
            (GatewayError::Mint(mint), _) if matches!(**mint, MintError::Throttled) => {
                // Every request during an outage ends here; the failing mint
                // attempts themselves are logged at warn.
                tracing::debug!(error = %error, "mint throttled while Cartesia is failing");
            }
            (_, Side::Client) => tracing::debug!(error = %error, "client error"),
            (_, Side::Upstream) => tracing::warn!(error = %error, "upstream error"),
            (_, Side::Gateway) => tracing::warn!(error = %error, "internal error"),
        }
    }
}

/// Reads the Cartesia API key from `upstream.api_key_file` or, without
/// one, from `CARTESIA_API_KEY`.
fn load_api_key(
    config: &Config,
    read_env: &impl Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    };
    let (key, source, value) = match &config.upstream.api_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                invalid(
                    "upstream.api_key_file",
                    format!("cannot read {}: {error}", path.display()),
                )
            })?;
            (
                "upstream.api_key_file",
                path.display().to_string(),
                text.trim().to_owned(),
            )
        }
        None => {
            let value = read_env(API_KEY_ENV).ok_or_else(|| {
                ConfigError::Missing(format!(
                    "Cartesia API key: set the {API_KEY_ENV} environment variable or upstream.api_key_file"
                ))
            })?;
            (
                API_KEY_ENV,
                format!("the {API_KEY_ENV} environment variable"),
                value.trim().to_owned(),
            )
        }
    };
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid(
            key,
            format!(
                "the Cartesia API key in {source} is empty or contains spaces or control characters"
            ),
        ));
    }
    Ok(Secret::new(value))
}
