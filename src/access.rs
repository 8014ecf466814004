//! The access log: one event per request or WebSocket session, on the
//! `access` target, at info.
//!
//! The event carries only the fields that `Facts::write` names. Query
//! values are redacted, users appear by id, and no header, cookie, JWT or
//! token is ever recorded. An HTTP request's event is written when its
//! response body ends or the client goes away. A WebSocket's is written
//! when the relay has closed both sides.
//!
//! The record also feeds the request metrics: the duration and time to
//! first byte histograms are observed when the event is written, or for a
//! WebSocket when its 101 is sent.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::Method;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::SharedMetrics;
use crate::routes::Route;
use crate::tokens::TokenSource;

/// The tracing target of access events.
pub const TARGET: &str = "access";

/// `reason` of a request whose client went away before the response ended.
pub const CLIENT_CLOSED: &str = "client_closed";
/// `reason` of a response cut short because the upstream body failed.
pub const UPSTREAM_STREAM_FAILED: &str = "upstream_stream_failed";

/// Bytes of a request body counted while it streams upstream.
#[derive(Clone, Default)]
pub struct ByteCount(Arc<AtomicU64>);

impl ByteCount {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// End of a relayed WebSocket: its close code and the party that closed.
#[derive(Clone, Copy, Debug)]
pub struct WebSocketEnd {
    pub close_code: u16,
    pub closed_by: &'static str,
}

/// The facts of one request, written as an access event when dropped.
///
/// A record that has been [handed over](AccessRecord::hand_over) writes
/// nothing; the record it returned writes the event instead.
pub struct AccessRecord(Option<Box<Facts>>);

struct Facts {
    started: Instant,
    metrics: SharedMetrics,
    client_addr: IpAddr,
    method: Method,
    route: Option<Route>,
    query: Option<String>,
    user_id: Option<Arc<str>>,
    token_source: Option<TokenSource>,
    status: Option<u16>,
    upstream_status: Option<u16>,
    reason: Option<&'static str>,
    bytes_in: ByteCount,
    bytes_out: u64,
    head: Option<Duration>,
    first_byte: Option<Duration>,
    websocket: Option<WebSocketEnd>,
    /// Whether the duration histograms were observed already.
    observed: bool,
}

impl AccessRecord {
    /// Starts the record of a request that arrived at `started`. `query`
    /// is the raw query string; only its redacted form is kept.
    pub fn new(
        started: Instant,
        metrics: SharedMetrics,
        client_addr: IpAddr,
        method: Method,
        route: Option<Route>,
        query: Option<&str>,
    ) -> Self {
        AccessRecord(Some(Box::new(Facts {
            started,
            metrics,
            client_addr,
            method,
            route,
            query: query.map(crate::query::redacted),
            user_id: None,
            token_source: None,
            status: None,
            upstream_status: None,
            reason: None,
            bytes_in: ByteCount::default(),
            bytes_out: 0,
            head: None,
            first_byte: None,
            websocket: None,
            observed: false,
        })))
    }

    pub fn set_user(&mut self, user_id: &Arc<str>) {
        if let Some(facts) = &mut self.0 {
            facts.user_id = Some(Arc::clone(user_id));
        }
    }

    pub fn set_token_source(&mut self, token_source: TokenSource) {
        if let Some(facts) = &mut self.0 {
            facts.token_source = Some(token_source);
        }
    }

    pub fn set_upstream_status(&mut self, status: u16) {
        if let Some(facts) = &mut self.0 {
            facts.upstream_status = Some(status);
        }
    }

    /// Sets `reason` unless one is set already.
    pub fn set_reason(&mut self, reason: &'static str) {
        if let Some(facts) = &mut self.0 {
            facts.reason.get_or_insert(reason);
        }
    }

    /// Returns the counter that the request body adds its bytes to.
    pub fn bytes_in(&self) -> ByteCount {
        self.0
            .as_ref()
            .map(|facts| facts.bytes_in.clone())
            .unwrap_or_default()
    }

    /// Records the response head's status and counts the request.
    pub fn response_head(&mut self, status: u16) {
        if let Some(facts) = &mut self.0 {
            facts.status = Some(status);
            facts.head = Some(facts.started.elapsed());
            facts.metrics.request_answered(facts.route, status);
        }
    }

    /// Moves the facts into a new record for the WebSocket relay and leaves
    /// this one empty. The 101 is counted and the request's duration
    /// histograms are observed now, with the 101 as the end of the request.
    pub fn hand_over(&mut self) -> AccessRecord {
        if let Some(facts) = &mut self.0 {
            let elapsed = facts.started.elapsed();
            facts
                .metrics
                .request_finished(facts.route, elapsed, Some(elapsed));
            facts.observed = true;
            facts.status = Some(101);
            facts.head = Some(elapsed);
            facts.metrics.request_answered(facts.route, 101);
        }
        AccessRecord(self.0.take())
    }

    /// Returns whether the facts were handed over.
    pub fn is_handed_over(&self) -> bool {
        self.0.is_none()
    }

    /// Records the end of a relayed WebSocket and its traffic.
    pub fn websocket_closed(&mut self, end: WebSocketEnd, bytes_in: u64, bytes_out: u64) {
        if let Some(facts) = &mut self.0 {
            facts.websocket = Some(end);
            facts.bytes_in.add(bytes_in);
            facts.bytes_out = bytes_out;
        }
    }

    fn data_sent(&mut self, bytes: u64) {
        if let Some(facts) = &mut self.0 {
            if facts.first_byte.is_none() {
                facts.first_byte = Some(facts.started.elapsed());
            }
            facts.bytes_out += bytes;
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        if let Some(facts) = self.0.take() {
            facts.write();
        }
    }
}

impl Facts {
    fn write(mut self) {
        // Without a status, the client went away before the response head.
        if self.status.is_none() {
            self.reason.get_or_insert(CLIENT_CLOSED);
        }
        let duration = self.started.elapsed();
        let first_byte = self.first_byte.or(self.head);
        if !self.observed {
            self.metrics
                .request_finished(self.route, duration, first_byte);
        }
        let message = if self.websocket.is_some() {
            "websocket session"
        } else {
            "request"
        };
        tracing::info!(
            target: TARGET,
            client_addr = %self.client_addr,
            user_id = self.user_id.as_deref(),
            method = %self.method,
            route = self.route.map_or(crate::metrics::UNKNOWN_ROUTE, Route::path),
            query = self.query.as_deref(),
            status = self.status,
            upstream_status = self.upstream_status,
            bytes_in = self.bytes_in.get(),
            bytes_out = self.bytes_out,
            duration_ms = millis(duration),
            ttfb_ms = first_byte.map(millis),
            token_source = self.token_source.map(TokenSource::as_str),
            ws_close_code = self.websocket.map(|end| end.close_code),
            ws_closed_by = self.websocket.map(|end| end.closed_by),
            reason = self.reason,
            "{message}"
        );
    }
}

/// Milliseconds with microsecond precision.
fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

/// A response body that counts what it yields into its request's record
/// and writes the access event when dropped.
pub struct AccessBody<B: Body> {
    inner: B,
    record: AccessRecord,
}

impl<B: Body> AccessBody<B> {
    pub fn new(inner: B, record: AccessRecord) -> Self {
        AccessBody { inner, record }
    }
}

impl<B> Body for AccessBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.data_sent(data.remaining() as u64);
                }
            }
            Poll::Ready(Some(Err(_))) => this.record.set_reason(UPSTREAM_STREAM_FAILED),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for AccessBody<B> {
    fn drop(&mut self) {
        // The record writes itself right after this; mark a response that
        // did not reach its end.
        if !self.record.is_handed_over() && !self.inner.is_end_stream() {
            self.record.set_reason(CLIENT_CLOSED);
        }
    }
}
