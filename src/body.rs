//! Body types for both legs of the proxy.
//!
//! Client and upstream bodies are hyper's `Incoming` streams passed through
//! as they are, so data is never collected. Gateway-made bodies (errors,
//! token requests) are small `Full` buffers. `Either` joins the two without
//! boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;

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

/// Wraps a body and fires a signal once it has yielded its last frame, or
/// when it is dropped before that.
///
/// The proxy starts its response-head timeout from this signal, so a long
/// upload that is still moving is never cut by that timeout.
pub struct EndSignal<B> {
    inner: B,
    done: Option<oneshot::Sender<()>>,
}

impl<B> EndSignal<B> {
    pub fn new(inner: B) -> (Self, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let body = EndSignal {
            inner,
            done: Some(sender),
        };
        (body, receiver)
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
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.fire();
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
/// NOTE: data that still cannot be written after that one poll (a client
/// that reads slowly) is lost as before.
pub struct FlushBeforeError<B: Body> {
    inner: B,
    held: Option<B::Error>,
}

impl<B: Body> FlushBeforeError<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        FlushBeforeError { inner, held: None }
    }
}

impl<B> Body for FlushBeforeError<B>
where
    B: Body + Unpin,
    B::Error: Unpin,
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
