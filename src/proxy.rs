//! Forwarding of the HTTP routes: `POST /tts/bytes`, `/tts/sse`, `/stt` and
//! `/audio/transcriptions`.
//!
//! Request and response bodies are hyper's streams handed from one leg to
//! the other, so audio chunks and server-sent events reach the client as the
//! upstream sends them, and uploads reach the upstream as the client sends
//! them. If the upstream body fails mid-stream, hyper aborts the client
//! response (no final chunk on HTTP/1.1, `RST_STREAM` on HTTP/2), so the
//! client sees a broken stream rather than a clean end. Upstream statuses,
//! errors included, pass through with their bodies.

use std::error::Error as _;
use std::time::Duration;

use http::{Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::body::{BodyTooLarge, EndSignal, ResponseBody, UpstreamBody};
use crate::error::GatewayError;
use crate::gateway::{Authorized, Gateway};
use crate::query;
use crate::upstream::{self, HttpClient};

/// Forwards an authorized request to the upstream and returns its response.
pub async fn forward(
    gateway: &Gateway,
    request: Request<Incoming>,
    authorized: &Authorized,
) -> Result<Response<ResponseBody>, GatewayError> {
    let route = authorized.route;
    let (mut parts, body) = request.into_parts();
    let upstream = &gateway.upstream;
    let rewritten = query::rewrite(parts.uri.query());
    let has_version = rewritten.has_version;
    let uri = upstream.uri(route.path(), rewritten.query.as_deref());
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    upstream::prepare_request_headers(
        &mut parts.headers,
        &authorized.token.authorization,
        &upstream.cartesia_version,
        has_version,
    );
    let max_body = gateway.config.server.max_request_body_bytes;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(GatewayError::BodyTooLarge);
    }
    let (body, body_done) = EndSignal::new(body, max_body);
    let request = Request::from_parts(parts, Either::Right(body));

    let response = send(
        &upstream.http,
        request,
        body_done,
        upstream.response_timeout,
    )
    .await?;
    let (mut parts, body) = response.into_parts();
    upstream::prepare_response_headers(&mut parts.headers);
    parts.version = Version::default();
    Ok(Response::from_parts(
        parts,
        Either::Right(crate::body::FlushBeforeError::new(body)),
    ))
}

/// Sends `request` and waits for the response head. The timeout starts once
/// the request body has been sent, so a slow upload is never cut by it.
pub async fn send(
    client: &HttpClient,
    request: Request<UpstreamBody>,
    body_done: oneshot::Receiver<()>,
    timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let response = client.request(request);
    let deadline = async {
        let _ = body_done.await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        result = response => result.map_err(classify),
        () = deadline => Err(GatewayError::UpstreamTimeout),
    }
}

/// Maps a client error to 504 when a timeout caused it and 502 otherwise.
pub fn classify(error: hyper_util::client::legacy::Error) -> GatewayError {
    if caused_by::<BodyTooLarge>(&error) {
        GatewayError::BodyTooLarge
    } else if is_timeout(&error) {
        GatewayError::UpstreamTimeout
    } else {
        GatewayError::UpstreamConnect(error)
    }
}

/// Whether an error of type `E` is in the source chain of `error`.
fn caused_by<E: std::error::Error + 'static>(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<E>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether an I/O timeout, such as the connect timeout, caused `error`.
pub fn is_timeout(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = cause.source();
    }
    false
}
