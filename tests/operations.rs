//! The admin listener: metrics that move as traffic passes, liveness,
//! readiness and its changes, all scraped over real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Options, metric, tts_bytes_body};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn start_with_admin(options: Options) -> Harness {
    Harness::start_with(Options {
        admin: true,
        ..options
    })
    .await
}

async fn post_tts_bytes(harness: &Harness, session: Option<&str>) -> u16 {
    let mut request = Request::post(format!("{}/tts/bytes?model_id=x", harness.url()))
        .header("content-type", "application/json");
    if let Some(session) = session {
        request = request.header("authorization", format!("Bearer {session}"));
    }
    let body = Bytes::from(tts_bytes_body("Metrics test").to_string());
    let (response, _) = harness.send(request.body(Full::new(body)).unwrap()).await;
    response.status().as_u16()
}

async fn scrape(harness: &Harness) -> String {
    let (status, content_type, text) = harness.admin_get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, OPENMETRICS);
    text
}

#[tokio::test]
async fn http_requests_move_metrics() {
    let harness = start_with_admin(Options::default()).await;
    let before = scrape(&harness).await;
    let ok = r#"cartesia_gateway_requests_total{route="/tts/bytes",status_class="2xx"}"#;
    assert_eq!(metric(&before, ok), 0.0, "{before}");
    for series in [
        r#"cartesia_gateway_session_rejections_total{reason="missing"} 0"#,
        r#"cartesia_gateway_token_mints_total{result="success"} 0"#,
        r#"cartesia_gateway_websockets_open{route="/stt/websocket"} 0"#,
    ] {
        assert!(
            before.lines().any(|line| line == series),
            "{series} is exposed before any event: {before}"
        );
    }
    assert_eq!(
        metric(&before, "cartesia_gateway_ready"),
        1.0,
        "a fresh gateway reports ready: {before}"
    );

    let session = harness.session("metrics-user", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 200);
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 200);
    assert_eq!(post_tts_bytes(&harness, None).await, 401);
    let stt_only = harness.session("metrics-user", &["stt"]);
    assert_eq!(post_tts_bytes(&harness, Some(&stt_only)).await, 403);
    let (response, _) = harness
        .send(
            Request::get(format!("{}/voices", harness.url()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 404);

    // The access event, which observes the histograms, is written when the
    // response body ends, just after the client has read it.
    let mut text = String::new();
    let observed = r#"cartesia_gateway_request_duration_seconds_count{route="/tts/bytes"}"#;
    for _ in 0..50 {
        text = scrape(&harness).await;
        if metric(&text, observed) >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&text, ok), 2.0, "{text}");
    let denied = r#"cartesia_gateway_requests_total{route="/tts/bytes",status_class="4xx"}"#;
    assert_eq!(metric(&text, denied), 2.0, "{text}");
    let unknown = r#"cartesia_gateway_requests_total{route="unknown",status_class="4xx"}"#;
    assert_eq!(metric(&text, unknown), 1.0, "{text}");
    assert_eq!(metric(&text, observed), 4.0, "{text}");
    let ttfb = r#"cartesia_gateway_time_to_first_byte_seconds_count{route="/tts/bytes"}"#;
    assert_eq!(metric(&text, ttfb), 4.0, "{text}");
    assert_eq!(
        metric(&text, "cartesia_gateway_token_cache_misses_total"),
        1.0
    );
    assert_eq!(
        metric(&text, "cartesia_gateway_token_cache_hits_total"),
        1.0
    );
    let minted = r#"cartesia_gateway_token_mints_total{result="success"}"#;
    assert_eq!(metric(&text, minted), 1.0, "{text}");
    assert_eq!(
        metric(&text, "cartesia_gateway_token_mint_duration_seconds_count"),
        1.0
    );
    let missing = r#"cartesia_gateway_session_rejections_total{reason="missing"}"#;
    assert_eq!(metric(&text, missing), 1.0, "{text}");
    let no_grant = r#"cartesia_gateway_session_rejections_total{reason="grant_missing"}"#;
    assert_eq!(metric(&text, no_grant), 1.0, "{text}");
    let version = env!("CARGO_PKG_VERSION");
    let build = format!(r#"cartesia_gateway_build_info{{version="{version}"}}"#);
    assert_eq!(metric(&text, &build), 1.0, "{text}");
    assert!(
        metric(
            &text,
            "cartesia_gateway_certificate_expiry_timestamp_seconds"
        ) > 1.0e9,
        "the certificate's expiry is a Unix time: {text}"
    );
    assert!(
        !text.contains("metrics-user"),
        "no label carries a user id: {text}"
    );
}

#[tokio::test]
async fn upstream_failures_are_counted_by_kind() {
    let harness = start_with_admin(Options::default()).await;
    let session = harness.session("failing-user", &["tts"]);

    harness
        .stand_in
        .faults()
        .respond_with_status(Some((503, None)));
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 503);
    harness.stand_in.faults().respond_with_status(None);

    harness.stand_in.faults().fail_mints_with(Some(500));
    let other = harness.session("failing-user-2", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&other)).await, 503);
    harness.stand_in.faults().fail_mints_with(None);

    let text = scrape(&harness).await;
    let passed = r#"cartesia_gateway_upstream_errors_total{kind="status_5xx"}"#;
    assert_eq!(metric(&text, passed), 1.0, "{text}");
    let server_error = r#"cartesia_gateway_token_mints_total{result="server_error"}"#;
    assert!(
        metric(&text, server_error) >= 1.0,
        "failed mint attempts are counted: {text}"
    );
    let upstream_5xx = r#"cartesia_gateway_requests_total{route="/tts/bytes",status_class="5xx"}"#;
    assert_eq!(metric(&text, upstream_5xx), 2.0, "{text}");
}

#[tokio::test]
async fn unreachable_upstream_fails_mints_as_transport_errors() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let harness = start_with_admin(Options {
        upstream_url: Some(format!("https://{addr}")),
        tokens: "mint_retries = 0",
        ..Options::default()
    })
    .await;
    let session = harness.session("unreachable-user", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 503);
    let text = scrape(&harness).await;
    let transport = r#"cartesia_gateway_token_mints_total{result="transport_error"}"#;
    assert_eq!(metric(&text, transport), 1.0, "{text}");
}

#[tokio::test]
async fn websockets_move_open_gauge_and_traffic_counters() {
    let harness = start_with_admin(Options::default()).await;
    let session = harness.session("ws-metrics-user", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .unwrap();
    let request = json!({
        "context_id": "ctx-metrics",
        "model_id": "sonic-3",
        "transcript": "Count me",
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "continue": false,
    });
    let sent = request.to_string();
    socket.send(Message::text(sent.clone())).await.unwrap();
    let mut received = 0;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the stand-in answers")
            .expect("the socket stays open")
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        received += 1;
        let event: Value = serde_json::from_str(text.as_str()).unwrap();
        if event["type"] == "done" {
            break;
        }
    }

    let text = scrape(&harness).await;
    let open = r#"cartesia_gateway_websockets_open{route="/tts/websocket"}"#;
    assert_eq!(metric(&text, open), 1.0, "{text}");
    let upgraded = r#"cartesia_gateway_requests_total{route="/tts/websocket",status_class="1xx"}"#;
    assert_eq!(metric(&text, upgraded), 1.0, "{text}");
    let to_upstream =
        r#"cartesia_gateway_websocket_messages_total{direction="client_to_upstream"}"#;
    assert_eq!(metric(&text, to_upstream), 1.0, "{text}");
    let bytes_up = r#"cartesia_gateway_websocket_bytes_total{direction="client_to_upstream"}"#;
    assert_eq!(metric(&text, bytes_up), sent.len() as f64, "{text}");
    let to_client = r#"cartesia_gateway_websocket_messages_total{direction="upstream_to_client"}"#;
    assert!(
        metric(&text, to_client) >= f64::from(received),
        "every message the client read was counted: {text}"
    );

    socket.close(None).await.unwrap();
    while let Some(Ok(_)) = socket.next().await {}
    let closed_by_client = r#"cartesia_gateway_websocket_closes_total{closed_by="client"}"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&harness).await;
        if metric(&text, closed_by_client) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&text, closed_by_client), 1.0, "{text}");
    assert_eq!(metric(&text, open), 0.0, "{text}");
}

#[tokio::test]
async fn liveness_and_admin_errors() {
    let harness = start_with_admin(Options::default()).await;
    let (status, content_type, body) = harness.admin_get("/livez").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );

    let (status, _, body) = harness.admin_get("/tts/bytes").await;
    assert_eq!(status, 404, "the admin listener forwards nothing: {body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"], "not_found");
    assert!(
        harness.stand_in.requests().is_empty(),
        "nothing reached the stand-in"
    );

    let addr = harness.admin_addr.unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::post(format!("http://{addr}/readyz"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn readiness_turns_false_when_shutdown_begins() {
    let mut harness = start_with_admin(Options {
        server: "shutdown_delay_secs = 2",
        ..Options::default()
    })
    .await;
    let (status, _, body) = harness.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["certificate"], "ok");

    harness.signal_stop();
    let mut report = (0, String::new());
    for _ in 0..100 {
        let (status, _, body) = harness.admin_get("/readyz").await;
        report = (status, body);
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = report;
    assert_eq!(status, 503, "{body}");
    let unready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(unready["status"], "not_ready");
    assert_eq!(unready["checks"]["shutdown"], "shutting down");

    // During server.shutdown_delay_secs the HTTPS listener still serves.
    let session = harness.session("late-user", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 200);
    let text = scrape(&harness).await;
    assert_eq!(metric(&text, "cartesia_gateway_ready"), 0.0, "{text}");

    harness.wait_stopped().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let addr = harness.admin_addr.unwrap();
    let after = client
        .request(
            Request::get(format!("http://{addr}/livez"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(after.is_err(), "the admin listener closes after the drain");
}

#[tokio::test]
async fn rejected_key_unready_until_mint() {
    let harness = start_with_admin(Options::default()).await;
    harness.stand_in.faults().fail_mints_with(Some(401));
    let session = harness.session("rejected-key-user", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 502);

    let (status, _, body) = harness.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    let minting = report["checks"]["minting"].as_str().unwrap();
    assert!(
        minting.contains("401"),
        "the reason names the status: {minting}"
    );
    assert!(
        !body.contains(common::API_KEY),
        "the readiness report holds no key"
    );

    harness.stand_in.faults().fail_mints_with(None);
    let other = harness.session("rejected-key-user-2", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&other)).await, 200);
    let (status, _, body) = harness.admin_get("/readyz").await;
    assert_eq!(status, 200, "a successful mint clears the failure: {body}");
}

#[tokio::test]
async fn admin_listener_can_serve_https() {
    let harness = start_with_admin(Options {
        admin_section: "tls = true",
        ..Options::default()
    })
    .await;
    let addr = harness.admin_addr.unwrap();
    let request = Request::get(format!("https://localhost:{}/readyz", addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = harness.client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let (status, _, body) = harness.admin_get("/readyz").await;
    assert_eq!(status, 400, "plain HTTP on the TLS admin port: {body}");
    assert!(body.contains("https_required"), "{body}");
}

#[tokio::test]
async fn dashboard_queries_only_exposed_metrics() {
    let harness = start_with_admin(Options::default()).await;
    let session = harness.session("dashboard-user", &["tts"]);
    assert_eq!(post_tts_bytes(&harness, Some(&session)).await, 200);
    assert_eq!(post_tts_bytes(&harness, None).await, 401);
    let text = scrape(&harness).await;

    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/cartesia-gateway.json"
    ))
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("cartesia_gateway_")
        .chain(dashboard.match_indices("process_"))
        .map(|(start, _)| {
            let rest = &dashboard[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(
        names.len() >= 10,
        "the dashboard queries the metrics: {names:?}"
    );
    for name in names {
        let exposed = text.lines().any(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        });
        assert!(
            exposed,
            "the dashboard queries {name}, which /metrics lacks:\n{text}"
        );
    }
}
