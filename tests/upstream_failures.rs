//! Upstream and mint failures through the real gateway over real TLS: mint
//! rejections, retries, the failing-mint rate limit, mint timeouts, 401s to
//! cached tokens, 429 pass-through, a response cut mid-stream, and pooled
//! connections the upstream drops while idle.
//!
//! Log lines are captured by one process-wide subscriber, set up once for
//! all tests in this file. Only one test makes Cartesia reject the API key
//! and only one breaks a response mid-stream, so counting those lines in the
//! shared log is exact.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::header::RETRY_AFTER;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Token settings that retry quickly.
const FAST_RETRIES: &str = "mint_retries = 2\nmint_retry_delay_ms = 10";

/// Returns the process-wide log capture, installing it on first use.
fn captured_log() -> &'static CapturedLog {
    static LOG: OnceLock<CapturedLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = CapturedLog::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(log.clone())
            .with_ansi(false)
            .try_init()
            .expect("no other subscriber is installed in this test binary");
        log
    })
}

async fn start(options: Options) -> Harness {
    captured_log();
    Harness::start_with(options).await
}

/// A response head and its whole body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn error_code(&self) -> String {
        let parsed: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        parsed["error"]
            .as_str()
            .or_else(|| parsed["error_code"].as_str())
            .unwrap_or("<no error code>")
            .to_owned()
    }

    fn retry_after(&self) -> Option<&str> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
    }

    fn preview(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(200).collect()
    }
}

/// Builds `POST /tts/bytes` for `user`'s session, with a synthesis request
/// or, for `None`, an empty body.
fn tts_post(harness: &Harness, user: &str, transcript: Option<&str>) -> Request<Full<Bytes>> {
    let session = harness.session(user, &["tts"]);
    let body = transcript.map_or_else(Bytes::new, |transcript| {
        Bytes::from(tts_bytes_body(transcript).to_string())
    });
    Request::post(format!("{}/tts/bytes", harness.url()))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

async fn send_with(client: &TestClient, request: Request<Full<Bytes>>) -> Answer {
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a synthesis request for `user` over a new HTTP/1.1 connection.
async fn synthesize(harness: &Harness, user: &str) -> Answer {
    send_with(&harness.client(), tts_post(harness, user, Some("Hello"))).await
}

fn mint_attempts(harness: &Harness) -> usize {
    harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/access-token")
        .count()
}

/// Returns the credential of every request that reached `path`, in order.
fn credentials_at(harness: &Harness, path: &str) -> Vec<String> {
    harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.path == path)
        .map(|request| request.credential.unwrap_or_default())
        .collect()
}

fn assert_unavailable(answer: &Answer, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{case}: {}",
        answer.preview()
    );
    assert_eq!(answer.error_code(), "token_mint_unavailable", "{case}");
    assert_eq!(
        answer.retry_after(),
        Some("1"),
        "{case}: Retry-After in seconds"
    );
}

#[tokio::test]
async fn mint_rejection_is_not_retried() {
    let harness = start(Options {
        tokens: FAST_RETRIES,
        ..Options::default()
    })
    .await;
    let log = captured_log();
    let faults = harness.stand_in.faults();

    let cases = [
        (401, "key-a"),
        (401, "key-b"),
        (403, "key-c"),
        (400, "key-d"),
    ];
    for (attempts_before, (status, user)) in cases.into_iter().enumerate() {
        faults.fail_mints_with(Some(status));
        let answer = synthesize(&harness, user).await;
        let case = format!("mint answered {status}");
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "{case}: {}",
            answer.preview()
        );
        assert_eq!(answer.error_code(), "token_mint_rejected", "{case}");
        assert_eq!(answer.retry_after(), None, "{case}: nothing to retry");
        assert_eq!(
            mint_attempts(&harness),
            attempts_before + 1,
            "{case}: exactly one /access-token attempt"
        );
        let body = String::from_utf8_lossy(&answer.body);
        assert!(!body.contains(API_KEY), "{case}: the body holds the key");
    }
    assert!(
        credentials_at(&harness, "/tts/bytes").is_empty(),
        "nothing is forwarded without a token"
    );

    assert_eq!(
        log.count("Cartesia rejected the API key"),
        1,
        "three key rejections within a minute log one line"
    );
    let text = log.text();
    let line = text
        .lines()
        .find(|line| line.contains("Cartesia rejected the API key"))
        .unwrap();
    assert!(line.contains("ERROR"), "logged at error: {line}");
    assert!(
        !text.contains(API_KEY),
        "the log never contains the API key"
    );
}

#[tokio::test]
async fn transient_mint_failures_are_retried() {
    let harness = start(Options {
        tokens: FAST_RETRIES,
        ..Options::default()
    })
    .await;
    harness.stand_in.faults().fail_next_mints(503, 2);

    let answer = synthesize(&harness, "retry-user").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.preview());
    assert_eq!(
        mint_attempts(&harness),
        3,
        "two failed attempts and a good one"
    );
    assert_eq!(harness.stand_in.mint_count(), 1, "one token minted");
}

#[tokio::test]
async fn persistent_mint_failure_gets_503() {
    let harness = start(Options {
        tokens: FAST_RETRIES,
        ..Options::default()
    })
    .await;
    harness.stand_in.faults().fail_mints_with(Some(503));

    let answer = synthesize(&harness, "outage-user").await;
    assert_unavailable(&answer, "mint always 503");
    assert_eq!(
        mint_attempts(&harness),
        3,
        "mint_retries = 2 means three attempts"
    );
    assert!(
        credentials_at(&harness, "/tts/bytes").is_empty(),
        "nothing is forwarded without a token"
    );
}

#[tokio::test]
async fn failing_mints_are_rate_limited() {
    const PER_SEC: usize = 2;
    let harness = start(Options {
        tokens: "mint_retries = 0\nmax_failing_mints_per_sec = 2",
        ..Options::default()
    })
    .await;
    harness.stand_in.faults().fail_mints_with(Some(503));
    let client = harness.h2_client();

    let answer = send_with(&client, tts_post(&harness, "first", Some("Hi"))).await;
    assert_unavailable(&answer, "the failure that starts the limit");
    assert_eq!(mint_attempts(&harness), 1, "one attempt before the burst");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..50 {
        let client = client.clone();
        let request = tts_post(&harness, &format!("burst-{index}"), Some("Hi"));
        tasks.push(tokio::spawn(
            async move { send_with(&client, request).await },
        ));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let answer = task.await.unwrap();
        assert_unavailable(&answer, &format!("burst request {index}"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let burst_attempts = mint_attempts(&harness) - 1;
    // The budget starts with PER_SEC attempts and refills PER_SEC per second.
    let allowed = PER_SEC + (PER_SEC as f64 * elapsed).ceil() as usize;
    println!("50 requests in {elapsed:.3} s made {burst_attempts} mint attempts");
    assert!(
        burst_attempts <= allowed,
        "{burst_attempts} attempts in {elapsed:.3} s; at most {allowed} allowed"
    );

    // A success ends the limit: first wait for one attempt to get through.
    harness.stand_in.faults().fail_mints_with(None);
    let mut recovered = false;
    for _ in 0..30 {
        let answer = send_with(&client, tts_post(&harness, "recovery", Some("Hi"))).await;
        if answer.status == StatusCode::OK {
            recovered = true;
            break;
        }
        assert_unavailable(&answer, "while the budget refills");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "minting recovers once the budget refills");

    let attempts_before = mint_attempts(&harness);
    let mut tasks = Vec::new();
    for index in 0..10 {
        let client = client.clone();
        let request = tts_post(&harness, &format!("after-{index}"), Some("Hi"));
        tasks.push(tokio::spawn(
            async move { send_with(&client, request).await },
        ));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let answer = task.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {index} after recovery: {}",
            answer.preview()
        );
    }
    assert_eq!(
        mint_attempts(&harness) - attempts_before,
        10,
        "without failures every new user mints at once"
    );
}

#[tokio::test]
async fn mint_timeout_gets_503() {
    let harness = start(Options {
        upstream: "response_timeout_secs = 1",
        tokens: "mint_retries = 0",
        ..Options::default()
    })
    .await;
    harness
        .stand_in
        .faults()
        .delay_mints(Some(Duration::from_millis(1400)));

    let started = Instant::now();
    let answer = synthesize(&harness, "slow-mint").await;
    let elapsed = started.elapsed();
    assert_unavailable(&answer, "mint slower than the response timeout");
    assert!(
        elapsed >= Duration::from_secs(1),
        "the gateway waited the response timeout, not {elapsed:?}"
    );
    assert_eq!(mint_attempts(&harness), 1, "one attempt, no retries");
}

/// Returns the token the stand-in issued last.
fn last_issued(harness: &Harness) -> String {
    harness.stand_in.issued_tokens().last().cloned().unwrap()
}

#[tokio::test]
async fn rejected_token_on_websocket_is_replaced() {
    let harness = start(Options::default()).await;
    let warm = synthesize(&harness, "ws-user").await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.preview());
    let first_token = last_issued(&harness);
    harness.stand_in.faults().reject_token(&first_token, 1);

    let session = harness.session("ws-user", &["tts"]);
    let path = format!("/tts/websocket?cartesia_version=2026-08-14&access_token={session}");
    let mut socket = harness
        .websocket(&path, &[])
        .await
        .expect("the handshake succeeds after one retry");
    let request = serde_json::json!({
        "context_id": "ctx-retry",
        "model_id": "sonic-3",
        "transcript": "After a new token",
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "continue": false,
    });
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a message within five seconds")
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(event["type"], "chunk", "the relay works: {event}");
    socket.close(None).await.unwrap();

    let handshakes = credentials_at(&harness, "/tts/websocket");
    assert_eq!(
        handshakes.len(),
        2,
        "one rejected and one repeated handshake"
    );
    assert_eq!(
        handshakes[0], first_token,
        "the first used the cached token"
    );
    let second_token = last_issued(&harness);
    assert_ne!(second_token, first_token, "a new token was minted");
    assert_eq!(handshakes[1], second_token, "the retry used the new token");
    assert_eq!(harness.stand_in.mint_count(), 2, "one mint for the retry");

    let answer = synthesize(&harness, "ws-user").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.preview());
    let forwarded = credentials_at(&harness, "/tts/bytes");
    assert_eq!(
        forwarded.last(),
        Some(&second_token),
        "the new token is cached"
    );
    assert_eq!(harness.stand_in.mint_count(), 2, "no further mint");
}

#[tokio::test]
async fn rejected_token_on_bodiless_post_is_replaced() {
    let harness = start(Options::default()).await;
    let clients = [
        ("HTTP/1.1", harness.client()),
        ("HTTP/2", harness.h2_client()),
    ];
    for (index, (version, client)) in clients.iter().enumerate() {
        let user = format!("bodiless-{index}");
        let warm = send_with(client, tts_post(&harness, &user, Some("Hi"))).await;
        assert_eq!(warm.status, StatusCode::OK, "{version}: {}", warm.preview());
        let first_token = last_issued(&harness);
        harness.stand_in.faults().reject_token(&first_token, 1);
        let forwarded_before = credentials_at(&harness, "/tts/bytes").len();

        let answer = send_with(client, tts_post(&harness, &user, None)).await;
        // The stand-in rejects an empty synthesis request with 400. That it
        // got this far means the retried request carried a valid token.
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{version}: the retry reached validation: {}",
            answer.preview()
        );
        assert_eq!(answer.error_code(), "invalid_request", "{version}");

        let forwarded = credentials_at(&harness, "/tts/bytes");
        let sent = &forwarded[forwarded_before..];
        assert_eq!(sent.len(), 2, "{version}: the request was sent twice");
        assert_eq!(
            sent[0], first_token,
            "{version}: first with the cached token"
        );
        let second_token = last_issued(&harness);
        assert_ne!(second_token, first_token, "{version}: a new token");
        assert_eq!(sent[1], second_token, "{version}: then with the new one");
    }
    assert_eq!(harness.stand_in.mint_count(), 4, "two mints per user");
}

#[tokio::test]
async fn rejected_token_with_body_reaches_client() {
    let harness = start(Options::default()).await;
    let warm = synthesize(&harness, "upload-user").await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.preview());
    let first_token = last_issued(&harness);
    harness.stand_in.faults().reject_token(&first_token, 1);

    let answer = synthesize(&harness, "upload-user").await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "a request whose body was sent is not repeated: {}",
        answer.preview()
    );
    assert_eq!(
        answer.error_code(),
        "invalid_credentials",
        "the upstream's 401 passes through"
    );
    assert_eq!(
        credentials_at(&harness, "/tts/bytes").len(),
        2,
        "sent once after the warm-up"
    );
    assert_eq!(harness.stand_in.mint_count(), 1, "no mint for that request");

    let answer = synthesize(&harness, "upload-user").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.preview());
    let forwarded = credentials_at(&harness, "/tts/bytes");
    let second_token = last_issued(&harness);
    assert_ne!(second_token, first_token, "the rejected token was evicted");
    assert_eq!(
        forwarded[2], second_token,
        "the next request used a new token"
    );
}

#[tokio::test]
async fn upstream_429_keeps_token() {
    let harness = start(Options::default()).await;
    let warm = synthesize(&harness, "busy-user").await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.preview());

    harness
        .stand_in
        .faults()
        .respond_with_status(Some((429, Some(7))));
    let answer = synthesize(&harness, "busy-user").await;
    harness.stand_in.faults().respond_with_status(None);
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "passes through"
    );
    assert_eq!(
        answer.retry_after(),
        Some("7"),
        "with the upstream's Retry-After"
    );

    let answer = synthesize(&harness, "busy-user").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.preview());
    let forwarded = credentials_at(&harness, "/tts/bytes");
    assert_eq!(forwarded.len(), 3, "three forwarded requests");
    assert!(
        forwarded.iter().all(|token| *token == forwarded[0]),
        "all three used the same token"
    );
    assert_eq!(harness.stand_in.mint_count(), 1, "the 429 evicted nothing");
}

#[tokio::test]
async fn broken_upstream_response_is_logged_once() {
    let harness = start(Options::default()).await;
    let log = captured_log();
    let message = "the upstream response failed mid-stream";
    harness.stand_in.faults().break_stream_after(Some(2));

    let response = harness
        .client()
        .request(tts_post(
            &harness,
            "broken-user",
            Some("A longer sentence to stream"),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the head arrives");
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the client sees a broken body");

    let logged = eventually(|| log.count(message) >= 1).await;
    assert!(logged, "the broken response is logged");
    assert_eq!(log.count(message), 1, "exactly once");
    let text = log.text();
    let line = text.lines().find(|line| line.contains(message)).unwrap();
    assert!(line.contains("WARN"), "logged at warn: {line}");
    assert!(line.contains("/tts/bytes"), "in the request's span: {line}");
}

/// Sends three synthesis requests with bodies, each after the stand-in has
/// dropped the gateway's idle pooled connection, and checks that all succeed.
async fn survive_idle_closes(harness: &Harness, user: &str) {
    harness
        .stand_in
        .faults()
        .close_idle_connections_after(Some(Duration::from_millis(50)));
    let client = harness.client();
    for round in 0..3 {
        let answer = send_with(&client, tts_post(harness, user, Some("Hi"))).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "round {round}: {}",
            answer.preview()
        );
        let closed = eventually(|| harness.stand_in.idle_connections_closed() > round).await;
        assert!(
            closed,
            "round {round}: the stand-in dropped the idle connection"
        );
    }
    let answer = send_with(&client, tts_post(harness, user, Some("Hi"))).await;
    assert_eq!(answer.status, StatusCode::OK, "last: {}", answer.preview());
}

/// Returns, for each forwarded request, whether it reached the stand-in over
/// HTTP/1.1. hyper adds `Host` there, while HTTP/2 uses a pseudo-header.
fn forwarded_over_http1(harness: &Harness) -> Vec<bool> {
    harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/tts/bytes")
        .map(|request| request.headers.iter().any(|(name, _)| name == "host"))
        .collect()
}

#[tokio::test]
async fn idle_http2_upstream_close_is_survived() {
    let harness = start(Options::default()).await;
    survive_idle_closes(&harness, "idle-h2").await;
    let versions = forwarded_over_http1(&harness);
    assert_eq!(versions.len(), 4, "four forwarded requests");
    assert!(
        versions.iter().all(|http1| !http1),
        "the upstream leg used HTTP/2"
    );
}

#[tokio::test]
async fn idle_http1_upstream_close_is_survived() {
    let harness = start(Options::default()).await;
    harness.stand_in.faults().offer_http1_only(true);
    survive_idle_closes(&harness, "idle-h1").await;
    let versions = forwarded_over_http1(&harness);
    assert_eq!(versions.len(), 4, "four forwarded requests");
    assert!(
        versions.iter().all(|http1| *http1),
        "the upstream leg used HTTP/1.1"
    );
}
