//! The log of received requests, which tests read to check what reached the stand-in.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use http::request::Parts;

use super::auth;

/// One request as the stand-in received it.
///
/// The `Debug` output masks the credential, the values of `authorization`, `x-api-key` and `cookie`
/// headers, and the `access_token` and `api_key` query values, so a failing assertion does not
/// print them.
#[derive(Clone)]
pub struct RecordedRequest {
    /// Request method, such as `POST`.
    pub method: String,
    /// Request path without the query.
    pub path: String,
    /// Raw query string, byte for byte, without the leading `?`.
    pub query: Option<String>,
    /// All request headers with lower-case names, grouped by name in the order each name first
    /// appeared. Values that are not UTF-8 are converted lossily. HTTP/2 pseudo-headers such as
    /// `:authority` are not headers and do not appear.
    pub headers: Vec<(String, String)>,
    /// The credential presented: the `Authorization` value (without `Bearer ` when that is the
    /// scheme), else the `X-API-Key` value, else the `access_token` or `api_key` query value. Query
    /// values are recorded on every route even though only WebSocket handshakes accept them.
    pub credential: Option<String>,
    /// Whether the request asked for a WebSocket upgrade (`Upgrade: websocket`).
    pub websocket: bool,
    /// Bytes of request body the stand-in read. A request rejected before its body was read records
    /// 0, and WebSocket handshakes always record 0.
    pub body_len: u64,
}

const MASK: &str = "<redacted>";
const SECRET_HEADERS: [&str; 3] = ["authorization", "x-api-key", "cookie"];
const SECRET_QUERY_KEYS: [&str; 2] = ["access_token", "api_key"];

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if SECRET_HEADERS.contains(&name.as_str()) {
                    MASK
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query.as_deref().map(mask_query))
            .field("headers", &headers)
            .field("credential", &self.credential.as_ref().map(|_| MASK))
            .field("websocket", &self.websocket)
            .field("body_len", &self.body_len)
            .finish()
    }
}

/// Replaces the values of credential query parameters with a mask.
fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            if SECRET_QUERY_KEYS.contains(&key) {
                format!("{key}={MASK}")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Append-only request log. The lock is never held across an `.await`.
#[derive(Default)]
pub(crate) struct Recorder {
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Recorder {
    /// Appends a request and returns its index, which [`Recorder::add_body_len`] takes.
    pub(crate) fn push(&self, parts: &Parts) -> usize {
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let websocket = parts
            .headers
            .get(http::header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let query = parts.uri.query();
        let request = RecordedRequest {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: query.map(str::to_owned),
            headers,
            credential: auth::presented_credential(&parts.headers, query, true)
                .map(|presented| presented.value),
            websocket,
            body_len: 0,
        };
        let mut requests = self.lock();
        requests.push(request);
        requests.len() - 1
    }

    /// Adds `bytes` to the body length of the request at `index`.
    pub(crate) fn add_body_len(&self, index: usize, bytes: u64) {
        if let Some(request) = self.lock().get_mut(index) {
            request.body_len += bytes;
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method("GET").uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid test request").into_parts().0
    }

    #[test]
    fn push_records_headers_query_and_credential() {
        let recorder = Recorder::default();
        let request = parts(
            "/stt/websocket?model=ink-whisper&access_token=tok%2B1",
            &[("Upgrade", "websocket"), ("X-Custom", "one")],
        );
        let index = recorder.push(&request);
        recorder.add_body_len(index, 7);

        let recorded = &recorder.snapshot()[0];
        assert_eq!(recorded.path, "/stt/websocket");
        assert_eq!(
            recorded.query.as_deref(),
            Some("model=ink-whisper&access_token=tok%2B1")
        );
        assert!(recorded.websocket);
        assert_eq!(recorded.credential.as_deref(), Some("tok+1"));
        assert!(
            recorded
                .headers
                .contains(&("x-custom".to_owned(), "one".to_owned()))
        );
        assert_eq!(recorded.body_len, 7);
    }

    #[test]
    fn debug_masks_credentials() {
        let recorder = Recorder::default();
        let request = parts(
            "/tts/bytes?api_key=sk_secret&x=1",
            &[
                ("Authorization", "Bearer sk_secret"),
                ("Cookie", "session=sk_secret"),
            ],
        );
        recorder.push(&request);

        let shown = format!("{:?}", recorder.snapshot()[0]);
        assert!(!shown.contains("sk_secret"), "{shown}");
        assert!(shown.contains("x=1"));
    }
}
