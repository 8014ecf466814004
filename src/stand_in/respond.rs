//! Response building: Cartesia-shaped JSON errors, JSON bodies and request ids.
//!
//! Cartesia's HTTP errors (API versions from 2026-03-01) are `{"error_code", "title", "message",
//! "request_id"}`. WebSocket errors are the same fields plus `"type": "error"`, `"done": true` and
//! `"status_code"`.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use rand::RngCore;
use serde_json::{Value, json};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type ResponseBody = BoxBody<Bytes, BoxError>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A rejected request: the response status, a stable `error_code` and a message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// Builds an injected fault: an error with a status chosen by a test. `x-should-retry: false`
    /// keeps the official SDKs from retrying it.
    pub(crate) fn injected(status: u16, retry_after_secs: Option<u64>) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut error = Self::new(
            status,
            "injected_fault",
            format!("the stand-in was told to answer {}", status.as_u16()),
        );
        error = error.with_header(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static("false"),
        );
        if let Some(seconds) = retry_after_secs {
            error = error.with_header(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        error
    }

    pub(crate) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    /// Builds the HTTP response with the JSON error body.
    pub(crate) fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        let body = json!({
            "error_code": self.code,
            "title": self.title(),
            "message": self.message,
            "request_id": request_id,
        });
        let mut response = json_response(self.status, &body);
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }

    /// Builds the WebSocket `error` message.
    pub(crate) fn to_ws_message(&self, request_id: &str, context_id: Option<&str>) -> Value {
        let mut message = json!({
            "type": "error",
            "done": true,
            "status_code": self.status.as_u16(),
            "error_code": self.code,
            "title": self.title(),
            "message": self.message,
            "request_id": request_id,
        });
        if let (Some(context_id), Some(object)) = (context_id, message.as_object_mut()) {
            object.insert("context_id".to_owned(), Value::from(context_id));
        }
        message
    }
}

/// Builds a response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(full_body(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

pub(crate) fn full_body(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Makes a random UUID (version 4) in its usual text form, used as `request_id`.
pub(crate) fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn ws_message_has_error_fields() {
        let error = ApiError::bad_request("invalid_request", "transcript is required");
        let message = error.to_ws_message("req-1", Some("ctx-1"));
        assert_eq!(message["type"], "error");
        assert_eq!(message["done"], true);
        assert_eq!(message["status_code"], 400);
        assert_eq!(message["title"], "Bad Request");
        assert_eq!(message["message"], "transcript is required");
        assert_eq!(message["request_id"], "req-1");
        assert_eq!(message["context_id"], "ctx-1");
    }

    #[test]
    fn injected_error_carries_retry_headers() {
        let response = ApiError::injected(429, Some(3)).into_response("req-1");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers()["x-should-retry"], "false");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
}
