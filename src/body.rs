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
pub type ResponseBody = Either<Full<Bytes>, Incoming>;

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
