//! Cartesia access tokens over the real gateway: one mint per user and
//! grant, no sharing between users, re-minting after the reuse window, and
//! failed mints that are reported as 502 and not cached.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Multipart boundary of the `/stt` uploads.
const BOUNDARY: &str = "gateway-test-boundary-5b1d";

fn tts_request(url: &str, session: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{url}/tts/bytes"))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(tts_bytes_body("Hi").to_string())))
        .expect("the test request is valid")
}

/// Builds a `POST /stt` request that uploads 0.1 s of 16 kHz 16-bit silence.
fn stt_request(url: &str, session: &str) -> Request<Full<Bytes>> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nink-whisper\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.raw\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&[0_u8; 3200]);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Request::post(format!("{url}/stt?encoding=pcm_s16le&sample_rate=16000"))
        .header("authorization", format!("Bearer {session}"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Full::new(Bytes::from(body)))
        .expect("the test request is valid")
}

/// Decodes a JWT's payload without checking its signature.
fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload segment");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("the payload is base64url");
    serde_json::from_slice(&bytes).expect("the payload is JSON")
}

/// Returns the credential of every request forwarded to `path`, in order.
fn forwarded_credentials(harness: &Harness, path: &str) -> Vec<String> {
    harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.path == path)
        .map(|request| request.credential.unwrap_or_default())
        .collect()
}

fn mint_attempts(harness: &Harness) -> usize {
    harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/access-token")
        .count()
}

/// A failed mint as the client sees it: 503 `token_mint_unavailable` after
/// the retries of a transient failure, or 502 `token_mint_rejected` for a 4xx.
const MINT_UNAVAILABLE: (StatusCode, &str) =
    (StatusCode::SERVICE_UNAVAILABLE, "token_mint_unavailable");
const MINT_REJECTED: (StatusCode, &str) = (StatusCode::BAD_GATEWAY, "token_mint_rejected");

/// Checks a failed-mint response that echoes no secret.
fn assert_mint_failed(
    status: StatusCode,
    body: &Bytes,
    session: &str,
    expected: (StatusCode, &str),
    case: &str,
) {
    assert_eq!(status, expected.0, "{case}: status; body {body:?}");
    let parsed: Value = serde_json::from_slice(body)
        .unwrap_or_else(|error| panic!("{case}: the body is not JSON ({error}): {body:?}"));
    assert_eq!(parsed["error"], expected.1, "{case}: {parsed}");
    let text = String::from_utf8_lossy(body);
    assert!(
        !text.contains(API_KEY),
        "{case}: the body echoes the API key"
    );
    assert!(
        !text.contains(session),
        "{case}: the body echoes the session"
    );
}

#[tokio::test]
async fn concurrent_first_requests_mint_once() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let url = harness.url();
    let clients = [
        harness.client(),
        harness.client(),
        harness.h2_client(),
        harness.h2_client(),
    ];

    let mut tasks = Vec::new();
    for index in 0..200 {
        let client = clients[index % clients.len()].clone();
        let request = tts_request(&url, &session);
        tasks.push(tokio::spawn(async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "request {index}: {body:?}");
        assert_eq!(&body[..4], b"RIFF", "request {index} should return a WAV");
    }

    assert_eq!(
        harness.stand_in.mint_count(),
        1,
        "200 concurrent first requests of one user should share one mint"
    );
    assert_eq!(mint_attempts(&harness), 1, "only one /access-token request");
    let credentials = forwarded_credentials(&harness, "/tts/bytes");
    assert_eq!(credentials.len(), 200, "every request should be forwarded");
    let issued = harness.stand_in.issued_tokens();
    assert!(
        credentials
            .iter()
            .all(|credential| *credential == issued[0]),
        "every forwarded request should carry the one minted token"
    );
}

#[tokio::test]
async fn users_never_share_tokens() {
    let harness = Harness::start().await;
    let url = harness.url();
    let users = ["alice", "bob", "carol"];
    let sessions: Vec<String> = users
        .iter()
        .map(|user| harness.session(user, &["tts"]))
        .collect();

    for round in 0..2 {
        for (user, session) in users.iter().zip(&sessions) {
            let (response, body) = harness.send(tts_request(&url, session)).await;
            assert_eq!(response.status(), 200, "{user}, round {round}: {body:?}");
        }
    }

    assert_eq!(
        harness.stand_in.mint_count(),
        users.len(),
        "each user should get exactly one mint across both rounds"
    );
    let credentials = forwarded_credentials(&harness, "/tts/bytes");
    assert_eq!(credentials.len(), 2 * users.len(), "all requests forwarded");
    let (first_round, second_round) = credentials.split_at(users.len());
    for (index, user) in users.iter().enumerate() {
        assert_eq!(
            first_round[index], second_round[index],
            "{user}'s second request should reuse the first token"
        );
        for (other_index, other) in users.iter().enumerate().skip(index + 1) {
            assert_ne!(
                first_round[index], first_round[other_index],
                "{user} and {other} should not share a token"
            );
        }
    }
    let issued = harness.stand_in.issued_tokens();
    for (credential, user) in first_round.iter().zip(users) {
        assert!(
            issued.contains(credential),
            "{user}'s request should carry a token the stand-in minted"
        );
    }
}

#[tokio::test]
async fn grants_have_separate_tokens() {
    let harness = Harness::start().await;
    let url = harness.url();
    let session = harness.session("alice", &["tts", "stt"]);

    let (response, body) = harness.send(tts_request(&url, &session)).await;
    assert_eq!(response.status(), 200, "/tts/bytes: {body:?}");
    let (response, body) = harness.send(stt_request(&url, &session)).await;
    assert_eq!(response.status(), 200, "/stt: {body:?}");

    assert_eq!(
        harness.stand_in.mint_count(),
        2,
        "one user with two grants should get one token per grant"
    );
    let tts_token = &forwarded_credentials(&harness, "/tts/bytes")[0];
    let stt_token = &forwarded_credentials(&harness, "/stt")[0];
    assert_ne!(
        tts_token, stt_token,
        "tts and stt should use different tokens"
    );

    let tts_grants = &jwt_claims(tts_token)["grants"];
    assert_eq!(
        tts_grants["tts"], true,
        "the tts token grants tts: {tts_grants}"
    );
    assert_ne!(
        tts_grants["stt"], true,
        "the tts token must not grant stt: {tts_grants}"
    );
    let stt_grants = &jwt_claims(stt_token)["grants"];
    assert_eq!(
        stt_grants["stt"], true,
        "the stt token grants stt: {stt_grants}"
    );
    assert_ne!(
        stt_grants["tts"], true,
        "the stt token must not grant tts: {stt_grants}"
    );
}

#[tokio::test]
async fn mint_request_uses_api_key() {
    let harness = Harness::start_with(Options {
        tokens: "lifetime_secs = 900",
        ..Options::default()
    })
    .await;
    let session = harness.session("alice", &["tts"]);
    let (response, body) = harness.send(tts_request(&harness.url(), &session)).await;
    assert_eq!(response.status(), 200, "{body:?}");

    let mints: Vec<_> = harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.path == "/access-token")
        .collect();
    assert_eq!(mints.len(), 1, "one /access-token request");
    let header = |name: &str| {
        mints[0]
            .headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(mints[0].method, "POST", "/access-token is a POST");
    assert!(
        header("authorization") == Some(format!("Bearer {API_KEY}")),
        "the mint request should carry Authorization: Bearer <API key>"
    );
    assert_eq!(
        header("cartesia-version").as_deref(),
        Some(cartesia_gateway::config::DEFAULT_CARTESIA_VERSION),
        "the mint request should carry the configured Cartesia-Version"
    );
    assert!(
        mints[0].body_len > 0,
        "the mint request should have a JSON body"
    );

    let claims = jwt_claims(&harness.stand_in.issued_tokens()[0]);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(
        lifetime, 900,
        "expires_in should be the configured lifetime"
    );
}

#[tokio::test]
async fn token_reminted_after_reuse_window() {
    let harness = Harness::start_with(Options {
        tokens: "lifetime_secs = 2\nrefresh_margin_secs = 1",
        ..Options::default()
    })
    .await;
    let url = harness.url();
    let session = harness.session("alice", &["tts"]);

    for attempt in ["first", "within the window"] {
        let (response, body) = harness.send(tts_request(&url, &session)).await;
        assert_eq!(response.status(), 200, "{attempt}: {body:?}");
    }
    assert_eq!(
        harness.stand_in.mint_count(),
        1,
        "a request within the 1 s reuse window reuses the token"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (response, body) = harness.send(tts_request(&url, &session)).await;
    assert_eq!(response.status(), 200, "after the window: {body:?}");
    assert_eq!(
        harness.stand_in.mint_count(),
        2,
        "a request after the reuse window should mint again"
    );
    let credentials = forwarded_credentials(&harness, "/tts/bytes");
    assert_eq!(credentials[0], credentials[1], "reused within the window");
    assert_ne!(
        credentials[1], credentials[2],
        "the token after the window should be a new one"
    );
}

#[tokio::test]
async fn failed_mint_is_not_cached() {
    let harness = Harness::start_with(Options {
        tokens: "mint_retry_delay_ms = 10",
        ..Options::default()
    })
    .await;
    let url = harness.url();
    let session = harness.session("alice", &["tts"]);

    for (status, expected) in [(500, MINT_UNAVAILABLE), (401, MINT_REJECTED)] {
        harness.stand_in.faults().fail_mints_with(Some(status));
        let (response, body) = harness.send(tts_request(&url, &session)).await;
        let case = format!("mint answered {status}");
        assert_mint_failed(response.status(), &body, &session, expected, &case);
    }
    assert_eq!(
        mint_attempts(&harness),
        4,
        "the 500 was tried three times (two retries), the 401 once"
    );
    assert!(
        forwarded_credentials(&harness, "/tts/bytes").is_empty(),
        "nothing should be forwarded without a token"
    );

    harness.stand_in.faults().fail_mints_with(None);
    let (response, body) = harness.send(tts_request(&url, &session)).await;
    assert_eq!(
        response.status(),
        200,
        "the request after the failures should mint again: {body:?}"
    );
    assert_eq!(harness.stand_in.mint_count(), 1, "one successful mint");
    assert_eq!(
        mint_attempts(&harness),
        5,
        "four failed and one good attempt"
    );
}

#[tokio::test]
async fn concurrent_failing_mints_coalesce() {
    let harness = Harness::start().await;
    let url = harness.url();
    let session = harness.session("alice", &["tts"]);
    let client = harness.h2_client();

    // Open the HTTP/2 connection first with a request that is never
    // forwarded, so the 20 requests below arrive together.
    let warm_up = Request::get(format!("{url}/not-a-route"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(warm_up).await.unwrap();
    assert_eq!(
        response.status(),
        404,
        "the warm-up request is not forwarded"
    );

    harness.stand_in.faults().fail_mints_with(Some(500));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = client.clone();
        let request = tts_request(&url, &session);
        tasks.push(tokio::spawn(async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_mint_failed(
            status,
            &body,
            &session,
            MINT_UNAVAILABLE,
            &format!("request {index}"),
        );
    }

    let attempts = mint_attempts(&harness);
    println!("20 concurrent requests made {attempts} /access-token attempts");
    assert!(
        (1..=3).contains(&attempts),
        "concurrent misses should share a mint attempt, saw {attempts} attempts"
    );
    assert!(
        forwarded_credentials(&harness, "/tts/bytes").is_empty(),
        "nothing should be forwarded without a token"
    );
}
