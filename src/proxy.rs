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
//!
//! A 401 from the upstream means the token is no longer good, so it is
//! evicted. When the token came from the cache and the request has no body,
//! the request is sent once more with a freshly minted token. A request
//! whose body has been streamed cannot be sent again, so its 401 reaches the
//! client. A 429 passes through like any other status and keeps the token.
//!
//! NOTE: hyper-util's pooled client sends a request again only when its
//! pooled connection turned out closed before the request was written. When
//! the upstream's close crosses the request on the wire, the request fails
//! with 502 `upstream_unavailable` and is not repeated, because its body may
//! already be gone. An `upstream.pool_idle_timeout_secs` below the upstream's
//! keep-alive timeout avoids this for idle closes, since the pool never
//! reuses a connection idle for longer than that.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::access::AccessRecord;
use crate::body::{BodyTooLarge, EndSignal, ResponseBody, UpstreamBody};
use crate::error::GatewayError;
use crate::gateway::{Authorized, Gateway};
use crate::query;
use crate::tokens::{MintedToken, TokenSource};
use crate::upstream::{self, HttpClient};

/// Maximum time a rejected request's body is read and thrown away.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum pause between two parts of a rejected request's body.
const DISCARD_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and drops the body of a request the gateway rejected, in the
/// background, while the error response goes out.
///
/// A client that sends its body without waiting for `100 Continue` (every
/// browser, Node's `fetch`) is still writing when the rejection is sent. If
/// the gateway closed the connection with body bytes unread, the kernel
/// would reply to them with a reset, and the client would see a broken
/// connection instead of the JSON error. Reading goes on for at most
/// [`DISCARD_TIMEOUT`], and stops after a pause of [`DISCARD_IDLE_TIMEOUT`];
/// then the connection closes as before.
pub fn discard_body(body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let drain = async {
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(DISCARD_IDLE_TIMEOUT, body.frame()).await
            {}
        };
        if tokio::time::timeout(DISCARD_TIMEOUT, drain).await.is_err() {
            tracing::debug!("a rejected request's body was still arriving; closing");
        }
    });
}

/// Rejects a request whose `Content-Length` is above `max_body` before any
/// token is minted or any byte is sent upstream.
pub fn check_declared_length(headers: &HeaderMap, max_body: u64) -> Result<(), GatewayError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(GatewayError::BodyTooLarge);
    }
    Ok(())
}

/// Forwards an authorized request to the upstream and returns its response.
pub async fn forward(
    gateway: &Gateway,
    request: Request<Incoming>,
    authorized: &Authorized,
    record: &mut AccessRecord,
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
    check_declared_length(&parts.headers, max_body)?;
    let replayable = authorized.token_source == TokenSource::Cache && body.is_end_stream();
    let replay = replayable.then(|| Replay {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    let (body, body_done, exceeded) = EndSignal::new(body, max_body, record.bytes_in());
    let request = Request::from_parts(parts, Either::Right(body));

    let mut response = send(
        &upstream.http,
        request,
        body_done,
        upstream.response_timeout,
    )
    .await
    .map_err(|error| {
        if exceeded.is_set() {
            GatewayError::BodyTooLarge
        } else {
            error
        }
    })?;
    if response.status() == StatusCode::UNAUTHORIZED {
        response = resend_after_rejection(gateway, authorized, replay, response).await?;
    }
    Ok(pass_response(gateway, response, record))
}

/// Turns an upstream response into the client's: records its status,
/// counts a 5xx as an upstream error and filters the headers. The body is
/// passed on as it streams.
pub fn pass_response(
    gateway: &Gateway,
    response: Response<Incoming>,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    record.set_upstream_status(parts.status.as_u16());
    if parts.status.is_server_error() {
        gateway.metrics.upstream_error("status_5xx");
    }
    upstream::prepare_response_headers(&mut parts.headers);
    parts.version = Version::default();
    let errors = gateway.metrics.upstream_error_counter("response_body");
    Response::from_parts(
        parts,
        Either::Right(crate::body::FlushBeforeError::new(body, errors)),
    )
}

/// Handles a 401 to the first try: evicts the token and, when `replay` is
/// set, sends the request once more with a fresh token and returns that
/// response instead of `rejected`.
async fn resend_after_rejection(
    gateway: &Gateway,
    authorized: &Authorized,
    replay: Option<Replay>,
    rejected: Response<Incoming>,
) -> Result<Response<Incoming>, GatewayError> {
    let Some(token) = token_after_rejection(gateway, authorized, replay.is_some()).await? else {
        return Ok(rejected);
    };
    let Some(replay) = replay else {
        return Ok(rejected);
    };
    drop(rejected);
    let (request, body_done) = replay.into_request(&token.authorization);
    let upstream = &gateway.upstream;
    let response = send(
        &upstream.http,
        request,
        body_done,
        upstream.response_timeout,
    )
    .await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        evict_rejected(gateway, authorized, &token, false).await;
    }
    Ok(response)
}

/// Evicts `authorized.token` after the upstream returned 401 for it. Returns
/// a fresh token for one more try when `replayable` and the rejected token
/// came from the cache. A token minted for this request is not replaced,
/// so one request never mints twice.
pub async fn token_after_rejection(
    gateway: &Gateway,
    authorized: &Authorized,
    replayable: bool,
) -> Result<Option<Arc<MintedToken>>, GatewayError> {
    let retry = replayable && authorized.token_source == TokenSource::Cache;
    evict_rejected(gateway, authorized, &authorized.token, retry).await;
    if !retry {
        return Ok(None);
    }
    let (token, _source) = gateway
        .tokens
        .get(&authorized.session.user_id, authorized.route.grant())
        .await
        .map_err(GatewayError::Mint)?;
    Ok(Some(token))
}

/// Evicts `token`, which the upstream rejected with 401, from the cache
/// entry of `authorized`'s user and route grant, and logs it.
pub async fn evict_rejected(
    gateway: &Gateway,
    authorized: &Authorized,
    token: &Arc<MintedToken>,
    retry: bool,
) {
    let user_id = &authorized.session.user_id;
    gateway
        .tokens
        .evict(user_id, authorized.route.grant(), token)
        .await;
    tracing::info!(
        reason = "upstream_rejected_token",
        user.id = %user_id,
        token.fingerprint = %token.fingerprint,
        retry,
        "the upstream rejected an access token; evicted it"
    );
}

/// The parts of a request without a body, kept to send it again with
/// another token.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// Builds the request with `authorization` and an empty body, and a
    /// body-done signal that has already fired.
    fn into_request(
        self,
        authorization: &http::HeaderValue,
    ) -> (Request<UpstreamBody>, oneshot::Receiver<()>) {
        let mut request = Request::new(Either::Left(Full::new(Bytes::new())));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.headers;
        request
            .headers_mut()
            .insert(AUTHORIZATION, authorization.clone());
        let (sent, body_done) = oneshot::channel();
        let _ = sent.send(());
        (request, body_done)
    }
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
