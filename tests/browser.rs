//! Browser-facing rules of the HTTP routes over real TLS: CORS preflights
//! and response headers, the `Origin` rule for cookie-authenticated POSTs,
//! HSTS on every response, forwarding headers, and the client address in
//! logs.
//!
//! Every test installs the same process-wide log subscriber before it starts
//! a gateway, because a test binary can install only one. The log tests tell
//! their own lines apart from those of tests running in parallel by a user id
//! that no other test uses.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use common::*;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;

/// `Strict-Transport-Security` with the default settings: one year, no
/// `includeSubDomains`, no `preload`.
const DEFAULT_HSTS: &str = "max-age=31536000";
/// The default `cors.max_age_secs`.
const DEFAULT_PREFLIGHT_MAX_AGE: &str = "600";
/// An origin that is not in the allowed list.
const OTHER_ORIGIN: &str = "https://evil.test";
/// The gateway's HTTP routes, all `POST`.
const HTTP_ROUTES: [&str; 4] = ["/tts/bytes", "/tts/sse", "/stt", "/audio/transcriptions"];
/// Headers the official SDKs send, as a browser lists them in a preflight.
const SDK_HEADERS: &str = "Authorization, Content-Type, Accept, Cartesia-Version, \
     X-Cartesia-Client, X-Stainless-Lang, x-stainless-package-version";
/// The same headers as the gateway echoes them: lower-case, in request order.
const SDK_HEADERS_ECHOED: &str = "authorization, content-type, accept, cartesia-version, \
     x-cartesia-client, x-stainless-lang, x-stainless-package-version";
/// Requested headers that are not among the SDK headers.
const OTHER_HEADERS: [&str; 4] = ["x-evil", "cookie", "x-stainless-", "x-api-key"];
/// CORS response headers that only an allowed origin may see.
const CORS_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
];
/// Client headers that describe the network path to the gateway.
const FORWARDING_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Request headers as name and value pairs.
type HeaderList<'a> = &'a [(&'a str, &'a str)];

/// Installs the global subscriber on first use, capturing the gateway's log
/// at DEBUG, and returns the capture.
fn captured_log() -> &'static CapturedLog {
    static LOG: OnceLock<CapturedLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = CapturedLog::default();
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("cartesia_gateway=debug"))
            .with_writer(log.clone())
            .with_ansi(false)
            .try_init()
            .expect("this test binary installs the only global subscriber");
        log
    })
}

/// Starts a harness after the log subscriber is in place.
async fn start(options: Options) -> Harness {
    captured_log();
    Harness::start_with(options).await
}

fn empty_request(method: Method, url: String) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

fn finish(builder: http::request::Builder, body: Bytes) -> Request<Full<Bytes>> {
    builder.body(Full::new(body)).unwrap()
}

/// Builds a CORS preflight for `POST path` from `origin`, asking for
/// `request_headers` when given.
fn preflight(
    harness: &Harness,
    path: &str,
    origin: &str,
    request_headers: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = empty_request(Method::OPTIONS, format!("{}{path}", harness.url()))
        .header("origin", origin)
        .header("access-control-request-method", "POST");
    if let Some(names) = request_headers {
        builder = builder.header("access-control-request-headers", names);
    }
    finish(builder, Bytes::new())
}

/// Builds `POST /tts/bytes` with `headers` and the JSON `body`.
fn tts_request(harness: &Harness, headers: &[(&str, &str)], body: &Value) -> Request<Full<Bytes>> {
    let mut builder = empty_request(Method::POST, format!("{}/tts/bytes", harness.url()))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    finish(builder, Bytes::from(body.to_string()))
}

/// Sends a valid `POST /tts/bytes` with `headers`.
async fn post_tts(harness: &Harness, headers: &[(&str, &str)]) -> (Response<()>, Bytes) {
    let body = tts_bytes_body("Browser rules");
    harness.send(tts_request(harness, headers, &body)).await
}

/// Sends `request` over HTTP/2 and returns the response with its whole body.
async fn send_h2(harness: &Harness, request: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let response = harness.h2_client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

fn header<'a>(response: &'a Response<()>, name: &HeaderName) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

fn header_values<'a>(response: &'a Response<()>, name: &HeaderName) -> Vec<&'a str> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect()
}

/// Returns the comma-separated tokens of every `name` header, trimmed.
fn header_tokens<'a>(response: &'a Response<()>, name: &HeaderName) -> Vec<&'a str> {
    header_values(response, name)
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect()
}

/// Returns the start of a body as text for failure messages, since audio
/// bodies are long.
fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// Returns the `error` code of a gateway JSON error body.
fn error_code(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!(
            "expected a JSON error body, got {:?}",
            String::from_utf8_lossy(body)
        )
    });
    value["error"].as_str().unwrap_or_default().to_owned()
}

/// Returns the `Cookie` and the `Authorization` header values that carry
/// `session`.
fn session_headers(session: &str) -> (String, String) {
    (format!("session={session}"), format!("Bearer {session}"))
}

/// Checks the CORS headers every response to the allowed origin carries.
fn assert_cors_for_app(response: &Response<()>, case: &str) {
    assert_eq!(
        header_values(response, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
        [APP_ORIGIN],
        "{case}: Access-Control-Allow-Origin must be exactly the request's origin"
    );
    assert_eq!(
        header_values(response, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
        ["true"],
        "{case}: credentials must be allowed"
    );
    let exposed = header_tokens(response, &header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for name in ["Retry-After", "Cartesia-File-ID"] {
        assert!(
            exposed.iter().any(|token| token.eq_ignore_ascii_case(name)),
            "{case}: Access-Control-Expose-Headers {exposed:?} lacks {name}"
        );
    }
    let vary = header_tokens(response, &header::VARY);
    assert!(
        vary.iter()
            .any(|token| token.eq_ignore_ascii_case("origin")),
        "{case}: Vary {vary:?} lacks Origin"
    );
}

/// Checks that a response carries none of the CORS headers.
fn assert_no_cors(response: &Response<()>, case: &str) {
    for name in &CORS_HEADERS {
        assert!(
            !response.headers().contains_key(name),
            "{case}: unexpected {name}: {:?}",
            header(response, name)
        );
    }
}

fn assert_default_hsts(response: &Response<()>, case: &str) {
    assert_eq!(
        header_values(response, &header::STRICT_TRANSPORT_SECURITY),
        [DEFAULT_HSTS],
        "{case}: Strict-Transport-Security"
    );
}

/// Checks that the stand-in saw no request at all: no mint, no forward.
fn assert_nothing_reached_upstream(harness: &Harness, case: &str) {
    assert_eq!(
        harness.stand_in.mint_count(),
        0,
        "{case}: a token was minted"
    );
    let seen: Vec<String> = harness
        .stand_in
        .requests()
        .iter()
        .map(|request| format!("{} {}", request.method, request.path))
        .collect();
    assert!(
        seen.is_empty(),
        "{case}: the stand-in received requests: {seen:?}"
    );
}

#[tokio::test]
async fn preflight_from_allowed_origin_is_answered_locally() {
    let harness = start(Options::default()).await;
    for path in HTTP_ROUTES {
        for http2 in [false, true] {
            let case = format!("OPTIONS {path}, HTTP/2 {http2}");
            let request = preflight(&harness, path, APP_ORIGIN, Some(SDK_HEADERS));
            let (response, body) = if http2 {
                send_h2(&harness, request).await
            } else {
                harness.send(request).await
            };
            assert_eq!(
                response.status(),
                StatusCode::NO_CONTENT,
                "{case}: {}",
                preview(&body)
            );
            assert!(body.is_empty(), "{case}: the preflight response has a body");
            assert_cors_for_app(&response, &case);
            assert_eq!(
                header(&response, &header::ACCESS_CONTROL_ALLOW_METHODS),
                Some("POST"),
                "{case}: the route's method"
            );
            assert_eq!(
                header(&response, &header::ACCESS_CONTROL_ALLOW_HEADERS),
                Some(SDK_HEADERS_ECHOED),
                "{case}: every SDK header, x-stainless-* included, is allowed"
            );
            assert_eq!(
                header(&response, &header::ACCESS_CONTROL_MAX_AGE),
                Some(DEFAULT_PREFLIGHT_MAX_AGE),
                "{case}: the default max-age"
            );
            assert_default_hsts(&response, &case);
        }
    }
    assert_nothing_reached_upstream(&harness, "preflights without a session");
}

#[tokio::test]
async fn preflight_never_echoes_other_headers() {
    let harness = start(Options::default()).await;
    let mixed = format!("content-type, {}", OTHER_HEADERS.join(", "));
    let request = preflight(&harness, "/tts/bytes", APP_ORIGIN, Some(&mixed));
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "{}",
        preview(&body)
    );
    assert_eq!(
        header(&response, &header::ACCESS_CONTROL_ALLOW_HEADERS),
        Some("content-type"),
        "only the SDK header of {mixed:?} is allowed"
    );

    let only_other = OTHER_HEADERS.join(", ");
    let request = preflight(&harness, "/tts/bytes", APP_ORIGIN, Some(&only_other));
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "{}",
        preview(&body)
    );
    assert_eq!(
        header(&response, &header::ACCESS_CONTROL_ALLOW_HEADERS),
        None,
        "no header of {only_other:?} is allowed"
    );
    assert_cors_for_app(&response, "preflight asking only for other headers");

    let request = preflight(&harness, "/tts/bytes", APP_ORIGIN, None);
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "{}",
        preview(&body)
    );
    assert_eq!(
        header(&response, &header::ACCESS_CONTROL_ALLOW_HEADERS),
        None,
        "a preflight that asks for no headers gets none"
    );
    assert_nothing_reached_upstream(&harness, "preflights");
}

#[tokio::test]
async fn preflight_max_age_follows_config() {
    let harness = start(Options {
        cors: "max_age_secs = 120",
        ..Options::default()
    })
    .await;
    let request = preflight(&harness, "/stt", APP_ORIGIN, Some("authorization"));
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "{}",
        preview(&body)
    );
    assert_eq!(
        header(&response, &header::ACCESS_CONTROL_MAX_AGE),
        Some("120"),
        "cors.max_age_secs sets Access-Control-Max-Age"
    );
}

#[tokio::test]
async fn preflight_from_other_origin_gets_403() {
    let harness = start(Options::default()).await;
    let origins = [
        OTHER_ORIGIN,
        "http://app.test",
        "https://app.test:8443",
        "https://app.test.evil.test",
        "null",
    ];
    for path in HTTP_ROUTES {
        for origin in origins {
            let case = format!("OPTIONS {path} from {origin}");
            let request = preflight(&harness, path, origin, Some(SDK_HEADERS));
            let (response, body) = harness.send(request).await;
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{case}: {}",
                preview(&body)
            );
            assert_eq!(error_code(&body), "origin_not_allowed", "{case}");
            assert_no_cors(&response, &case);
            let vary = header_tokens(&response, &header::VARY);
            assert!(
                vary.iter()
                    .any(|token| token.eq_ignore_ascii_case("origin")),
                "{case}: Vary {vary:?} lacks Origin, so a cache could serve this to the app"
            );
            assert_default_hsts(&response, &case);
        }
    }
    assert_nothing_reached_upstream(&harness, "preflights from other origins");
}

#[tokio::test]
async fn preflight_on_unknown_path_gets_404() {
    let harness = start(Options::default()).await;
    for path in ["/tts/unknown", "/v1/tts/bytes", "/tts/bytes/", "/"] {
        let case = format!("OPTIONS {path}");
        let request = preflight(&harness, path, APP_ORIGIN, Some("authorization"));
        let (response, body) = harness.send(request).await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{case}: {}",
            preview(&body)
        );
        assert_eq!(error_code(&body), "not_found", "{case}");
        assert_eq!(
            header(&response, &header::ACCESS_CONTROL_ALLOW_METHODS),
            None,
            "{case}: no method is allowed on a path the gateway does not forward"
        );
        assert_cors_for_app(&response, &case);
    }
    assert_nothing_reached_upstream(&harness, "preflights on unknown paths");
}

#[tokio::test]
async fn allowed_origin_reads_every_status() {
    let harness = start(Options::default()).await;
    let session = harness.session("cors-reader", &["tts"]);
    let (cookie, bearer) = session_headers(&session);
    let stt_only = harness.session("cors-stt-only", &["stt"]);
    let stt_only_bearer = format!("Bearer {stt_only}");

    let (response, body) = post_tts(&harness, &[("cookie", &cookie), ("origin", APP_ORIGIN)]).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "cookie: {}",
        preview(&body)
    );
    assert_cors_for_app(&response, "200 with a cookie");

    let (response, body) = post_tts(
        &harness,
        &[("authorization", &bearer), ("origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "bearer: {}",
        preview(&body)
    );
    assert_cors_for_app(&response, "200 with a bearer session");

    let (response, body) = post_tts(&harness, &[("origin", APP_ORIGIN)]).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        preview(&body)
    );
    assert_cors_for_app(&response, "401 without a session");

    let (response, body) = post_tts(
        &harness,
        &[("authorization", &stt_only_bearer), ("origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "{}",
        preview(&body)
    );
    assert_eq!(error_code(&body), "grant_missing");
    assert_cors_for_app(&response, "403 without the grant");

    let request = finish(
        empty_request(Method::POST, format!("{}/tts/nowhere", harness.url()))
            .header("origin", APP_ORIGIN),
        Bytes::new(),
    );
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "{}",
        preview(&body)
    );
    assert_cors_for_app(&response, "404 on an unknown path");

    let request = finish(
        empty_request(Method::GET, format!("{}/tts/bytes", harness.url()))
            .header("origin", APP_ORIGIN),
        Bytes::new(),
    );
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        preview(&body)
    );
    assert_cors_for_app(&response, "405 on a wrong method");

    harness
        .stand_in
        .faults()
        .respond_with_status(Some((429, Some(3))));
    let (response, body) = post_tts(
        &harness,
        &[("authorization", &bearer), ("origin", APP_ORIGIN)],
    )
    .await;
    harness.stand_in.faults().respond_with_status(None);
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        preview(&body)
    );
    assert_eq!(
        header(&response, &header::RETRY_AFTER),
        Some("3"),
        "the upstream's Retry-After reaches the client"
    );
    assert_cors_for_app(&response, "429 from the upstream");

    harness.stand_in.faults().fail_mints_with(Some(400));
    let new_user = harness.session("cors-new-user", &["tts"]);
    let new_user_bearer = format!("Bearer {new_user}");
    let (response, body) = post_tts(
        &harness,
        &[("authorization", &new_user_bearer), ("origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_GATEWAY,
        "{}",
        preview(&body)
    );
    assert_eq!(error_code(&body), "token_mint_rejected");
    assert_cors_for_app(&response, "502 after a failed mint");
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    let harness = start(Options::default()).await;
    let session = harness.session("cors-outsider", &["tts"]);
    let (cookie, bearer) = session_headers(&session);

    let (response, body) = post_tts(
        &harness,
        &[("authorization", &bearer), ("origin", OTHER_ORIGIN)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "{}", preview(&body));
    assert_no_cors(&response, "200 to another origin");

    let (response, body) =
        post_tts(&harness, &[("cookie", &cookie), ("origin", OTHER_ORIGIN)]).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "{}",
        preview(&body)
    );
    assert_no_cors(&response, "403 to another origin");

    let (response, body) = post_tts(&harness, &[("origin", OTHER_ORIGIN)]).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        preview(&body)
    );
    assert_no_cors(&response, "401 to another origin");

    let request = finish(
        empty_request(Method::POST, format!("{}/tts/nowhere", harness.url()))
            .header("origin", OTHER_ORIGIN),
        Bytes::new(),
    );
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "{}",
        preview(&body)
    );
    assert_no_cors(&response, "404 to another origin");

    let (response, body) = post_tts(&harness, &[("authorization", &bearer)]).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", preview(&body));
    assert_no_cors(&response, "200 without Origin");
}

/// Response headers a careless upstream might send; each would act on the
/// gateway's own origin if passed through.
const UPSTREAM_ORIGIN_SCOPED: [(&str, &str); 6] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-credentials", "true"),
    ("access-control-expose-headers", "X-Upstream-Internal"),
    ("strict-transport-security", "max-age=1; includeSubDomains"),
    ("set-cookie", "upstream=1; Path=/"),
    ("alt-svc", "h3=\":443\""),
];

/// Serves HTTPS on `listener`, forwards each request to the harness's
/// stand-in and adds [`UPSTREAM_ORIGIN_SCOPED`] to each response. Returns
/// the number of responses decorated so far.
fn spawn_decorating_relay(listener: TcpListener, harness: &Harness) -> Arc<AtomicUsize> {
    let mut tls =
        (*cartesia_gateway::tls::server_config(&harness.certs.cert_file, &harness.certs.key_file)
            .unwrap())
        .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let client = common::client(&harness.certs.ca_file, false);
    let target = harness.stand_in_addr;
    let decorated = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&decorated);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let client = client.clone();
            let counter = Arc::clone(&counter);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let client = client.clone();
                let counter = Arc::clone(&counter);
                async move {
                    let response = relay_to(&client, target, request).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let stream = acceptor.accept(stream).await.unwrap();
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            });
        }
    });
    decorated
}

async fn relay_to(
    client: &TestClient,
    target: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path_and_query().unwrap().as_str();
    parts.uri = format!("https://{target}{path}").parse().unwrap();
    parts.headers.remove(header::HOST);
    let response = client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
        .unwrap();
    let (mut parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in UPSTREAM_ORIGIN_SCOPED {
        parts.headers.insert(name, HeaderValue::from_static(value));
    }
    Response::from_parts(parts, Full::new(body))
}

#[tokio::test]
async fn upstream_cors_and_hsts_are_dropped() {
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let harness = start(Options {
        upstream_url: Some(format!("https://{}", relay.local_addr().unwrap())),
        ..Options::default()
    })
    .await;
    let decorated = spawn_decorating_relay(relay, &harness);
    let session = harness.session("upstream-headers", &["tts"]);
    let (_, bearer) = session_headers(&session);

    for origin in [Some(APP_ORIGIN), None] {
        let case = format!("Origin {origin:?}");
        let mut headers = vec![("authorization", bearer.as_str())];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        let (response, body) = post_tts(&harness, &headers).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{case}: {}",
            preview(&body)
        );
        assert!(
            body.starts_with(b"RIFF"),
            "{case}: the upstream's WAV reaches the client"
        );
        assert_default_hsts(&response, &case);
        for name in [header::SET_COOKIE, header::ALT_SVC] {
            assert!(
                !response.headers().contains_key(&name),
                "{case}: the upstream's {name} reached the client"
            );
        }
        match origin {
            Some(_) => {
                assert_cors_for_app(&response, &case);
                assert_eq!(
                    header_values(&response, &header::ACCESS_CONTROL_EXPOSE_HEADERS),
                    ["Retry-After, Cartesia-File-ID"],
                    "{case}: only the gateway's exposed headers"
                );
            }
            None => assert_no_cors(&response, &case),
        }
    }
    assert_eq!(
        decorated.load(Ordering::SeqCst),
        harness.stand_in.requests().len(),
        "every upstream response, mint included, went through the relay"
    );
    assert!(
        harness.stand_in.requests().len() >= 3,
        "one mint and two forwards went through the relay"
    );
}

#[tokio::test]
async fn saved_file_id_reaches_client() {
    let harness = start(Options::default()).await;
    let session = harness.session("file-saver", &["tts"]);
    let (cookie, _) = session_headers(&session);
    let headers = [("cookie", cookie.as_str()), ("origin", APP_ORIGIN)];
    let file_id = HeaderName::from_static("cartesia-file-id");

    let mut body = tts_bytes_body("Keep this one");
    body["save"] = json!(true);
    let (response, response_body) = harness.send(tts_request(&harness, &headers, &body)).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        preview(&response_body)
    );
    let id = header(&response, &file_id).unwrap_or_default();
    assert!(
        id.starts_with("file_"),
        "Cartesia-File-ID from the stand-in reaches the client, got {id:?}"
    );
    assert_cors_for_app(&response, "saved file");

    let (response, response_body) = post_tts(&harness, &headers).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        preview(&response_body)
    );
    assert_eq!(
        header(&response, &file_id),
        None,
        "no file ID without \"save\": true"
    );
}

#[tokio::test]
async fn hsts_is_on_every_status() {
    let harness = start(Options::default()).await;
    let session = harness.session("hsts-user", &["tts"]);
    let (_, bearer) = session_headers(&session);
    let stt_only = harness.session("hsts-stt-only", &["stt"]);
    let stt_only_bearer = format!("Bearer {stt_only}");

    let (response, body) = post_tts(&harness, &[("authorization", &bearer)]).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", preview(&body));
    assert_default_hsts(&response, "200");

    let (response, body) = post_tts(&harness, &[]).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        preview(&body)
    );
    assert_default_hsts(&response, "401");

    let (response, body) = post_tts(&harness, &[("authorization", &stt_only_bearer)]).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "{}",
        preview(&body)
    );
    assert_default_hsts(&response, "403");

    let request = finish(
        empty_request(Method::POST, format!("{}/nowhere", harness.url())),
        Bytes::new(),
    );
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "{}",
        preview(&body)
    );
    assert_default_hsts(&response, "404");

    let request = finish(
        empty_request(Method::GET, format!("{}/stt", harness.url())),
        Bytes::new(),
    );
    let (response, body) = harness.send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        preview(&body)
    );
    assert_default_hsts(&response, "405");

    harness.stand_in.faults().fail_mints_with(Some(400));
    let new_user = harness.session("hsts-new-user", &["tts"]);
    let new_user_bearer = format!("Bearer {new_user}");
    let request = tts_request(
        &harness,
        &[("authorization", &new_user_bearer)],
        &tts_bytes_body("HSTS on errors"),
    );
    let (response, body) = send_h2(&harness, request).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_GATEWAY,
        "{}",
        preview(&body)
    );
    assert_default_hsts(&response, "502 over HTTP/2");
}

#[tokio::test]
async fn hsts_options_add_subdomains_and_preload() {
    let harness = start(Options {
        hsts: "include_subdomains = true\npreload = true",
        ..Options::default()
    })
    .await;
    let expected = "max-age=31536000; includeSubDomains; preload";
    let session = harness.session("hsts-preload", &["tts"]);
    let (_, bearer) = session_headers(&session);

    let (response, body) = post_tts(&harness, &[("authorization", &bearer)]).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", preview(&body));
    assert_eq!(
        header_values(&response, &header::STRICT_TRANSPORT_SECURITY),
        [expected],
        "200 with includeSubDomains and preload configured"
    );

    let (response, body) = post_tts(&harness, &[]).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        preview(&body)
    );
    assert_eq!(
        header_values(&response, &header::STRICT_TRANSPORT_SECURITY),
        [expected],
        "401 with includeSubDomains and preload configured"
    );
}

#[tokio::test]
async fn cookie_post_from_allowed_origin_succeeds() {
    let harness = start(Options::default()).await;
    let session = harness.session("cookie-app", &["tts"]);
    let (cookie, _) = session_headers(&session);
    let (response, body) = post_tts(&harness, &[("cookie", &cookie), ("origin", APP_ORIGIN)]).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", preview(&body));
    let forwarded = harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/tts/bytes")
        .count();
    assert_eq!(forwarded, 1, "the request was forwarded once");
}

#[tokio::test]
async fn cookie_post_from_other_origin_gets_403() {
    let harness = start(Options::default()).await;
    let session = harness.session("cookie-victim", &["tts"]);
    let (cookie, _) = session_headers(&session);
    let cases: [(&str, HeaderList); 5] = [
        ("another site", &[("origin", OTHER_ORIGIN)]),
        ("a sandboxed page", &[("origin", "null")]),
        ("plain-HTTP app origin", &[("origin", "http://app.test")]),
        (
            "a look-alike host",
            &[("origin", "https://app.test.evil.test")],
        ),
        (
            "another site claiming same-origin",
            &[("origin", OTHER_ORIGIN), ("sec-fetch-site", "same-origin")],
        ),
    ];
    for (case, extra) in cases {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend_from_slice(extra);
        let (response, body) = post_tts(&harness, &headers).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{case}: {}",
            preview(&body)
        );
        assert_eq!(error_code(&body), "origin_not_allowed", "{case}");
    }
    assert_nothing_reached_upstream(&harness, "cookie POSTs from other origins");
}

#[tokio::test]
async fn cookie_post_same_origin_fetch_succeeds() {
    let harness = start(Options::default()).await;
    let session = harness.session("cookie-same-origin", &["tts"]);
    let (cookie, _) = session_headers(&session);
    let (response, body) = post_tts(
        &harness,
        &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "Sec-Fetch-Site: same-origin without Origin: {}",
        preview(&body)
    );
    assert_no_cors(&response, "same-origin fetch without Origin");
}

#[tokio::test]
async fn cookie_post_without_origin_gets_403() {
    let harness = start(Options::default()).await;
    let session = harness.session("cookie-no-origin", &["tts"]);
    let (cookie, _) = session_headers(&session);
    for fetch_site in [Some("cross-site"), Some("same-site"), Some("none"), None] {
        let case = format!("no Origin, Sec-Fetch-Site {fetch_site:?}");
        let mut headers = vec![("cookie", cookie.as_str())];
        if let Some(value) = fetch_site {
            headers.push(("sec-fetch-site", value));
        }
        let (response, body) = post_tts(&harness, &headers).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{case}: {}",
            preview(&body)
        );
        assert_eq!(error_code(&body), "origin_required", "{case}");
        assert_default_hsts(&response, &case);
    }
    assert_nothing_reached_upstream(&harness, "cookie POSTs without Origin");
}

#[tokio::test]
async fn bearer_post_from_other_origin_succeeds() {
    let harness = start(Options::default()).await;
    let session = harness.session("bearer-elsewhere", &["tts"]);
    let (_, bearer) = session_headers(&session);
    for fetch_site in [None, Some("cross-site")] {
        let case = format!("bearer from {OTHER_ORIGIN}, Sec-Fetch-Site {fetch_site:?}");
        let mut headers = vec![("authorization", bearer.as_str()), ("origin", OTHER_ORIGIN)];
        if let Some(value) = fetch_site {
            headers.push(("sec-fetch-site", value));
        }
        let (response, body) = post_tts(&harness, &headers).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{case}: {}",
            preview(&body)
        );
        assert!(
            body.starts_with(b"RIFF"),
            "{case}: the WAV reaches the client"
        );
        assert_no_cors(&response, &case);
    }
}

#[tokio::test]
async fn plain_options_needs_a_session() {
    let harness = start(Options::default()).await;
    let session = harness.session("options-user", &["tts"]);
    let (_, bearer) = session_headers(&session);
    let stt_only = harness.session("options-stt-only", &["stt"]);
    let stt_only_bearer = format!("Bearer {stt_only}");
    let url = format!("{}/tts/bytes", harness.url());

    let cases: [(&str, HeaderList, StatusCode); 5] = [
        ("no headers", &[], StatusCode::UNAUTHORIZED),
        (
            "allowed Origin without Access-Control-Request-Method",
            &[("origin", APP_ORIGIN)],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "Access-Control-Request-Method without Origin",
            &[("access-control-request-method", "POST")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "session without the grant",
            &[("authorization", &stt_only_bearer)],
            StatusCode::FORBIDDEN,
        ),
        (
            "valid session",
            &[("authorization", &bearer)],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (case, headers, expected) in cases {
        let mut builder = empty_request(Method::OPTIONS, url.clone());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (response, body) = harness.send(finish(builder, Bytes::new())).await;
        assert_eq!(
            response.status(),
            expected,
            "OPTIONS, {case}: {}",
            preview(&body)
        );
        assert_eq!(
            header(&response, &header::ACCESS_CONTROL_ALLOW_METHODS),
            None,
            "OPTIONS, {case}: not a preflight, so no preflight answer"
        );
        if expected == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(
                header(&response, &header::ALLOW),
                Some("POST"),
                "OPTIONS, {case}: Allow names the route's method"
            );
        }
    }
    assert_nothing_reached_upstream(&harness, "OPTIONS requests");
}

#[tokio::test]
async fn forwarding_headers_are_not_sent_upstream() {
    for (case, server) in [
        ("untrusted peer", ""),
        ("trusted peer", "trusted_proxies = [\"127.0.0.1\"]"),
    ] {
        let harness = start(Options {
            server,
            ..Options::default()
        })
        .await;
        let session = harness.session("forwarding-user", &["tts"]);
        let (_, bearer) = session_headers(&session);
        let (response, body) = post_tts(
            &harness,
            &[
                ("authorization", &bearer),
                ("x-forwarded-for", "203.0.113.41"),
                ("forwarded", "for=198.51.100.41;proto=http;host=evil.test"),
                ("x-real-ip", "192.0.2.41"),
                ("x-forwarded-host", "evil.test"),
                ("x-forwarded-proto", "http"),
            ],
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{case}: {}",
            preview(&body)
        );
        let requests = harness.stand_in.requests();
        let forwarded: Vec<_> = requests
            .iter()
            .filter(|request| request.path == "/tts/bytes")
            .collect();
        assert_eq!(forwarded.len(), 1, "{case}: one request was forwarded");
        for request in &requests {
            for (name, _) in &request.headers {
                assert!(
                    !FORWARDING_HEADERS.contains(&name.as_str()),
                    "{case}: {} {} carries the client's {name}",
                    request.method,
                    request.path
                );
            }
        }
    }
}

/// Returns the `client.addr` of the `req` span on every log line with the
/// field `user.id=USER`.
fn logged_client_addrs(log: &str, user: &str) -> Vec<String> {
    let field = format!("user.id={user}");
    log.lines()
        .filter(|line| line.split(' ').any(|word| word == field))
        .filter_map(|line| {
            let span = &line[line.find("req{")? + "req{".len()..];
            let span = &span[..span.find('}')?];
            span.split(' ')
                .find_map(|field| field.strip_prefix("client.addr="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn untrusted_forwarded_for_is_not_logged() {
    let harness = start(Options::default()).await;
    let user = "log-untrusted-peer";
    let session = harness.session(user, &["tts"]);
    let (_, bearer) = session_headers(&session);
    let spoofed = ["203.0.113.71", "198.51.100.71", "192.0.2.71"];
    let (response, body) = post_tts(
        &harness,
        &[
            ("authorization", &bearer),
            ("x-forwarded-for", "203.0.113.71"),
            ("forwarded", "for=198.51.100.71"),
            ("x-real-ip", "192.0.2.71"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "{}", preview(&body));

    let log = captured_log().text();
    let addresses = logged_client_addrs(&log, user);
    assert!(
        !addresses.is_empty(),
        "the request's log lines name user {user} and a client address"
    );
    for address in &addresses {
        assert_eq!(
            address, "127.0.0.1",
            "the client address is the untrusted peer's own"
        );
    }
    for address in spoofed {
        assert!(
            !log.contains(address),
            "the client-supplied address {address} appears in the log"
        );
    }
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_is_logged() {
    let harness = start(Options {
        server: "trusted_proxies = [\"127.0.0.1\"]",
        ..Options::default()
    })
    .await;
    let cases = [
        (
            "log-trusted-xff",
            ("x-forwarded-for", "198.51.100.23, 203.0.113.23"),
            "203.0.113.23",
        ),
        (
            "log-trusted-forwarded",
            ("forwarded", "for=\"[2001:db8::23]:4711\";proto=https"),
            "2001:db8::23",
        ),
    ];
    for (user, forwarding, expected) in cases {
        let session = harness.session(user, &["tts"]);
        let (_, bearer) = session_headers(&session);
        let (response, body) = post_tts(&harness, &[("authorization", &bearer), forwarding]).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{user}: {}",
            preview(&body)
        );

        let addresses = logged_client_addrs(&captured_log().text(), user);
        assert!(
            !addresses.is_empty(),
            "{user}: the request's log lines name the user and a client address"
        );
        for address in &addresses {
            assert_eq!(
                address, expected,
                "{user}: the client address comes from {} sent by a trusted proxy",
                forwarding.0
            );
        }
    }
}

#[tokio::test]
async fn page_headers_stay_at_the_gateway() {
    let harness = start(Options::default()).await;
    let session = harness.session("page-user", &["tts"]);
    let request = Request::post(format!("{}/tts/bytes", harness.url()))
        .header("cookie", format!("session={session}"))
        .header("origin", APP_ORIGIN)
        .header("referer", format!("{APP_ORIGIN}/studio?draft=42"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(tts_bytes_body("Page").to_string())))
        .unwrap();
    let (response, body) = harness.send(request).await;
    assert_eq!(response.status(), StatusCode::OK, "{body:?}");
    let forwarded = harness
        .stand_in
        .requests()
        .into_iter()
        .find(|request| request.path == "/tts/bytes")
        .expect("the request was forwarded");
    for name in ["origin", "referer", "cookie"] {
        assert!(
            forwarded.headers.iter().all(|(header, _)| header != name),
            "{name} reached the upstream: {:?}",
            forwarded.headers
        );
    }
}
