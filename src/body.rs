//! Body types for both legs of the proxy.
//!
//! Client and upstream bodies are hyper's `Incoming` streams passed through
//! as they are, so data is never collected. Gateway-made bodies (errors,
//! token requests) are small `Full` buffers. `Either` joins the two without
//! boxing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::access::ByteCount;

/// Body of a response sent to the client.
pub type ResponseBody = Either<Full<Bytes>, FlushBeforeError<Incoming>>;

/// Body of a request sent to the upstream.
pub type UpstreamBody = Either<Full<Bytes>, EndSignal<Incoming>>;

pub fn full(bytes: Bytes) -> ResponseBody {
    Either::Left(Full::new(bytes))
}

pub fn empty() -> ResponseBody {
    Either::Left(Full::new(Bytes::new()))
}

/// Boxed error of a request body sent upstream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body larger than `server.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds the configured maximum size")]
pub struct BodyTooLarge;

/// Wraps a client request body: fails it with [`BodyTooLarge`] once it
/// passes `max_bytes`, and fires a signal once it has yielded its last
/// frame, or when it is dropped before that.
///
/// The proxy starts its response-head timeout from this signal, so a long
/// upload that is still moving is never cut by that timeout.
pub struct EndSignal<B> {
    inner: B,
    done: Option<oneshot::Sender<()>>,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
    /// Bytes passed on so far, for the access log.
    counted: ByteCount,
}

/// Set once a request body passed its size limit. The HTTP/2 client only
/// resets the stream on a body error and reports a generic failure, so the
/// proxy reads this flag to answer 413 rather than 502.
#[derive(Clone, Default)]
pub struct LimitExceeded(Arc<AtomicBool>);

impl LimitExceeded {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<B> EndSignal<B> {
    /// Wraps `inner`, which may yield at most `max_bytes`, adding what it
    /// yields to `counted`.
    pub fn new(
        inner: B,
        max_bytes: u64,
        counted: ByteCount,
    ) -> (Self, oneshot::Receiver<()>, LimitExceeded) {
        let (sender, receiver) = oneshot::channel();
        let exceeded = LimitExceeded::default();
        let body = EndSignal {
            inner,
            done: Some(sender),
            remaining: max_bytes,
            exceeded: Arc::clone(&exceeded.0),
            counted,
        };
        (body, receiver, exceeded)
    }

    fn fire(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<B> Body for EndSignal<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(polled) => polled,
        };
        match polled {
            None => {
                self.fire();
                Poll::Ready(None)
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |data| data.remaining() as u64);
                match self.remaining.checked_sub(len) {
                    Some(remaining) => {
                        self.remaining = remaining;
                        self.counted.add(len);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => {
                        self.exceeded.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(Box::new(BodyTooLarge))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for EndSignal<B> {
    fn drop(&mut self) {
        self.fire();
    }
}

/// Wraps an upstream response body and delays its error by one poll.
///
/// When a body yields data and then fails at once, hyper's server drops the
/// data it has buffered but not yet written: HTTP/1.1 closes the connection
/// without flushing, and HTTP/2 clears the stream's queued DATA frames when
/// it sends `RST_STREAM`. Returning `Pending` once, with a wake-up, lets the
/// connection write that data before the error ends the stream.
///
/// The error is logged once, at warn, in the span that was current when the
/// wrapper was made (the request's span), and counted in `errors`.
///
/// NOTE: data that still cannot be written after that one poll (a client
/// that reads slowly) is lost as before.
pub struct FlushBeforeError<B: Body> {
    inner: B,
    held: Option<B::Error>,
    /// The request's span until the error has been logged, then `None`.
    span: Option<tracing::Span>,
    errors: Counter,
}

impl<B: Body> FlushBeforeError<B> {
    /// Wraps `inner`; a failure of `inner` increments `errors`.
    pub fn new(inner: B, errors: Counter) -> Self {
        FlushBeforeError {
            inner,
            held: None,
            span: Some(tracing::Span::current()),
            errors,
        }
    }
}

impl<B> Body for FlushBeforeError<B>
where
    B: Body + Unpin,
    B::Error: Unpin + std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(error) = this.held.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                if let Some(span) = this.span.take() {
                    this.errors.inc();
                    span.in_scope(|| {
                        tracing::warn!(
                            %error,
                            "the upstream response failed mid-stream; the client's response is cut short"
                        );
                    });
                }
                this.held = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
