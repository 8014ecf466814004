//! The pooled TLS client that talks to the Cartesia API, and the header
//! rules for requests sent through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;
use crate::config::UpstreamConfig;

/// The `Cartesia-Version` request header.
pub const CARTESIA_VERSION: HeaderName = HeaderName::from_static("cartesia-version");
/// Cartesia's alternative API key header, never forwarded from clients.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

pub type HttpClient = Client<TimeoutConnector<HttpsConnector<HttpConnector>>, UpstreamBody>;

/// Clients and settings for the upstream Cartesia API.
pub struct Upstream {
    /// Pooled client for HTTP routes and token minting (HTTP/2 or HTTP/1.1 by ALPN).
    pub http: HttpClient,
    /// HTTP/1.1-only client for WebSocket handshakes, which need an upgrade.
    pub websocket: HttpClient,
    base: Uri,
    pub cartesia_version: HeaderValue,
    pub response_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, tls: Arc<rustls::ClientConfig>) -> Self {
        let http = build_client(config, tls.as_ref().clone(), true);
        let websocket = build_client(config, tls.as_ref().clone(), false);
        Upstream {
            http,
            websocket,
            base: config.base_url.clone(),
            cartesia_version: config.cartesia_version.clone(),
            response_timeout: config.response_timeout,
        }
    }

    /// Builds the upstream URI for a route path and an already rewritten query.
    pub fn uri(&self, path: &'static str, query: Option<&str>) -> Uri {
        let path_and_query = match query {
            None => PathAndQuery::from_static(path),
            Some(query) => {
                PathAndQuery::try_from(format!("{path}?{query}")).unwrap_or_else(|_| {
                    // The query came from an already parsed URI, so it is valid
                    // here too; fall back to the bare path if it ever is not.
                    PathAndQuery::from_static(path)
                })
            }
        };
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| self.base.clone())
    }
}

fn build_client(config: &UpstreamConfig, mut tls: rustls::ClientConfig, http2: bool) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    // hyper-rustls sets ALPN from the enabled protocols and rejects a config
    // that already has it.
    tls.alpn_protocols.clear();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    let connector = if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    };
    let connector = TimeoutConnector {
        inner: connector,
        timeout: config.connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .build(connector)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bounds the whole connection setup, TCP connect and TLS handshake, by one
/// timeout. `HttpConnector`'s own timeout covers only the TCP connect, so an
/// upstream that accepts TCP but stalls the handshake would otherwise hang
/// the request. The error is an `io::Error` of kind `TimedOut`.
#[derive(Clone)]
pub struct TimeoutConnector<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for TimeoutConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to the upstream timed out",
                )) as BoxError),
            }
        })
    }
}

/// Hop-by-hop headers of RFC 9110 section 7.6.1, plus the legacy ones that
/// proxies also drop. Headers named in `Connection` are removed as well.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Client headers that describe the client's network path. The gateway
/// neither believes them from untrusted peers nor passes them on, so the
/// client's address does not reach Cartesia.
const FORWARDING: [HeaderName; 5] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
];

/// Headers that describe the browser page behind a request. The gateway
/// checks `Origin` itself; neither it nor the page address (which may
/// carry the app's own query parameters) is Cartesia's business.
const PAGE_CONTEXT: [HeaderName; 2] = [header::ORIGIN, header::REFERER];

/// Prepares client request headers for the upstream: drops hop-by-hop
/// headers, `Host`, forwarding and page headers and every client
/// credential, then
/// attaches the minted token and, when the client sent no version, the
/// default `Cartesia-Version`.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    authorization: &HeaderValue,
    default_version: &HeaderValue,
    version_in_query: bool,
) {
    remove_hop_by_hop(headers);
    headers.remove(header::HOST);
    for name in FORWARDING.iter().chain(&PAGE_CONTEXT) {
        headers.remove(name);
    }
    headers.remove(header::COOKIE);
    headers.remove(X_API_KEY);
    headers.insert(header::AUTHORIZATION, authorization.clone());
    if !version_in_query && !headers.contains_key(CARTESIA_VERSION) {
        headers.insert(CARTESIA_VERSION, default_version.clone());
    }
}

/// Upstream response headers that would act on the gateway's own origin.
/// The gateway sets its own CORS and HSTS headers.
const ORIGIN_SCOPED: [HeaderName; 9] = [
    header::SET_COOKIE,
    header::ALT_SVC,
    header::STRICT_TRANSPORT_SECURITY,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// Prepares upstream response headers for the client: drops hop-by-hop
/// headers and those that would act on the gateway's own origin.
pub fn prepare_response_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    for name in &ORIGIN_SCOPED {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn client_credentials_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer session"),
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("session=abc"));
        headers.insert(X_API_KEY, HeaderValue::from_static("sk_car_client"));
        headers.insert(header::HOST, HeaderValue::from_static("gateway.example"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9"),
        );
        let token = HeaderValue::from_static("Bearer minted");
        let version = HeaderValue::from_static("2026-08-14");
        prepare_request_headers(&mut headers, &token, &version, false);
        assert_eq!(headers[header::AUTHORIZATION], "Bearer minted");
        assert_eq!(headers[CARTESIA_VERSION], "2026-08-14");
        assert!(!headers.contains_key(header::COOKIE));
        assert!(!headers.contains_key(X_API_KEY));
        assert!(!headers.contains_key(header::HOST));
        assert!(!headers.contains_key("x-forwarded-for"));
        assert!(!headers.contains_key(header::FORWARDED));
    }

    #[test]
    fn origin_scoped_response_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=1"),
        );
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        headers.insert("cartesia-file-id", HeaderValue::from_static("file_1"));
        prepare_response_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("cartesia-file-id"));
    }

    #[test]
    fn client_version_is_kept() {
        let token = HeaderValue::from_static("Bearer minted");
        let version = HeaderValue::from_static("2026-08-14");
        let mut headers = HeaderMap::new();
        headers.insert(CARTESIA_VERSION, HeaderValue::from_static("2025-04-16"));
        prepare_request_headers(&mut headers, &token, &version, false);
        assert_eq!(headers[CARTESIA_VERSION], "2025-04-16");

        let mut headers = HeaderMap::new();
        prepare_request_headers(&mut headers, &token, &version, true);
        assert!(!headers.contains_key(CARTESIA_VERSION));
    }
}
