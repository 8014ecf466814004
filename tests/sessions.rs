//! Session checks over the real gateway: every rejected session gets a JSON
//! 401 or 403 and reaches neither the token endpoint nor the forwarded
//! route, on `POST /tts/bytes` and on the `/stt/websocket` handshake.

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// The STT WebSocket route with the query parameters the stand-in requires.
const STT_WS: &str = "/stt/websocket?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000";
/// The audience the harness configures.
const AUDIENCE: &str = "cartesia-gateway-tests";
/// A user id that is easy to spot if a response ever echoes the claims.
const USER: &str = "user-4f9c2e";

/// What a request presents as its session.
enum Presented {
    Nothing,
    /// A JWT (or something pretending to be one), sent in each credential place.
    Token(String),
    /// A whole `Authorization` header value.
    Authorization(&'static str),
}

/// Claims of a valid session for [`USER`] with `grants`, ten minutes long.
fn claims(grants: Value) -> Value {
    json!({
        "sub": USER,
        "grants": grants,
        "aud": AUDIENCE,
        "exp": unix_now() + 600,
    })
}

/// Signs `claims` with a secret the gateway does not know.
fn sign_with_other_secret(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-0123456789-abcdefghijklmnop")
            .expect("an HMAC key accepts any secret"),
    )
    .expect("the claims serialize")
}

/// Builds an unsigned JWT with `alg: none` (RFC 7519 section 6).
fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Returns the `Origin` header that a browser on the allowed app origin
/// sends with its cookie, which cookie-authenticated requests need.
fn app_origin() -> (&'static str, String) {
    ("origin", APP_ORIGIN.to_owned())
}

fn tts_request(harness: &Harness, query: &str, headers: &[(&str, String)]) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("{}/tts/bytes{query}", harness.url()))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(Bytes::from(tts_bytes_body("Hi").to_string())))
        .expect("the test request is valid")
}

/// Sends `POST /tts/bytes` with `headers` and `query` (empty or starting
/// with `?`).
async fn post_tts(
    harness: &Harness,
    query: &str,
    headers: &[(&str, String)],
) -> (Response<()>, Bytes) {
    harness.send(tts_request(harness, query, headers)).await
}

/// Sends a WebSocket handshake for `/stt/websocket` as an ordinary HTTP/1.1
/// request, so a rejection arrives with its whole body. `extra_query`
/// starts with `&` or is empty.
async fn stt_handshake(
    harness: &Harness,
    extra_query: &str,
    headers: &[(&str, String)],
) -> (Response<()>, Bytes) {
    let mut builder = Request::get(format!("{}{STT_WS}{extra_query}", harness.url()))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", STANDARD.encode(b"0123456789abcdef"));
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    harness
        .send(
            builder
                .body(Full::new(Bytes::new()))
                .expect("the test handshake is valid"),
        )
        .await
}

/// Opens `/stt/websocket` with a real WebSocket client.
async fn open_stt(
    harness: &Harness,
    extra_query: &str,
    headers: &[(&str, String)],
) -> Result<Socket, tungstenite::Error> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    harness
        .websocket(&format!("{STT_WS}{extra_query}"), &headers)
        .await
}

/// Sends 0.1 s of silence and `finalize`, and checks that a transcript and
/// `flush_done` come back through the relay.
async fn assert_stt_round_trip(mut socket: Socket, case: &str) {
    socket
        .send(Message::binary(vec![0_u8; 3200]))
        .await
        .unwrap_or_else(|error| panic!("{case}: sending audio failed: {error}"));
    socket
        .send(Message::text("finalize"))
        .await
        .unwrap_or_else(|error| panic!("{case}: sending finalize failed: {error}"));
    let mut transcripts = 0;
    for _ in 0..20 {
        let message = socket
            .next()
            .await
            .unwrap_or_else(|| panic!("{case}: the socket ended before flush_done"))
            .unwrap_or_else(|error| panic!("{case}: reading from the socket failed: {error}"));
        let event: Value = message
            .to_text()
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| panic!("{case}: expected a JSON text message, got {message:?}"));
        match event["type"].as_str() {
            Some("transcript") => transcripts += 1,
            Some("flush_done") => break,
            other => panic!("{case}: unexpected STT message type {other:?}"),
        }
    }
    assert_eq!(
        transcripts, 1,
        "{case}: expected one transcript before flush_done"
    );
    socket
        .close(None)
        .await
        .unwrap_or_else(|error| panic!("{case}: closing the socket failed: {error}"));
}

/// Returns the pieces of `jwt` a leaking response could contain: the whole
/// token, each segment, and every string claim of its payload.
fn secret_fragments(jwt: &str) -> Vec<String> {
    let mut fragments = vec![jwt.to_owned()];
    fragments.extend(
        jwt.split('.')
            .filter(|segment| segment.len() >= 8)
            .map(str::to_owned),
    );
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|segment| URL_SAFE_NO_PAD.decode(segment).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    if let Some(Value::Object(claims)) = payload {
        for value in claims.values() {
            if let Some(text) = value.as_str().filter(|text| text.len() >= 4) {
                fragments.push(text.to_owned());
            }
        }
    }
    fragments
}

/// Checks a gateway-made rejection: its status, JSON shape and code, that
/// it echoes none of `jwts`, and that the stand-in has seen no request.
fn assert_rejected(
    harness: &Harness,
    (response, body): &(Response<()>, Bytes),
    status: StatusCode,
    code: &str,
    jwts: &[&str],
    case: &str,
) {
    assert_eq!(response.status(), status, "{case}: status; body {body:?}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("application/json"),
        "{case}: the error body should be JSON"
    );
    let parsed: Value = serde_json::from_slice(body)
        .unwrap_or_else(|error| panic!("{case}: the body is not JSON ({error}): {body:?}"));
    assert_eq!(parsed["error"], code, "{case}: error code in {parsed}");
    assert!(
        parsed["message"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{case}: the body should carry a message: {parsed}"
    );
    let text = String::from_utf8_lossy(body);
    for jwt in jwts {
        for fragment in secret_fragments(jwt) {
            assert!(
                !text.contains(&fragment),
                "{case}: the response body echoes part of the session JWT"
            );
        }
    }
    let seen = harness.stand_in.requests();
    assert!(
        seen.is_empty(),
        "{case}: the stand-in should have seen nothing, saw {seen:?}"
    );
}

/// A credential place and the headers that carry the credential there.
type Attempt = (&'static str, Vec<(&'static str, String)>);

/// Sends `presented` as a bearer header and as a cookie to `/tts/bytes`,
/// and as a bearer header, a cookie and an `access_token` query to
/// `/stt/websocket`. Every attempt must get 401 with `code`.
async fn assert_session_rejected(harness: &Harness, presented: Presented, code: &str) {
    let (attempts, jwt): (Vec<Attempt>, Option<&str>) = match &presented {
        Presented::Nothing => (vec![("no credential", vec![])], None),
        Presented::Token(token) => {
            let attempts = vec![
                ("bearer", vec![("authorization", format!("Bearer {token}"))]),
                (
                    "cookie",
                    vec![("cookie", format!("session={token}")), app_origin()],
                ),
            ];
            (attempts, Some(token.as_str()))
        }
        Presented::Authorization(value) => {
            let attempt = (
                "authorization",
                vec![("authorization", (*value).to_owned())],
            );
            (vec![attempt], Some(*value))
        }
    };
    let jwts: Vec<&str> = jwt.into_iter().collect();
    let status = StatusCode::UNAUTHORIZED;

    for (place, headers) in &attempts {
        let response = post_tts(harness, "", headers).await;
        let case = format!("POST /tts/bytes, {place}");
        assert_rejected(harness, &response, status, code, &jwts, &case);

        let response = stt_handshake(harness, "", headers).await;
        let case = format!("/stt/websocket, {place}");
        assert_rejected(harness, &response, status, code, &jwts, &case);
    }

    if let Presented::Token(token) = &presented {
        let query = format!("&access_token={token}");
        let response = stt_handshake(harness, &query, &[]).await;
        let case = "/stt/websocket, access_token query";
        assert_rejected(harness, &response, status, code, &jwts, case);

        match open_stt(harness, &query, &[]).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(
                response.status(),
                status,
                "a WebSocket client should see the 401"
            ),
            Err(other) => panic!("the WebSocket handshake failed unexpectedly: {other}"),
            Ok(_) => panic!("the WebSocket opened with a rejected session"),
        }
    }
}

#[tokio::test]
async fn missing_session_is_rejected() {
    let harness = Harness::start().await;
    assert_session_rejected(&harness, Presented::Nothing, "missing_session").await;
}

#[tokio::test]
async fn expired_session_is_rejected() {
    let harness = Harness::start().await;
    let mut expired = claims(json!(["tts", "stt"]));
    expired["exp"] = json!(unix_now() - 120);
    let token = session_token(expired);
    assert_session_rejected(&harness, Presented::Token(token), "session_expired").await;
}

#[tokio::test]
async fn expired_within_leeway_is_accepted() {
    let harness = Harness::start().await;
    let mut recent = claims(json!(["tts"]));
    recent["exp"] = json!(unix_now() - 5);
    let token = session_token(recent);
    let (response, body) = post_tts(
        &harness,
        "",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "a session 5 s past exp is within the 30 s leeway: {body:?}"
    );
}

#[tokio::test]
async fn badly_signed_session_is_rejected() {
    let harness = Harness::start().await;
    let token = sign_with_other_secret(&claims(json!(["tts", "stt"])));
    assert_session_rejected(&harness, Presented::Token(token), "invalid_session").await;
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let harness = Harness::start().await;
    let mut other = claims(json!(["tts", "stt"]));
    other["aud"] = json!("some-other-service");
    let token = session_token(other);
    assert_session_rejected(&harness, Presented::Token(token), "invalid_session").await;
}

#[tokio::test]
async fn missing_audience_is_rejected() {
    let harness = Harness::start().await;
    let mut without = claims(json!(["tts", "stt"]));
    without.as_object_mut().unwrap().remove("aud");
    let token = session_token(without);
    assert_session_rejected(&harness, Presented::Token(token), "invalid_session").await;
}

#[tokio::test]
async fn unsigned_alg_none_is_rejected() {
    let harness = Harness::start().await;
    let token = unsigned_token(&claims(json!(["tts", "stt"])));
    assert_session_rejected(&harness, Presented::Token(token), "invalid_session").await;
}

#[tokio::test]
async fn garbage_token_is_rejected() {
    let harness = Harness::start().await;
    for garbage in [
        "not-a-jwt",
        "aaaa.bbbb.cccc",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.e30",
    ] {
        assert_session_rejected(
            &harness,
            Presented::Token(garbage.to_owned()),
            "invalid_session",
        )
        .await;
    }
}

#[tokio::test]
async fn non_bearer_scheme_is_rejected() {
    let harness = Harness::start().await;
    for value in ["Basic YWxpY2U6c2VjcmV0", "Token abc.def.ghi", "Bearer"] {
        assert_session_rejected(&harness, Presented::Authorization(value), "invalid_session").await;
    }
}

#[tokio::test]
async fn missing_grant_is_forbidden() {
    let harness = Harness::start().await;
    let stt_only = session_token(claims(json!(["stt"])));
    let tts_only = session_token(claims(json!(["tts"])));

    let response = post_tts(
        &harness,
        "",
        &[("authorization", format!("Bearer {stt_only}"))],
    )
    .await;
    let case = "POST /tts/bytes with only stt";
    assert_rejected(
        &harness,
        &response,
        StatusCode::FORBIDDEN,
        "grant_missing",
        &[&stt_only],
        case,
    );

    let response = stt_handshake(&harness, &format!("&access_token={tts_only}"), &[]).await;
    let case = "/stt/websocket with only tts";
    assert_rejected(
        &harness,
        &response,
        StatusCode::FORBIDDEN,
        "grant_missing",
        &[&tts_only],
        case,
    );

    let empty = session_token(claims(json!([])));
    let response = post_tts(
        &harness,
        "",
        &[("cookie", format!("session={empty}")), app_origin()],
    )
    .await;
    let case = "POST /tts/bytes with an empty grant list";
    assert_rejected(
        &harness,
        &response,
        StatusCode::FORBIDDEN,
        "grant_missing",
        &[&empty],
        case,
    );
}

#[tokio::test]
async fn space_separated_grants_work() {
    let harness = Harness::start().await;
    let token = session_token(claims(json!("tts stt")));

    let (response, body) = post_tts(
        &harness,
        "",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(response.status(), 200, "tts from \"tts stt\": {body:?}");

    let socket = open_stt(&harness, &format!("&access_token={token}"), &[])
        .await
        .expect("stt from \"tts stt\" should open the WebSocket");
    assert_stt_round_trip(socket, "space-separated grants").await;
}

#[tokio::test]
async fn default_grants_apply_without_claim() {
    let harness = Harness::start_with(Options {
        session: "default_grants = [\"tts\"]",
        ..Options::default()
    })
    .await;
    let mut without = claims(Value::Null);
    without.as_object_mut().unwrap().remove("grants");
    let token = session_token(without);

    let response = stt_handshake(&harness, &format!("&access_token={token}"), &[]).await;
    let case = "/stt/websocket with default grants [tts]";
    assert_rejected(
        &harness,
        &response,
        StatusCode::FORBIDDEN,
        "grant_missing",
        &[&token],
        case,
    );

    let (response, body) = post_tts(
        &harness,
        "",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "the default tts grant should allow /tts/bytes: {body:?}"
    );
}

#[tokio::test]
async fn empty_default_grants_deny() {
    let harness = Harness::start().await;
    let mut without = claims(Value::Null);
    without.as_object_mut().unwrap().remove("grants");
    let token = session_token(without);

    let response = post_tts(
        &harness,
        "",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    let case = "POST /tts/bytes without a grants claim";
    assert_rejected(
        &harness,
        &response,
        StatusCode::FORBIDDEN,
        "grant_missing",
        &[&token],
        case,
    );

    let response = stt_handshake(&harness, &format!("&access_token={token}"), &[]).await;
    let case = "/stt/websocket without a grants claim";
    assert_rejected(
        &harness,
        &response,
        StatusCode::FORBIDDEN,
        "grant_missing",
        &[&token],
        case,
    );
}

#[tokio::test]
async fn each_credential_place_works() {
    let harness = Harness::start().await;
    let token = session_token(claims(json!(["tts", "stt"])));
    let bearer = ("authorization", format!("Bearer {token}"));
    let cookie = ("cookie", format!("theme=dark; session={token}"));

    for (place, headers) in [
        ("cookie", vec![cookie.clone(), app_origin()]),
        ("bearer", vec![bearer.clone()]),
        (
            "cookie and bearer",
            vec![cookie.clone(), bearer.clone(), app_origin()],
        ),
    ] {
        let (response, body) = post_tts(&harness, "", &headers).await;
        assert_eq!(response.status(), 200, "POST /tts/bytes, {place}: {body:?}");

        let socket = open_stt(&harness, "", &headers)
            .await
            .unwrap_or_else(|error| panic!("/stt/websocket, {place}: {error}"));
        assert_stt_round_trip(socket, place).await;
    }

    let socket = open_stt(&harness, &format!("&access_token={token}"), &[])
        .await
        .unwrap_or_else(|error| panic!("/stt/websocket, query: {error}"));
    assert_stt_round_trip(socket, "query").await;

    let socket = open_stt(
        &harness,
        &format!("&access_token={token}"),
        &[cookie, bearer, app_origin()],
    )
    .await
    .unwrap_or_else(|error| panic!("/stt/websocket, all three agreeing: {error}"));
    assert_stt_round_trip(socket, "all three agreeing").await;

    let issued = harness.stand_in.issued_tokens();
    for request in harness.stand_in.requests() {
        if request.path == "/access-token" {
            continue;
        }
        let credential = request.credential.as_deref().unwrap_or_default();
        assert_ne!(
            credential, token,
            "{} was forwarded with the session JWT",
            request.path
        );
        assert!(
            issued.iter().any(|minted| minted == credential),
            "{} was forwarded without a token the stand-in minted",
            request.path
        );
        assert!(
            !request.headers.iter().any(|(name, _)| name == "cookie"),
            "{} was forwarded with a cookie",
            request.path
        );
    }
}

#[tokio::test]
async fn query_token_on_http_is_ignored() {
    let harness = Harness::start().await;
    let token = session_token(claims(json!(["tts"])));

    let response = post_tts(&harness, &format!("?access_token={token}"), &[]).await;
    let case = "POST /tts/bytes with only an access_token query";
    assert_rejected(
        &harness,
        &response,
        StatusCode::UNAUTHORIZED,
        "missing_session",
        &[&token],
        case,
    );

    let other = session_token(json!({
        "sub": "someone-else",
        "grants": ["tts"],
        "aud": AUDIENCE,
        "exp": unix_now() + 600,
    }));
    let (response, body) = post_tts(
        &harness,
        &format!("?access_token={other}&keep=1"),
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "a query token on HTTP neither counts nor conflicts: {body:?}"
    );
    let forwarded: Vec<_> = harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.path == "/tts/bytes")
        .collect();
    assert_eq!(forwarded.len(), 1, "one request should be forwarded");
    assert_eq!(
        forwarded[0].query.as_deref(),
        Some("keep=1"),
        "access_token should be removed from the forwarded query"
    );
}

#[tokio::test]
async fn conflicting_credentials_are_rejected() {
    let harness = Harness::start().await;
    let first = session_token(claims(json!(["tts", "stt"])));
    let second = session_token(json!({
        "sub": "another-user",
        "grants": ["tts", "stt"],
        "aud": AUDIENCE,
        "exp": unix_now() + 600,
    }));
    let jwts = [first.as_str(), second.as_str()];
    let code = "ambiguous_session";
    let unauthorized = StatusCode::UNAUTHORIZED;

    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "cookie and bearer differ",
            vec![
                ("cookie", format!("session={first}")),
                ("authorization", format!("Bearer {second}")),
                app_origin(),
            ],
        ),
        (
            "two session cookies in one header",
            vec![
                ("cookie", format!("session={first}; session={second}")),
                app_origin(),
            ],
        ),
        (
            "two session cookie headers",
            vec![
                ("cookie", format!("session={first}")),
                ("cookie", format!("session={second}")),
                app_origin(),
            ],
        ),
    ];
    for (name, headers) in &cases {
        let response = post_tts(&harness, "", headers).await;
        let case = format!("POST /tts/bytes, {name}");
        assert_rejected(&harness, &response, unauthorized, code, &jwts, &case);

        let response = stt_handshake(&harness, "", headers).await;
        let case = format!("/stt/websocket, {name}");
        assert_rejected(&harness, &response, unauthorized, code, &jwts, &case);
    }

    let query = format!("&access_token={second}");
    let cookie = [("cookie", format!("session={first}")), app_origin()];
    let response = stt_handshake(&harness, &query, &cookie).await;
    let case = "/stt/websocket, query token differs from cookie";
    assert_rejected(&harness, &response, unauthorized, code, &jwts, case);

    let bearer = [("authorization", format!("Bearer {first}"))];
    let response = stt_handshake(&harness, &query, &bearer).await;
    let case = "/stt/websocket, query token differs from bearer";
    assert_rejected(&harness, &response, unauthorized, code, &jwts, case);

    match open_stt(&harness, &query, &cookie).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(
            response.status(),
            unauthorized,
            "a WebSocket client should see the 401"
        ),
        Err(other) => panic!("the WebSocket handshake failed unexpectedly: {other}"),
        Ok(_) => panic!("the WebSocket opened with conflicting credentials"),
    }
    let seen = harness.stand_in.requests();
    assert!(
        seen.is_empty(),
        "the stand-in should have seen nothing: {seen:?}"
    );
}

#[tokio::test]
async fn configured_issuer_is_required() {
    let harness = Harness::start_with(Options {
        session: "issuer = \"https://app.test\"",
        ..Options::default()
    })
    .await;
    let mut wrong = claims(json!(["tts", "stt"]));
    wrong["iss"] = json!("https://evil.test");
    assert_session_rejected(
        &harness,
        Presented::Token(session_token(wrong)),
        "invalid_session",
    )
    .await;

    let missing = claims(json!(["tts", "stt"]));
    assert_session_rejected(
        &harness,
        Presented::Token(session_token(missing)),
        "invalid_session",
    )
    .await;

    let mut right = claims(json!(["tts", "stt"]));
    right["iss"] = json!("https://app.test");
    let token = session_token(right);
    let (response, body) = post_tts(
        &harness,
        "",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "the configured issuer should be accepted: {body:?}"
    );
}
