//! Request dispatch: recording, routing, credential and version checks, injected faults, then the
//! route's handler.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::BytesMut;
use http::header::{ALLOW, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::auth::{Grant, presented_credential};
use super::params::check_version;
use super::respond::{ApiError, ResponseBody, new_request_id};
use super::server::Lifecycle;
use super::{Shared, access_token, stt_batch, stt_ws, tts_http, tts_ws, turns, websocket};

/// Largest JSON request body accepted.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// A known path: the token endpoint, or one of the TTS and STT endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    AccessToken,
    Api(ApiRoute),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApiRoute {
    TtsBytes,
    TtsSse,
    TtsWebSocket,
    Stt,
    AudioTranscriptions,
    SttWebSocket,
    SttTurnsWebSocket,
}

impl Route {
    fn from_path(path: &str) -> Option<Self> {
        let route = match path {
            "/access-token" => return Some(Self::AccessToken),
            "/tts/bytes" => ApiRoute::TtsBytes,
            "/tts/sse" => ApiRoute::TtsSse,
            "/tts/websocket" => ApiRoute::TtsWebSocket,
            "/stt" => ApiRoute::Stt,
            "/audio/transcriptions" => ApiRoute::AudioTranscriptions,
            "/stt/websocket" => ApiRoute::SttWebSocket,
            "/stt/turns/websocket" => ApiRoute::SttTurnsWebSocket,
            _ => return None,
        };
        Some(Self::Api(route))
    }

    /// The only method the route accepts.
    fn method(self) -> &'static str {
        match self {
            Self::Api(route) if route.is_websocket() => "GET",
            _ => "POST",
        }
    }
}

impl ApiRoute {
    fn is_websocket(self) -> bool {
        matches!(
            self,
            Self::TtsWebSocket | Self::SttWebSocket | Self::SttTurnsWebSocket
        )
    }

    fn grant(self) -> Grant {
        match self {
            Self::TtsBytes | Self::TtsSse | Self::TtsWebSocket => Grant::Tts,
            Self::Stt
            | Self::AudioTranscriptions
            | Self::SttWebSocket
            | Self::SttTurnsWebSocket => Grant::Stt,
        }
    }

    /// OpenAI clients call `/audio/transcriptions` without a Cartesia version.
    fn requires_version(self) -> bool {
        self != Self::AudioTranscriptions
    }
}

/// Per-request state for handlers: the shared state, the index of the request in the log, and the
/// `request_id` of its error bodies.
pub(crate) struct RequestContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) record_index: usize,
    pub(crate) request_id: String,
}

impl RequestContext {
    pub(crate) fn error(&self, error: ApiError) -> Response<ResponseBody> {
        tracing::debug!(
            status = error.status.as_u16(),
            code = error.code,
            "stand-in rejected a request"
        );
        error.into_response(&self.request_id)
    }

    pub(crate) fn add_body_len(&self, bytes: u64) {
        self.shared.recorder.add_body_len(self.record_index, bytes);
    }
}

/// Reads a JSON request body of at most 1 MiB. An empty body reads as `{}`.
pub(crate) async fn read_json(
    context: &RequestContext,
    mut body: Incoming,
) -> Result<Value, ApiError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::bad_request("invalid_request", "the request body could not be read")
        })?;
        if let Ok(data) = frame.into_data() {
            context.add_body_len(data.len() as u64);
            if buffer.len() + data.len() > MAX_JSON_BODY {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the JSON body must be at most {MAX_JSON_BODY} bytes"),
                ));
            }
            buffer.extend_from_slice(&data);
        }
    }
    if buffer.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(&buffer).map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {error}"),
        )
    })
}

/// Serves one request. The error type is `Infallible` because every problem becomes an HTTP
/// response.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let record_index = shared.recorder.push(&parts);
    let context = RequestContext {
        shared,
        record_index,
        request_id: new_request_id(),
    };

    let Some(route) = Route::from_path(parts.uri.path()) else {
        let error = ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
        return Ok(context.error(error));
    };
    let allowed = route.method();
    if parts.method.as_str() != allowed {
        let message = format!("use {allowed} for this endpoint");
        let error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
        .with_header(ALLOW, HeaderValue::from_static(allowed));
        return Ok(context.error(error));
    }
    let route = match route {
        Route::AccessToken => return Ok(access_token::handle(context, parts, body).await),
        Route::Api(route) => route,
    };

    if let Err(error) = check_api_request(&context, &parts, route) {
        return Ok(context.error(error));
    }
    Ok(dispatch(context, Request::from_parts(parts, body), route, lifecycle).await)
}

/// Runs the credential, version and injected-fault checks of a TTS or STT route.
fn check_api_request(
    context: &RequestContext,
    parts: &http::request::Parts,
    route: ApiRoute,
) -> Result<(), ApiError> {
    let query = parts.uri.query();
    let credential = presented_credential(&parts.headers, query, route.is_websocket());
    let credential = credential
        .as_ref()
        .map(|presented| presented.value.as_str());
    if credential.is_some_and(|credential| context.shared.faults.take_token_rejection(credential)) {
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "the access token is no longer valid",
        ));
    }
    context.shared.signer.authorize(credential, route.grant())?;
    check_version(&parts.headers, query, route.requires_version())?;
    check_injected_faults(context, route)
}

async fn dispatch(
    context: RequestContext,
    request: Request<Incoming>,
    route: ApiRoute,
    lifecycle: Lifecycle,
) -> Response<ResponseBody> {
    match route {
        ApiRoute::TtsBytes => tts_http::bytes(context, request.into_body()).await,
        ApiRoute::TtsSse => tts_http::sse(context, request.into_body()).await,
        ApiRoute::Stt | ApiRoute::AudioTranscriptions => stt_batch::handle(context, request).await,
        ApiRoute::TtsWebSocket => websocket::upgrade(context, request, lifecycle, tts_ws::run),
        ApiRoute::SttWebSocket => match stt_ws::Settings::from_query(query_of(&request)) {
            Ok(settings) => websocket::upgrade(context, request, lifecycle, move |socket| {
                stt_ws::run(socket, settings)
            }),
            Err(error) => context.error(error),
        },
        ApiRoute::SttTurnsWebSocket => match turns::Settings::from_query(query_of(&request)) {
            Ok(settings) => websocket::upgrade(context, request, lifecycle, move |socket| {
                turns::run(socket, settings)
            }),
            Err(error) => context.error(error),
        },
    }
}

fn query_of(request: &Request<Incoming>) -> Option<&str> {
    request.uri().query()
}

fn check_injected_faults(context: &RequestContext, route: ApiRoute) -> Result<(), ApiError> {
    let faults = &context.shared.faults;
    if let Some(fault) = faults.respond_status() {
        return Err(ApiError::injected(fault.status, fault.retry_after_secs));
    }
    if route.is_websocket()
        && let Some(status) = faults.refuse_upgrade_status()
    {
        return Err(ApiError::injected(status, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_methods_and_grants() {
        let cases = [
            ("/tts/bytes", "POST", Grant::Tts),
            ("/tts/sse", "POST", Grant::Tts),
            ("/tts/websocket", "GET", Grant::Tts),
            ("/stt", "POST", Grant::Stt),
            ("/audio/transcriptions", "POST", Grant::Stt),
            ("/stt/websocket", "GET", Grant::Stt),
            ("/stt/turns/websocket", "GET", Grant::Stt),
        ];
        for (path, method, grant) in cases {
            let route = Route::from_path(path).expect(path);
            assert_eq!(route.method(), method, "{path}");
            let Route::Api(api_route) = route else {
                panic!("{path} is an API route");
            };
            assert_eq!(api_route.grant(), grant, "{path}");
        }
        assert_eq!(
            Route::from_path("/access-token").map(Route::method),
            Some("POST")
        );
    }

    #[test]
    fn near_miss_paths_are_unknown() {
        for path in [
            "/",
            "/tts/bytes/",
            "/TTS/bytes",
            "/tts/%62ytes",
            "/tts/./bytes",
            "/voices",
        ] {
            assert_eq!(Route::from_path(path), None, "{path}");
        }
    }
}
